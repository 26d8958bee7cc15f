package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/services"
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
	Supervisor *services.Supervisor
	StopGrace  time.Duration // SIGTERM to SIGKILL; default 5s
	Watchdog   time.Duration // how often running jobs are checked; default 1s
	LogFlush   time.Duration // logs.append batching; default 200ms
	MaxQueued  int           // default 10000
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
	Progress      *Progress                  `json:"progress,omitempty"`
	LogSize       int64                      `json:"log_size"`
	Created       time.Time                  `json:"created"`
	Started       *time.Time                 `json:"started,omitempty"`
	Finished      *time.Time                 `json:"finished,omitempty"`
}

// Manager queues, runs and records jobs.
type Manager struct {
	cfg   Config
	log   zerolog.Logger
	svcs  map[string]*Service
	alive func(pid int) bool

	mu      sync.Mutex
	queue   []*store.Job
	running map[string]*run
	perSvc  map[string]int
	num     int64
	closed  bool
	started bool
	wg      sync.WaitGroup
	stopWD  chan struct{}
}

type run struct {
	rec      *store.Job
	svc      *Service
	pgid     int
	exited   chan struct{}
	output   chan struct{} // closed when the output reader is done
	lw       *logWriter
	stopping string // why it is being stopped ("" : not)
	shutdown bool
	missed   int // watchdog: consecutive checks with the process gone
	finished bool
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
	if len(cfg.Services) > 0 || cfg.Dir != "" {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("job directory: %w", err)
		}
	}
	m := &Manager{cfg: cfg, log: log, svcs: map[string]*Service{}, alive: processAlive,
		running: map[string]*run{}, perSvc: map[string]int{}, stopWD: make(chan struct{})}
	for _, s := range cfg.Services {
		m.svcs[s.Name] = s
	}
	n, err := cfg.Store.MaxJobNum(ctx)
	if err != nil {
		return nil, err
	}
	m.num = n
	was, err := cfg.Store.ListJobs(ctx, store.JobFilter{States: []string{StateStarting, StateRunning}, Limit: 1 << 30})
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	for _, j := range was {
		j.State, j.Reason, j.Finished = StateInterrupted, "the gateway stopped while the job was running", now
		if err := cfg.Store.SaveJob(ctx, j); err != nil {
			return nil, err
		}
		log.Warn().Str("job", j.ID).Msg("job was running when the gateway stopped; marked interrupted")
		m.publishState(&j)
	}
	queued, err := cfg.Store.ListJobs(ctx, store.JobFilter{States: []string{StateQueued}, Limit: 1 << 30})
	if err != nil {
		return nil, err
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
	m.mu.Unlock()
	m.wg.Add(1)
	go m.watchdog()
}

func (m *Manager) view(j *store.Job) Job {
	v := Job{ID: j.ID, Service: j.Service, Owner: j.Owner, State: j.State, ExitStatus: j.Exit, Reason: j.Reason,
		PID: j.PID, Created: j.Created}
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
	if st, err := os.Stat(j.LogPath); err == nil {
		v.LogSize = st.Size()
	}
	if v.Params == nil {
		v.Params = map[string]json.RawMessage{}
	}
	return v
}

func (m *Manager) save(j *store.Job) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.cfg.Store.SaveJob(ctx, *j); err != nil {
		m.log.Error().Err(err).Str("job", j.ID).Msg("job state not saved")
	}
}

