package session

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"wsgateway/reservation"
)

// testTimeout is the reservation timeout of the managers under test (on
// a fake clock, so it never elapses by itself).
const testTimeout = 10 * time.Second

// waitLimit bounds every wait for something asynchronous: generous, since
// a failure is a hang, not a slow success.
const waitLimit = 10 * time.Second

// fakeClock is a manual clock for Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeProc is a started service: Stop closes Exited and records the
// call; with hang set, Stop blocks until hang is closed or its ctx ends.
type fakeProc struct {
	exited   chan struct{}
	once     sync.Once
	stops    atomic.Int32
	detached bool
	hang     chan struct{}

	mu       sync.Mutex
	deadline time.Time // of the last Stop's ctx
	hasDL    bool
}

func newProc() *fakeProc { return &fakeProc{exited: make(chan struct{})} }

func newHangingProc() *fakeProc {
	p := newProc()
	p.hang = make(chan struct{})
	return p
}

func (p *fakeProc) Stop(ctx context.Context) error {
	p.stops.Add(1)
	dl, ok := ctx.Deadline()
	p.mu.Lock()
	p.deadline, p.hasDL = dl, ok
	p.mu.Unlock()
	if p.hang != nil {
		select {
		case <-p.hang:
		case <-ctx.Done():
			return fmt.Errorf("stopping the fake service: %w", ctx.Err())
		}
	}
	p.exit()
	return nil
}

func (p *fakeProc) Exited() <-chan struct{} { return p.exited }
func (p *fakeProc) Detached() bool          { return p.detached }
func (p *fakeProc) exit()                   { p.once.Do(func() { close(p.exited) }) }

// isStopped reports whether Stop was called at least once.
func (p *fakeProc) isStopped() bool { return p.stops.Load() > 0 }

// fakeTun is a websocket splice that records its Close calls.
type fakeTun struct {
	in, out int64

	mu     sync.Mutex
	closes []string // "code reason"
}

func (t *fakeTun) Close(code int, reason string) {
	t.mu.Lock()
	t.closes = append(t.closes, fmt.Sprintf("%d %s", code, reason))
	t.mu.Unlock()
}

func (t *fakeTun) Bytes() (in, out int64) { return t.in, t.out }

func (t *fakeTun) closed() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.closes...)
}

// entry is one thing the world was told: a record saved or deleted, or an
// event published.
type entry struct {
	kind  string // "save", "delete" or the event's topic
	tok   string
	state string
	owner string
	data  map[string]any
}

func (e entry) String() string {
	switch e.kind {
	case "save":
		return "save " + e.state
	case "delete":
		return "delete"
	case "session.state", "reservation.expired":
		return e.kind + " " + e.state
	}
	return fmt.Sprintf("%s %v", e.kind, e.data["queue"])
}

// recorder is both the Persister and the Publish hook of a Manager: it
// keeps, in order, everything it was told.
type recorder struct {
	mu  sync.Mutex
	log []entry
}

func (r *recorder) SaveReservation(res reservation.Reservation) {
	r.mu.Lock()
	r.log = append(r.log, entry{kind: "save", tok: res.Token, state: res.State, owner: res.Owner})
	r.mu.Unlock()
}

func (r *recorder) DeleteReservation(tok string) {
	r.mu.Lock()
	r.log = append(r.log, entry{kind: "delete", tok: tok})
	r.mu.Unlock()
}

func (r *recorder) publish(topic, owner string, data map[string]any) {
	st, _ := data["state"].(string)
	r.mu.Lock()
	r.log = append(r.log, entry{kind: topic, owner: owner, state: st, data: data})
	r.mu.Unlock()
}

func (r *recorder) entries() []entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]entry(nil), r.log...)
}

// reset forgets what was told so far.
func (r *recorder) reset() {
	r.mu.Lock()
	r.log = nil
	r.mu.Unlock()
}

