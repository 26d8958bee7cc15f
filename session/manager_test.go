package session

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"wsgateway/reservation"
)

func TestReserveHandsOutUniqueIndexes(t *testing.T) {
	m, clk, _ := newManager(t, map[string]int{"viz": 3, "desk": 1})

	idx := map[int]bool{}
	toks := map[string]bool{}
	for i := 0; i < 3; i++ {
		opts := map[string]string{"geometry": fmt.Sprintf("%dx100", i)}
		r, err := m.Reserve("viz", opts)
		if err != nil {
			t.Fatalf("Reserve #%d: %v", i, err)
		}
		if r.Index != i {
			t.Fatalf("Reserve #%d: index %d, want the lowest free index %d", i, r.Index, i)
		}
		if idx[r.Index] {
			t.Fatalf("Reserve #%d: index %d handed out twice", i, r.Index)
		}
		idx[r.Index] = true
		if toks[r.Token] {
			t.Fatalf("Reserve #%d: token reused", i)
		}
		toks[r.Token] = true
		if r.Service != "viz" || r.State != string(Reserved) || r.Connects != 0 || r.Owner != "" {
			t.Errorf("Reserve #%d = %+v, want service viz, state reserved, 0 connects, no owner", i, r)
		}
		if !r.Created.Equal(clk.Now()) || !r.Expires.Equal(clk.Now().Add(testTimeout)) {
			t.Errorf("Reserve #%d: created %v expires %v, want %v and +%v", i, r.Created, r.Expires, clk.Now(), testTimeout)
		}
		if r.Options["geometry"] != opts["geometry"] {
			t.Errorf("Reserve #%d: options %v, want %v", i, r.Options, opts)
		}
	}

	_, err := m.Reserve("viz", nil)
	wantErr(t, "Reserve on a full service", err, reservation.ErrNoSlot)
	if !strings.Contains(err.Error(), "viz") || strings.Contains(err.Error(), "waiting") {
		t.Errorf("ErrNoSlot message %q does not name the service (or speaks of a queue)", err)
	}

	// Another service has its own slots.
	d := mustReserve(t, m, "desk")
	if d.Index != 0 {
		t.Errorf("first desk index = %d, want 0", d.Index)
	}
	_, err = m.Reserve("desk", nil)
	wantErr(t, "second desk Reserve", err, reservation.ErrNoSlot)

	_, err = m.Reserve("nope", nil)
	wantErr(t, "Reserve of an unknown service", err, reservation.ErrUnknownService)
	if !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("ErrUnknownService message %q does not name the service", err)
	}
	if errors.Is(err, reservation.ErrNoSlot) {
		t.Errorf("unknown service also matches ErrNoSlot: %v", err)
	}
}

func TestReserveZeroCountService(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"none": 0})
	_, err := m.Reserve("none", nil)
	wantErr(t, "Reserve with count 0", err, reservation.ErrNoSlot)
}

func TestReserveForPerUserLimit(t *testing.T) {
	tests := []struct {
		name    string
		owner   string
		perUser int
		held    int // reservations owner holds already
		wantErr error
	}{
		{"under the limit", "ann", 2, 1, nil},
		{"at the limit", "ann", 2, 2, reservation.ErrUserLimit},
		{"limit one, none held", "ann", 1, 0, nil},
		{"limit one, one held", "ann", 1, 1, reservation.ErrUserLimit},
		{"no limit", "ann", 0, 3, nil},
		{"anonymous is not limited", "", 1, 3, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _, _ := newManager(t, map[string]int{"viz": 8, "desk": 8})
			// Another owner's reservations do not count.
			if _, err := m.ReserveFor("viz", "bob", 1, nil); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < tt.held; i++ {
				// Reservations of every service count.
				svc := []string{"viz", "desk"}[i%2]
				if _, err := m.ReserveFor(svc, tt.owner, 0, nil); err != nil {
					t.Fatal(err)
				}
			}
			r, err := m.ReserveFor("viz", tt.owner, tt.perUser, nil)
			wantErr(t, "ReserveFor", err, tt.wantErr)
			if tt.wantErr != nil {
				if !strings.Contains(err.Error(), tt.owner) {
					t.Errorf("error %q does not name the owner", err)
				}
				return
			}
			if r.Owner != tt.owner {
				t.Errorf("owner = %q, want %q", r.Owner, tt.owner)
			}
		})
	}
}

