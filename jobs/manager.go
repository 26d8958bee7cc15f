package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/proc"
	"wsgateway/store"
)

// Job states.
const (
	StateQueued      = "queued"
	StateStarting    = "starting"
	StateRunning     = "running"
	StateSucceeded   = "succeeded"
	StateFailed      = "failed"
	StateStopped     = "stopped"
	StateInterrupted = "interrupted"
)

// Finished reports whether state is final.
func Finished(state string) bool {
	switch state {
	case StateSucceeded, StateFailed, StateStopped, StateInterrupted:
		return true
	}
	return false
}

// Errors a client can act on.
var (
	ErrNotFound       = errors.New("no such job")
	ErrUnknownService = errors.New("unknown job service")
	ErrNotFinished    = errors.New("job has not finished")
	ErrNotQueued      = errors.New("job is not queued")
	ErrQueueFull      = errors.New("job queue is full")
	ErrClosed         = errors.New("job manager is shutting down")
)

// Publisher receives events (the events hub).
type Publisher interface {
	Publish(topic, owner string, data any)
}

// Config configures a Manager.
type Config struct {
	Services   []*Service
	Store      store.Store
	Events     Publisher
	Dir        string // logs (Dir/<id>.log) and working directories (Dir/<id>/)
	Supervisor *proc.Supervisor
	EnvPolicy  proc.Policy   // the jobs' environment (zero: the built-in allowlist)
	StopGrace  time.Duration // SIGTERM to SIGKILL; default 5s
	Watchdog   time.Duration // how often running jobs are checked; default 1s
	LogFlush   time.Duration // logs.append batching; default 200ms
	MaxQueued  int           // default 10000
	// KeepFinished is how many finished jobs are kept (the newest); older
	// ones are pruned: record, log and working directory. 0 keeps all.
	KeepFinished int
	// KeepFor is how long a finished job is kept after it ended; 0
	// keeps it until KeepFinished prunes it.
	KeepFor time.Duration
	// PruneEvery is how often the retention is applied besides after
	// each job's end (default 1 min).
	PruneEvery time.Duration

	// Replica names this gateway among the replicas sharing the store's
	// job queue (shared.go); "" keeps the queue in memory, for a gateway
	// alone on its store.
	Replica string
	// LiveReplicas returns the replicas whose lease is live (shared queue:
	// the running jobs of the others are interrupted).
	LiveReplicas func(ctx context.Context) (map[string]string, error)
	// Remote reaches the replica running a job (shared queue).
	Remote Remote
	// ClaimEvery is how often a replica looks for a queued job it may
	// start, besides when it is told (default 500ms).
	ClaimEvery time.Duration
}

// Job is what clients see of a job.
type Job struct {
	ID            string                     `json:"id"`
	Service       string                     `json:"service"`
	Owner         string                     `json:"owner,omitempty"`
	State         string                     `json:"state"`
	Params        map[string]json.RawMessage `json:"params"`
	Argv          []string                   `json:"argv"`
	QueuePosition int                        `json:"queue_position,omitempty"`
	ExitStatus    *int                       `json:"exit_status,omitempty"`
	Reason        string                     `json:"reason,omitempty"`
	PID           int                        `json:"pid,omitempty"`
	Replica       string                     `json:"replica,omitempty"`
	Progress      *Progress                  `json:"progress,omitempty"`
	// LogSize is the size of the job's log: absent when its log is on
	// another replica that was not asked (List) or could not be reached.
	LogSize  *int64     `json:"log_size,omitempty"`
	Created  time.Time  `json:"created"`
	Started  *time.Time `json:"started,omitempty"`
	Finished *time.Time `json:"finished,omitempty"`
}