// of returns, as strings, the entries of the given kinds that concern
// tok (events are matched by token prefix).
func (r *recorder) of(tok string, kinds ...string) []string {
	var out []string
	for _, e := range r.entries() {
		want := false
		for _, k := range kinds {
			want = want || e.kind == k
		}
		if !want {
			continue
		}
		if e.tok != "" && e.tok != tok {
			continue
		}
		if p, ok := e.data["token_prefix"]; ok && p != reservation.TokenPrefix(tok) {
			continue
		}
		out = append(out, e.String())
	}
	return out
}

func (r *recorder) deletes(tok string) int {
	n := 0
	for _, e := range r.entries() {
		if e.kind == "delete" && e.tok == tok {
			n++
		}
	}
	return n
}

// queueEvents returns the queue.changed events' queues, in order.
func (r *recorder) queueEvents() []string {
	var out []string
	for _, e := range r.entries() {
		if e.kind == "queue.changed" {
			out = append(out, fmt.Sprintf("%s:%d:%v", e.data["service"], e.data["waiting"], e.data["queue"]))
		}
	}
	return out
}

// newManager returns a Manager on a fake clock that tells rec everything.
func newManager(t *testing.T, counts map[string]int) (*Manager, *fakeClock, *recorder) {
	t.Helper()
	clk := newFakeClock()
	rec := &recorder{}
	m := New(Config{Counts: counts, Timeout: testTimeout, Now: clk.Now, Persist: rec, Publish: rec.publish})
	t.Cleanup(m.Close)
	return m, clk, rec
}

func mustReserve(t *testing.T, m *Manager, service string) reservation.Reservation {
	t.Helper()
	r, err := m.Reserve(service, nil)
	if err != nil {
		t.Fatalf("Reserve(%q): %v", service, err)
	}
	return r
}

func mustClaim(t *testing.T, m *Manager, tok string) *Session {
	t.Helper()
	ss, err := m.Claim(tok, 0)
	if err != nil {
		t.Fatalf("Claim(%s): %v", reservation.TokenPrefix(tok), err)
	}
	return ss
}

// mustRun takes a fresh reservation of service to running: claimed,
// started with a new fake process, attached to a new fake tunnel.
func mustRun(t *testing.T, m *Manager, service string) (*Session, *fakeProc, *fakeTun) {
	t.Helper()
	r := mustReserve(t, m, service)
	ss := mustClaim(t, m, r.Token)
	p, tun := newProc(), &fakeTun{}
	mustStart(t, ss, p)
	if err := ss.Attach(tun, "127.0.0.1:1"); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	return ss, p, tun
}

func mustStart(t *testing.T, ss *Session, p Process) {
	t.Helper()
	if _, err := ss.BeginStart(); err != nil {
		t.Fatalf("BeginStart: %v", err)
	}
	if err := ss.Started(p); err != nil {
		t.Fatalf("Started: %v", err)
	}
}

func freeSlots(t *testing.T, m *Manager, service string) int {
	t.Helper()
	svcs, _ := m.Snapshot()
	for _, s := range svcs {
		if s.Name == service {
			return s.Free
		}
	}
	t.Fatalf("service %q not in snapshot %+v", service, svcs)
	return -1
}

func wantErr(t *testing.T, what string, got, want error) {
	t.Helper()
	if want == nil {
		if got != nil {
			t.Fatalf("%s: error = %v, want none", what, got)
		}
		return
	}
	if !errors.Is(got, want) {
		t.Fatalf("%s: error = %v, want %v", what, got, want)
	}
}

// waitDone waits for ss to end.
func waitDone(t *testing.T, ss *Session) {
	t.Helper()
	select {
	case <-ss.Done():
	case <-time.After(waitLimit):
		t.Fatalf("session %s… did not end (state %s)", reservation.TokenPrefix(ss.Token()), ss.State())
	}
}

// isDone reports whether ss has ended, without waiting.
func isDone(ss *Session) bool {
	select {
	case <-ss.Done():
		return true
	default:
		return false
	}
}

// eventually polls cond until it holds or waitLimit passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after %v", what, waitLimit)
		}
		time.Sleep(time.Millisecond)
	}
}

func bg(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}
