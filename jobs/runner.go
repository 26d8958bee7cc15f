package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"wsgateway/proc"
	"wsgateway/store"
)

// The runner: starting a job's process through package proc, its output
// and progress, the watchdog, stopping, and recording the end. Decisions
// are made under m.mu; saves, events, forks and signals run after it is
// released (see Manager.flush).

// run is a job that has left the queue and not yet finished.
type run struct {
	rec      *store.Job
	p        *proc.Process // nil until started
	output   chan struct{} // closed when the output reader is done
	done     chan struct{} // closed when the job's end is saved and announced
	lw       *logWriter
	stopping string // why it is being stopped ("" : not)
	shutdown bool
	missed   int // watchdog: consecutive checks with the process gone
	finished bool
}

// launchLater marks j starting and queues its launch; m.mu held.
func (m *Manager) launchLater(j *store.Job, svc *Service) {
	j.State, j.QueuePos, j.Started = StateStarting, 0, time.Now().UTC()
	if m.shared() {
		j.Replica, j.LogPath = m.cfg.Replica, m.logPath(j.ID)
	}
	r := &run{rec: j, output: make(chan struct{}), done: make(chan struct{})}
	r.lw = &logWriter{m: m, id: j.ID, owner: j.Owner, progress: newProgressParser(svc.Progress)}
	m.running[j.ID] = r
	m.perSvc[j.Service]++
	m.saveLater(j)
	m.publishLater(j)
	m.wg.Add(1) // done by the launch, or by the goroutine that waits for the job
	m.later(func() { m.launch(r) })
}

// environ is a job's own variables, added by proc to the allow-listed
// environment.
func environ(j *store.Job, dir string) []string {
	return []string{"WSGW_JOB_ID=" + j.ID, "WSGW_SERVICE=" + j.Service, "WSGW_JOB_DIR=" + dir, "WSGW_PARAMS=" + j.Params}
}

// launch starts r's process; an effect, run without m.mu.
func (m *Manager) launch(r *run) {
	m.mu.Lock()
	if r.stopping != "" {
		// Stopped, or the gateway is shutting down, before it started.
		state := StateStopped
		if r.shutdown {
			state = StateInterrupted
		}
		m.endLocked(r, state, r.stopping, nil)
		m.mu.Unlock()
		m.wg.Done()
		return
	}
	j := r.rec
	id, argvJSON, logPath := j.ID, j.Argv, j.LogPath
	dir := filepath.Join(m.cfg.Dir, id)
	own := environ(j, dir)
	m.mu.Unlock()
	fail := func(err error) {
		m.log.Warn().Err(err).Str("job", id).Msg("job did not start")
		m.mu.Lock()
		m.endLocked(r, StateFailed, "did not start: "+err.Error(), nil)
		m.mu.Unlock()
		m.wg.Done()
	}
	var argv []string
	if err := json.Unmarshal([]byte(argvJSON), &argv); err != nil || len(argv) == 0 {
		fail(fmt.Errorf("stored command line unreadable: %w", err))
		return
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fail(fmt.Errorf("working directory: %w", err))
		return
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
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
	p, err := proc.Start(proc.Spec{
		Argv:            argv,
		Dir:             dir,
		Env:             own,
		Policy:          m.cfg.EnvPolicy,
		Stdout:          pw,
		Stderr:          pw,
		Supervisor:      m.cfg.Supervisor,
		Grace:           m.cfg.StopGrace,
		KillGroupOnExit: true,
	})
	pw.Close()
	if err != nil {
		pr.Close()
		lf.Close()
		fail(err)
		return
	}
	r.lw.f = lf
	if st, err := lf.Stat(); err == nil {
		r.lw.size, r.lw.pendingOff = st.Size(), st.Size()
	}

	m.mu.Lock()
	r.p = p
	j.State, j.PID = StateRunning, p.PID()
	m.saveLater(j)
	m.publishLater(j)
	stopNow := r.stopping != "" // stopped while it was being started
	if stopNow {
		m.wg.Add(1)
	}
	m.wg.Add(2)
	m.mu.Unlock()
	m.log.Info().Str("job", id).Int("pid", p.PID()).Strs("argv", argv).Msg("job running")

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
		defer m.wg.Done() // the launch's count
		<-p.Exited()
		m.finish(r)
	}()
	if stopNow {
		go m.stopRun(r)
	}
}

// stopRun ends r's process group: SIGTERM, the grace, SIGKILL (at once
// once the manager's stop context ends). The caller has added to m.wg.
func (m *Manager) stopRun(r *run) {
	defer m.wg.Done()
	if err := r.p.Stop(m.stopCtx); err != nil {
		m.log.Warn().Err(err).Str("job", r.rec.ID).Msg("job process group not stopped")
	}
}