// Manager queues, runs and records jobs. The queue (queue.go) and the
// runner (runner.go) share one lock, m.mu, under which every decision is
// made; what a decision implies (saving to the store, publishing an event,
// starting or stopping a process) is queued in m.pending under the lock
// and carried out by flush after the lock is released, in the order the
// decisions were made.
type Manager struct {
	cfg   Config
	log   zerolog.Logger
	svcs  map[string]*Service
	alive func(pid int) bool

	// stopCtx bounds the stopping of jobs; Close cancels it when its own
	// context ends, which turns every stop still in its grace into SIGKILL.
	stopCtx    context.Context
	stopCancel context.CancelFunc

	drainMu  sync.Mutex // held by the one goroutine running pending effects
	submitMu sync.Mutex // Submits take turns (taken before mu)
	claimMu  sync.Mutex // shared queue: a claim and its launch, or a Stop (taken before mu)
	claimNow chan struct{}
	claimErr bool // the last claim failed (logged once until one works)

	mu       sync.Mutex
	pending  []func() // effects decided under mu, run by flush in order
	queue    []*store.Job
	reserved int // places taken in the queue by Submits still saving
	running  map[string]*run
	unsaved  map[string]unsavedJob // decided, not yet in the store
	lost     map[string]bool       // shared queue: jobs another replica ended under this one
	resave   map[string]store.Job  // shared queue: ends not saved yet (the store was away)
	saveSeq  uint64
	perSvc   map[string]int
	num      int64
	closed   bool
	started  bool
	wg       sync.WaitGroup
	stopWD   chan struct{}
	pruneNow chan struct{} // a job ended: apply the retention soon
}

// New restores the manager's state from the store: jobs that were running
// are marked interrupted, queued jobs keep their order. Call Start to run
// them.
func New(ctx context.Context, cfg Config, log zerolog.Logger) (*Manager, error) {
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 5 * time.Second
	}
	if cfg.Watchdog <= 0 {
		cfg.Watchdog = time.Second
	}
	if cfg.LogFlush <= 0 {
		cfg.LogFlush = 200 * time.Millisecond
	}
	if cfg.MaxQueued <= 0 {
		cfg.MaxQueued = 10000
	}
	if cfg.ClaimEvery <= 0 {
		cfg.ClaimEvery = 500 * time.Millisecond
	}
	if cfg.PruneEvery <= 0 {
		// Often enough that a job outlives KeepFor by half of it at most.
		cfg.PruneEvery = time.Minute
		if cfg.KeepFor > 0 {
			cfg.PruneEvery = min(cfg.PruneEvery, max(cfg.KeepFor/2, 100*time.Millisecond))
		}
	}
	if len(cfg.Services) > 0 || cfg.Dir != "" {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("job directory: %w", err)
		}
	}
	m := &Manager{cfg: cfg, log: log, svcs: map[string]*Service{}, alive: proc.Alive,
		running: map[string]*run{}, unsaved: map[string]unsavedJob{}, lost: map[string]bool{}, resave: map[string]store.Job{}, perSvc: map[string]int{}, stopWD: make(chan struct{}),
		pruneNow: make(chan struct{}, 1), claimNow: make(chan struct{}, 1)}
	m.stopCtx, m.stopCancel = context.WithCancel(context.Background())
	for _, s := range cfg.Services {
		m.svcs[s.Name] = s
	}
	if m.shared() {
		if err := m.restoreShared(ctx); err != nil {
			return nil, err
		}
		return m, nil
	}
	n, err := cfg.Store.MaxJobNum(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the job numbers: %w", err)
	}
	m.num = n
	was, err := cfg.Store.ListJobs(ctx, store.JobFilter{States: []string{StateStarting, StateRunning}, Limit: 1 << 30})
	if err != nil {
		return nil, fmt.Errorf("reading the jobs that were running: %w", err)
	}
	now := time.Now().UTC()
	for _, j := range was {
		j.State, j.Reason, j.Finished = StateInterrupted, "the gateway stopped while the job was running", now
		if err := cfg.Store.SaveJob(ctx, j); err != nil {
			return nil, fmt.Errorf("marking %s interrupted: %w", j.ID, err)
		}
		log.Warn().Str("job", j.ID).Msg("job was running when the gateway stopped; marked interrupted")
		m.publishState(&j)
	}
	queued, err := cfg.Store.ListJobs(ctx, store.JobFilter{States: []string{StateQueued}, Limit: 1 << 30})
	if err != nil {
		return nil, fmt.Errorf("reading the queue: %w", err)
	}
	for i := range queued {
		j := queued[i]
		m.queue = append(m.queue, &j)
	}
	return m, nil
}