func (m *Manager) publishState(j *store.Job) {
	if m.cfg.Events == nil {
		return
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

// queueChanged renumbers the queue, saves it and announces it; m.mu held.
func (m *Manager) queueChanged() {
	ids := make([]string, len(m.queue))
	for i, j := range m.queue {
		j.QueuePos = int64(i + 1)
		ids[i] = j.ID
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.cfg.Store.SetQueue(ctx, ids); err != nil {
		m.log.Error().Err(err).Msg("queue order not saved")
	}
	if m.cfg.Events != nil {
		m.cfg.Events.Publish("queue.changed", "", map[string]any{"queue": ids})
	}
}

// Submit checks params and queues a job.
func (m *Manager) Submit(ctx context.Context, service, owner string, params map[string]json.RawMessage) (Job, error) {
	svc := m.svcs[service]
	if svc == nil {
		return Job{}, fmt.Errorf("%w %q", ErrUnknownService, service)
	}
	argv, full, err := svc.Argv(params)
	if err != nil {
		return Job{}, err
	}
	pj, err := json.Marshal(full)
	if err != nil {
		return Job{}, fmt.Errorf("encoding parameters: %w", err)
	}
	aj, err := json.Marshal(argv)
	if err != nil {
		return Job{}, fmt.Errorf("encoding the command line: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return Job{}, ErrClosed
	}
	if len(m.queue) >= m.cfg.MaxQueued {
		return Job{}, fmt.Errorf("%w (%d jobs wait)", ErrQueueFull, len(m.queue))
	}
	m.num++
	id := fmt.Sprintf("job-%d", m.num)
	j := &store.Job{ID: id, Num: m.num, Service: service, Owner: owner, Params: string(pj), Argv: string(aj),
		State: StateQueued, LogPath: filepath.Join(m.cfg.Dir, id+".log"), Created: time.Now().UTC(),
		QueuePos: int64(len(m.queue) + 1)}
	if err := m.cfg.Store.SaveJob(ctx, *j); err != nil {
		m.num--
		return Job{}, err
	}
	m.queue = append(m.queue, j)
	m.publishState(j)
	m.queueChanged()
	m.log.Info().Str("job", id).Str("service", service).Str("owner", owner).Msg("job queued")
	m.schedule()
	return m.view(j), nil
}

// schedule starts queued jobs, in queue order, while their service has a
// free slot; m.mu held.
func (m *Manager) schedule() {
	if m.closed || !m.started {
		return
	}
	changed := false
	for i := 0; i < len(m.queue); {
		j := m.queue[i]
		svc := m.svcs[j.Service]
		if svc == nil {
			// Its service left the config: it can never run.
			m.queue = append(m.queue[:i], m.queue[i+1:]...)
			j.State, j.Reason, j.Finished, j.QueuePos = StateFailed, "the job service is no longer configured", time.Now().UTC(), 0
			m.save(j)
			m.publishState(j)
			changed = true
			continue
		}
		if m.perSvc[j.Service] >= svc.Count {
			i++
			continue
		}
		m.queue = append(m.queue[:i], m.queue[i+1:]...)
		changed = true
		m.launch(j, svc)
	}
	if changed {
		m.queueChanged()
	}
}

// environ is the job's environment: an allow-list from the gateway's,
// plus what describes the job.
func environ(j *store.Job, dir string) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR", "LSTC_LICENSE", "LSTC_LICENSE_SERVER"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, "WSGW_JOB_ID="+j.ID, "WSGW_SERVICE="+j.Service, "WSGW_JOB_DIR="+dir, "WSGW_PARAMS="+j.Params)
}

// launch starts j; m.mu held.
func (m *Manager) launch(j *store.Job, svc *Service) {
	j.State, j.QueuePos, j.Started = StateStarting, 0, time.Now().UTC()
	m.save(j)
	m.publishState(j)
	fail := func(err error) {
		m.log.Warn().Err(err).Str("job", j.ID).Msg("job did not start")
		j.State, j.Reason, j.Finished = StateFailed, "did not start: "+err.Error(), time.Now().UTC()
		m.save(j)
		m.publishState(j)
	}
	var argv []string
	if err := json.Unmarshal([]byte(j.Argv), &argv); err != nil || len(argv) == 0 {
		fail(fmt.Errorf("stored command line unreadable: %w", err))
		return
	}
	dir := filepath.Join(m.cfg.Dir, j.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fail(fmt.Errorf("working directory: %w", err))
		return
	}
	lf, err := os.OpenFile(j.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fail(fmt.Errorf("log file: %w", err))
		return
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		lf.Close()
		fail(fmt.Errorf("output pipe: %w", err))
		return
	}
	c := m.command(argv)
	c.Dir = dir
	c.Env = environ(j, dir)
	c.Stdout, c.Stderr = pw, pw
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = c.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		lf.Close()
		fail(fmt.Errorf("running %s: %w", argv[0], err))
		return
	}
	r := &run{rec: j, svc: svc, pgid: c.Process.Pid, exited: make(chan struct{}), output: make(chan struct{})}
	r.lw = &logWriter{m: m, id: j.ID, owner: j.Owner, f: lf, progress: newProgressParser(svc.Progress)}
	if st, err := lf.Stat(); err == nil {
		r.lw.size, r.lw.pendingOff = st.Size(), st.Size()
	}
	m.running[j.ID] = r
	m.perSvc[j.Service]++
	j.State, j.PID = StateRunning, r.pgid
	m.save(j)
	m.publishState(j)
	m.log.Info().Str("job", j.ID).Int("pid", r.pgid).Strs("argv", argv).Msg("job running")

	var exitErr error
	m.wg.Add(3)
	go func() {
		defer m.wg.Done()
		r.lw.copy(pr)
		close(r.output)
	}()
	go func() {
		defer m.wg.Done()
		r.lw.flushLoop(m.cfg.LogFlush, r.output)
	}()
	go func() {
		defer m.wg.Done()
		exitErr = c.Wait()
		close(r.exited)
		m.finish(r, c.ProcessState, exitErr)
	}()
}

// command runs argv under the supervisor when there is one.
func (m *Manager) command(argv []string) *exec.Cmd {
	if m.cfg.Supervisor != nil {
		return m.cfg.Supervisor.Command(argv, m.cfg.StopGrace)
	}
	return exec.Command(argv[0], argv[1:]...)
}

// finish records a job's end and starts what the freed slot allows.
func (m *Manager) finish(r *run, ps *os.ProcessState, waitErr error) {
	// Whatever the job left in its group goes with it.
	_ = syscall.Kill(-r.pgid, syscall.SIGKILL)
	select {
	case <-r.output:
	case <-time.After(5 * time.Second):
		m.log.Warn().Str("job", r.rec.ID).Msg("job output still open 5s after it exited")
	}
	r.lw.flush()
	r.lw.f.Close()

	m.mu.Lock()
	defer m.mu.Unlock()
	if r.finished {
		return
	}
	r.finished = true
	j := r.rec
	j.Finished = time.Now().UTC()
	code, sig := -1, 0
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			sig = int(ws.Signal())
		} else {
			code = ps.ExitCode()
		}
	}
	supervised := m.cfg.Supervisor != nil
	switch {
	case r.stopping != "" && r.shutdown:
		j.State, j.Reason = StateInterrupted, r.stopping
	case r.stopping != "":
		j.State, j.Reason = StateStopped, r.stopping
	case sig != 0:
		st := 128 + sig
		j.Exit = &st
		j.State = StateFailed
		if supervised {
			j.Reason = fmt.Sprintf("vanished: the job's process group was killed behind the gateway's back (%s)", syscall.Signal(sig))
		} else {
			j.Reason = fmt.Sprintf("killed by %s", syscall.Signal(sig))
		}
	case code == 0:
		j.State = StateSucceeded
		j.Exit = &code
	default:
		j.State = StateFailed
		if code < 0 && waitErr != nil {
			j.Reason = waitErr.Error()
		} else {
			j.Exit = &code
			j.Reason = fmt.Sprintf("exited with status %d", code)
			if code > 128 && supervised {
				j.Reason = fmt.Sprintf("killed by %s", syscall.Signal(code-128))
			}
		}
	}
	if last := r.lw.cur(); last != nil {
		if b, err := json.Marshal(last); err == nil {
			j.Progress = string(b)
		}
	}
	m.save(j)
	m.publishState(j)
	m.log.Info().Str("job", j.ID).Str("state", j.State).Str("reason", j.Reason).Msg("job finished")
	delete(m.running, j.ID)
	m.perSvc[j.Service]--
	m.schedule()
}