// finish records a job's end once its process has exited, and starts
// what the freed slot allows.
func (m *Manager) finish(r *run) {
	select {
	case <-r.output:
	case <-time.After(5 * time.Second):
		m.log.Warn().Str("job", r.rec.ID).Msg("job output still open 5s after it exited")
	}
	r.lw.flush()
	r.lw.f.Close()

	ps, waitErr := r.p.ProcessState(), r.p.ExitErr()
	code, sig := -1, 0
	if ps != nil {
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			sig = int(ws.Signal())
		} else {
			code = ps.ExitCode()
		}
	}
	supervised := r.p.Supervised()

	m.mu.Lock()
	if r.finished {
		m.mu.Unlock()
		return
	}
	var state, reason string
	var exit *int
	switch {
	case r.stopping != "" && r.shutdown:
		state, reason = StateInterrupted, r.stopping
	case r.stopping != "":
		state, reason = StateStopped, r.stopping
	case sig != 0:
		st := 128 + sig
		exit, state = &st, StateFailed
		if supervised {
			reason = fmt.Sprintf("vanished: the job's process group was killed behind the gateway's back (%s)", syscall.Signal(sig))
		} else {
			reason = fmt.Sprintf("killed by %s", syscall.Signal(sig))
		}
	case code == 0:
		exit, state = &code, StateSucceeded
	default:
		state = StateFailed
		if code < 0 && waitErr != nil {
			reason = waitErr.Error()
		} else {
			exit = &code
			reason = fmt.Sprintf("exited with status %d", code)
			if code > 128 && supervised {
				reason = fmt.Sprintf("killed by %s", syscall.Signal(code-128))
			}
		}
	}
	m.endLocked(r, state, reason, exit)
	id := r.rec.ID
	m.mu.Unlock()
	m.log.Info().Str("job", id).Str("state", state).Str("reason", reason).Msg("job finished")
	m.flush()
}

// endLocked records r's end, frees its slot and schedules; m.mu held.
func (m *Manager) endLocked(r *run, state, reason string, exit *int) {
	r.finished = true
	j := r.rec
	j.State, j.Reason, j.Exit, j.Finished = state, reason, exit, time.Now().UTC()
	if last := r.lw.cur(); last != nil {
		if b, err := json.Marshal(last); err == nil {
			j.Progress = string(b)
		}
	}
	m.saveLater(j)
	m.publishLater(j)
	delete(m.running, j.ID)
	m.perSvc[j.Service]--
	m.later(func() { close(r.done); m.pruneSoon() }) // once saved and announced
	m.schedule()
}

// setProgress records a running job's progress.
func (m *Manager) setProgress(id string, p *Progress) {
	b, err := json.Marshal(p)
	if err != nil {
		return
	}
	m.mu.Lock()
	if r, ok := m.running[id]; ok && !r.finished {
		r.rec.Progress = string(b)
		m.saveLater(r.rec)
	}
	m.mu.Unlock()
	m.flush()
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
		m.checkRunning()
	}
}

// checkRunning is one watchdog round: /proc is read without m.mu, the
// verdicts are made under it, the kills and saves after it.
func (m *Manager) checkRunning() {
	m.mu.Lock()
	var check []*run
	for _, r := range m.running {
		if r.p != nil {
			check = append(check, r)
		}
	}
	m.mu.Unlock()
	alive := make([]bool, len(check))
	for i, r := range check {
		select {
		case <-r.p.Exited():
			alive[i] = true // the runner is finishing it
		default:
			alive[i] = m.alive(r.p.PID())
		}
	}
	var vanished []*run
	m.mu.Lock()
	for i, r := range check {
		if r.finished {
			continue
		}
		if alive[i] {
			r.missed = 0
			continue
		}
		r.missed++
		if r.missed >= 2 {
			m.endLocked(r, StateFailed, fmt.Sprintf("vanished: process %d is gone and no exit status came", r.p.PID()), nil)
			vanished = append(vanished, r)
		}
	}
	m.mu.Unlock()
	for _, r := range vanished {
		m.log.Warn().Str("job", r.rec.ID).Int("pid", r.p.PID()).Msg("watchdog: job process vanished")
		r.p.Kill()
	}
	m.flush()
	if m.shared() {
		m.resaveEnds()
		m.sweepLost()
	}
}

// Stop stops a job: a queued one leaves the queue, a running one gets
// SIGTERM on its process group, then SIGKILL after the grace period. It
// waits, bounded by ctx, for a running job's end to be recorded.
func (m *Manager) Stop(ctx context.Context, id, who string) (Job, error) {
	reason := "stopped"
	if who != "" {
		reason = "stopped by " + who
	}
	if m.shared() {
		// A job being claimed here is in m.running once claimMu is free.
		m.claimMu.Lock()
		m.mu.Lock()
		_, here := m.running[id]
		m.mu.Unlock()
		m.claimMu.Unlock()
		if !here {
			return m.stopShared(ctx, id, who, reason)
		}
	}
	m.mu.Lock()
	if rec, ok := m.stopQueued(id, reason); ok {
		m.mu.Unlock()
		m.flush()
		return m.view(&rec), nil
	}
	r, ok := m.running[id]
	if !ok {
		m.mu.Unlock()
		return m.get(ctx, id) // a finished job: stopping it again changes nothing
	}
	stopNow := false
	if r.stopping == "" {
		r.stopping = reason
		// Not started yet: the launch sees r.stopping and stops it.
		stopNow = r.p != nil
		if stopNow {
			m.wg.Add(1)
		}
	}
	m.mu.Unlock()
	if stopNow {
		go m.stopRun(r)
	}
	select {
	case <-r.done:
	case <-ctx.Done():
	}
	return m.get(ctx, id)
}
