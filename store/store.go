// Package store keeps what the gateway must remember across a restart:
// jobs and their queue order, and the event history, in an SQLite file
// (modernc.org/sqlite, no cgo). The schema is changed only by the ordered,
// versioned migrations in this package.
//
// Store is the one interface the rest of the gateway uses. Reservations and
// sessions will join it as further methods (and a migration adding their
// tables) when the reservation package persists through it.
package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// ErrNotFound is returned for a job that is not in the store.
var ErrNotFound = errors.New("not found")

// ErrNotQueued is returned by the queue operations for a job that is not
// (or no longer) queued.
var ErrNotQueued = errors.New("not queued")

// ErrQueueFull is returned by EnqueueJob when the queue holds its most.
var ErrQueueFull = errors.New("queue full")

// Job is a job as stored. Times are UTC; zero means not yet.
type Job struct {
	ID       string
	Num      int64 // creation order
	Service  string
	Owner    string
	Params   string // JSON object
	Argv     string // JSON array
	State    string
	QueuePos int64 // position in the queue when State is "queued" (0 otherwise)
	Exit     *int  // exit status once finished
	Reason   string
	PID      int
	Replica  string // the gateway replica running it (shared queue; "" otherwise)
	LogPath  string
	Progress string // JSON object or ""
	Created  time.Time
	Started  time.Time
	Finished time.Time
}

// JobFilter selects jobs for ListJobs; empty fields match every job.
type JobFilter struct {
	States  []string
	Service string
	Owner   *string
	Limit   int // newest first; 0 or less: 100
}

// Event is one entry of the gateway's event history.
type Event struct {
	Seq   int64
	Topic string
	Owner string // who may see it ("" for everyone when the gateway has no users)
	Data  []byte // JSON
	Time  time.Time
}

// Reservation is a stored reservation of a websocket service.
type Reservation struct {
	Token   string
	Service string
	Index   int
	Owner   string
	Options map[string]string
	State   string
	Created time.Time
	Expires time.Time
}

// Store is the gateway's durable state.
type Store interface {
	// SaveJob inserts or replaces a job.
	SaveJob(ctx context.Context, j Job) error
	GetJob(ctx context.Context, id string) (Job, error)
	ListJobs(ctx context.Context, f JobFilter) ([]Job, error)
	DeleteJob(ctx context.Context, id string) error
	// SetQueue records the queue order: ids[0] is next to run.
	SetQueue(ctx context.Context, ids []string) error
	// MaxJobNum is the largest Num stored (0 when there is none).
	MaxJobNum(ctx context.Context) (int64, error)

	// The queue shared by every gateway using the store (one for SQLite,
	// the replicas for Redis). Each operation is atomic.

	// EnqueueJob gives j the next job number, the id "job-<num>" and the
	// last place in the queue, saves it queued and returns it;
	// ErrQueueFull when maxQueued jobs already wait.
	EnqueueJob(ctx context.Context, j Job, maxQueued int) (Job, error)
	// ClaimJob takes the first queued job, in queue order, whose service
	// has fewer starting or running jobs (on every replica) than
	// limits[service], marks it starting on replica at now and returns it;
	// ErrNotFound when there is none. Services missing from limits are
	// left queued.
	ClaimJob(ctx context.Context, replica string, limits map[string]int, now time.Time) (Job, error)
	// MoveJob puts a queued job at position (1: next; beyond the end:
	// last) and returns the queue's ids in order; ErrNotQueued when it is
	// not queued.
	MoveJob(ctx context.Context, id string, position int) ([]string, error)
	// DequeueJob takes a queued job out of the queue as finished with
	// state and reason at now and returns it; ErrNotQueued when it is not
	// queued.
	DequeueJob(ctx context.Context, id, state, reason string, now time.Time) (Job, error)
	// UpdateJob saves j, a job claimed by j.Replica, only while the store
	// still has it starting or running on j.Replica; a j whose State is
	// final frees its service's place. It reports whether j was saved.
	UpdateJob(ctx context.Context, j Job, final bool) (bool, error)
	// InterruptJobsOf marks every starting or running job of replica
	// interrupted with reason at now, frees their places and returns them
	// (once: a second call returns none).
	InterruptJobsOf(ctx context.Context, replica, reason string, now time.Time) ([]Job, error)
	// JobReplicas returns the replicas that have starting or running jobs.
	JobReplicas(ctx context.Context) ([]string, error)

	// AppendEvent stores an event and returns it with its sequence
	// number, one more than the previous event's.
	AppendEvent(ctx context.Context, topic, owner string, data []byte) (Event, error)
	// EventsSince returns up to limit events with Seq > since, oldest
	// first.
	EventsSince(ctx context.Context, since int64, limit int) ([]Event, error)
	// EventBounds returns the first and last stored sequence numbers
	// (0, 0 when there is none).
	EventBounds(ctx context.Context) (first, last int64, err error)
	// PruneEvents keeps the newest keep events.
	PruneEvents(ctx context.Context, keep int) error

	// SaveReservation inserts or replaces a reservation.
	SaveReservation(ctx context.Context, r Reservation) error
	// DeleteReservation forgets one (no error when it is unknown).
	DeleteReservation(ctx context.Context, token string) error
	// ListReservations returns every stored reservation.
	ListReservations(ctx context.Context) ([]Reservation, error)

	Close() error
}

