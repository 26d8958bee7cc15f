package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"wsgateway/store"
)

// The queue: submitting, listing and moving queued jobs, and the choice
// of which to start. Decisions are made under m.mu; their saves and
// events run after it is released (see Manager.flush).

// Submit checks params and queues a job. It returns once the job is
// saved.
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
	if m.shared() {
		return m.submitShared(ctx, store.Job{Service: service, Owner: owner, Params: string(pj), Argv: string(aj),
			State: StateQueued, Created: time.Now().UTC()})
	}
	// Submits take turns, so that the queue keeps the order of the job
	// numbers; the lock is not held while the job is saved.
	m.submitMu.Lock()
	defer m.submitMu.Unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return Job{}, ErrClosed
	}
	if n := len(m.queue) + m.reserved; n >= m.cfg.MaxQueued {
		m.mu.Unlock()
		return Job{}, fmt.Errorf("%w (%d jobs wait)", ErrQueueFull, n)
	}
	m.reserved++
	m.num++
	id := fmt.Sprintf("job-%d", m.num)
	j := &store.Job{ID: id, Num: m.num, Service: service, Owner: owner, Params: string(pj), Argv: string(aj),
		State: StateQueued, LogPath: filepath.Join(m.cfg.Dir, id+".log"), Created: time.Now().UTC(),
		QueuePos: int64(len(m.queue) + m.reserved)}
	m.mu.Unlock()

	// Saved before it is queued: a job that is not on disk never runs.
	serr := m.cfg.Store.SaveJob(ctx, *j)

	m.mu.Lock()
	m.reserved--
	if serr != nil {
		m.mu.Unlock()
		return Job{}, fmt.Errorf("saving job %s: %w", id, serr)
	}
	m.queue = append(m.queue, j)
	m.publishLater(j)
	m.queueChangedLater()
	m.schedule()
	rec := *j
	m.mu.Unlock()
	m.log.Info().Str("job", id).Str("service", service).Str("owner", owner).Msg("job queued")
	// Once flushed, a job with a free slot has been started.
	m.flush()
	if v, err := m.get(ctx, id); err == nil {
		return v, nil
	}
	return m.view(&rec), nil
}

// queueChangedLater renumbers the queue and queues saving its order and
// announcing it; m.mu held.
func (m *Manager) queueChangedLater() {
	if m.shared() {
		m.later(m.publishQueue)
		return
	}
	ids := make([]string, len(m.queue))
	for i, j := range m.queue {
		j.QueuePos = int64(i + 1)
		ids[i] = j.ID
	}
	m.later(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.cfg.Store.SetQueue(ctx, ids); err != nil {
			m.log.Error().Err(err).Msg("queue order not saved")
		}
		if m.cfg.Events != nil {
			m.cfg.Events.Publish("queue.changed", "", map[string]any{"queue": ids})
		}
	})
}

// schedule takes queued jobs, in queue order, while their service has a
// free slot, and queues their launch; m.mu held.
func (m *Manager) schedule() {
	if m.closed || !m.started {
		return
	}
	if m.shared() {
		// After the effects decided so far: a job's end frees its place
		// in the store when its last save runs.
		m.later(m.pokeClaimer)
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
			m.saveLater(j)
			m.publishLater(j)
			changed = true
			continue
		}
		if m.perSvc[j.Service] >= svc.Count {
			i++
			continue
		}
		m.queue = append(m.queue[:i], m.queue[i+1:]...)
		changed = true
		m.launchLater(j, svc)
	}
	if changed {
		m.queueChangedLater()
	}
}

// Queue returns the queued jobs in the order they will start.
func (m *Manager) Queue() []Job {
	if m.shared() {
		return m.queueShared()
	}
	m.mu.Lock()
	recs := make([]store.Job, len(m.queue))
	for i, j := range m.queue {
		recs[i] = *j
	}
	m.mu.Unlock()
	out := make([]Job, 0, len(recs))
	for i := range recs {
		out = append(out, m.view(&recs[i]))
	}
	return out
}

// Move puts a queued job at position (1: next to start; beyond the end:
// last) and returns the new queue.
func (m *Manager) Move(id string, position int) ([]Job, error) {
	if m.shared() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return m.moveShared(ctx, id, position)
	}
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
	pos := min(max(position-1, 0), len(m.queue))
	m.queue = append(m.queue[:pos], append([]*store.Job{j}, m.queue[pos:]...)...)
	m.queueChangedLater()
	m.schedule()
	m.mu.Unlock()
	m.flush()
	return m.Queue(), nil
}

// stopQueued takes a queued job out of the queue as stopped, and
// returns it; m.mu held.
func (m *Manager) stopQueued(id, reason string) (store.Job, bool) {
	for i, j := range m.queue {
		if j.ID == id {
			m.queue = append(m.queue[:i], m.queue[i+1:]...)
			j.State, j.Reason, j.Finished, j.QueuePos = StateStopped, reason+" while queued", time.Now().UTC(), 0
			m.saveLater(j)
			m.publishLater(j)
			m.queueChangedLater()
			return *j, true
		}
	}
	return store.Job{}, false
}
