package session

import (
	"context"
	"testing"
	"time"
)

// outliving is a fake cluster job: a process that outlives the gateway.
type outliving struct{ *fakeProc }

func (outliving) OutlivesGateway() bool { return true }

// TestStopAllLeavesOutlivingSessions: with a durable record, StopAll
// closes the websocket of a session whose process outlives the gateway
// but neither stops the process nor ends the record, and a later Detach
// leaves it alone; without one (or for an ordinary process, or one that
// has exited) StopAll stops it as any other.
func TestStopAllLeavesOutlivingSessions(t *testing.T) {
	for _, c := range []struct {
		name    string
		durable bool
		proc    func() (Process, *fakeProc)
		kept    bool
	}{
		{"durable, outliving", true, func() (Process, *fakeProc) { p := newProc(); return outliving{p}, p }, true},
		{"not durable", false, func() (Process, *fakeProc) { p := newProc(); return outliving{p}, p }, false},
		{"durable, ordinary", true, func() (Process, *fakeProc) { p := newProc(); return p, p }, false},
		{"durable, exited", true, func() (Process, *fakeProc) { p := newProc(); p.exit(); return outliving{p}, p }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := &recorder{}
			m := New(Config{Counts: map[string]int{"viz": 1}, Timeout: testTimeout, Persist: rec, Publish: rec.publish, Durable: c.durable})
			t.Cleanup(m.Close)
			r := mustReserve(t, m, "viz")
			ss := mustClaim(t, m, r.Token)
			if _, err := ss.BeginStart(); err != nil {
				t.Fatal(err)
			}
			p, fp := c.proc()
			if err := ss.Started(p); err != nil {
				t.Fatal(err)
			}
			tun := &fakeTun{}
			if err := ss.Attach(tun, "127.0.0.1:1"); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := m.StopAll(ctx, 1001, "gateway shutting down"); err != nil {
				t.Fatal(err)
			}
			if len(tun.closed()) != 1 || tun.closed()[0] != "1001 gateway shutting down" {
				t.Errorf("the websocket was told %v", tun.closed())
			}
			ss.Detach(tun, time.Minute) // the websocket handler, after the close
			m.Sync()
			if c.kept {
				if fp.isStopped() || ss.State() != Running || rec.deletes(r.Token) != 0 {
					t.Fatalf("kept session: stopped %v, state %s, record deleted %d times", fp.isStopped(), ss.State(), rec.deletes(r.Token))
				}
				return
			}
			if ss.State() != Ended || rec.deletes(r.Token) != 1 {
				t.Fatalf("stopped session: state %s, record deleted %d times", ss.State(), rec.deletes(r.Token))
			}
			if !fp.isStopped() && !exited(p) {
				t.Fatal("the process was neither stopped nor exited")
			}
		})
	}
}