// SQLite is the embedded Store.
type SQLite struct {
	db  *sql.DB
	log zerolog.Logger
}

var _ Store = (*SQLite)(nil)

// Memory is the path of a database kept in memory, gone at Close.
const Memory = ":memory:"

// Open opens (creating it if needed) the database at path and brings its
// schema up to date.
func Open(ctx context.Context, path string, log zerolog.Logger) (*SQLite, error) {
	if dir := filepath.Dir(path); path != Memory && dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("state database directory: %w", err)
		}
	}
	if path != Memory {
		// It holds whole tokens: readable by this user only. SQLite gives
		// its -wal and -shm files the database file's mode.
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, fmt.Errorf("state database %s: %w", path, err)
		}
		f.Close()
		for _, p := range []string{path, path + "-wal", path + "-shm"} {
			if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("state database %s: %w", p, err)
			}
		}
	}
	dsn := "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening state database %s: %w", path, err)
	}
	// One writer at a time is what SQLite does anyway; one connection
	// avoids SQLITE_BUSY between our own connections.
	db.SetMaxOpenConns(1)
	s := &SQLite{db: db, log: log}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *SQLite) Close() error { return s.db.Close() }

// migrations are applied in order; migration i brings the schema to
// version i+1. Never edit one that has shipped: append a new one.
var migrations = []string{
	// 1: jobs and the event history.
	`CREATE TABLE jobs (
		id TEXT PRIMARY KEY,
		num INTEGER NOT NULL UNIQUE,
		service TEXT NOT NULL,
		owner TEXT NOT NULL DEFAULT '',
		params TEXT NOT NULL DEFAULT '{}',
		argv TEXT NOT NULL DEFAULT '[]',
		state TEXT NOT NULL,
		queue_pos INTEGER NOT NULL DEFAULT 0,
		exit_status INTEGER,
		reason TEXT NOT NULL DEFAULT '',
		pid INTEGER NOT NULL DEFAULT 0,
		log_path TEXT NOT NULL DEFAULT '',
		progress TEXT NOT NULL DEFAULT '',
		created_ns INTEGER NOT NULL,
		started_ns INTEGER NOT NULL DEFAULT 0,
		finished_ns INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX jobs_state ON jobs(state, queue_pos);
	CREATE TABLE events (
		seq INTEGER PRIMARY KEY,
		topic TEXT NOT NULL,
		owner TEXT NOT NULL DEFAULT '',
		data TEXT NOT NULL,
		time_ns INTEGER NOT NULL
	);`,
	// 2: reservations of websocket services.
	`CREATE TABLE reservations (
		token TEXT PRIMARY KEY,
		service TEXT NOT NULL,
		idx INTEGER NOT NULL,
		owner TEXT NOT NULL DEFAULT '',
		options TEXT NOT NULL DEFAULT '{}',
		state TEXT NOT NULL,
		created_ns INTEGER NOT NULL,
		expires_ns INTEGER NOT NULL
	);`,
	// 3: the replica running a job (the shared queue's operations).
	`ALTER TABLE jobs ADD COLUMN replica TEXT NOT NULL DEFAULT '';`,
}