func TestReleaseFreesSlotAndIndexIsReused(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"viz": 3})
	var rs [3]reservation.Reservation
	for i := range rs {
		rs[i] = mustReserve(t, m, "viz")
	}
	if got := freeSlots(t, m, "viz"); got != 0 {
		t.Fatalf("free = %d, want 0", got)
	}
	mid := rs[1]
	mustClaim(t, m, mid.Token)

	ended, err := m.Release(bg(t), mid.Token, 1000, "released")
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	if ended.Token != mid.Token || ended.Index != 1 || ended.State != string(Claimed) {
		t.Errorf("Release returned %+v, want the claimed reservation at index 1", ended)
	}
	if got := freeSlots(t, m, "viz"); got != 1 {
		t.Fatalf("free after Release = %d, want 1", got)
	}

	_, err = m.Release(bg(t), mid.Token, 1000, "again")
	wantErr(t, "second Release", err, reservation.ErrUnknownToken)
	_, err = m.Claim(mid.Token, 0)
	wantErr(t, "Claim after Release", err, reservation.ErrUnknownToken)
	_, err = m.Get(mid.Token)
	wantErr(t, "Get after Release", err, reservation.ErrUnknownToken)
	_, err = m.lookup(mid.Token)
	wantErr(t, "Lookup after Release", err, reservation.ErrUnknownToken)

	again := mustReserve(t, m, "viz")
	if again.Index != 1 {
		t.Errorf("index after Release = %d, want the freed index 1", again.Index)
	}
	if again.Token == mid.Token {
		t.Errorf("a new reservation reused the ended token")
	}
	_, err = m.Reserve("viz", nil)
	wantErr(t, "Reserve when full again", err, reservation.ErrNoSlot)
}

func TestClaim(t *testing.T) {
	m, clk, _ := newManager(t, map[string]int{"viz": 2})
	r := mustReserve(t, m, "viz")
	clk.Advance(time.Second)

	ss := mustClaim(t, m, r.Token)
	c := ss.record()
	if c.State != string(Claimed) || c.Connects != 1 || !c.LastClaim.Equal(clk.Now()) {
		t.Errorf("Claim = %+v, want claimed, 1 connect, last claim %v", c, clk.Now())
	}
	if g, err := m.Get(r.Token); err != nil || g.State != string(Claimed) {
		t.Errorf("Get after Claim = %+v, %v; want claimed", g, err)
	}
	if l, err := m.lookup(r.Token); err != nil || l != ss {
		t.Errorf("Lookup after Claim = %p, %v; want the claimed session %p", l, err, ss)
	}

	_, err := m.Claim(r.Token, 0)
	wantErr(t, "second Claim", err, reservation.ErrBusy)

	for _, tok := range []string{"", "not-a-token", r.Token[:35], r.Token + "0", strings.ToUpper(r.Token)} {
		_, err := m.Claim(tok, 0)
		wantErr(t, fmt.Sprintf("Claim(%q)", tok), err, reservation.ErrUnknownToken)
	}

	// A claimed reservation is never reclaimed, however long it runs.
	clk.Advance(10 * testTimeout)
	if gone := m.Sweep(); len(gone) != 0 {
		t.Errorf("Sweep reclaimed a claimed reservation: %+v", gone)
	}
	_, err = m.Claim(r.Token, 0)
	wantErr(t, "Claim of a long-claimed token", err, reservation.ErrBusy)
}

