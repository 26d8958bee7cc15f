package session

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"wsgateway/reservation"
)

// TestToldInOrder: along each path of a session's life, the store is told
// every record (and the delete last) and the event hub every state, in
// the order of the transitions.
func TestToldInOrder(t *testing.T) {
	const (
		saveR   = "save reserved"
		saveC   = "save claimed"
		saveS   = "save starting"
		saveRun = "save running"
		saveD   = "save detached"
		saveX   = "save stopping"
		evC     = "session.state claimed"
		evS     = "session.state starting"
		evRun   = "session.state running"
		evD     = "session.state detached"
		evX     = "session.state stopping"
		evE     = "session.state ended"
		del     = "delete"
	)
	tests := []struct {
		name string
		path func(t *testing.T, m *Manager, clk *fakeClock, tok string)
		want []string
	}{
		{
			"a whole life with a reconnection",
			func(t *testing.T, m *Manager, clk *fakeClock, tok string) {
				ss := mustClaim(t, m, tok)
				mustStart(t, ss, newProc())
				tun := &fakeTun{}
				if err := ss.Attach(tun, ""); err != nil {
					t.Fatal(err)
				}
				ss.Detach(tun, time.Minute)
				mustClaim(t, m, tok)
				if err := ss.Attach(tun, ""); err != nil {
					t.Fatal(err)
				}
				ss.Detach(tun, 0)
				waitDone(t, ss)
			},
			[]string{saveR, saveC, evC, saveS, evS, saveRun, evRun, saveD, evD, saveC, evC, saveRun, evRun, saveX, evX, evE, del},
		},
		{
			"unused, released",
			func(t *testing.T, m *Manager, clk *fakeClock, tok string) {
				if _, err := m.Release(bg(t), tok, 1000, ""); err != nil {
					t.Fatal(err)
				}
			},
			[]string{saveR, del},
		},
		{
			"unused, expired",
			func(t *testing.T, m *Manager, clk *fakeClock, tok string) {
				clk.Advance(testTimeout)
				m.Sweep()
			},
			[]string{saveR, "reservation.expired reserved", del},
		},
		{
			"claimed, stopped before the start",
			func(t *testing.T, m *Manager, clk *fakeClock, tok string) {
				ss := mustClaim(t, m, tok)
				ss.Stop(1000, "")
				waitDone(t, ss)
			},
			[]string{saveR, saveC, evC, evE, del},
		},
		{
			"the start failed",
			func(t *testing.T, m *Manager, clk *fakeClock, tok string) {
				ss := mustClaim(t, m, tok)
				if _, err := ss.BeginStart(); err != nil {
					t.Fatal(err)
				}
				ss.StartFailed("exit status 1")
				waitDone(t, ss)
			},
			[]string{saveR, saveC, evC, saveS, evS, evE, del},
		},
		{
			"released during the start",
			func(t *testing.T, m *Manager, clk *fakeClock, tok string) {
				ss := mustClaim(t, m, tok)
				ctx, err := ss.BeginStart()
				if err != nil {
					t.Fatal(err)
				}
				ss.Stop(1000, "")
				if ctx.Err() == nil {
					t.Error("the start's context was not cancelled by the release")
				}
				if err := ss.Started(newProc()); err == nil {
					t.Error("Started after a release succeeded")
				}
				waitDone(t, ss)
			},
			[]string{saveR, saveC, evC, saveS, evS, saveX, evX, evE, del},
		},
		{
			"the reconnect grace ran out",
			func(t *testing.T, m *Manager, clk *fakeClock, tok string) {
				ss := mustClaim(t, m, tok)
				mustStart(t, ss, newProc())
				ss.Detach(nil, time.Minute)
				clk.Advance(time.Minute)
				m.Sweep()
				waitDone(t, ss)
			},
			[]string{saveR, saveC, evC, saveS, evS, saveD, evD, "reservation.expired detached", saveX, evX, evE, del},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, clk, rec := newManager(t, map[string]int{"viz": 2})
			mustReserve(t, m, "viz") // index 0: the session under test gets 1
			r, err := m.ReserveFor("viz", "ann", 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			tt.path(t, m, clk, r.Token)
			m.Sync()
			got := rec.of(r.Token, "save", "delete", "session.state", "reservation.expired")
			if strings.Join(got, ", ") != strings.Join(tt.want, ", ") {
				t.Errorf("told\n  %s\nwant\n  %s", strings.Join(got, ", "), strings.Join(tt.want, ", "))
			}
			for _, e := range rec.entries() {
				switch e.kind {
				case "save":
					if e.tok == r.Token && e.owner != "ann" {
						t.Errorf("record %+v lost its owner", e)
					}
				case "session.state", "reservation.expired":
					if e.data["token_prefix"] != reservation.TokenPrefix(r.Token) {
						continue // the other reservation's
					}
					want := map[string]any{"service": "viz", "index": 1, "token_prefix": reservation.TokenPrefix(r.Token), "state": e.state}
					if e.owner != "ann" || fmt.Sprint(e.data) != fmt.Sprint(want) {
						t.Errorf("event %s for %q: %v, want for ann: %v", e.kind, e.owner, e.data, want)
					}
				}
			}
		})
	}
}