// SchemaVersion is the version this binary brings a database to.
var SchemaVersion = len(migrations)

func (s *SQLite) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("creating schema_version: %w", err)
	}
	var v int
	err := s.db.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := s.db.ExecContext(ctx, `INSERT INTO schema_version(version) VALUES (0)`); err != nil {
			return fmt.Errorf("initialising schema_version: %w", err)
		}
	case err != nil:
		return fmt.Errorf("reading schema_version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this wsgateway knows (%d); use a newer wsgateway or another --state_db", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, i+1); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		s.log.Info().Int("version", i+1).Msg("state database migrated")
	}
	return nil
}

// Version returns the database's schema version.
func (s *SQLite) Version(ctx context.Context) (int, error) {
	var v int
	if err := s.db.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v); err != nil {
		return 0, fmt.Errorf("reading schema_version: %w", err)
	}
	return v, nil
}

func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

const jobCols = `id, num, service, owner, params, argv, state, queue_pos, exit_status, reason, pid, log_path, progress, created_ns, started_ns, finished_ns, replica`

// SaveJob inserts or replaces j.
func (s *SQLite) SaveJob(ctx context.Context, j Job) error { return saveJobIn(ctx, s.db, j) }

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

type scanner interface{ Scan(...any) error }

func scanJob(r scanner) (Job, error) {
	var j Job
	var exit sql.NullInt64
	var c, st, f int64
	if err := r.Scan(&j.ID, &j.Num, &j.Service, &j.Owner, &j.Params, &j.Argv, &j.State, &j.QueuePos, &exit, &j.Reason, &j.PID,
		&j.LogPath, &j.Progress, &c, &st, &f, &j.Replica); err != nil {
		return j, err
	}
	if exit.Valid {
		e := int(exit.Int64)
		j.Exit = &e
	}
	j.Created, j.Started, j.Finished = fromNS(c), fromNS(st), fromNS(f)
	return j, nil
}

