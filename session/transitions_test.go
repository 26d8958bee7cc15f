package session

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"wsgateway/reservation"
)

// fixture is a session brought to a given state, with what it holds.
type fixture struct {
	m   *Manager
	clk *fakeClock
	rec *recorder
	ss  *Session
	tok string
	p   *fakeProc // its service, if started
	tun *fakeTun  // its current tunnel, if attached
}

// grace is the reconnect grace of the detached fixtures: shorter than the
// clock advance of the "sweep" operation.
const grace = testTimeout / 2

// setups brings a fresh session to each state worth telling apart.
var setups = map[string]func(t *testing.T, f *fixture){
	"reserved": func(t *testing.T, f *fixture) {},
	"claimed": func(t *testing.T, f *fixture) {
		f.ss = mustClaim(t, f.m, f.tok)
	},
	"claimed again": func(t *testing.T, f *fixture) {
		f.run(t, newProc())
		f.ss.Detach(f.tun, grace)
		f.tun = nil
		mustClaim(t, f.m, f.tok)
	},
	"starting": func(t *testing.T, f *fixture) {
		f.ss = mustClaim(t, f.m, f.tok)
		if _, err := f.ss.BeginStart(); err != nil {
			t.Fatal(err)
		}
	},
	"started": func(t *testing.T, f *fixture) {
		f.ss = mustClaim(t, f.m, f.tok)
		f.p = newProc()
		mustStart(t, f.ss, f.p)
	},
	"running": func(t *testing.T, f *fixture) {
		f.run(t, newProc())
	},
	"detached": func(t *testing.T, f *fixture) {
		f.run(t, newProc())
		f.ss.Detach(f.tun, grace)
		f.tun = nil
	},
	"stopping": func(t *testing.T, f *fixture) {
		p := newHangingProc()
		t.Cleanup(func() { close(p.hang) })
		f.run(t, p)
		f.ss.Stop(1001, "going away")
		eventually(t, "the stop reached the service", p.isStopped)
	},
	"stopping while starting": func(t *testing.T, f *fixture) {
		f.ss = mustClaim(t, f.m, f.tok)
		if _, err := f.ss.BeginStart(); err != nil {
			t.Fatal(err)
		}
		f.ss.Stop(1001, "going away")
	},
	"ended": func(t *testing.T, f *fixture) {
		if _, err := f.m.Release(bg(t), f.tok, 1000, ""); err != nil {
			t.Fatal(err)
		}
	},
}

func (f *fixture) run(t *testing.T, p *fakeProc) {
	t.Helper()
	f.ss = mustClaim(t, f.m, f.tok)
	f.p = p
	mustStart(t, f.ss, p)
	f.tun = &fakeTun{}
	if err := f.ss.Attach(f.tun, "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
}

func newFixture(t *testing.T, state string) *fixture {
	t.Helper()
	m, clk, rec := newManager(t, map[string]int{"viz": 1})
	r, err := m.ReserveFor("viz", "ann", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{m: m, clk: clk, rec: rec, tok: r.Token}
	if f.ss, err = m.lookup(r.Token); err != nil {
		t.Fatal(err)
	}
	setups[state](t, f)
	return f
}

// op is one transition asked of a fixture's session. newP and newT are a
// process and a tunnel the operation may hand over.
type op func(t *testing.T, f *fixture, newP *fakeProc, newT *fakeTun) error

var ops = map[string]op{
	"BeginStart": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		ctx, err := f.ss.BeginStart()
		if (err == nil) != (ctx != nil) {
			t.Errorf("BeginStart = %v, %v: want a context exactly when there is no error", ctx, err)
		}
		return err
	},
	"Started": func(t *testing.T, f *fixture, p *fakeProc, _ *fakeTun) error {
		return f.ss.Started(p)
	},
	"StartFailed": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		f.ss.StartFailed("no such program")
		return nil
	},
	"Attach": func(t *testing.T, f *fixture, _ *fakeProc, tun *fakeTun) error {
		return f.ss.Attach(tun, "127.0.0.1:2")
	},
	"Detach grace": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		f.ss.Detach(f.tun, time.Minute)
		return nil
	},
	"Detach 0": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		f.ss.Detach(f.tun, 0)
		return nil
	},
	"Stop": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		f.ss.Stop(4000, "why")
		return nil
	},
	"Claim": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		ss, err := f.m.Claim(f.tok, 0)
		if err == nil && ss != f.ss {
			t.Errorf("Claim returned another session")
		}
		if err != nil && ss != nil {
			t.Errorf("Claim returned a session with error %v", err)
		}
		return err
	},
	"Check": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		_, err := f.m.Check(f.tok)
		return err
	},
	"Release": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := f.m.Release(ctx, f.tok, 4000, "why")
		if err == nil && !isDone(f.ss) {
			t.Errorf("Release returned before the session ended")
		}
		return err
	},
	"Sweep": func(t *testing.T, f *fixture, _ *fakeProc, _ *fakeTun) error {
		f.clk.Advance(2 * testTimeout)
		f.m.Sweep()
		return nil
	},
}