func TestClaimAtExpiry(t *testing.T) {
	tests := []struct {
		name    string
		elapsed time.Duration
		wantErr error
	}{
		{"just in time", testTimeout - time.Millisecond, nil},
		{"at the deadline", testTimeout, reservation.ErrExpiredToken},
		{"long after", 5 * testTimeout, reservation.ErrExpiredToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, clk, rec := newManager(t, map[string]int{"viz": 1})
			r := mustReserve(t, m, "viz")
			clk.Advance(tt.elapsed)
			_, err := m.Claim(r.Token, 0)
			wantErr(t, "Claim", err, tt.wantErr)
			if tt.wantErr == nil {
				return
			}
			// The slot is free and the token stays known as expired.
			if got := freeSlots(t, m, "viz"); got != 1 {
				t.Errorf("free after expired Claim = %d, want 1", got)
			}
			_, err = m.Claim(r.Token, 0)
			wantErr(t, "Claim again", err, reservation.ErrExpiredToken)
			_, err = m.Get(r.Token)
			wantErr(t, "Get", err, reservation.ErrExpiredToken)
			_, err = m.Check(r.Token)
			wantErr(t, "Check", err, reservation.ErrExpiredToken)
			_, err = m.Release(bg(t), r.Token, 0, "")
			wantErr(t, "Release", err, reservation.ErrExpiredToken)
			m.Sync()
			if got := rec.of(r.Token, "save", "delete", "session.state"); fmt.Sprint(got) != "[save reserved delete]" {
				t.Errorf("told %v, want the record saved then deleted and no session event", got)
			}
		})
	}
}

func TestSweepReclaimsUnusedReservations(t *testing.T) {
	m, clk, rec := newManager(t, map[string]int{"viz": 3})

	unused := mustReserve(t, m, "viz")
	used := mustReserve(t, m, "viz")
	mustClaim(t, m, used.Token)
	clk.Advance(testTimeout / 2)
	later := mustReserve(t, m, "viz") // expires half a timeout after the others

	if gone := m.Sweep(); len(gone) != 0 {
		t.Fatalf("Sweep before any deadline reclaimed %+v", gone)
	}

	clk.Advance(testTimeout / 2)
	gone := m.Sweep()
	if len(gone) != 1 || gone[0].Token != unused.Token || gone[0].State != string(Reserved) {
		t.Fatalf("Sweep = %+v, want only the unused reservation", gone)
	}
	m.Sync()
	if got := rec.of(unused.Token, "reservation.expired"); fmt.Sprint(got) != "[reservation.expired reserved]" {
		t.Errorf("expired events %v, want one for the unused reservation", got)
	}
	if got := freeSlots(t, m, "viz"); got != 1 {
		t.Errorf("free after Sweep = %d, want 1", got)
	}
	_, err := m.Claim(unused.Token, 0)
	wantErr(t, "Claim of a swept token", err, reservation.ErrExpiredToken)
	_, err = m.Release(bg(t), unused.Token, 0, "")
	wantErr(t, "Release of a swept token", err, reservation.ErrExpiredToken)
	if _, err := m.Get(later.Token); err != nil {
		t.Errorf("the later reservation was reclaimed early: %v", err)
	}
	if gone := m.Sweep(); len(gone) != 0 {
		t.Errorf("second Sweep reclaimed %+v", gone)
	}

	clk.Advance(testTimeout / 2)
	gone = m.Sweep()
	if len(gone) != 1 || gone[0].Token != later.Token {
		t.Fatalf("third Sweep = %+v, want the later reservation", gone)
	}
	_, err = m.Claim(later.Token, 0)
	wantErr(t, "Claim of the later token", err, reservation.ErrExpiredToken)
	if _, err := m.Get(used.Token); err != nil {
		t.Errorf("the claimed reservation was reclaimed: %v", err)
	}
	m.Sync()
	var expired int
	for _, e := range rec.entries() {
		if e.kind == "reservation.expired" {
			expired++
		}
	}
	if expired != 2 {
		t.Errorf("%d reservation.expired events, want 2", expired)
	}
}