// GetJob returns one job, or ErrNotFound.
func (s *SQLite) GetJob(ctx context.Context, id string) (Job, error) {
	j, err := scanJob(s.db.QueryRowContext(ctx, `SELECT `+jobCols+` FROM jobs WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return j, fmt.Errorf("job %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return j, fmt.Errorf("reading job %s: %w", id, err)
	}
	return j, nil
}

// ListJobs returns the jobs f selects, newest first; queued jobs listed
// by state alone come in queue order.
func (s *SQLite) ListJobs(ctx context.Context, f JobFilter) ([]Job, error) {
	var where []string
	var args []any
	if len(f.States) > 0 {
		where = append(where, "state IN (?"+strings.Repeat(",?", len(f.States)-1)+")")
		for _, st := range f.States {
			args = append(args, st)
		}
	}
	if f.Service != "" {
		where = append(where, "service = ?")
		args = append(args, f.Service)
	}
	if f.Owner != nil {
		where = append(where, "owner = ?")
		args = append(args, *f.Owner)
	}
	q := `SELECT ` + jobCols + ` FROM jobs`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	order := " ORDER BY num DESC"
	if len(f.States) == 1 && f.States[0] == "queued" {
		order = " ORDER BY queue_pos, num"
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	q += order + " LIMIT ?"
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	defer rows.Close()
	var out []Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("listing jobs: %w", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	return out, nil
}

// DeleteJob removes a job record (ErrNotFound when there is none).
func (s *SQLite) DeleteJob(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM jobs WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("deleting job %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("job %q: %w", id, ErrNotFound)
	}
	return nil
}

// SetQueue numbers the queued jobs ids in order, in one transaction.
func (s *SQLite) SetQueue(ctx context.Context, ids []string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("saving queue order: %w", err)
	}
	defer tx.Rollback()
	for i, id := range ids {
		if _, err := tx.ExecContext(ctx, `UPDATE jobs SET queue_pos = ? WHERE id = ?`, i+1, id); err != nil {
			return fmt.Errorf("saving queue order: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("saving queue order: %w", err)
	}
	return nil
}

// MaxJobNum returns the largest job number stored.
func (s *SQLite) MaxJobNum(ctx context.Context) (int64, error) {
	var n sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MAX(num) FROM jobs`).Scan(&n); err != nil {
		return 0, fmt.Errorf("reading job numbers: %w", err)
	}
	return n.Int64, nil
}

// AppendEvent stores an event under the next sequence number.
func (s *SQLite) AppendEvent(ctx context.Context, topic, owner string, data []byte) (Event, error) {
	now := time.Now().UTC()
	res, err := s.db.ExecContext(ctx, `INSERT INTO events (topic, owner, data, time_ns) VALUES (?,?,?,?)`, topic, owner, string(data), now.UnixNano())
	if err != nil {
		return Event{}, fmt.Errorf("storing event %s: %w", topic, err)
	}
	seq, err := res.LastInsertId()
	if err != nil {
		return Event{}, fmt.Errorf("storing event %s: %w", topic, err)
	}
	return Event{Seq: seq, Topic: topic, Owner: owner, Data: data, Time: now}, nil
}

// EventsSince returns events after since, oldest first.
func (s *SQLite) EventsSince(ctx context.Context, since int64, limit int) ([]Event, error) {
	if limit <= 0 {
		limit = 1000
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, topic, owner, data, time_ns FROM events WHERE seq > ? ORDER BY seq LIMIT ?`, since, limit)
	if err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var data string
		var t int64
		if err := rows.Scan(&e.Seq, &e.Topic, &e.Owner, &data, &t); err != nil {
			return nil, fmt.Errorf("reading events: %w", err)
		}
		e.Data, e.Time = []byte(data), fromNS(t)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	return out, nil
}

// EventBounds returns the first and last sequence numbers stored.
func (s *SQLite) EventBounds(ctx context.Context) (int64, int64, error) {
	var lo, hi sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT MIN(seq), MAX(seq) FROM events`).Scan(&lo, &hi); err != nil {
		return 0, 0, fmt.Errorf("reading event bounds: %w", err)
	}
	return lo.Int64, hi.Int64, nil
}

// PruneEvents deletes all but the newest keep events. The newest event
// is always kept so that sequence numbers never restart.
func (s *SQLite) PruneEvents(ctx context.Context, keep int) error {
	if keep < 1 {
		keep = 1
	}
	if _, err := s.db.ExecContext(ctx, `DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?`, keep); err != nil {
		return fmt.Errorf("pruning events: %w", err)
	}
	return nil
}

// SaveReservation inserts or replaces r.
func (s *SQLite) SaveReservation(ctx context.Context, r Reservation) error {
	opts, err := json.Marshal(r.Options)
	if err != nil {
		return fmt.Errorf("encoding reservation options: %w", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT OR REPLACE INTO reservations(token, service, idx, owner, options, state, created_ns, expires_ns)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, r.Token, r.Service, r.Index, r.Owner, string(opts), r.State, ns(r.Created), ns(r.Expires))
	if err != nil {
		return fmt.Errorf("saving reservation: %w", err)
	}
	return nil
}

// DeleteReservation removes a reservation.
func (s *SQLite) DeleteReservation(ctx context.Context, token string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM reservations WHERE token = ?`, token); err != nil {
		return fmt.Errorf("deleting reservation: %w", err)
	}
	return nil
}

// ListReservations returns every stored reservation.
func (s *SQLite) ListReservations(ctx context.Context) ([]Reservation, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT token, service, idx, owner, options, state, created_ns, expires_ns FROM reservations ORDER BY created_ns`)
	if err != nil {
		return nil, fmt.Errorf("listing reservations: %w", err)
	}
	defer rows.Close()
	var out []Reservation
	for rows.Next() {
		var r Reservation
		var opts string
		var created, expires int64
		if err := rows.Scan(&r.Token, &r.Service, &r.Index, &r.Owner, &opts, &r.State, &created, &expires); err != nil {
			return nil, fmt.Errorf("reading reservation: %w", err)
		}
		if err := json.Unmarshal([]byte(opts), &r.Options); err != nil {
			return nil, fmt.Errorf("reservation %s…: options: %w", r.Token[:min(8, len(r.Token))], err)
		}
		r.Created, r.Expires = fromNS(created), fromNS(expires)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing reservations: %w", err)
	}
	return out, nil
}