// TestTransitions asks every transition of a session in every state, and
// checks the error, the state it leaves the session in, and that what it
// holds is stopped exactly when it ends.
func TestTransitions(t *testing.T) {
	const (
		R   = Reserved
		C   = Claimed
		S   = Starting
		Run = Running
		D   = Detached
		X   = Stopping
		E   = Ended
	)
	var (
		errState    = ErrState
		errReleased = ErrReleased
		errBusy     = reservation.ErrBusy
		errEnded    = reservation.ErrEnded
		errUnknown  = reservation.ErrUnknownToken
		errDeadline = context.DeadlineExceeded
	)
	type want struct {
		err error
		st  State
	}
	// The states, in the order of the columns below.
	states := []string{"reserved", "claimed", "claimed again", "starting", "started", "running",
		"detached", "stopping", "stopping while starting", "ended"}
	table := map[string][]want{
		//              reserved       claimed        claimed again  starting          started        running        detached       stopping            stopping/start      ended
		"BeginStart":   {{errState, R}, {nil, S}, {errState, C}, {errState, S}, {errState, S}, {errState, Run}, {errState, D}, {errReleased, X}, {errReleased, X}, {errReleased, E}},
		"Started":      {{errState, R}, {errState, C}, {errState, C}, {nil, S}, {errState, S}, {errState, Run}, {errState, D}, {errState, X}, {errReleased, E}, {errState, E}},
		"StartFailed":  {{nil, R}, {nil, C}, {nil, C}, {nil, E}, {nil, S}, {nil, Run}, {nil, D}, {nil, X}, {nil, E}, {nil, E}},
		"Attach":       {{errState, R}, {errState, C}, {nil, Run}, {errState, S}, {nil, Run}, {errState, Run}, {errState, D}, {errReleased, X}, {errReleased, X}, {errReleased, E}},
		"Detach grace": {{nil, R}, {nil, E}, {nil, D}, {nil, S}, {nil, D}, {nil, D}, {nil, D}, {nil, X}, {nil, X}, {nil, E}},
		"Detach 0":     {{nil, R}, {nil, E}, {nil, E}, {nil, S}, {nil, E}, {nil, E}, {nil, D}, {nil, X}, {nil, X}, {nil, E}},
		"Stop":         {{nil, E}, {nil, E}, {nil, E}, {nil, X}, {nil, E}, {nil, E}, {nil, E}, {nil, X}, {nil, X}, {nil, E}},
		"Claim":        {{nil, C}, {errBusy, C}, {errBusy, C}, {errBusy, S}, {errBusy, S}, {errBusy, Run}, {nil, C}, {errEnded, X}, {errEnded, X}, {errUnknown, E}},
		"Check":        {{nil, R}, {errBusy, C}, {errBusy, C}, {errBusy, S}, {errBusy, S}, {errBusy, Run}, {nil, D}, {errEnded, X}, {errEnded, X}, {errUnknown, E}},
		"Release":      {{nil, E}, {nil, E}, {nil, E}, {errDeadline, X}, {nil, E}, {nil, E}, {nil, E}, {errDeadline, X}, {errDeadline, X}, {errUnknown, E}},
		"Sweep":        {{nil, E}, {nil, C}, {nil, C}, {nil, S}, {nil, S}, {nil, Run}, {nil, E}, {nil, X}, {nil, X}, {nil, E}},
	}
	for name, row := range table {
		if len(row) != len(states) {
			t.Fatalf("row %s has %d columns, want %d", name, len(row), len(states))
		}
		for i, w := range row {
			from := states[i]
			t.Run(name+"/"+from, func(t *testing.T) {
				f := newFixture(t, from)
				before := f.ss.State()
				hadProc := f.p
				newP, newT := newProc(), &fakeTun{}
				err := ops[name](t, f, newP, newT)
				if w.err == nil && err != nil || w.err != nil && !errors.Is(err, w.err) {
					t.Fatalf("%s from %s: error %v, want %v", name, from, err, w.err)
				}
				if w.st == Ended {
					waitDone(t, f.ss)
				}
				if st := f.ss.State(); st != w.st {
					t.Fatalf("%s from %s: state %s, want %s", name, from, st, w.st)
				}
				if w.st != Ended && isDone(f.ss) {
					t.Errorf("Done is closed in state %s", w.st)
				}
				f.m.Sync()
				ended := w.st == Ended
				// The slot is free exactly when the session ended, and its
				// record is deleted exactly once, last.
				if free := freeSlots(t, f.m, "viz"); free != map[bool]int{true: 1, false: 0}[ended] {
					t.Errorf("free slots %d in state %s", free, w.st)
				}
				all := f.rec.of(f.tok, "save", "delete")
				if n := f.rec.deletes(f.tok); ended != (n == 1) || n > 1 {
					t.Errorf("record told %v, want one final delete only when ended", all)
				}
				if ended && all[len(all)-1] != "delete" {
					t.Errorf("record told %v, want the delete last", all)
				}
				// What the session held is stopped exactly when it ends (a
				// stopping fixture's service is still being stopped); a
				// process handed over is stopped by the session only when
				// it refused it as released.
				if hadProc != nil {
					if stopped := hadProc.isStopped(); stopped != (ended || w.st == Stopping && hadProc.hang != nil) {
						t.Errorf("service stopped = %v in state %s", stopped, w.st)
					}
				}
				if stopped, want := newP.isStopped(), name == "Started" && errors.Is(err, ErrReleased); stopped != want {
					t.Errorf("the process handed over stopped = %v, want %v", stopped, want)
				}
				if name == "Started" && err == nil && f.ss.Process() != newP {
					t.Errorf("Started did not hand the session its process")
				}
				if name == "Attach" && err == nil {
					if _, res := f.m.Snapshot(); len(res) != 1 || !res[0].Tunnel || res[0].Remote != "127.0.0.1:2" {
						t.Errorf("after Attach the snapshot shows %+v", res)
					}
				}
				// A tunnel is closed with the stop's code and reason only
				// when the session was stopped from running.
				if f.tun != nil {
					closes := f.tun.closed()
					switch {
					case before == Running && (name == "Stop" || name == "Release"):
						if fmt.Sprint(closes) != "[4000 why]" {
							t.Errorf("tunnel closed with %v, want 4000 why", closes)
						}
					case from == "stopping":
						if fmt.Sprint(closes) != "[1001 going away]" {
							t.Errorf("tunnel closed with %v, want the first stop's 1001 going away", closes)
						}
					default:
						if len(closes) != 0 {
							t.Errorf("tunnel closed with %v, want not closed", closes)
						}
					}
				}
				if len(newT.closed()) != 0 {
					t.Errorf("a refused tunnel was closed by the session: %v", newT.closed())
				}
			})
		}
	}
}