// Services returns the job services, by name.
func (m *Manager) Services() []*Service {
	out := make([]*Service, 0, len(m.svcs))
	for _, s := range m.svcs {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Service returns a job service, or nil.
func (m *Manager) Service(name string) *Service { return m.svcs[name] }

// Start starts queued jobs that have a free slot, and the watchdog.
func (m *Manager) Start() {
	m.mu.Lock()
	m.started = true
	m.schedule()
	m.wg.Add(2)
	if m.shared() {
		m.wg.Add(1)
		go m.claimer()
	}
	m.mu.Unlock()
	m.flush()
	go m.watchdog()
	go m.pruner()
}

// pruner applies the retention at start, after jobs end and every
// PruneEvery, until Close.
func (m *Manager) pruner() {
	defer m.wg.Done()
	if m.cfg.KeepFinished <= 0 && m.cfg.KeepFor <= 0 {
		return
	}
	t := time.NewTicker(m.cfg.PruneEvery)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(m.stopCtx, time.Minute)
		if _, err := m.Prune(ctx, time.Now()); err != nil && ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("finished jobs not pruned")
		}
		cancel()
		select {
		case <-m.stopWD:
			return
		case <-t.C:
		case <-m.pruneNow:
		}
	}
}

// Prune removes the finished jobs the retention no longer keeps, as of
// now: beyond the newest KeepFinished, or ended more than KeepFor ago.
// Each goes as jobs.remove does: record, log, working directory, and a
// "removed" job.state event. It returns how many went.
func (m *Manager) Prune(ctx context.Context, now time.Time) (int, error) {
	if m.cfg.KeepFinished <= 0 && m.cfg.KeepFor <= 0 {
		return 0, nil
	}
	fin, err := m.cfg.Store.ListJobs(ctx, store.JobFilter{
		States: []string{StateSucceeded, StateFailed, StateStopped, StateInterrupted}, Limit: 1 << 30})
	if err != nil {
		return 0, fmt.Errorf("listing finished jobs: %w", err)
	}
	var live map[string]string
	if m.shared() && m.cfg.LiveReplicas != nil {
		live, _ = m.cfg.LiveReplicas(ctx)
	}
	n := 0
	for i, j := range fin { // newest first
		old := m.cfg.KeepFor > 0 && !j.Finished.IsZero() && now.Sub(j.Finished) > m.cfg.KeepFor
		over := m.cfg.KeepFinished > 0 && i >= m.cfg.KeepFinished
		if !old && !over {
			continue
		}
		if _, ok := live[j.Replica]; !m.mine(&j) && (ok || live == nil) {
			continue // its replica prunes it (its log is on that replica's disk)
		}
		if err := m.Remove(ctx, j.ID); err != nil && !errors.Is(err, ErrNotFound) {
			return n, fmt.Errorf("pruning %s: %w", j.ID, err)
		}
		n++
	}
	if n > 0 {
		m.log.Info().Int("pruned", n).Int("keep", m.cfg.KeepFinished).Dur("keep_for", m.cfg.KeepFor).Msg("finished jobs pruned")
	}
	return n, nil
}

// pruneSoon wakes the pruner (a job ended).
func (m *Manager) pruneSoon() {
	select {
	case m.pruneNow <- struct{}{}:
	default:
	}
}

// later queues an effect; m.mu held.
func (m *Manager) later(f func()) { m.pending = append(m.pending, f) }

// unsavedJob is a job's newest state while its save is pending, so that
// readers see what was decided even before the store has it.
type unsavedJob struct {
	job store.Job
	seq uint64
}

