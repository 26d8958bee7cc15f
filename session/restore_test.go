package session

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"wsgateway/reservation"
)

func TestRestore(t *testing.T) {
	m, clk, rec := newManager(t, map[string]int{"viz": 2, "desk": 1})
	now := clk.Now()
	mk := func(tok, svc string, idx int, st State, expires time.Duration) reservation.Reservation {
		return reservation.Reservation{Token: tok, Service: svc, Index: idx, State: string(st), Owner: "own-" + tok,
			Created: now.Add(-time.Minute), Expires: now.Add(expires), Connects: 3, LastClaim: now.Add(-time.Second),
			Options: map[string]string{"k": tok}}
	}
	in := []reservation.Reservation{
		mk("keep-viz1", "viz", 1, Reserved, time.Second),
		mk("keep-desk", "desk", 0, Reserved, time.Nanosecond),
		mk("expired", "viz", 0, Reserved, 0),
		mk("expired-long-ago", "viz", 0, Reserved, -time.Hour),
		mk("unknown-service", "nope", 0, Reserved, time.Hour),
		mk("negative-index", "viz", -1, Reserved, time.Hour),
		mk("index-too-high", "viz", 2, Reserved, time.Hour),
		mk("slot-taken", "viz", 1, Reserved, time.Hour),
		mk("was-running", "viz", 0, Running, time.Hour),
		mk("was-detached", "gone", 0, Detached, time.Hour),
	}
	restored, interrupted := m.Restore(in)

	var got []string
	for _, r := range restored {
		got = append(got, r.Token)
		if r.State != string(Reserved) || r.Connects != 0 || !r.LastClaim.IsZero() {
			t.Errorf("restored %s: %+v, want reserved with no claim", r.Token, r)
		}
		if r.Owner != "own-"+r.Token || r.Options["k"] != r.Token || !r.Created.Equal(now.Add(-time.Minute)) {
			t.Errorf("restored %s lost its owner, options or creation: %+v", r.Token, r)
		}
	}
	sort.Strings(got)
	if fmt.Sprint(got) != "[keep-desk keep-viz1]" {
		t.Errorf("restored %v, want keep-desk and keep-viz1", got)
	}
	got = nil
	for _, r := range interrupted {
		got = append(got, r.Token)
	}
	if fmt.Sprint(got) != "[was-running was-detached]" {
		t.Errorf("interrupted %v, want was-running and was-detached", got)
	}

	// The restored tokens hold their slots and work.
	svcs, infos := m.Snapshot()
	if fmt.Sprint(svcs) != "[{desk 1 0} {viz 2 1}]" || len(infos) != 2 {
		t.Errorf("after Restore: %v, %d sessions", svcs, len(infos))
	}
	if r := mustReserve(t, m, "viz"); r.Index != 0 {
		t.Errorf("a new reservation got index %d, want the free 0", r.Index)
	}
	ss := mustClaim(t, m, "keep-viz1")
	if ss.Index() != 1 || ss.record().Owner != "own-keep-viz1" {
		t.Errorf("restored session: index %d owner %q", ss.Index(), ss.record().Owner)
	}

	// What was not restored is forgotten by the store; what was restored
	// is not written again; the interrupted are told.
	m.Sync()
	deleted := map[string]int{}
	for _, e := range rec.entries() {
		switch {
		case e.kind == "delete":
			deleted[e.tok]++
		case e.kind == "save" && e.tok == "keep-desk":
			t.Errorf("a restored reservation was saved again")
		}
	}
	for _, tok := range []string{"expired", "expired-long-ago", "unknown-service", "negative-index", "index-too-high",
		"slot-taken", "was-running", "was-detached"} {
		if deleted[tok] != 1 {
			t.Errorf("%s deleted %d times, want once", tok, deleted[tok])
		}
	}
	if deleted["keep-desk"]+deleted["keep-viz1"] != 0 {
		t.Errorf("a restored reservation was deleted from the store")
	}
	var events []string
	for _, e := range rec.entries() {
		if e.kind == "session.state" && e.state == "interrupted" {
			events = append(events, fmt.Sprintf("%s %s %v %v", e.owner, e.data["service"], e.data["index"], e.data["token_prefix"]))
		}
	}
	want := []string{"own-was-running viz 0 was-runn", "own-was-detached gone 0 was-deta"}
	if fmt.Sprint(events) != fmt.Sprint(want) {
		t.Errorf("interrupted events %v, want %v", events, want)
	}
}
