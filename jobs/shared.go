package jobs

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"wsgateway/store"
)

// The shared queue: several gateway replicas on one Redis store (Config
// Replica set). The queue is the store's, not m.queue: a job submitted
// on any replica is queued there; each replica's claimer takes, in queue
// order, a job whose service has a free place across every replica
// (store.ClaimJob, one atomic step) and runs it as a job of its own,
// recording itself as the job's replica. Reading the log of, stopping or
// removing a job another replica runs goes to that replica (Remote). A
// replica whose lease ran out has its running jobs marked interrupted,
// once, by whichever survivor's watchdog sees it first; its queued jobs
// were never its own and stay queued.

// ErrReplicaGone is returned for a job whose replica is not reachable
// (gone, or no replica link to it).
var ErrReplicaGone = errors.New("the gateway replica running the job cannot be reached")

// Remote reaches the replica that runs (or ran) a job.
type Remote interface {
	ReadLog(ctx context.Context, replica, id string, offset, limit int64) (LogChunk, error)
	Stop(ctx context.Context, replica, id, who string) (Job, error)
	Remove(ctx context.Context, replica, id string) error
}

// shared reports whether the queue is the store's, shared by replicas.
func (m *Manager) shared() bool { return m.cfg.Replica != "" }

// mine reports whether j's log and process are this gateway's.
func (m *Manager) mine(j *store.Job) bool { return j.Replica == "" || j.Replica == m.cfg.Replica }

// restoreShared is New for a replica: the jobs this replica ran before it
// restarted are interrupted; the queue stays in the store.
func (m *Manager) restoreShared(ctx context.Context) error {
	js, err := m.cfg.Store.InterruptJobsOf(ctx, m.cfg.Replica, "the gateway stopped while the job was running", time.Now())
	if err != nil {
		return fmt.Errorf("marking this replica's jobs interrupted: %w", err)
	}
	for i := range js {
		m.log.Warn().Str("job", js[i].ID).Msg("job was running when the gateway stopped; marked interrupted")
		m.publishState(&js[i])
	}
	return nil
}

// pokeClaimer wakes the claimer (a place may be free, a job queued).
func (m *Manager) pokeClaimer() {
	select {
	case m.claimNow <- struct{}{}:
	default:
	}
}

// claimer claims jobs until Close: when poked, and every ClaimEvery (a
// place freed on another replica).
func (m *Manager) claimer() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.ClaimEvery)
	defer t.Stop()
	for {
		m.claimShared()
		select {
		case <-m.stopWD:
			return
		case <-t.C:
		case <-m.claimNow:
		}
	}
}

// claimShared starts queued jobs while the store gives this replica one.
func (m *Manager) claimShared() {
	limits := map[string]int{}
	for name, s := range m.svcs {
		limits[name] = s.Count
	}
	for {
		ok := m.claimOne(limits)
		m.flush()
		if !ok {
			return
		}
	}
}

// claimOne claims one job and queues its launch; false when there is
// none (or the store failed, or the manager closed).
func (m *Manager) claimOne(limits map[string]int) bool {
	m.claimMu.Lock()
	defer m.claimMu.Unlock()
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return false
	}
	ctx, cancel := context.WithTimeout(m.stopCtx, 10*time.Second)
	defer cancel()
	j, err := m.cfg.Store.ClaimJob(ctx, m.cfg.Replica, limits, time.Now())
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		if !m.claimErr && ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("shared job queue not read; retrying")
		}
		m.claimErr = true
		return false
	}
	if m.claimErr {
		m.log.Info().Msg("shared job queue read again")
		m.claimErr = false
	}
	if err != nil {
		return false
	}
	m.mu.Lock()
	if m.closed {
		// Claimed as the manager closed: it never started.
		j.State, j.Reason, j.Finished = StateInterrupted, "the gateway shut down before the job started", time.Now().UTC()
		m.saveLater(&j)
		m.publishLater(&j)
		m.mu.Unlock()
		return false
	}
	m.launchLater(&j, m.svcs[j.Service])
	m.queueChangedLater()
	m.mu.Unlock()
	m.log.Info().Str("job", j.ID).Str("service", j.Service).Msg("job claimed from the shared queue")
	return true
}

