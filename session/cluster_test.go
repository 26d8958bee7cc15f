package session

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"wsgateway/reservation"
)

// Restore with Resume: a claimed session whose service outlived the
// previous gateway comes back detached with its process, its slot held
// and its token claimable for the grace; one whose service is gone (nil)
// is interrupted; one with no slot left has its process stopped.
func TestRestoreResumes(t *testing.T) {
	procs := map[string]*fakeProc{"back": newProc(), "back-no-slot": newProc()}
	var asked []string
	m, clk, rec := newManager(t, map[string]int{"viz": 2})
	m.cfg.Resume = func(r reservation.Reservation) (Process, time.Duration) {
		asked = append(asked, r.Token)
		if p := procs[r.Token]; p != nil {
			return p, 40 * time.Second
		}
		return nil, 0
	}
	now := clk.Now()
	mk := func(tok string, idx int, st State) reservation.Reservation {
		return reservation.Reservation{Token: tok, Service: "viz", Index: idx, State: string(st), Owner: "o",
			Created: now.Add(-time.Minute), Expires: now.Add(time.Hour)}
	}
	restored, interrupted := m.Restore([]reservation.Reservation{
		mk("back", 0, Running),
		mk("unused", 1, Reserved),
		mk("gone", 0, Detached),
		mk("back-no-slot", 1, Running),
	})
	sort.Strings(asked)
	if fmt.Sprint(asked) != "[back back-no-slot gone]" {
		t.Fatalf("Resume asked about %v, want the claimed sessions only", asked)
	}
	var got []string
	for _, r := range restored {
		got = append(got, r.Token+":"+r.State)
	}
	sort.Strings(got)
	if fmt.Sprint(got) != "[back:detached unused:reserved]" {
		t.Fatalf("restored %v", got)
	}
	got = nil
	for _, r := range interrupted {
		got = append(got, r.Token)
	}
	sort.Strings(got)
	if fmt.Sprint(got) != "[back-no-slot gone]" {
		t.Fatalf("interrupted %v", got)
	}
	pollUntil(t, "the process without a slot to be stopped", procs["back-no-slot"].isStopped)
	if procs["back"].isStopped() {
		t.Fatal("the resumed process was stopped")
	}
	if freeSlots(t, m, "viz") != 0 {
		t.Fatalf("free slots %d, want 0", freeSlots(t, m, "viz"))
	}
	m.Sync()
	if ev := rec.of("back", "session.state"); len(ev) == 0 || ev[len(ev)-1] != "session.state detached" {
		t.Fatalf("events of back: %v", ev)
	}
	// Its token reattaches to the same process.
	ss := mustClaim(t, m, "back")
	if ss.Process() != Process(procs["back"]) {
		t.Fatal("the reclaimed session lost its process")
	}
	ss.Detach(nil, 0)
	pollUntil(t, "the resumed process to stop once detached for good", procs["back"].isStopped)

	// Unclaimed past its grace, a resumed session is stopped by Sweep.
	m2, clk2, _ := newManager(t, map[string]int{"viz": 1})
	p2 := newProc()
	m2.cfg.Resume = func(reservation.Reservation) (Process, time.Duration) { return p2, 40 * time.Second }
	m2.Restore([]reservation.Reservation{mk("late", 0, Running)})
	clk2.Advance(39 * time.Second)
	if gone := m2.Sweep(); len(gone) != 0 {
		t.Fatalf("swept %v before the grace", gone)
	}
	clk2.Advance(2 * time.Second)
	if gone := m2.Sweep(); len(gone) != 1 {
		t.Fatalf("swept %v after the grace, want the resumed session", gone)
	}
	pollUntil(t, "the late process to stop", p2.isStopped)
}

// Note publishes the session's current state with the detail, keeps the
// detail for the status, and says nothing once the session stops.
func TestNote(t *testing.T) {
	m, _, rec := newManager(t, map[string]int{"viz": 1})
	r := mustReserve(t, m, "viz")
	ss := mustClaim(t, m, r.Token)
	if _, err := ss.BeginStart(); err != nil {
		t.Fatal(err)
	}
	detail := map[string]any{"job_id": "7", "job_state": "PENDING", "reason": "Resources", "position": 2}
	ss.Note(detail)
	detail["position"] = 99 // the caller's map is not kept
	m.Sync()
	evs := stateEvents(rec)
	last := evs[len(evs)-1]
	if last.data["state"] != "starting" || last.data["reason"] != "Resources" || last.data["position"] != 2 ||
		last.data["token_prefix"] != reservation.TokenPrefix(r.Token) || last.data["service"] != "viz" {
		t.Fatalf("note event %v", last.data)
	}
	_, infos := m.Snapshot()
	if len(infos) != 1 || infos[0].Detail["position"] != 2 || infos[0].Detail["job_id"] != "7" {
		t.Fatalf("status detail %v", infos[0].Detail)
	}
	ss.StartFailed("no")
	m.Sync() // StartFailed's own events are counted before the Note
	n := len(stateEvents(rec))
	ss.Note(map[string]any{"job_state": "RUNNING"})
	m.Sync()
	if len(stateEvents(rec)) != n {
		t.Fatal("Note published after the session ended")
	}
}

func stateEvents(r *recorder) []entry {
	var out []entry
	for _, e := range r.entries() {
		if e.kind == "session.state" {
			out = append(out, e)
		}
	}
	return out
}

func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