func TestDetachGraceThenSweepStops(t *testing.T) {
	m, clk, rec := newManager(t, map[string]int{"viz": 1})
	ss, p, tun := mustRun(t, m, "viz")
	tok := ss.Token()

	const grace = 30 * time.Second
	ss.Detach(tun, grace)
	g, err := m.Get(tok)
	if err != nil || g.State != string(Detached) || !g.Expires.Equal(clk.Now().Add(grace)) {
		t.Fatalf("after Detach: %+v, %v; want detached until now+%v", g, err, grace)
	}
	if p.isStopped() {
		t.Fatal("Detach with a grace stopped the service")
	}

	// Reconnect within the grace.
	clk.Advance(grace / 2)
	again := mustClaim(t, m, tok)
	if again != ss {
		t.Fatalf("reconnect Claim returned another session")
	}
	if c := ss.record(); c.State != string(Claimed) || c.Connects != 2 {
		t.Errorf("reconnect Claim = %+v, want claimed with 2 connects", c)
	}
	if ss.Process() == nil {
		t.Errorf("a reconnection needs a start")
	}
	tun2 := &fakeTun{}
	if err := ss.Attach(tun2, "127.0.0.1:2"); err != nil {
		t.Fatalf("reconnect Attach: %v", err)
	}
	ss.Detach(tun2, grace)
	if st := ss.State(); st != Detached {
		t.Fatalf("second Detach: state %s, want detached", st)
	}

	clk.Advance(grace - time.Millisecond)
	if gone := m.Sweep(); len(gone) != 0 {
		t.Fatalf("Sweep within grace = %+v", gone)
	}
	clk.Advance(time.Millisecond)
	gone := m.Sweep()
	if len(gone) != 1 || gone[0].Token != tok || gone[0].State != string(Detached) {
		t.Fatalf("Sweep after grace = %+v, want the token as it was, detached", gone)
	}
	waitDone(t, ss)
	if !p.isStopped() {
		t.Errorf("the service was not stopped")
	}
	if len(tun.closed())+len(tun2.closed()) != 0 {
		t.Errorf("detached tunnels were closed again: %v %v", tun.closed(), tun2.closed())
	}
	m.Sync()
	if got := rec.of(tok, "reservation.expired"); fmt.Sprint(got) != "[reservation.expired detached]" {
		t.Errorf("expired events %v, want one, detached", got)
	}
	if got := freeSlots(t, m, "viz"); got != 1 {
		t.Errorf("free after the stop = %d, want 1", got)
	}
	_, err = m.Claim(tok, 0)
	wantErr(t, "Claim after the end", err, reservation.ErrUnknownToken)
	if gone := m.Sweep(); len(gone) != 0 {
		t.Errorf("Sweep reported an ended session again: %+v", gone)
	}
}

func TestStoppingHoldsTheSlot(t *testing.T) {
	m, clk, _ := newManager(t, map[string]int{"viz": 1})
	r := mustReserve(t, m, "viz")
	ss := mustClaim(t, m, r.Token)
	p := newHangingProc()
	mustStart(t, ss, p)
	ss.Detach(nil, time.Minute)

	ss.Stop(1001, "going away")
	ss.Stop(1000, "twice") // a second stop changes nothing
	if st := ss.State(); st != Stopping {
		t.Fatalf("state %s, want stopping while the service stops", st)
	}
	g, err := m.Get(r.Token)
	if err != nil || g.State != string(Stopping) {
		t.Errorf("Get = %+v, %v; want stopping", g, err)
	}
	_, err = m.Claim(r.Token, 0)
	wantErr(t, "Claim of a stopping token", err, reservation.ErrEnded)
	ss.Detach(nil, time.Minute)
	if st := ss.State(); st != Stopping {
		t.Errorf("Detach moved a stopping session to %s", st)
	}

	// A stopping session is not reclaimed by Sweep: its slot frees when
	// its service has stopped.
	clk.Advance(2 * testTimeout)
	if gone := m.Sweep(); len(gone) != 0 {
		t.Errorf("Sweep reclaimed a stopping session: %+v", gone)
	}
	if got := freeSlots(t, m, "viz"); got != 0 {
		t.Errorf("free while stopping = %d, want 0", got)
	}
	_, err = m.Reserve("viz", nil)
	wantErr(t, "Reserve while stopping", err, reservation.ErrNoSlot)
	close(p.hang)
	waitDone(t, ss)
	if got := freeSlots(t, m, "viz"); got != 1 {
		t.Errorf("free after the stop = %d, want 1", got)
	}
	if n := p.stops.Load(); n != 1 {
		t.Errorf("Stop called %d times, want 1", n)
	}
}

