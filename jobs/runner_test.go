package jobs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"wsgateway/proc"
	"wsgateway/store"
)

// gate holds every store write and event until the test lets it pass.
type gate struct {
	mu      sync.Mutex
	open    bool
	entered chan string
	release chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan string), release: make(chan struct{})} }

func (g *gate) pass(what string) {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	if open {
		return
	}
	g.entered <- what
	<-g.release
}

func (g *gate) openUp() {
	g.mu.Lock()
	g.open = true
	g.mu.Unlock()
}

type gatedStore struct {
	store.Store
	g *gate
}

func (s gatedStore) SaveJob(ctx context.Context, j store.Job) error {
	s.g.pass("saving " + j.ID + " as " + j.State)
	return s.Store.SaveJob(ctx, j)
}

func (s gatedStore) SetQueue(ctx context.Context, ids []string) error {
	s.g.pass("saving the queue")
	return s.Store.SetQueue(ctx, ids)
}

type gatedPub struct {
	g   *gate
	pub *memPub
}

func (p gatedPub) Publish(topic, owner string, data any) {
	if d, ok := data.(map[string]any); ok && topic == "job.state" {
		topic += " " + d["state"].(string)
	}
	p.g.pass("publishing " + topic)
	p.pub.Publish(topic, owner, data)
}

