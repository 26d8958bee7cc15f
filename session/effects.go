package session

import "sync"

// effects runs, one at a time and in the order they were queued, the
// things a transition must tell the world (the store, the event hub)
// once the Manager's lock is released. Queuing takes a leaf lock and does
// no I/O, so transitions can queue under the Manager's lock; the work
// itself runs on the effects goroutine, never under that lock.
type effects struct {
	mu     sync.Mutex
	q      []func()
	wake   chan struct{}
	closed bool
	done   chan struct{}
}

func newEffects() *effects {
	e := &effects{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go e.loop()
	return e
}

// add queues f. After close, f runs on the caller's goroutine, so nothing
// is ever lost.
func (e *effects) add(f func()) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		f()
		return
	}
	e.q = append(e.q, f)
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// barrier returns a channel closed once everything queued before it has
// run.
func (e *effects) barrier() <-chan struct{} {
	ch := make(chan struct{})
	e.add(func() { close(ch) })
	return ch
}

func (e *effects) loop() {
	defer close(e.done)
	for range e.wake {
		for {
			e.mu.Lock()
			q := e.q
			e.q = nil
			closed := e.closed
			e.mu.Unlock()
			if len(q) == 0 {
				if closed {
					return
				}
				break
			}
			for _, f := range q {
				f()
			}
		}
	}
}

// close runs what is queued and stops the goroutine.
func (e *effects) close() {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		<-e.done
		return
	}
	e.closed = true
	e.mu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
	<-e.done
}
