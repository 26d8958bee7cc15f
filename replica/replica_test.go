package replica

import (
	"context"
	"errors"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/internal/redistest"
	"wsgateway/reservation"
	"wsgateway/session"
	"wsgateway/store/redisstore"
)

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared()
	os.Exit(code)
}

const waitLimit = 20 * time.Second

// clock is a manual clock shared by the replicas of a test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// proc is a started service.
type proc struct {
	exited chan struct{}
	once   sync.Once
	stops  atomic.Int32
}

func newProc() *proc { return &proc{exited: make(chan struct{})} }

func (p *proc) Stop(context.Context) error {
	p.stops.Add(1)
	p.once.Do(func() { close(p.exited) })
	return nil
}
func (p *proc) Exited() <-chan struct{} { return p.exited }
func (p *proc) Detached() bool          { return false }

// tunnel is a websocket's splice.
type tunnel struct{ closed atomic.Int32 }

func (t *tunnel) Close(int, string)     { t.closed.Add(1) }
func (t *tunnel) Bytes() (int64, int64) { return 0, 0 }

// event is one published event.
type event struct {
	replica, topic string
	data           map[string]any
}

// cluster is n replicas (session Managers with Coordinators) on one
// Redis, under one prefix.
type cluster struct {
	clk    *clock
	stores []*redisstore.Store
	coords []*Coordinator
	mgrs   []*session.Manager
	mu     sync.Mutex
	events []event
}

func newCluster(t *testing.T, n int, counts map[string]int, lease time.Duration, opts ...func(id string, c *session.Config)) *cluster {
	t.Helper()
	srv := redistest.Need(t)
	prefix := redistest.Prefix(t)
	cl := &cluster{clk: &clock{t: time.Now().UTC()}}
	for i := 0; i < n; i++ {
		st, err := redisstore.Open(context.Background(), srv.URL(0)+"?prefix="+prefix, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		cl.stores = append(cl.stores, st)
		id := string(rune('A' + i))
		co := New(st, Config{ID: id, Lease: lease}, zerolog.Nop())
		if err := co.Renew(context.Background()); err != nil {
			t.Fatal(err)
		}
		scfg := session.Config{Counts: counts, Timeout: 10 * time.Second, Now: cl.clk.Now, Shared: co,
			Publish: func(topic, owner string, data map[string]any) {
				cl.mu.Lock()
				cl.events = append(cl.events, event{id, topic, data})
				cl.mu.Unlock()
			}}
		for _, o := range opts {
			o(id, &scfg)
		}
		m := session.New(scfg)
		cl.coords = append(cl.coords, co)
		cl.mgrs = append(cl.mgrs, m)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			_ = m.StopAll(ctx, 1001, "test over")
			m.Close()
			st.Close()
		})
	}
	return cl
}

func (cl *cluster) eventsOf(topic string) []event {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var out []event
	for _, e := range cl.events {
		if e.topic == topic {
			out = append(out, e)
		}
	}
	return out
}

// start claims tok on m, starts it and attaches a tunnel.
func start(t *testing.T, m *session.Manager, tok string) (*session.Session, *proc, *tunnel) {
	t.Helper()
	ss, err := m.Claim(tok, 0)
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if _, err := ss.BeginStart(); err != nil {
		t.Fatal(err)
	}
	p := newProc()
	if err := ss.Started(p); err != nil {
		t.Fatal(err)
	}
	tun := &tunnel{}
	if err := ss.Attach(tun, "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	m.Sync()
	return ss, p, tun
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling
	}
}