// setProgress records a running job's progress.
func (m *Manager) setProgress(id string, p *Progress) {
	b, err := json.Marshal(p)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.running[id]; ok && !r.finished {
		r.rec.Progress = string(b)
		m.save(r.rec)
	}
}

// markVanished is the watchdog's verdict on a job whose process is gone
// without an exit status; m.mu held.
func (m *Manager) markVanished(r *run) {
	r.finished = true
	j := r.rec
	j.State, j.Finished = StateFailed, time.Now().UTC()
	j.Reason = fmt.Sprintf("vanished: process %d is gone and no exit status came", r.pgid)
	m.save(j)
	m.publishState(j)
	m.log.Warn().Str("job", j.ID).Int("pid", r.pgid).Msg("watchdog: job process vanished")
	delete(m.running, j.ID)
	m.perSvc[j.Service]--
	_ = syscall.Kill(-r.pgid, syscall.SIGKILL)
	m.schedule()
}

// watchdog checks every running job's process; one gone for two checks
// in a row without the runner seeing it exit is marked failed.
func (m *Manager) watchdog() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.Watchdog)
	defer t.Stop()
	for {
		select {
		case <-m.stopWD:
			return
		case <-t.C:
		}
		m.mu.Lock()
		for _, r := range m.running {
			select {
			case <-r.exited:
				continue // the runner is finishing it
			default:
			}
			if m.alive(r.pgid) {
				r.missed = 0
				continue
			}
			r.missed++
			if r.missed >= 2 {
				m.markVanished(r)
			}
		}
		m.mu.Unlock()
	}
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	return s[i+2] != 'Z' && s[i+2] != 'X'
}