// TestNoStoreWriteOrEventUnderTheLock holds every store write and every
// event of a job's life (queued, starting, running, succeeded) and,
// while one is held, reads the queue and the job: that can only finish if
// the write or the event is not made under the manager's lock.
func TestNoStoreWriteOrEventUnderTheLock(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	svc := shService(t, dir, "echo done\n", 1)
	st := openStore(t, dir)
	g := newGate()
	pub := &memPub{}
	m := newManager(t, dir, gatedStore{st, g}, []*Service{svc}, gatedPub{g, pub})
	m.Start()
	submitted := make(chan error, 1)
	go func() {
		_, err := m.Submit(ctx, "s", "", nil)
		submitted <- err
	}()
	var held []string
	for seen := false; !seen; {
		var what string
		select {
		case what = <-g.entered:
		case <-time.After(20 * time.Second):
			t.Fatalf("the job's life stopped after %v", held)
		}
		held = append(held, what)
		probed := make(chan struct{})
		go func() {
			m.Queue()
			_, _ = m.Get(ctx, "job-1")
			close(probed)
		}()
		select {
		case <-probed:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s is done under the manager's lock (held so far: %v)", what, held)
		}
		seen = what == "publishing job.state succeeded"
		g.release <- struct{}{}
	}
	g.openUp()
	// Whatever else was already waiting at the gate goes through.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-g.entered:
				g.release <- struct{}{}
			case <-stop:
				return
			}
		}
	}()
	if err := <-submitted; err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"saving job-1 as queued", "publishing job.state queued", "saving the queue",
		"saving job-1 as starting", "saving job-1 as running", "saving job-1 as succeeded"} {
		found := false
		for _, h := range held {
			found = found || h == want
		}
		if !found {
			t.Errorf("%q was never held at the gate; held: %v", want, held)
		}
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCloseStopsJobsInParallelByTheDeadline: jobs that ignore SIGTERM,
// a grace of a minute, and a Close bounded by 2 s: Close returns by its
// deadline, the jobs' processes are killed and the jobs are recorded as
// interrupted.
func TestCloseStopsJobsInParallelByTheDeadline(t *testing.T) {
	ctx := context.Background()
	m := shManager(t, "trap '' TERM\nsleep 1000 &\nwhile :; do sleep 0.05; done\n", 2)
	m.cfg.StopGrace = time.Minute
	m.Start()
	a, _ := m.Submit(ctx, "s", "", nil)
	b, _ := m.Submit(ctx, "s", "", nil)
	ga := waitState(t, m, a.ID, StateRunning)
	gb := waitState(t, m, b.ID, StateRunning)

	const deadline = 2 * time.Second
	cctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	t0 := time.Now()
	err := m.Close(cctx)
	took := time.Since(t0)
	if took > deadline+10*time.Second {
		t.Errorf("Close took %v with a deadline of %v and a grace of a minute", took, deadline)
	}
	t.Logf("Close: %v after %v", err, took)
	for _, j := range []Job{ga, gb} {
		got := waitState(t, m, j.ID, StateInterrupted)
		if got.Reason == "" {
			t.Errorf("%s interrupted without a reason", j.ID)
		}
		waitGone(t, j.PID)
	}
}

// submitReady submits n jobs to service "s" and waits for each to run
// and print its "ready" line.
func submitReady(t *testing.T, m *Manager, n int) []Job {
	t.Helper()
	var running []Job
	for range n {
		j, err := m.Submit(context.Background(), "s", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		running = append(running, waitState(t, m, j.ID, StateRunning))
		waitLog(t, m, j.ID, "ready\n")
	}
	return running
}

// waitGone waits for every member of process group pgid (a job's PID),
// not only its leader, to be gone.
func waitGone(t *testing.T, pgid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for proc.Alive(pgid) || proc.GroupAlive(pgid) {
		if time.Now().After(deadline) {
			t.Fatalf("process group %d still running", pgid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lateCtx is a context whose end reaches what is registered on it with
// context.AfterFunc (directly or through a derived context) only when
// propagate is called: the legal interleaving in which a goroutine that
// waits on Done runs, and returns, before the canceling goroutine has
// told the AfterFuncs.
type lateCtx struct {
	context.Context // Background: no deadline, no values
	done            chan struct{}

	mu  sync.Mutex
	n   int
	fns map[int]func()
}

func newLateCtx() *lateCtx {
	return &lateCtx{Context: context.Background(), done: make(chan struct{}), fns: map[int]func(){}}
}

func (c *lateCtx) Done() <-chan struct{} { return c.done }

func (c *lateCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// AfterFunc makes lateCtx an afterFuncer, which the context package
// uses to propagate its end.
func (c *lateCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	id := c.n
	c.fns[id] = f
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.fns[id]
		delete(c.fns, id)
		return ok
	}
}

func (c *lateCtx) end() { close(c.done) }

// propagate runs what is still registered, as a late cancel would.
func (c *lateCtx) propagate() {
	c.mu.Lock()
	fns := c.fns
	c.fns = map[int]func(){}
	c.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

// TestCloseKillsJobsWhenItsContextEndsLate: a Close whose context ends
// while it waits for jobs that survive SIGTERM (the leader and a
// background child), with the end reaching AfterFuncs only after Close has
// returned (as a busy machine may schedule it), still ends every job's
// whole process group long before the grace of a minute, and records the
// jobs as interrupted.
func TestCloseKillsJobsWhenItsContextEndsLate(t *testing.T) {
	m := shManager(t, "trap 'echo TERM >>termed' TERM\n(trap '' TERM; exec sleep 1000) &\necho ready\nwhile :; do sleep 0.05; done\n", 2)
	m.cfg.StopGrace = time.Minute
	m.Start()
	running := submitReady(t, m, 2) // SIGTERM is trapped from now on

	cctx := newLateCtx()
	closed := make(chan error, 1)
	go func() { closed <- m.Close(cctx) }()
	// Once both leaders have had SIGTERM, Close is waiting on them; then
	// end its context.
	for _, j := range running {
		termed := filepath.Join(m.cfg.Dir, j.ID, "termed")
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := os.Stat(termed); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s never got SIGTERM", j.ID)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	cctx.end()
	var err error
	select {
	case err = <-closed:
	case <-time.After(20 * time.Second):
		t.Fatal("Close did not return 20s after its context ended")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want an error wrapping %v", err, context.DeadlineExceeded)
	}
	cctx.propagate()
	for _, j := range running {
		waitGone(t, j.PID)
		if got := waitState(t, m, j.ID, StateInterrupted); got.Reason == "" {
			t.Errorf("%s interrupted without a reason", j.ID)
		}
	}
}

// TestKillRunningKillsEveryGroup: what Close does at its deadline, alone:
// every running job's whole group gets SIGKILL, grace or not.
func TestKillRunningKillsEveryGroup(t *testing.T) {
	ctx := context.Background()
	m := shManager(t, "trap '' TERM\nsleep 1000 &\necho ready\nwhile :; do sleep 0.05; done\n", 2)
	m.cfg.StopGrace = time.Minute
	m.Start()
	running := submitReady(t, m, 2)
	m.killRunning()
	for _, j := range running {
		waitGone(t, j.PID)
		if got := waitState(t, m, j.ID, StateFailed); got.ExitStatus == nil || *got.ExitStatus != 128+9 {
			t.Errorf("%s: exit status %v, want %d (SIGKILL)", j.ID, got.ExitStatus, 128+9)
		}
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestRemoveWaitsForTheLastSave: a job is shown finished as soon as its
// end is decided, before the store has it; a Remove in that moment waits
// for the save, so the save cannot bring the removed job back.
func TestRemoveWaitsForTheLastSave(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStore(t, dir)
	g := newGate()
	m := newManager(t, dir, gatedStore{st, g}, []*Service{shService(t, dir, "exit 0\n", 1)}, gatedPub{g, &memPub{}})
	m.Start()
	go func() { _, _ = m.Submit(ctx, "s", "", nil) }()
	for {
		var what string
		select {
		case what = <-g.entered:
		case <-time.After(20 * time.Second):
			t.Fatal("the job never reached its last save")
		}
		if what == "saving job-1 as succeeded" {
			break
		}
		g.release <- struct{}{}
	}
	// The last save is held: the job is shown finished, the store does
	// not have it yet.
	if j, err := m.Get(ctx, "job-1"); err != nil || j.State != StateSucceeded {
		t.Fatalf("job-1 while its last save is held: %+v %v", j, err)
	}
	removed := make(chan error, 1)
	go func() { removed <- m.Remove(ctx, "job-1") }()
	// A Remove that does not wait for the save deletes the record and
	// announces it at once; give it the time to, then let the save go.
	select {
	case err := <-removed:
		t.Errorf("Remove returned (%v) while the job's last save was held", err)
	case what := <-g.entered:
		t.Errorf("%s while the job's last save was held", what)
		g.release <- struct{}{}
	case <-time.After(500 * time.Millisecond):
	}
	g.openUp()
	g.release <- struct{}{}
	go func() {
		for range g.entered {
			g.release <- struct{}{}
		}
	}()
	select {
	case err := <-removed:
		if err != nil {
			t.Fatalf("Remove: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Remove did not return once the save went through")
	}
	m.flush()
	if _, err := st.GetJob(ctx, "job-1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the store still has the removed job: %v", err)
	}
	if j, err := m.Get(ctx, "job-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of the removed job: %+v %v", j, err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}