// submitShared queues a job in the store and has it started if this
// replica has a free place for it.
func (m *Manager) submitShared(ctx context.Context, j store.Job) (Job, error) {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return Job{}, ErrClosed
	}
	rec, err := m.cfg.Store.EnqueueJob(ctx, j, m.cfg.MaxQueued)
	if errors.Is(err, store.ErrQueueFull) {
		return Job{}, fmt.Errorf("%w: %w", ErrQueueFull, err)
	}
	if err != nil {
		return Job{}, fmt.Errorf("queueing the job: %w", err)
	}
	m.publishState(&rec)
	m.mu.Lock()
	m.queueChangedLater()
	m.mu.Unlock()
	m.flush()
	m.log.Info().Str("job", rec.ID).Str("service", rec.Service).Str("owner", rec.Owner).Msg("job queued")
	m.mu.Lock()
	started := m.started
	m.mu.Unlock()
	if started {
		m.claimShared()
	}
	if v, err := m.get(ctx, rec.ID); err == nil {
		return v, nil
	}
	return m.view(&rec), nil
}

// queueIDs is the shared queue's order.
func (m *Manager) queueIDs(ctx context.Context) ([]string, error) {
	q, err := m.cfg.Store.ListJobs(ctx, store.JobFilter{States: []string{StateQueued}, Limit: m.cfg.MaxQueued})
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(q))
	for i := range q {
		ids[i] = q[i].ID
	}
	return ids, nil
}

// publishQueue announces the shared queue's order.
func (m *Manager) publishQueue() {
	if m.cfg.Events == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ids, err := m.queueIDs(ctx)
	if err != nil {
		m.log.Warn().Err(err).Msg("queue order not announced")
		return
	}
	m.cfg.Events.Publish("queue.changed", "", map[string]any{"queue": ids})
}

// queueShared returns the shared queue.
func (m *Manager) queueShared() []Job {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	q, err := m.cfg.Store.ListJobs(ctx, store.JobFilter{States: []string{StateQueued}, Limit: m.cfg.MaxQueued})
	if err != nil {
		m.log.Warn().Err(err).Msg("the shared job queue not read")
		return nil
	}
	out := make([]Job, 0, len(q))
	for i := range q {
		out = append(out, m.view(&q[i]))
	}
	return out
}

// moveShared moves a job in the shared queue.
func (m *Manager) moveShared(ctx context.Context, id string, position int) ([]Job, error) {
	if _, err := m.cfg.Store.MoveJob(ctx, id, position); err != nil {
		if errors.Is(err, store.ErrNotQueued) {
			return nil, fmt.Errorf("%w: %q", ErrNotQueued, id)
		}
		return nil, fmt.Errorf("moving %s: %w", id, err)
	}
	m.publishQueue()
	m.pokeClaimer()
	return m.queueShared(), nil
}

// stopShared stops a job that is not running here: a queued one leaves
// the shared queue, one running on another replica is stopped by it.
func (m *Manager) stopShared(ctx context.Context, id, who, reason string) (Job, error) {
	j, err := m.cfg.Store.DequeueJob(ctx, id, StateStopped, reason+" while queued", time.Now())
	if err == nil {
		m.publishState(&j)
		m.publishQueue()
		return m.view(&j), nil
	}
	if !errors.Is(err, store.ErrNotQueued) {
		return Job{}, fmt.Errorf("stopping %s: %w", id, err)
	}
	rec, err := m.cfg.Store.GetJob(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Job{}, fmt.Errorf("%w %q", ErrNotFound, id)
	}
	if err != nil {
		return Job{}, fmt.Errorf("reading job %s: %w", id, err)
	}
	if Finished(rec.State) || m.mine(&rec) {
		return m.view(&rec), nil
	}
	if m.cfg.Remote == nil {
		return Job{}, fmt.Errorf("%w: %s runs on replica %s and this one has no replica link", ErrReplicaGone, id, rec.Replica)
	}
	return m.cfg.Remote.Stop(ctx, rec.Replica, id, who)
}