func TestSnapshotAndTokens(t *testing.T) {
	m, clk, _ := newManager(t, map[string]int{"b": 2, "a": 3, "c": 1})
	a0 := mustReserve(t, m, "a")
	a1 := mustReserve(t, m, "a")
	b0 := mustReserve(t, m, "b")
	clk.Advance(time.Second)
	claimedAt := clk.Now()
	ss := mustClaim(t, m, a1.Token)
	p := newProc()
	mustStart(t, ss, p)
	tun := &fakeTun{in: 5, out: 7}
	if err := ss.Attach(tun, "127.0.0.1:9"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Release(bg(t), a0.Token, 0, ""); err != nil {
		t.Fatal(err)
	}
	a0b := mustReserve(t, m, "a") // takes index 0 again

	svcs, res := m.Snapshot()
	wantSvcs := []ServiceSlots{
		{Name: "a", Count: 3, Free: 1},
		{Name: "b", Count: 2, Free: 1},
		{Name: "c", Count: 1, Free: 1},
	}
	if fmt.Sprint(svcs) != fmt.Sprint(wantSvcs) {
		t.Errorf("Snapshot services = %+v, want %+v", svcs, wantSvcs)
	}
	type key struct {
		svc string
		idx int
		tok string
		st  string
	}
	var got []key
	for _, r := range res {
		got = append(got, key{r.Service, r.Index, r.Token, r.State})
	}
	want := []key{
		{"a", 0, a0b.Token, string(Reserved)},
		{"a", 1, a1.Token, string(Running)},
		{"b", 0, b0.Token, string(Reserved)},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Snapshot sessions = %v, want %v", got, want)
	}
	run := res[1]
	if run.Proc != p || run.Remote != "127.0.0.1:9" || !run.Since.Equal(claimedAt) || !run.Tunnel ||
		run.BytesIn != 5 || run.BytesOut != 7 {
		t.Errorf("running session info = %+v", run)
	}
	if res[0].Proc != nil || res[0].Tunnel || !res[0].Since.IsZero() || res[0].Remote != "" {
		t.Errorf("unused reservation info = %+v", res[0])
	}

	// Bytes of earlier tunnels add up.
	ss.Detach(tun, time.Minute)
	mustClaim(t, m, a1.Token)
	if err := ss.Attach(&fakeTun{in: 100, out: 1000}, "127.0.0.1:10"); err != nil {
		t.Fatal(err)
	}
	_, res = m.Snapshot()
	if r := res[1]; r.BytesIn != 105 || r.BytesOut != 1007 || r.Remote != "127.0.0.1:10" || !r.Since.Equal(claimedAt) {
		t.Errorf("after a reconnection: %+v, want bytes 105/1007 from 127.0.0.1:10 since the first claim", r)
	}
	ss.Detach(nil, time.Minute) // not its tunnel: the bytes are not counted twice
	_, res = m.Snapshot()
	if r := res[1]; r.BytesIn != 105 || r.BytesOut != 1007 {
		t.Errorf("after Detach(nil): bytes %d/%d, want 105/1007", r.BytesIn, r.BytesOut)
	}

	toks := m.tokens()
	if len(toks) != 3 {
		t.Fatalf("Tokens = %v, want 3 tokens", toks)
	}
	live := map[string]bool{a0b.Token: true, a1.Token: true, b0.Token: true}
	for _, tok := range toks {
		if !live[tok] {
			t.Errorf("Tokens has %s, not a live token", reservation.TokenPrefix(tok))
		}
	}

	empty := New(Config{})
	defer empty.Close()
	svcs, res = empty.Snapshot()
	if len(svcs) != 0 || len(res) != 0 || len(empty.tokens()) != 0 {
		t.Errorf("empty manager: %+v %+v %v", svcs, res, empty.tokens())
	}
}

func TestReturnedReservationsAreCopies(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"viz": 2})
	r := mustReserve(t, m, "viz")
	tok := r.Token
	r.State = string(Stopping)
	r.Index = 99
	r.Token = "changed"
	g, err := m.Get(tok)
	if err != nil {
		t.Fatal(err)
	}
	if g.State != string(Reserved) || g.Index != 0 {
		t.Errorf("changing a returned value changed the manager: %+v", g)
	}
	_, res := m.Snapshot()
	res[0].State = string(Running)
	if g2, _ := m.Get(g.Token); g2.State != string(Reserved) {
		t.Errorf("changing a snapshot changed the manager: %+v", g2)
	}
}

