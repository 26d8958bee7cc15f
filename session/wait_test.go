package reservation

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestReserveWaitIsFIFO(t *testing.T) {
	m := New(Config{Counts: map[string]int{"s": 1}, Timeout: time.Minute})
	first, err := m.Reserve("s", nil)
	if err != nil {
		t.Fatal(err)
	}
	const n = 5
	got := make(chan string, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		// Start the waiters one after another so their order is known.
		wg.Add(1)
		owner := string(rune('a' + i))
		go func() {
			defer wg.Done()
			r, err := m.ReserveWait(context.Background(), "s", owner, 0, 100, nil)
			if err != nil {
				t.Error(err)
				return
			}
			got <- r.Owner
			m.End(r.Token) // let the next one in
		}()
		deadline := time.Now().Add(5 * time.Second)
		for m.Waiting()["s"] != i+1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := m.Reserve("s", nil); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("a new reservation jumped the queue: %v", err)
	}
	m.End(first.Token)
	wg.Wait()
	close(got)
	var order string
	for o := range got {
		order += o
	}
	if order != "abcde" {
		t.Fatalf("granted in order %q, want abcde", order)
	}
}

func TestReserveWaitTimesOutAndQueueBound(t *testing.T) {
	m := New(Config{Counts: map[string]int{"s": 1}, Timeout: time.Minute})
	m.Reserve("s", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.ReserveWait(ctx, "s", "", 0, 10, nil); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("timeout: %v", err)
	}
	if m.Waiting()["s"] != 0 {
		t.Fatal("a timed-out waiter stayed in the queue")
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	go m.ReserveWait(ctx2, "s", "", 0, 1, nil)
	for m.Waiting()["s"] != 1 {
		time.Sleep(time.Millisecond)
	}
	if _, err := m.ReserveWait(context.Background(), "s", "", 0, 1, nil); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("bound: %v", err)
	}
}

func TestReserveWaitCancelRaceKeepsSlotsConsistent(t *testing.T) {
	m := New(Config{Counts: map[string]int{"s": 2}, Timeout: time.Minute})
	for round := 0; round < 200; round++ {
		a, _ := m.Reserve("s", nil)
		b, _ := m.Reserve("s", nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan Reservation, 1)
		go func() {
			r, err := m.ReserveWait(ctx, "s", "", 0, 10, nil)
			if err == nil {
				done <- r
			} else {
				done <- Reservation{}
			}
		}()
		for m.Waiting()["s"] != 1 {
			time.Sleep(10 * time.Microsecond)
		}
		go cancel()
		m.End(a.Token)
		r := <-done
		if r.Token != "" {
			m.End(r.Token)
		}
		m.End(b.Token)
		svcs, res := m.Snapshot()
		if svcs[0].Free != 2 || len(res) != 0 {
			t.Fatalf("round %d: free %d, %d reservations left", round, svcs[0].Free, len(res))
		}
	}
}