// TestToldOutsideTheLock: the store and the event hub are told with the
// Manager's lock released, so they may call back into it.
func TestToldOutsideTheLock(t *testing.T) {
	var m *Manager
	var mu sync.Mutex
	var seen []int
	clk := newFakeClock()
	m = New(Config{Counts: map[string]int{"viz": 1}, Timeout: testTimeout, Now: clk.Now,
		Publish: func(topic, owner string, data map[string]any) {
			_, infos := m.Snapshot() // would deadlock under the lock
			mu.Lock()
			seen = append(seen, len(infos))
			mu.Unlock()
		}})
	defer m.Close()
	ss, _, tun := mustRun(t, m, "viz")
	ss.Detach(tun, 0)
	waitDone(t, ss)
	m.Sync()
	mu.Lock()
	defer mu.Unlock()
	// claimed, starting, running, stopping, ended.
	if len(seen) != 5 {
		t.Errorf("%d events, want 5", len(seen))
	}
}

func TestSessionAccessors(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"viz": 3})
	mustReserve(t, m, "viz")
	opts := map[string]string{"geometry": "800x600"}
	r, err := m.ReserveFor("viz", "ann", 0, opts)
	if err != nil {
		t.Fatal(err)
	}
	ss := mustClaim(t, m, r.Token)
	if ss.Token() != r.Token || ss.Service() != "viz" || ss.Index() != 1 || ss.record().Owner != "ann" || ss.Options()["geometry"] != "800x600" {
		t.Errorf("accessors: %s %s %d %s %v", ss.Token(), ss.Service(), ss.Index(), ss.record().Owner, ss.Options())
	}
	if ss.Process() != nil {
		t.Errorf("a fresh claim: Process %v", ss.Process())
	}
	ctx := ss.Context()
	p := newProc()
	mustStart(t, ss, p)
	if ss.Process() != p {
		t.Errorf("after Started: Process %v", ss.Process())
	}
	if rec := ss.record(); rec.Token != r.Token || rec.State != string(Starting) || rec.Owner != "ann" || rec.Connects != 1 {
		t.Errorf("Record = %+v", rec)
	}
	if ctx.Err() != nil {
		t.Fatal("the session's context is cancelled before any stop")
	}
	ss.Stop(1000, "")
	if ctx.Err() == nil {
		t.Error("the session's context is not cancelled by its stop")
	}
	waitDone(t, ss)

	// Close cancels every session's context.
	r2 := mustReserve(t, m, "viz")
	ss2, err := m.lookup(r2.Token)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if ss2.Context().Err() == nil {
		t.Error("Close left a session's context alive")
	}
}