// saveLater queues saving a copy of j as it is now; m.mu held.
func (m *Manager) saveLater(j *store.Job) {
	c := *j
	m.saveSeq++
	seq := m.saveSeq
	m.unsaved[c.ID] = unsavedJob{job: c, seq: seq}
	m.later(func() {
		m.save(&c)
		m.mu.Lock()
		if u, ok := m.unsaved[c.ID]; ok && u.seq == seq {
			delete(m.unsaved, c.ID)
		}
		m.mu.Unlock()
	})
}

// publishLater queues a job.state event for j as it is now; m.mu held.
func (m *Manager) publishLater(j *store.Job) {
	c := *j
	m.later(func() { m.publishState(&c) })
}

// flush runs the pending effects, in the order they were decided, with
// m.mu released. Effects may decide more (under m.mu); those run too
// before flush returns. Call it after every unlock that may have queued
// effects, never with m.mu held and never from an effect.
func (m *Manager) flush() {
	m.drainMu.Lock()
	defer m.drainMu.Unlock()
	for {
		m.mu.Lock()
		fx := m.pending
		m.pending = nil
		m.mu.Unlock()
		if len(fx) == 0 {
			return
		}
		for _, f := range fx {
			f()
		}
	}
}

func (m *Manager) view(j *store.Job) Job {
	v := Job{ID: j.ID, Service: j.Service, Owner: j.Owner, State: j.State, ExitStatus: j.Exit, Reason: j.Reason,
		PID: j.PID, Replica: j.Replica, Created: j.Created}
	_ = json.Unmarshal([]byte(j.Params), &v.Params)
	_ = json.Unmarshal([]byte(j.Argv), &v.Argv)
	if j.Progress != "" {
		var p Progress
		if json.Unmarshal([]byte(j.Progress), &p) == nil {
			v.Progress = &p
		}
	}
	if !j.Started.IsZero() {
		t := j.Started
		v.Started = &t
	}
	if !j.Finished.IsZero() {
		t := j.Finished
		v.Finished = &t
	}
	if j.State == StateQueued {
		v.QueuePosition = int(j.QueuePos)
	}
	if m.mine(j) {
		// Its log is on this disk (on its replica's otherwise: Get asks).
		var n int64
		if st, err := os.Stat(j.LogPath); err == nil {
			n = st.Size()
		}
		v.LogSize = &n
	}
	if v.Params == nil {
		v.Params = map[string]json.RawMessage{}
	}
	return v
}

func (m *Manager) save(j *store.Job) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if m.shared() {
		ok, err := m.cfg.Store.UpdateJob(ctx, *j, Finished(j.State))
		if err != nil {
			m.log.Error().Err(err).Str("job", j.ID).Msg("job state not saved")
			if Finished(j.State) {
				// Its place stays taken in the store until this is saved:
				// the watchdog tries again.
				m.mu.Lock()
				m.resave[j.ID] = *j
				m.mu.Unlock()
			}
		} else if !ok {
			m.lostJob(j.ID, j.State)
		}
		return
	}
	if err := m.cfg.Store.SaveJob(ctx, *j); err != nil {
		m.log.Error().Err(err).Str("job", j.ID).Msg("job state not saved")
	}
}

func (m *Manager) publishState(j *store.Job) {
	if m.cfg.Events == nil {
		return
	}
	if m.shared() && m.mine(j) {
		m.mu.Lock()
		lost := m.lost[j.ID]
		m.mu.Unlock()
		if lost {
			return // another replica ended it and said so
		}
	}
	d := map[string]any{"id": j.ID, "service": j.Service, "state": j.State}
	if j.Exit != nil {
		d["exit_status"] = *j.Exit
	}
	if j.Reason != "" {
		d["reason"] = j.Reason
	}
	m.cfg.Events.Publish("job.state", j.Owner, d)
}