// lostJob handles a job of this replica that the shared queue no
// longer has running here: another replica took this one for lost (its
// lease ran out) and marked the job interrupted. Its later states are
// neither saved nor announced, and its process is stopped.
func (m *Manager) lostJob(id, state string) {
	m.log.Warn().Str("job", id).Str("state", state).
		Msg("job state not saved: the shared queue no longer has it running here (another replica took this one for lost); stopping it")
	m.mu.Lock()
	m.lost[id] = true
	r, ok := m.running[id]
	stopNow := ok && r.stopping == "" && r.p != nil && !r.finished
	if stopNow {
		r.stopping = "interrupted: another replica took this one for lost"
		m.wg.Add(1)
	}
	m.mu.Unlock()
	if stopNow {
		go m.stopRun(r)
	}
}

// replicaLive reports whether replica's lease is live (true when it
// cannot be told).
func (m *Manager) replicaLive(ctx context.Context, replica string) bool {
	if m.cfg.LiveReplicas == nil {
		return true
	}
	live, err := m.cfg.LiveReplicas(ctx)
	if err != nil {
		return true
	}
	_, ok := live[replica]
	return ok
}

// resaveEnds saves again the ends of jobs whose saving failed, so that
// their places in the store are given back once it answers.
func (m *Manager) resaveEnds() {
	m.mu.Lock()
	var js []store.Job
	for _, j := range m.resave {
		js = append(js, j)
	}
	m.mu.Unlock()
	for _, j := range js {
		ctx, cancel := context.WithTimeout(m.stopCtx, 10*time.Second)
		ok, err := m.cfg.Store.UpdateJob(ctx, j, true)
		cancel()
		if err != nil {
			return // still away
		}
		m.mu.Lock()
		delete(m.resave, j.ID)
		m.mu.Unlock()
		m.log.Info().Str("job", j.ID).Str("state", j.State).Bool("saved", ok).Msg("job end saved after the store came back")
		m.pokeClaimer()
	}
}

// lostReason is why the jobs of a replica whose lease ran out ended.
func lostReason(replica string) string {
	return fmt.Sprintf("interrupted: the gateway replica %s running the job was lost (its lease ran out)", replica)
}

// sweepLost marks interrupted, once across the replicas, the jobs of the
// replicas whose lease ran out.
func (m *Manager) sweepLost() {
	if m.cfg.LiveReplicas == nil {
		return
	}
	ctx, cancel := context.WithTimeout(m.stopCtx, 10*time.Second)
	defer cancel()
	reps, err := m.cfg.Store.JobReplicas(ctx)
	if err != nil || len(reps) == 0 || (len(reps) == 1 && reps[0] == m.cfg.Replica) {
		return
	}
	live, err := m.cfg.LiveReplicas(ctx)
	if err != nil {
		return
	}
	freed := false
	for _, rep := range reps {
		if _, ok := live[rep]; ok || rep == m.cfg.Replica {
			continue
		}
		js, err := m.cfg.Store.InterruptJobsOf(ctx, rep, lostReason(rep), time.Now())
		if err != nil {
			m.log.Warn().Err(err).Str("lost_replica", rep).Msg("the jobs of a lost replica not interrupted")
			continue
		}
		for i := range js {
			freed = true
			m.log.Warn().Str("job", js[i].ID).Str("lost_replica", rep).Msg("job interrupted: the replica running it stopped renewing its lease")
			m.publishState(&js[i])
		}
	}
	if freed {
		m.pokeClaimer()
	}
}

// logPath is where this gateway keeps a job's log.
func (m *Manager) logPath(id string) string { return filepath.Join(m.cfg.Dir, id+".log") }
