package session

import (
	"context"
	"fmt"
	"testing"
	"time"

	"wsgateway/reservation"
)

func TestStopAll(t *testing.T) {
	m, _, rec := newManager(t, map[string]int{"viz": 4, "full": 1})
	kept := mustReserve(t, m, "viz")
	running, runP, runT := mustRun(t, m, "viz")
	detached, detP, detT := mustRun(t, m, "viz")
	detached.Detach(detT, time.Minute)
	cr := mustReserve(t, m, "viz")
	claimed := mustClaim(t, m, cr.Token)

	// A waiter for a full service is woken with ErrClosing.
	mustReserve(t, m, "full")
	w := startWaiter(t, bg(t), m, "full", "ann", 0, 1)

	if err := m.StopAll(bg(t), 1001, "shutting down"); err != nil {
		t.Fatalf("StopAll: %v", err)
	}
	// StopAll returns once they have ended and that is recorded.
	for _, ss := range []*Session{running, detached, claimed} {
		if !isDone(ss) || ss.State() != Ended {
			t.Errorf("session %s… in state %s after StopAll", reservation.TokenPrefix(ss.Token()), ss.State())
		}
		if n := rec.deletes(ss.Token()); n != 1 {
			t.Errorf("session %s… deleted %d times, want once", reservation.TokenPrefix(ss.Token()), n)
		}
	}
	if !runP.isStopped() || !detP.isStopped() {
		t.Errorf("services stopped: running %v, detached %v", runP.isStopped(), detP.isStopped())
	}
	if got := fmt.Sprint(runT.closed()); got != "[1001 shutting down]" {
		t.Errorf("the running tunnel was closed with %s, want 1001 shutting down", got)
	}
	if len(detT.closed()) != 0 {
		t.Errorf("a detached tunnel was closed: %v", detT.closed())
	}
	o := outcome(t, w)
	wantErr(t, "waiter", o.err, ErrClosing)
	if n := m.Waiting(); len(n) != 0 {
		t.Errorf("Waiting = %v after StopAll", n)
	}

	// The unused reservation is kept, recorded, not deleted.
	if g, err := m.Get(kept.Token); err != nil || g.State != string(Reserved) {
		t.Errorf("unused reservation after StopAll: %+v, %v", g, err)
	}
	if n := rec.deletes(kept.Token); n != 0 {
		t.Errorf("the unused reservation was deleted from the store")
	}

	// Nothing new is let in.
	_, err := m.Reserve("viz", nil)
	wantErr(t, "Reserve", err, ErrClosing)
	_, err = m.ReserveFor("viz", "ann", 0, nil)
	wantErr(t, "ReserveFor", err, ErrClosing)
	_, err = m.ReserveWait(bg(t), "viz", "ann", 0, 10, nil)
	wantErr(t, "ReserveWait", err, ErrClosing)
	_, err = m.Claim(kept.Token, 0)
	wantErr(t, "Claim", err, ErrClosing)
	if g, _ := m.Get(kept.Token); g.State != string(Reserved) {
		t.Errorf("a refused Claim changed the reservation: %+v", g)
	}
	// A second StopAll has nothing to do.
	if err := m.StopAll(bg(t), 1001, ""); err != nil {
		t.Errorf("second StopAll: %v", err)
	}
}

// TestStopAllWaitsForStartsInFlight: StopAll does not return while a
// session it stopped is still starting: the start may yet hand over a
// process, which must be stopped before the gateway exits.
func TestStopAllWaitsForStartsInFlight(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"viz": 2})
	ss := mustClaim(t, m, mustReserve(t, m, "viz").Token)
	ctx, err := ss.BeginStart()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- m.StopAll(bg(t), 1001, "") }()
	select {
	case <-ctx.Done():
	case <-time.After(waitLimit):
		t.Fatal("StopAll did not cancel the start")
	}
	select {
	case err := <-errc:
		t.Fatalf("StopAll returned (%v) while a start was in flight", err)
	default:
	}
	p := newProc()
	if err := ss.Started(p); err == nil {
		t.Fatal("Started after StopAll succeeded")
	}
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitLimit):
		t.Fatal("StopAll did not return after the start finished")
	}
	if !p.isStopped() {
		t.Error("the process that started late was not stopped before StopAll returned")
	}
}

func TestStopAllBoundedByContext(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"viz": 2})
	r := mustReserve(t, m, "viz")
	ss := mustClaim(t, m, r.Token)
	p := newHangingProc()
	mustStart(t, ss, p)
	tun := &fakeTun{}
	if err := ss.Attach(tun, ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := m.StopAll(ctx, 1001, "")
	wantErr(t, "StopAll with a service that does not stop", err, context.DeadlineExceeded)
	if isDone(ss) {
		t.Error("the session ended although its service did not stop")
	}
	// Release is bounded the same way.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	rec, err := m.Release(ctx2, r.Token, 1000, "")
	wantErr(t, "Release of a session that does not stop", err, context.DeadlineExceeded)
	if rec.Token != r.Token || rec.State != string(Stopping) {
		t.Errorf("Release returned %+v, want the stopping record", rec)
	}
	close(p.hang)
	waitDone(t, ss)
	if err := m.StopAll(bg(t), 1001, ""); err != nil {
		t.Errorf("StopAll once every service stopped: %v", err)
	}
}