// expireOne reserves a slot and lets it expire through Claim, so that
// tokens expire in a known order.
func expireOne(t *testing.T, m *Manager, clk *fakeClock) string {
	t.Helper()
	r := mustReserve(t, m, "viz")
	clk.Advance(testTimeout)
	if _, err := m.Claim(r.Token, 0); !errors.Is(err, reservation.ErrExpiredToken) {
		t.Fatalf("Claim after timeout: %v, want ErrExpiredToken", err)
	}
	return r.Token
}

func TestExpiredMemoryIsBounded(t *testing.T) {
	clk := newFakeClock()
	m := New(Config{Counts: map[string]int{"viz": 1}, Timeout: testTimeout, Now: clk.Now, ExpiredMemory: 2})
	defer m.Close()
	t1 := expireOne(t, m, clk)
	t2 := expireOne(t, m, clk)
	_, err := m.Claim(t1, 0)
	wantErr(t, "oldest of two", err, reservation.ErrExpiredToken)
	t3 := expireOne(t, m, clk)

	_, err = m.Claim(t1, 0)
	wantErr(t, "forgotten expired token", err, reservation.ErrUnknownToken)
	for _, tok := range []string{t2, t3} {
		_, err := m.Claim(tok, 0)
		wantErr(t, "remembered expired token", err, reservation.ErrExpiredToken)
	}

	// Tokens reclaimed by Sweep count against the same memory.
	r := mustReserve(t, m, "viz")
	clk.Advance(testTimeout)
	if gone := m.Sweep(); len(gone) != 1 {
		t.Fatalf("Sweep = %+v", gone)
	}
	_, err = m.Claim(t2, 0)
	wantErr(t, "expired token pushed out by Sweep", err, reservation.ErrUnknownToken)
	for _, tok := range []string{t3, r.Token} {
		_, err := m.Claim(tok, 0)
		wantErr(t, "remembered expired token", err, reservation.ErrExpiredToken)
	}
}

func TestExpiredMemoryDefault(t *testing.T) {
	const def = 4096
	for _, mem := range []int{0, -1} {
		t.Run(fmt.Sprint(mem), func(t *testing.T) {
			clk := newFakeClock()
			m := New(Config{Counts: map[string]int{"viz": 1}, Timeout: testTimeout, Now: clk.Now, ExpiredMemory: mem})
			defer m.Close()
			toks := make([]string, 0, def+1)
			for i := 0; i < def+1; i++ {
				toks = append(toks, expireOne(t, m, clk))
			}
			_, err := m.Claim(toks[0], 0)
			wantErr(t, "token beyond the default memory", err, reservation.ErrUnknownToken)
			_, err = m.Claim(toks[1], 0)
			wantErr(t, "oldest remembered token", err, reservation.ErrExpiredToken)
			_, err = m.Claim(toks[def], 0)
			wantErr(t, "newest token", err, reservation.ErrExpiredToken)
		})
	}
}

func TestDefaultClockIsRealTime(t *testing.T) {
	m := New(Config{Counts: map[string]int{"viz": 1}, Timeout: time.Hour})
	defer m.Close()
	before := time.Now()
	r := mustReserve(t, m, "viz")
	after := time.Now()
	if r.Created.Before(before) || r.Created.After(after) {
		t.Errorf("Created %v not between %v and %v", r.Created, before, after)
	}
	mustClaim(t, m, r.Token)
}

