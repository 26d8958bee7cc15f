package session

import (
	"fmt"
	"testing"
	"time"

	"wsgateway/reservation"
)

func TestCheckSaysWhatClaimWouldWithoutClaiming(t *testing.T) {
	m, clk, rec := newManager(t, map[string]int{"s": 3})
	r := mustReserve(t, m, "s")
	got, err := m.Check(r.Token)
	if err != nil || got.Token != r.Token || got.State != string(Reserved) {
		t.Fatalf("fresh: %+v, %v", got, err)
	}
	if g, _ := m.Get(r.Token); g.State != string(Reserved) || g.Connects != 0 {
		t.Fatalf("Check claimed the token: %+v", g)
	}
	m.Sync()
	if got := rec.of(r.Token, "save", "session.state"); fmt.Sprint(got) != "[save reserved]" {
		t.Errorf("Check told %v, want nothing beyond the reservation", got)
	}
	ss := mustClaim(t, m, r.Token)
	_, err = m.Check(r.Token)
	wantErr(t, "claimed", err, reservation.ErrBusy)
	_, err = m.Check("nope")
	wantErr(t, "unknown", err, reservation.ErrUnknownToken)

	// A detached session may be claimed again.
	p := newHangingProc()
	defer close(p.hang)
	mustStart(t, ss, p)
	ss.Detach(nil, time.Minute)
	if got, err := m.Check(r.Token); err != nil || got.State != string(Detached) {
		t.Fatalf("detached: %+v, %v", got, err)
	}

	r2 := mustReserve(t, m, "s")
	clk.Advance(testTimeout)
	_, err = m.Check(r2.Token)
	wantErr(t, "expired", err, reservation.ErrExpiredToken)
	// Check reclaims nothing: Claim or Sweep does.
	if free := freeSlots(t, m, "s"); free != 1 {
		t.Errorf("free after Check of an expired token = %d, want 1", free)
	}

	ss.Stop(1000, "")
	_, err = m.Check(r.Token)
	wantErr(t, "stopping", err, reservation.ErrEnded)
}
