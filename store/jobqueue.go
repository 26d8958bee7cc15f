package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// The queue operations of the SQLite store. One gateway uses an SQLite
// file (a lock file keeps others out), so each operation is one
// transaction; the job Manager of a gateway alone keeps its queue in
// memory and does not need them, but they keep the store contract the
// Redis store's.

// querier is what a transaction and the database share.
type querier interface {
	ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

// inTx runs f in one transaction, committed when f returns nil.
func (s *SQLite) inTx(ctx context.Context, what string, f func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func saveJobIn(ctx context.Context, q querier, j Job) error {
	var exit any
	if j.Exit != nil {
		exit = *j.Exit
	}
	_, err := q.ExecContext(ctx, `INSERT OR REPLACE INTO jobs (`+jobCols+`) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
		j.ID, j.Num, j.Service, j.Owner, nonEmpty(j.Params, "{}"), nonEmpty(j.Argv, "[]"), j.State, j.QueuePos, exit, j.Reason, j.PID,
		j.LogPath, j.Progress, ns(j.Created), ns(j.Started), ns(j.Finished), j.Replica)
	if err != nil {
		return fmt.Errorf("saving job %s: %w", j.ID, err)
	}
	return nil
}

func jobsIn(ctx context.Context, q querier, where string, args ...any) ([]Job, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+jobCols+` FROM jobs WHERE `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("reading jobs: %w", err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("reading jobs: %w", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading jobs: %w", err)
	}
	return out, nil
}

// queuedIn returns the queued jobs in queue order.
func queuedIn(ctx context.Context, q querier) ([]Job, error) {
	return jobsIn(ctx, q, `state = 'queued' ORDER BY queue_pos, num`)
}

// renumber gives the queued jobs positions 1..n in their order.
func renumber(ctx context.Context, q querier, ids []string) error {
	for i, id := range ids {
		if _, err := q.ExecContext(ctx, `UPDATE jobs SET queue_pos = ? WHERE id = ?`, i+1, id); err != nil {
			return fmt.Errorf("saving queue order: %w", err)
		}
	}
	return nil
}

func jobIDs(js []Job) []string {
	ids := make([]string, len(js))
	for i, j := range js {
		ids[i] = j.ID
	}
	return ids
}

// EnqueueJob numbers j and queues it last.
func (s *SQLite) EnqueueJob(ctx context.Context, j Job, maxQueued int) (Job, error) {
	err := s.inTx(ctx, "queueing a job", func(tx *sql.Tx) error {
		var waiting, last int64
		var num sql.NullInt64
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(MAX(queue_pos), 0) FROM jobs WHERE state = 'queued'`).Scan(&waiting, &last); err != nil {
			return fmt.Errorf("queueing a job: %w", err)
		}
		if maxQueued > 0 && waiting >= int64(maxQueued) {
			return fmt.Errorf("%w (%d jobs wait)", ErrQueueFull, waiting)
		}
		if err := tx.QueryRowContext(ctx, `SELECT MAX(num) FROM jobs`).Scan(&num); err != nil {
			return fmt.Errorf("queueing a job: %w", err)
		}
		j.Num = num.Int64 + 1
		j.ID = fmt.Sprintf("job-%d", j.Num)
		j.State, j.QueuePos, j.Replica = "queued", last+1, ""
		return saveJobIn(ctx, tx, j)
	})
	return j, err
}

// ClaimJob takes the first queued job with a free place.
func (s *SQLite) ClaimJob(ctx context.Context, replica string, limits map[string]int, now time.Time) (Job, error) {
	var got Job
	err := s.inTx(ctx, "claiming a job", func(tx *sql.Tx) error {
		q, err := queuedIn(ctx, tx)
		if err != nil {
			return err
		}
		busy := map[string]int{}
		rows, err := tx.QueryContext(ctx, `SELECT service, COUNT(*) FROM jobs WHERE state IN ('starting', 'running') GROUP BY service`)
		if err != nil {
			return fmt.Errorf("claiming a job: %w", err)
		}
		for rows.Next() {
			var svc string
			var n int
			if err := rows.Scan(&svc, &n); err != nil {
				rows.Close()
				return fmt.Errorf("claiming a job: %w", err)
			}
			busy[svc] = n
		}
		rows.Close()
		for i, j := range q {
			lim, ok := limits[j.Service]
			if !ok || busy[j.Service] >= lim {
				continue
			}
			j.State, j.Replica, j.Started, j.QueuePos = "starting", replica, now.UTC(), 0
			if err := saveJobIn(ctx, tx, j); err != nil {
				return err
			}
			got = j
			return renumber(ctx, tx, jobIDs(append(q[:i:i], q[i+1:]...)))
		}
		return fmt.Errorf("no queued job has a free place: %w", ErrNotFound)
	})
	return got, err
}