// Get returns a job (jobs.get): for one on another replica it asks that
// replica for its log's size. The Manager's own answers (a submission,
// a stop, a removal) use get, which does not.
func (m *Manager) Get(ctx context.Context, id string) (Job, error) {
	v, err := m.get(ctx, id)
	if err != nil || v.LogSize != nil || m.cfg.Remote == nil || v.Replica == "" {
		return v, err
	}
	// The log is on the replica that runs the job: ask it for the size
	// (a read from past the end brings no data), briefly; unknown if it
	// does not answer.
	ctx, cancel := context.WithTimeout(ctx, remoteSizeWait)
	defer cancel()
	if c, err := m.cfg.Remote.ReadLog(ctx, v.Replica, id, math.MaxInt64, 1); err == nil {
		v.LogSize = &c.Size
	}
	return v, nil
}

// remoteSizeWait bounds the question Get asks another replica.
const remoteSizeWait = 2 * time.Second

// get is Get without asking another replica for the log's size.
func (m *Manager) get(ctx context.Context, id string) (Job, error) {
	m.mu.Lock()
	if r, ok := m.running[id]; ok {
		rec := *r.rec
		m.mu.Unlock()
		v := m.view(&rec)
		if p := r.lw.cur(); p != nil {
			v.Progress = p
		}
		return v, nil
	}
	for _, j := range m.queue {
		if j.ID == id {
			rec := *j
			m.mu.Unlock()
			return m.view(&rec), nil
		}
	}
	if u, ok := m.unsaved[id]; ok {
		m.mu.Unlock()
		return m.view(&u.job), nil
	}
	if j, ok := m.resave[id]; ok {
		m.mu.Unlock()
		return m.view(&j), nil
	}
	m.mu.Unlock()
	j, err := m.cfg.Store.GetJob(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Job{}, fmt.Errorf("%w %q", ErrNotFound, id)
	}
	if err != nil {
		return Job{}, fmt.Errorf("reading job %s: %w", id, err)
	}
	return m.view(&j), nil
}

// Filter selects jobs for List.
type Filter struct {
	States  []string
	Service string
	Owner   *string
	Limit   int
}

// List returns jobs, newest first.
func (m *Manager) List(ctx context.Context, f Filter) ([]Job, error) {
	js, err := m.cfg.Store.ListJobs(ctx, store.JobFilter{States: f.States, Service: f.Service, Owner: f.Owner, Limit: f.Limit})
	if err != nil {
		return nil, err
	}
	out := make([]Job, 0, len(js))
	for i := range js {
		out = append(out, m.view(&js[i]))
	}
	newer := map[int]store.Job{}
	m.mu.Lock()
	for i := range out {
		if u, ok := m.unsaved[out[i].ID]; ok {
			newer[i] = u.job
		} else if j, ok := m.resave[out[i].ID]; ok {
			newer[i] = j
		}
		if r, ok := m.running[out[i].ID]; ok {
			if p := r.lw.cur(); p != nil {
				out[i].Progress = p
			}
		}
	}
	m.mu.Unlock()
	for i, j := range newer {
		progress := out[i].Progress
		out[i] = m.view(&j)
		if progress != nil {
			out[i].Progress = progress
		}
	}
	return out, nil
}

// Remove deletes a finished job's record, log and working directory.
func (m *Manager) Remove(ctx context.Context, id string) error {
	// A job is shown finished once its end is decided; its last save may
	// still be pending, and would bring the record back after the delete.
	m.flush()
	j, err := m.get(ctx, id)
	if err != nil {
		return err
	}
	if !Finished(j.State) {
		return fmt.Errorf("%w: %s is %s; stop it first", ErrNotFinished, id, j.State)
	}
	if m.shared() && j.Replica != "" && j.Replica != m.cfg.Replica && m.cfg.Remote != nil {
		// Its log and directory are on its replica's disk.
		err := m.cfg.Remote.Remove(ctx, j.Replica, id)
		if err == nil || !errors.Is(err, ErrReplicaGone) || m.replicaLive(ctx, j.Replica) {
			return err
		}
		m.log.Warn().Err(err).Str("job", id).Str("replica", j.Replica).Msg("removing a job whose replica is gone: its log stays on that replica's disk")
	}
	if err := m.cfg.Store.DeleteJob(ctx, id); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(m.cfg.Dir, id+".log"))
	_ = os.RemoveAll(filepath.Join(m.cfg.Dir, id))
	if m.cfg.Events != nil {
		m.cfg.Events.Publish("job.state", j.Owner, map[string]any{"id": id, "service": j.Service, "state": "removed"})
	}
	return nil
}