func TestStopTimeoutBoundsEachStop(t *testing.T) {
	tests := []struct {
		name string
		cfg  time.Duration
		want time.Duration
	}{
		{"default", 0, 30 * time.Second},
		{"negative means default", -time.Second, 30 * time.Second},
		{"set", 5 * time.Minute, 5 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := New(Config{Counts: map[string]int{"viz": 1}, Timeout: time.Hour, StopTimeout: tt.cfg})
			defer m.Close()
			ss, p, _ := mustRun(t, m, "viz")
			before := time.Now()
			ss.Stop(1000, "")
			waitDone(t, ss)
			p.mu.Lock()
			dl, ok := p.deadline, p.hasDL
			p.mu.Unlock()
			if !ok {
				t.Fatal("Stop's context has no deadline")
			}
			// The deadline is StopTimeout after the stop began (plus
			// however slow this machine is).
			if left := dl.Sub(before); left < tt.want || left > tt.want+waitLimit {
				t.Errorf("Stop's deadline is %v after the stop, want %v", left, tt.want)
			}
		})
	}
}

func TestConcurrentReserveReleaseNeverCollides(t *testing.T) {
	counts := map[string]int{"a": 4, "b": 2, "c": 7}
	m := New(Config{Counts: counts, Timeout: time.Hour})
	defer m.Close()
	holders := map[string][]atomic.Int32{}
	for name, n := range counts {
		holders[name] = make([]atomic.Int32, n)
	}
	names := []string{"a", "b", "c"}

	const workers = 32
	const rounds = 200
	var wg sync.WaitGroup
	var got, full atomic.Int64
	stop := make(chan struct{})

	// Readers running alongside: Sweep, Snapshot, Tokens, Get.
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			m.Sweep()
			svcs, res := m.Snapshot()
			for _, s := range svcs {
				if s.Free < 0 || s.Free > s.Count {
					t.Errorf("snapshot free %d of %d", s.Free, s.Count)
				}
			}
			for _, r := range res {
				_, _ = m.Get(r.Token)
			}
			_ = m.tokens()
			runtime.Gosched()
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				svc := names[(w+i)%len(names)]
				r, err := m.Reserve(svc, nil)
				if errors.Is(err, reservation.ErrNoSlot) {
					full.Add(1)
					runtime.Gosched()
					continue
				}
				if err != nil {
					t.Errorf("Reserve(%s): %v", svc, err)
					return
				}
				if r.Index < 0 || r.Index >= counts[svc] {
					t.Errorf("%s index %d out of range", svc, r.Index)
					return
				}
				h := &holders[svc][r.Index]
				if !h.CompareAndSwap(0, 1) {
					t.Errorf("%s index %d handed to two live reservations", svc, r.Index)
					return
				}
				got.Add(1)
				ss, err := m.Claim(r.Token, 0)
				if err != nil {
					t.Errorf("Claim: %v", err)
					return
				}
				if _, err := ss.BeginStart(); err != nil {
					t.Errorf("BeginStart: %v", err)
					return
				}
				if err := ss.Started(newProc()); err != nil {
					t.Errorf("Started: %v", err)
					return
				}
				tun := &fakeTun{}
				if err := ss.Attach(tun, ""); err != nil {
					t.Errorf("Attach: %v", err)
					return
				}
				if i%3 == 0 {
					// Take the detached/reconnect path too.
					ss.Detach(tun, time.Hour)
					if _, err := m.Claim(r.Token, 0); err != nil {
						t.Errorf("reconnect Claim: %v", err)
						return
					}
					if err := ss.Attach(tun, ""); err != nil {
						t.Errorf("reconnect Attach: %v", err)
						return
					}
				}
				runtime.Gosched()
				// Release our mark before the slot frees, so that the
				// next holder never sees it.
				h.Store(0)
				if i%2 == 0 {
					if _, err := m.Release(ctx, r.Token, 1000, ""); err != nil {
						t.Errorf("Release: %v", err)
					}
				} else {
					ss.Detach(tun, 0)
					select {
					case <-ss.Done():
					case <-ctx.Done():
						t.Errorf("Detach(0) did not end the session")
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	readers.Wait()

	if got.Load() == 0 {
		t.Fatal("no reservation succeeded")
	}
	t.Logf("%d reservations, %d refused as full", got.Load(), full.Load())
	svcs, res := m.Snapshot()
	for _, s := range svcs {
		if s.Free != s.Count {
			t.Errorf("service %s: %d of %d free after all ended", s.Name, s.Free, s.Count)
		}
	}
	if len(res) != 0 {
		t.Errorf("sessions left: %+v", res)
	}
}
