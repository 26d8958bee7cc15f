package session

import (
	"runtime"
	"testing"

	"wsgateway/reservation"
)

// gatedPersister holds every SaveReservation until the test opens it.
type gatedPersister struct {
	entered chan struct{}
	gate    chan struct{}
}

func (p *gatedPersister) SaveReservation(reservation.Reservation) {
	p.entered <- struct{}{}
	<-p.gate
}

func (p *gatedPersister) DeleteReservation(string) {}

// TestReserveReturnsOnceRecorded: ReserveFor returns only after the
// reservation has been recorded (a token handed out is one a restart
// keeps): while the Persister holds the save, Reserve does not return,
// however often the test yields to it.
func TestReserveReturnsOnceRecorded(t *testing.T) {
	p := &gatedPersister{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	m := New(Config{Counts: map[string]int{"s": 1}, Timeout: testTimeout, Persist: p})
	t.Cleanup(m.Close)
	var opened bool
	t.Cleanup(func() { // before Close, which waits for the save
		if !opened {
			close(p.gate)
		}
	})
	done := make(chan error, 1)
	go func() {
		_, err := m.Reserve("s", nil)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Reserve returned (%v) before the save began", err)
	case <-p.entered:
	}
	for i := 0; i < 10000; i++ {
		select {
		case err := <-done:
			t.Fatalf("Reserve returned (%v) while its save was still held", err)
		default:
			runtime.Gosched()
		}
	}
	close(p.gate)
	opened = true
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