// LogChunk is a piece of a job's log.
type LogChunk struct {
	ID         string `json:"id"`
	Offset     int64  `json:"offset"`
	NextOffset int64  `json:"next_offset"`
	Size       int64  `json:"size"`
	Data       string `json:"data"`
	// Complete: the job has finished and the chunk reaches the end of
	// its log.
	Complete bool `json:"complete"`
}

// MaxLogRead bounds one logs.read.
const MaxLogRead = 1 << 20

// ReadLog reads up to limit bytes of a job's log from offset.
func (m *Manager) ReadLog(ctx context.Context, id string, offset, limit int64) (LogChunk, error) {
	j, err := m.get(ctx, id)
	if err != nil {
		return LogChunk{}, err
	}
	if limit <= 0 || limit > MaxLogRead {
		limit = MaxLogRead
	}
	if m.shared() && j.Replica != "" && j.Replica != m.cfg.Replica {
		if m.cfg.Remote == nil {
			return LogChunk{}, fmt.Errorf("%w: the log of %s is on replica %s", ErrReplicaGone, id, j.Replica)
		}
		return m.cfg.Remote.ReadLog(ctx, j.Replica, id, offset, limit)
	}
	c := LogChunk{ID: id, Offset: offset, NextOffset: offset}
	f, err := os.Open(filepath.Join(m.cfg.Dir, id+".log"))
	if errors.Is(err, os.ErrNotExist) {
		c.Complete = Finished(j.State)
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("reading the log of %s: %w", id, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return c, fmt.Errorf("reading the log of %s: %w", id, err)
	}
	c.Size = st.Size()
	if offset > c.Size {
		offset = c.Size
		c.Offset, c.NextOffset = offset, offset
	}
	buf := make([]byte, min(limit, c.Size-offset))
	n, err := f.ReadAt(buf, offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return c, fmt.Errorf("reading the log of %s: %w", id, err)
	}
	c.Data = string(buf[:n])
	c.NextOffset = offset + int64(n)
	c.Complete = Finished(j.State) && c.NextOffset >= c.Size
	return c, nil
}

// Close stops running jobs in parallel (they are marked interrupted;
// queued jobs stay queued for the next start) and waits for them, bounded
// by ctx: when ctx ends, every job still in its grace gets SIGKILL and
// Close returns.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	if m.started {
		close(m.stopWD)
	}
	var stops []*run
	for _, r := range m.running {
		if r.stopping == "" {
			r.stopping, r.shutdown = "the gateway shut down while the job was running", true
			if r.p != nil {
				stops = append(stops, r)
				m.wg.Add(1)
			}
		}
	}
	m.mu.Unlock()
	for _, r := range stops {
		go m.stopRun(r)
	}
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	// Close acts on its deadline itself, not through context.AfterFunc:
	// an AfterFunc unregistered once Done is seen may never run (ctx's
	// cancel closes Done before it reaches the AfterFunc), and the jobs
	// would run out their whole grace. Every stop still in its grace turns
	// into SIGKILL, and every group still running gets it before Close
	// returns, since the gateway may exit right after.
	m.stopCancel()
	m.killRunning()
	return fmt.Errorf("jobs did not stop in time: %w", ctx.Err())
}

// killRunning sends SIGKILL to the process group of every job that has a
// process and has not finished.
func (m *Manager) killRunning() {
	m.mu.Lock()
	var ps []*proc.Process
	for _, r := range m.running {
		if r.p != nil {
			ps = append(ps, r.p)
		}
	}
	m.mu.Unlock()
	for _, p := range ps {
		p.Kill()
	}
}