func TestFiftyReservationsRaceForFiveSlots(t *testing.T) {
	cl := newCluster(t, 3, map[string]int{"desk": 5, "other": 2}, 0)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var got []int
	var noSlot int
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			r, err := cl.mgrs[i%3].ReserveFor("desk", "", 0, nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				got = append(got, r.Index)
			case errors.Is(err, reservation.ErrNoSlot):
				noSlot++
			default:
				t.Errorf("reserve: %v", err)
			}
		}(i)
	}
	wg.Wait()
	sort.Ints(got)
	if len(got) != 5 || noSlot != 45 {
		t.Fatalf("%d succeeded (%v), %d found no slot; want 5 and 45", len(got), got, noSlot)
	}
	for i, idx := range got {
		if idx != i {
			t.Fatalf("indexes %v, want 0..4 once each", got)
		}
	}
	// Another service's slots are its own.
	if r, err := cl.mgrs[0].ReserveFor("other", "", 0, nil); err != nil || r.Index != 0 {
		t.Fatalf("other service: %+v %v", r, err)
	}
	if _, err := cl.mgrs[0].ReserveFor("nosuch", "", 0, nil); !errors.Is(err, reservation.ErrUnknownService) {
		t.Fatalf("unknown service: %v", err)
	}
}

func TestReserveOnAClaimOnBReleaseOnC(t *testing.T) {
	cl := newCluster(t, 3, map[string]int{"desk": 1}, 0)
	a, b, c := cl.mgrs[0], cl.mgrs[1], cl.mgrs[2]
	r, err := a.ReserveFor("desk", "ann", 0, map[string]string{"geometry": "800x600"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range cl.mgrs {
		got, err := m.Get(r.Token)
		if err != nil || got.Index != 0 || got.Owner != "ann" || got.Options["geometry"] != "800x600" || got.State != "reserved" {
			t.Fatalf("get: %+v %v", got, err)
		}
		if _, err := m.Check(r.Token); err != nil {
			t.Fatalf("check: %v", err)
		}
	}
	ss, p, tun := start(t, b, r.Token)
	if ss.Index() != 0 {
		t.Fatalf("index %d", ss.Index())
	}
	// Every replica sees it running, and none lets a second websocket in.
	for i, m := range cl.mgrs {
		got, err := m.Get(r.Token)
		if err != nil || got.State != "running" {
			t.Fatalf("replica %d: get %+v %v", i, got, err)
		}
		if _, err := m.Claim(r.Token, 0); !errors.Is(err, reservation.ErrBusy) {
			t.Fatalf("replica %d: second claim %v", i, err)
		}
		if _, err := m.Check(r.Token); !errors.Is(err, reservation.ErrBusy) {
			t.Fatalf("replica %d: check %v", i, err)
		}
	}
	if _, err := a.ReserveFor("desk", "", 0, nil); !errors.Is(err, reservation.ErrNoSlot) {
		t.Fatalf("the one slot is held: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	rel, err := c.Release(ctx, r.Token, 1000, "released")
	if err != nil || rel.Token != r.Token {
		t.Fatalf("release on C: %+v %v", rel, err)
	}
	if p.stops.Load() != 1 || tun.closed.Load() != 1 {
		t.Fatalf("stops %d, tunnel closes %d", p.stops.Load(), tun.closed.Load())
	}
	select {
	case <-ss.Done():
	case <-time.After(waitLimit):
		t.Fatal("session not ended")
	}
	for i, m := range cl.mgrs {
		if _, err := m.Get(r.Token); !errors.Is(err, reservation.ErrUnknownToken) {
			t.Fatalf("replica %d: released token: %v", i, err)
		}
	}
	// The slot is free for anyone.
	if r2, err := c.ReserveFor("desk", "", 0, nil); err != nil || r2.Index != 0 {
		t.Fatalf("after release: %+v %v", r2, err)
	}
}

func TestUnusedReservationReleasedAnywhere(t *testing.T) {
	cl := newCluster(t, 2, map[string]int{"desk": 1}, 0)
	r, err := cl.mgrs[0].ReserveFor("desk", "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	if _, err := cl.mgrs[1].Release(ctx, r.Token, 1000, "x"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.mgrs[1].Release(ctx, r.Token, 1000, "x"); !errors.Is(err, reservation.ErrUnknownToken) {
		t.Fatalf("second release: %v", err)
	}
	if _, err := cl.mgrs[0].Claim(r.Token, 0); !errors.Is(err, reservation.ErrUnknownToken) {
		t.Fatalf("claim after release: %v", err)
	}
	if r2, err := cl.mgrs[0].ReserveFor("desk", "", 0, nil); err != nil || r2.Index != 0 {
		t.Fatalf("slot after release: %+v %v", r2, err)
	}
}

func TestOneWebsocketPerTokenAcrossReplicas(t *testing.T) {
	cl := newCluster(t, 3, map[string]int{"desk": 1}, 0)
	r, err := cl.mgrs[0].ReserveFor("desk", "", 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var wins atomic.Int32
	var busy atomic.Int32
	for i := 0; i < 30; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, err := cl.mgrs[i%3].Claim(r.Token, 0)
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, reservation.ErrBusy):
				busy.Add(1)
			default:
				t.Errorf("claim: %v", err)
			}
		}(i)
	}
	wg.Wait()
	if wins.Load() != 1 || busy.Load() != 29 {
		t.Fatalf("%d claims won, %d busy; want 1 and 29", wins.Load(), busy.Load())
	}
}

func TestDetachedReclaimedOnItsReplicaOnly(t *testing.T) {
	cl := newCluster(t, 2, map[string]int{"desk": 1}, 0)
	a, b := cl.mgrs[0], cl.mgrs[1]
	r, _ := a.ReserveFor("desk", "", 0, nil)
	ss, p, tun := start(t, a, r.Token)
	ss.Detach(tun, time.Minute)
	a.Sync()
	if got, _ := b.Get(r.Token); got.State != "detached" {
		t.Fatalf("state seen on B: %q", got.State)
	}
	if _, err := b.Claim(r.Token, 0); !errors.Is(err, session.ErrElsewhere) {
		t.Fatalf("reconnect on B: %v", err)
	}
	ss2, err := a.Claim(r.Token, 0)
	if err != nil || ss2 != ss {
		t.Fatalf("reconnect on A: %v", err)
	}
	if got, _ := b.Get(r.Token); got.State != "claimed" || got.Connects != 2 {
		t.Fatalf("seen on B after the reconnect: %+v", got)
	}
	if p.stops.Load() != 0 {
		t.Fatal("the service was stopped")
	}
}

func TestExpiryIsGlobalAndOnce(t *testing.T) {
	cl := newCluster(t, 3, map[string]int{"desk": 3}, 0)
	var toks []string
	for i := 0; i < 3; i++ {
		r, err := cl.mgrs[i].ReserveFor("desk", "", 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, r.Token)
	}
	// Just before the deadline nothing expires.
	cl.clk.Advance(10*time.Second - time.Millisecond)
	for _, m := range cl.mgrs {
		if gone := m.Sweep(); len(gone) != 0 {
			t.Fatalf("expired early: %+v", gone)
		}
	}
	cl.clk.Advance(time.Millisecond)
	var wg sync.WaitGroup
	var n atomic.Int32
	for _, m := range cl.mgrs {
		wg.Add(1)
		go func(m *session.Manager) {
			defer wg.Done()
			n.Add(int32(len(m.Sweep())))
		}(m)
	}
	wg.Wait()
	for _, m := range cl.mgrs {
		m.Sync()
	}
	if n.Load() != 3 || len(cl.eventsOf("reservation.expired")) != 3 {
		t.Fatalf("%d expired, %d events; want 3 and 3", n.Load(), len(cl.eventsOf("reservation.expired")))
	}
	for _, tok := range toks {
		for _, m := range cl.mgrs {
			if _, err := m.Claim(tok, 0); !errors.Is(err, reservation.ErrExpiredToken) {
				t.Fatalf("claim of an expired token: %v", err)
			}
			if _, err := m.Get(tok); !errors.Is(err, reservation.ErrExpiredToken) {
				t.Fatalf("get of an expired token: %v", err)
			}
		}
	}
	if r, err := cl.mgrs[0].ReserveFor("desk", "", 0, nil); err != nil || r.Index != 0 {
		t.Fatalf("slots after expiry: %+v %v", r, err)
	}
}

func TestClaimAfterTheDeadlineExpires(t *testing.T) {
	cl := newCluster(t, 2, map[string]int{"desk": 1}, 0)
	r, _ := cl.mgrs[0].ReserveFor("desk", "", 0, nil)
	cl.clk.Advance(10 * time.Second)
	if _, err := cl.mgrs[1].Check(r.Token); !errors.Is(err, reservation.ErrExpiredToken) {
		t.Fatalf("check: %v", err)
	}
	if _, err := cl.mgrs[1].Claim(r.Token, 0); !errors.Is(err, reservation.ErrExpiredToken) {
		t.Fatalf("claim: %v", err)
	}
	if _, err := cl.mgrs[0].ReserveFor("desk", "", 0, nil); err != nil {
		t.Fatalf("the slot was not freed: %v", err)
	}
}

func TestUserLimitsAcrossReplicas(t *testing.T) {
	cl := newCluster(t, 2, map[string]int{"desk": 5}, 0)
	a, b := cl.mgrs[0], cl.mgrs[1]
	r1, err := a.ReserveFor("desk", "ann", 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := b.ReserveFor("desk", "ann", 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ReserveFor("desk", "ann", 2, nil); !errors.Is(err, reservation.ErrUserLimit) {
		t.Fatalf("third for ann: %v", err)
	}
	if _, err := a.ReserveFor("desk", "bob", 2, nil); err != nil {
		t.Fatalf("bob: %v", err)
	}
	if _, err := a.ReserveFor("desk", "", 1, nil); err != nil {
		t.Fatalf("anonymous: %v", err)
	}
	// One open websocket for ann across replicas.
	if _, err := a.Claim(r1.Token, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Claim(r2.Token, 1); !errors.Is(err, session.ErrUserTunnels) {
		t.Fatalf("second websocket of ann: %v", err)
	}
	if _, err := b.Claim(r2.Token, 2); err != nil {
		t.Fatalf("with a limit of two: %v", err)
	}
}

func TestDeadReplicaSessionsInterrupted(t *testing.T) {
	cl := newCluster(t, 2, map[string]int{"desk": 1}, 300*time.Millisecond)
	a, b := cl.mgrs[0], cl.mgrs[1]
	r, _ := a.ReserveFor("desk", "", 0, nil)
	start(t, a, r.Token)
	// While A renews its lease, B's sweeps leave its session alone.
	if gone := b.Sweep(); len(gone) != 0 {
		t.Fatalf("swept a live replica's session: %+v", gone)
	}
	// A dies: its lease is no longer renewed (nor given up).
	cl.stores[0].Close()
	var gone []reservation.Reservation
	waitFor(t, "the lease to run out", func() bool {
		gone = append(gone, b.Sweep()...)
		return len(gone) > 0
	})
	if len(gone) != 1 || gone[0].Token != r.Token || gone[0].State != "interrupted" {
		t.Fatalf("gone %+v", gone)
	}
	b.Sync()
	if ev := cl.eventsOf("session.state"); len(ev) == 0 || ev[len(ev)-1].data["state"] != "interrupted" || ev[len(ev)-1].replica != "B" {
		t.Fatalf("events %+v", ev)
	}
	if _, err := b.ReserveFor("desk", "", 0, nil); err != nil {
		t.Fatalf("the dead replica's slot was not freed: %v", err)
	}
}

func TestRedisDownAnswersUnavailable(t *testing.T) {
	srv := redistest.Need(t)
	st, err := redisstore.Open(context.Background(), srv.URL(0)+"?prefix="+redistest.Prefix(t), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	co := New(st, Config{ID: "A"}, zerolog.Nop())
	m := session.New(session.Config{Counts: map[string]int{"desk": 1}, Timeout: time.Minute, Shared: co})
	defer m.Close()
	st.Close() // the client is gone: every call fails as Redis being away does
	if _, err := m.ReserveFor("desk", "", 0, nil); !errors.Is(err, session.ErrUnavailable) {
		t.Fatalf("reserve: %v", err)
	}
	if _, err := m.Claim("tok", 0); !errors.Is(err, session.ErrUnavailable) {
		t.Fatalf("claim: %v", err)
	}
}

// adoption gives every replica a Describe telling target and an Adopt
// that records what it was asked.
type adoption struct {
	target session.Target
	mu     sync.Mutex
	asked  map[string][]session.Record // replica -> records it was asked to adopt
	procs  map[string]*proc
}

func (ad *adoption) opt(id string, c *session.Config) {
	c.Describe = func(session.Process, reservation.Reservation) (session.Target, bool) { return ad.target, true }
	c.Adopt = func(r session.Record) session.Process {
		ad.mu.Lock()
		defer ad.mu.Unlock()
		ad.asked[id] = append(ad.asked[id], r)
		p := newProc()
		ad.procs[r.Token] = p
		return p
	}
}

func TestTargetRecordedUnderTheOwner(t *testing.T) {
	ad := &adoption{target: session.Target{Network: "tcp", Address: "10.1.2.3:5901", Shared: true, Grace: 40 * time.Second},
		asked: map[string][]session.Record{}, procs: map[string]*proc{}}
	cl := newCluster(t, 2, map[string]int{"desk": 1}, 0, ad.opt)
	a := cl.mgrs[0]
	r, _ := a.ReserveFor("desk", "", 0, nil)
	start(t, a, r.Token)
	rec, err := cl.coords[1].Lookup(context.Background(), r.Token)
	if err != nil || rec.Replica != "A" || rec.Target != ad.target || rec.State != "running" {
		t.Fatalf("B's lookup: %+v %v", rec, err)
	}
	// Only the replica holding the session writes its target.
	if ok, err := cl.coords[1].SetTarget(context.Background(), r.Token, session.Target{Network: "unix", Address: "/x"}); ok || err != nil {
		t.Fatalf("B set A's target: %v %v", ok, err)
	}
	if rec, _ := cl.coords[0].Lookup(context.Background(), r.Token); rec.Target != ad.target {
		t.Fatalf("target after B's attempt: %+v", rec.Target)
	}
	if _, err := cl.coords[0].Lookup(context.Background(), "nope"); !errors.Is(err, reservation.ErrUnknownToken) {
		t.Fatalf("lookup of an unknown token: %v", err)
	}
}

func TestReplicaAddress(t *testing.T) {
	srv := redistest.Need(t)
	st, err := redisstore.Open(context.Background(), srv.URL(0)+"?prefix="+redistest.Prefix(t), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	for _, tc := range []struct{ id, addr, want string }{{"A", "10.0.0.1:9200", "10.0.0.1:9200"}, {"B", "", ""}} {
		co := New(st, Config{ID: tc.id, Address: tc.addr}, zerolog.Nop())
		if err := co.Renew(ctx); err != nil {
			t.Fatal(err)
		}
		if got, err := co.ReplicaAddress(ctx, tc.id); err != nil || got != tc.want {
			t.Errorf("%s: %q %v, want %q", tc.id, got, err, tc.want)
		}
	}
	co := New(st, Config{ID: "A"}, zerolog.Nop())
	if _, err := co.ReplicaAddress(ctx, "C"); !errors.Is(err, session.ErrReplicaGone) {
		t.Fatalf("a replica without a lease: %v", err)
	}
}

// A dead replica's sessions: running and detached ones with a shared
// target and a grace are adopted by exactly one of the sweeping replicas
// (detached there, the grace from the sweep); one whose target only its
// replica reaches, one without a grace and one still being claimed end
// interrupted, their slots free.
func TestDeadReplicaSessionsAdoptedOnce(t *testing.T) {
	shared := session.Target{Network: "tcp", Address: "10.1.2.3:5901", Shared: true, Grace: 40 * time.Second}
	ad := &adoption{target: shared, asked: map[string][]session.Record{}, procs: map[string]*proc{}}
	cl := newCluster(t, 3, map[string]int{"desk": 6}, 300*time.Millisecond, ad.opt)
	a := cl.mgrs[0]
	ctx := context.Background()
	toks := map[string]string{}
	for _, name := range []string{"running", "detached", "local", "nograce", "claimed"} {
		r, err := a.ReserveFor("desk", "", 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		toks[name] = r.Token
	}
	start(t, a, toks["running"])
	ss, _, tun := start(t, a, toks["detached"])
	ss.Detach(tun, time.Minute)
	start(t, a, toks["local"])
	start(t, a, toks["nograce"])
	if _, err := a.Claim(toks["claimed"], 0); err != nil {
		t.Fatal(err)
	}
	a.Sync()
	// What A recorded: the local one only A reaches, one without grace.
	if ok, _ := cl.coords[0].SetTarget(ctx, toks["local"], session.Target{Network: "unix", Address: "/run/x.sock", Grace: time.Minute}); !ok {
		t.Fatal("target of local not set")
	}
	if ok, _ := cl.coords[0].SetTarget(ctx, toks["nograce"], session.Target{Network: "tcp", Address: "10.1.2.3:1", Shared: true}); !ok {
		t.Fatal("target of nograce not set")
	}
	cl.stores[0].Close() // A dies
	var mu sync.Mutex
	var gone []reservation.Reservation
	var wg sync.WaitGroup
	for _, m := range cl.mgrs[1:] {
		wg.Add(1)
		go func(m *session.Manager) {
			defer wg.Done()
			deadline := time.Now().Add(waitLimit)
			for time.Now().Before(deadline) {
				g := m.Sweep()
				mu.Lock()
				gone = append(gone, g...)
				n := len(gone)
				mu.Unlock()
				if n >= 5 {
					return
				}
				time.Sleep(10 * time.Millisecond) // polling
			}
		}(m)
	}
	wg.Wait()
	got := map[string]string{}
	for _, r := range gone {
		for name, tok := range toks {
			if tok == r.Token {
				if got[name] != "" {
					t.Errorf("%s swept twice", name)
				}
				got[name] = r.State
			}
		}
	}
	want := map[string]string{"running": "adopted", "detached": "adopted", "local": "interrupted", "nograce": "interrupted", "claimed": "interrupted"}
	for name, st := range want {
		if got[name] != st {
			t.Errorf("%s: %q, want %q (all: %v)", name, got[name], st, got)
		}
	}
	ad.mu.Lock()
	askedB, askedC := len(ad.asked["B"]), len(ad.asked["C"])
	for _, rs := range ad.asked {
		for _, r := range rs {
			if r.Replica != "A" || r.Target != shared {
				t.Errorf("asked to adopt %+v", r)
			}
		}
	}
	ad.mu.Unlock()
	if askedB+askedC != 2 {
		t.Fatalf("adoptions asked: B %d, C %d; want 2 in all", askedB, askedC)
	}
	now := cl.clk.Now()
	for _, name := range []string{"running", "detached"} {
		rec, err := cl.coords[1].Lookup(ctx, toks[name])
		if err != nil || rec.State != "detached" || (rec.Replica != "B" && rec.Replica != "C") {
			t.Fatalf("%s after adoption: %+v %v", name, rec, err)
		}
		if d := rec.Expires.Sub(now); d < 39*time.Second || d > 41*time.Second {
			t.Fatalf("%s: grace %s after adoption, want 40 s", name, d)
		}
	}
	// Three slots are free again, two held by the adopted sessions.
	free := 0
	for {
		if _, err := cl.mgrs[1].ReserveFor("desk", "", 0, nil); err != nil {
			break
		}
		free++
	}
	if free != 4 {
		t.Fatalf("%d slots free after the sweep, want 4 (6 minus the 2 adopted)", free)
	}
	// The adopted session reconnects on its adopter and is released from
	// the other replica: its process is stopped, its slot freed.
	rec, _ := cl.coords[1].Lookup(ctx, toks["detached"])
	adopter, other := cl.mgrs[1], cl.mgrs[2]
	if rec.Replica == "C" {
		adopter, other = other, adopter
	}
	ss2, err := adopter.Claim(toks["detached"], 0)
	if err != nil {
		t.Fatalf("reclaiming the adopted session on its adopter: %v", err)
	}
	if ss2.Process() != session.Process(ad.procs[toks["detached"]]) {
		t.Fatal("the adopted session lost its process")
	}
	if _, err := other.Claim(toks["detached"], 0); !errors.Is(err, reservation.ErrBusy) {
		t.Fatalf("a second claim elsewhere: %v", err)
	}
	ctx2, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	if _, err := other.Release(ctx2, toks["detached"], 1000, "done"); err != nil {
		t.Fatal(err)
	}
	if ad.procs[toks["detached"]].stops.Load() != 1 {
		t.Fatal("the adopted session's process was not stopped")
	}
}
