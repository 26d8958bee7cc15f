package jobs

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

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
	prog := writeExe(t, dir, "true.sh", "echo done\n")
	svc := &Service{Name: "s", Count: 1, Cmd: []string{prog}, Params: map[string]*Param{}}
	st, err := store.Open(ctx, filepath.Join(dir, "s.db"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
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
	dir := t.TempDir()
	prog := writeExe(t, dir, "stubborn.sh", "trap '' TERM\nsleep 1000 &\nwhile :; do sleep 0.05; done\n")
	svc := &Service{Name: "s", Count: 2, Cmd: []string{prog}, Params: map[string]*Param{}}
	st, err := store.Open(ctx, filepath.Join(dir, "s.db"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m := newManager(t, dir, st, []*Service{svc}, &memPub{})
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
	err = m.Close(cctx)
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

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