// Get returns a job.
func (m *Manager) Get(ctx context.Context, id string) (Job, error) {
	m.mu.Lock()
	if r, ok := m.running[id]; ok {
		v := m.view(r.rec)
		if r.lw.cur() != nil {
			v.Progress = r.lw.cur()
		}
		m.mu.Unlock()
		return v, nil
	}
	for _, j := range m.queue {
		if j.ID == id {
			v := m.view(j)
			m.mu.Unlock()
			return v, nil
		}
	}
	m.mu.Unlock()
	j, err := m.cfg.Store.GetJob(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Job{}, fmt.Errorf("%w %q", ErrNotFound, id)
	}
	if err != nil {
		return Job{}, err
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
	m.mu.Lock()
	for i := range out {
		if r, ok := m.running[out[i].ID]; ok && r.lw.cur() != nil {
			out[i].Progress = r.lw.cur()
		}
	}
	m.mu.Unlock()
	return out, nil
}

// Queue returns the queued jobs in the order they will start.
func (m *Manager) Queue() []Job {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Job, 0, len(m.queue))
	for _, j := range m.queue {
		out = append(out, m.view(j))
	}
	return out
}

// Move puts a queued job at position (1: next to start; beyond the end:
// last) and returns the new queue.
func (m *Manager) Move(id string, position int) ([]Job, error) {
	m.mu.Lock()
	idx := -1
	for i, j := range m.queue {
		if j.ID == id {
			idx = i
		}
	}
	if idx < 0 {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %q", ErrNotQueued, id)
	}
	j := m.queue[idx]
	m.queue = append(m.queue[:idx], m.queue[idx+1:]...)
	pos := position - 1
	if pos < 0 {
		pos = 0
	}
	if pos > len(m.queue) {
		pos = len(m.queue)
	}
	m.queue = append(m.queue[:pos], append([]*store.Job{j}, m.queue[pos:]...)...)
	m.queueChanged()
	m.schedule()
	m.mu.Unlock()
	return m.Queue(), nil
}

// Stop stops a job: a queued one leaves the queue, a running one gets
// SIGTERM on its process group, then SIGKILL after the grace period. It
// waits, bounded by ctx, for a running job to end.
func (m *Manager) Stop(ctx context.Context, id, who string) (Job, error) {
	reason := "stopped"
	if who != "" {
		reason = "stopped by " + who
	}
	m.mu.Lock()
	for i, j := range m.queue {
		if j.ID == id {
			m.queue = append(m.queue[:i], m.queue[i+1:]...)
			j.State, j.Reason, j.Finished, j.QueuePos = StateStopped, reason+" while queued", time.Now().UTC(), 0
			m.save(j)
			m.publishState(j)
			m.queueChanged()
			v := m.view(j)
			m.mu.Unlock()
			return v, nil
		}
	}
	r, ok := m.running[id]
	if !ok {
		m.mu.Unlock()
		v, err := m.Get(ctx, id)
		return v, err // a finished job: stopping it again changes nothing
	}
	if r.stopping == "" {
		r.stopping = reason
		m.kill(r)
	}
	m.mu.Unlock()
	select {
	case <-r.exited:
	case <-ctx.Done():
	}
	// finish may still be recording it: wait for that, briefly.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		m.mu.Lock()
		_, still := m.running[id]
		m.mu.Unlock()
		if !still {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return m.Get(ctx, id)
}

// kill escalates SIGTERM to SIGKILL on r's process group.
func (m *Manager) kill(r *run) {
	pg := r.pgid
	_ = syscall.Kill(-pg, syscall.SIGTERM)
	grace := m.cfg.StopGrace
	if m.cfg.Supervisor != nil {
		grace += 2 * time.Second // the supervisor escalates at grace itself
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		select {
		case <-r.exited:
		case <-time.After(grace):
			m.log.Warn().Str("job", r.rec.ID).Int("pid", pg).Msg("job ignored SIGTERM; sending SIGKILL")
			_ = syscall.Kill(-pg, syscall.SIGKILL)
		}
	}()
}

// Remove deletes a finished job's record, log and working directory.
func (m *Manager) Remove(ctx context.Context, id string) error {
	j, err := m.Get(ctx, id)
	if err != nil {
		return err
	}
	if !Finished(j.State) {
		return fmt.Errorf("%w: %s is %s; stop it first", ErrNotFinished, id, j.State)
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
	j, err := m.Get(ctx, id)
	if err != nil {
		return LogChunk{}, err
	}
	if limit <= 0 || limit > MaxLogRead {
		limit = MaxLogRead
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

// Close stops running jobs (they are marked interrupted; queued jobs stay
// queued for the next start) and waits, bounded by ctx.
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
	for _, r := range m.running {
		if r.stopping == "" {
			r.stopping, r.shutdown = "the gateway shut down while the job was running", true
			m.kill(r)
		}
	}
	m.mu.Unlock()
	done := make(chan struct{})
	go func() { m.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("jobs did not stop in time: %w", ctx.Err())
	}
}