// MoveJob moves a queued job to position.
func (s *SQLite) MoveJob(ctx context.Context, id string, position int) ([]string, error) {
	var ids []string
	err := s.inTx(ctx, "moving a job", func(tx *sql.Tx) error {
		q, err := queuedIn(ctx, tx)
		if err != nil {
			return err
		}
		ids = jobIDs(q)
		ids, err = moveID(ids, id, position)
		if err != nil {
			return err
		}
		return renumber(ctx, tx, ids)
	})
	return ids, err
}

// moveID returns ids with id at position (1-based, clamped).
func moveID(ids []string, id string, position int) ([]string, error) {
	idx := -1
	for i, x := range ids {
		if x == id {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("job %q: %w", id, ErrNotQueued)
	}
	rest := append(append([]string{}, ids[:idx]...), ids[idx+1:]...)
	pos := min(max(position-1, 0), len(rest))
	return append(rest[:pos:pos], append([]string{id}, rest[pos:]...)...), nil
}

// DequeueJob ends a queued job.
func (s *SQLite) DequeueJob(ctx context.Context, id, state, reason string, now time.Time) (Job, error) {
	var got Job
	err := s.inTx(ctx, "taking a job out of the queue", func(tx *sql.Tx) error {
		q, err := queuedIn(ctx, tx)
		if err != nil {
			return err
		}
		for i, j := range q {
			if j.ID != id {
				continue
			}
			j.State, j.Reason, j.Finished, j.QueuePos = state, reason, now.UTC(), 0
			if err := saveJobIn(ctx, tx, j); err != nil {
				return err
			}
			got = j
			return renumber(ctx, tx, jobIDs(append(q[:i:i], q[i+1:]...)))
		}
		return fmt.Errorf("job %q: %w", id, ErrNotQueued)
	})
	return got, err
}

// UpdateJob saves j while it is still j.Replica's.
func (s *SQLite) UpdateJob(ctx context.Context, j Job, _ bool) (bool, error) {
	saved := false
	err := s.inTx(ctx, "updating a job", func(tx *sql.Tx) error {
		var state, replica string
		err := tx.QueryRowContext(ctx, `SELECT state, replica FROM jobs WHERE id = ?`, j.ID).Scan(&state, &replica)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("updating job %s: %w", j.ID, err)
		}
		if replica != j.Replica || (state != "starting" && state != "running") {
			return nil
		}
		j.QueuePos = 0
		saved = true
		return saveJobIn(ctx, tx, j)
	})
	return saved, err
}

// InterruptJobsOf ends replica's running jobs as interrupted.
func (s *SQLite) InterruptJobsOf(ctx context.Context, replica, reason string, now time.Time) ([]Job, error) {
	var out []Job
	err := s.inTx(ctx, "interrupting jobs", func(tx *sql.Tx) error {
		js, err := jobsIn(ctx, tx, `state IN ('starting', 'running') AND replica = ? ORDER BY num`, replica)
		if err != nil {
			return err
		}
		for _, j := range js {
			j.State, j.Reason, j.Finished = "interrupted", reason, now.UTC()
			if err := saveJobIn(ctx, tx, j); err != nil {
				return err
			}
			out = append(out, j)
		}
		return nil
	})
	return out, err
}

// JobReplicas returns the replicas with starting or running jobs.
func (s *SQLite) JobReplicas(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT replica FROM jobs WHERE state IN ('starting', 'running') ORDER BY replica`)
	if err != nil {
		return nil, fmt.Errorf("listing job replicas: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			return nil, fmt.Errorf("listing job replicas: %w", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing job replicas: %w", err)
	}
	return out, nil
}