// TestDetachStopsWhatCannotBeKept: a detach keeps the service for a
// reconnection only when it can be reconnected to.
func TestDetachStopsWhatCannotBeKept(t *testing.T) {
	tests := []struct {
		name  string
		proc  func() *fakeProc
		grace time.Duration
		keep  bool
	}{
		{"running service, grace", newProc, time.Minute, true},
		{"running service, tiny grace", newProc, time.Nanosecond, true},
		{"no grace", newProc, 0, false},
		{"negative grace", newProc, -time.Minute, false},
		{"service exited", func() *fakeProc { p := newProc(); p.exit(); return p }, time.Minute, false},
		{"service handed to a daemon", func() *fakeProc { p := newProc(); p.detached = true; return p }, time.Minute, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, clk, _ := newManager(t, map[string]int{"viz": 1})
			r := mustReserve(t, m, "viz")
			ss := mustClaim(t, m, r.Token)
			p := tt.proc()
			mustStart(t, ss, p)
			tun := &fakeTun{}
			if err := ss.Attach(tun, ""); err != nil {
				t.Fatal(err)
			}
			ss.Detach(tun, tt.grace)
			if !tt.keep {
				waitDone(t, ss)
				if !p.isStopped() {
					t.Error("the service was not stopped")
				}
				return
			}
			if st := ss.State(); st != Detached {
				t.Fatalf("state %s, want detached", st)
			}
			if g, _ := m.Get(r.Token); !g.Expires.Equal(clk.Now().Add(tt.grace)) {
				t.Errorf("expires %v, want now+%v", g.Expires, tt.grace)
			}
			if p.isStopped() {
				t.Error("a kept service was stopped")
			}
		})
	}
}

func TestClaimUserTunnelLimit(t *testing.T) {
	tests := []struct {
		name  string
		owner string
		max   int
		open  int // tunnels the owner has open already
		want  error
	}{
		{"under", "ann", 2, 1, nil},
		{"at", "ann", 2, 2, ErrUserTunnels},
		{"one allowed, none open", "ann", 1, 0, nil},
		{"one allowed, one open", "ann", 1, 1, ErrUserTunnels},
		{"no limit", "ann", 0, 3, nil},
		{"anonymous", "", 1, 3, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, _, _ := newManager(t, map[string]int{"viz": 8})
			// Sessions of the owner that hold no websocket do not count:
			// a reservation, a detached session, a stopping one.
			if _, err := m.ReserveFor("viz", tt.owner, 0, nil); err != nil {
				t.Fatal(err)
			}
			r, _ := m.ReserveFor("viz", tt.owner, 0, nil)
			ss := mustClaim(t, m, r.Token)
			mustStart(t, ss, newProc())
			ss.Detach(nil, time.Minute)
			r, _ = m.ReserveFor("viz", tt.owner, 0, nil)
			ss = mustClaim(t, m, r.Token)
			hang := newHangingProc()
			defer close(hang.hang)
			mustStart(t, ss, hang)
			ss.Stop(1000, "")
			// Another owner's websockets do not count either.
			r, _ = m.ReserveFor("viz", "bob", 0, nil)
			mustClaim(t, m, r.Token)
			// The owner's open websockets, one in each state that counts.
			for i := 0; i < tt.open; i++ {
				r, _ := m.ReserveFor("viz", tt.owner, 0, nil)
				ss := mustClaim(t, m, r.Token)
				switch i % 3 {
				case 1:
					if _, err := ss.BeginStart(); err != nil {
						t.Fatal(err)
					}
				case 2:
					mustStart(t, ss, newProc())
					if err := ss.Attach(&fakeTun{}, ""); err != nil {
						t.Fatal(err)
					}
				}
			}
			r, _ = m.ReserveFor("viz", tt.owner, 0, nil)
			_, err := m.Claim(r.Token, tt.max)
			wantErr(t, "Claim", err, tt.want)
			if tt.want != nil {
				if !strings.Contains(err.Error(), tt.owner) {
					t.Errorf("error %q does not name the owner", err)
				}
				if g, _ := m.Get(r.Token); g.State != string(Reserved) || g.Connects != 0 {
					t.Errorf("a refused Claim changed the reservation: %+v", g)
				}
			}
		})
	}
}
