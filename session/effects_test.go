package session

import (
	"sync"
	"testing"
	"time"
)

func waitClosed(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitLimit):
		t.Fatalf("%s: not done after %v", what, waitLimit)
	}
}

// TestEffectsOrderUnderConcurrency: functions queued from many goroutines
// run one at a time, in the order they were queued.
func TestEffectsOrderUnderConcurrency(t *testing.T) {
	e := newEffects()
	defer e.close()
	const goroutines, each = 8, 500
	var (
		seq     sync.Mutex // makes "take a number, queue it" one step
		next    int
		ran     []int
		running int // touched only by the effects; the race detector checks
	)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				seq.Lock()
				n := next
				next++
				e.add(func() {
					running++
					if running != 1 {
						t.Errorf("%d effects ran at once", running)
					}
					ran = append(ran, n)
					running--
				})
				seq.Unlock()
			}
		}()
	}
	wg.Wait()
	waitClosed(t, "barrier", e.barrier())
	if len(ran) != goroutines*each {
		t.Fatalf("%d effects ran, want %d", len(ran), goroutines*each)
	}
	for i, n := range ran {
		if n != i {
			t.Fatalf("effect #%d was queued #%d", i, n)
		}
	}
}

// TestEffectsBarrier: a barrier is passed only once everything queued
// before it has run, and does not wait for what is queued after it.
func TestEffectsBarrier(t *testing.T) {
	e := newEffects()
	defer e.close()
	release := make(chan struct{})
	var ran []string
	e.add(func() { <-release; ran = append(ran, "first") })
	e.add(func() { ran = append(ran, "second") })
	b := e.barrier()
	select {
	case <-b:
		t.Fatal("the barrier was passed while an earlier effect was still running")
	default:
	}
	close(release)
	waitClosed(t, "barrier", b)
	if len(ran) != 2 || ran[0] != "first" || ran[1] != "second" {
		t.Fatalf("before the barrier ran %v", ran)
	}
	block := make(chan struct{})
	e.add(func() { <-block })
	b2 := e.barrier()
	select {
	case <-b2:
		t.Fatal("a barrier was passed before the effect queued ahead of it")
	default:
	}
	close(block)
	waitClosed(t, "second barrier", b2)
}

// TestEffectsCloseRunsWhatIsQueued: close returns once everything queued
// has run; what is added later runs at once, on the caller's goroutine.
func TestEffectsCloseRunsWhatIsQueued(t *testing.T) {
	e := newEffects()
	release := make(chan struct{})
	var mu sync.Mutex
	var ran []int
	e.add(func() { <-release })
	for i := 0; i < 100; i++ {
		e.add(func() { mu.Lock(); ran = append(ran, i); mu.Unlock() })
	}
	closed := make(chan struct{})
	go func() { e.close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("close returned while an effect was still running")
	default:
	}
	close(release)
	waitClosed(t, "close", closed)
	mu.Lock()
	if len(ran) != 100 {
		t.Fatalf("close returned with %d of 100 effects run", len(ran))
	}
	for i, n := range ran {
		if n != i {
			t.Fatalf("effect %d ran as #%d", n, i)
		}
	}
	mu.Unlock()
	waitClosed(t, "the effects goroutine", e.done)

	// After close: inline, before add returns.
	inline := false
	e.add(func() { inline = true })
	if !inline {
		t.Fatal("an effect added after close did not run before add returned")
	}
	waitClosed(t, "barrier after close", e.barrier())
	// A second close returns at once.
	waitClosed(t, "second close", func() <-chan struct{} {
		ch := make(chan struct{})
		go func() { e.close(); close(ch) }()
		return ch
	}())
}
