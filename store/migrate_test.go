package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// v1Schema is the schema as version 1 shipped it (jobs and events, no
// reservations), written out here so that the test does not depend on the
// migrations it checks.
const v1Schema = `CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version(version) VALUES (1);
CREATE TABLE jobs (
	id TEXT PRIMARY KEY, num INTEGER NOT NULL UNIQUE, service TEXT NOT NULL,
	owner TEXT NOT NULL DEFAULT '', params TEXT NOT NULL DEFAULT '{}', argv TEXT NOT NULL DEFAULT '[]',
	state TEXT NOT NULL, queue_pos INTEGER NOT NULL DEFAULT 0, exit_status INTEGER,
	reason TEXT NOT NULL DEFAULT '', pid INTEGER NOT NULL DEFAULT 0, log_path TEXT NOT NULL DEFAULT '',
	progress TEXT NOT NULL DEFAULT '', created_ns INTEGER NOT NULL,
	started_ns INTEGER NOT NULL DEFAULT 0, finished_ns INTEGER NOT NULL DEFAULT 0);
CREATE INDEX jobs_state ON jobs(state, queue_pos);
CREATE TABLE events (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '',
	data TEXT NOT NULL, time_ns INTEGER NOT NULL);
INSERT INTO jobs(id, num, service, owner, state, queue_pos, created_ns) VALUES ('old-job', 7, 'Render', 'alice', 'queued', 1, 1700000000000000000);
INSERT INTO events(seq, topic, owner, data, time_ns) VALUES (41, 'job.state', '', '{"id":"old-job"}', 1700000000000000000);`

// TestStoreMigratesFromVersion1: a database written by a wsgateway of
// schema version 1 is brought to the current version on Open, keeps its
// jobs and events (and their sequence), and gains what the later
// versions added (reservations).
func TestStoreMigratesFromVersion1(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, v1Schema); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(ctx, path, zerolog.Nop())
	if err != nil {
		t.Fatalf("opening a version 1 database: %v", err)
	}
	defer s.Close()
	if v, err := s.Version(ctx); err != nil || v != SchemaVersion || v < 2 {
		t.Fatalf("version %d %v, want %d", v, err, SchemaVersion)
	}
	j, err := s.GetJob(ctx, "old-job")
	if err != nil || j.Num != 7 || j.Owner != "alice" || j.State != "queued" || j.Service != "Render" {
		t.Fatalf("the old job after migrating: %+v %v", j, err)
	}
	first, last, err := s.EventBounds(ctx)
	if err != nil || first != 41 || last != 41 {
		t.Fatalf("event bounds %d..%d %v, want the old event 41", first, last, err)
	}
	if e, err := s.AppendEvent(ctx, "job.state", "", []byte(`{}`)); err != nil || e.Seq != 42 {
		t.Fatalf("next event %+v %v, want seq 42", e, err)
	}
	r := Reservation{Token: "t-1", Service: "Echo", Index: 0, Owner: "bob", Options: map[string]string{"k": "v"},
		State: "reserved", Created: time.Unix(1700000000, 0).UTC(), Expires: time.Unix(1700000600, 0).UTC()}
	if err := s.SaveReservation(ctx, r); err != nil {
		t.Fatalf("reservations after migrating: %v", err)
	}
	rs, err := s.ListReservations(ctx)
	if err != nil || len(rs) != 1 || rs[0].Token != "t-1" || rs[0].Options["k"] != "v" {
		t.Fatalf("reservations %+v %v", rs, err)
	}
	s.Close()

	// Reopening migrates nothing again and keeps everything.
	s2, err := Open(ctx, path, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if rs, err := s2.ListReservations(ctx); err != nil || len(rs) != 1 {
		t.Fatalf("reservations after reopening: %+v %v", rs, err)
	}
	if j, err := s2.GetJob(ctx, "old-job"); err != nil || j.Num != 7 {
		t.Fatalf("job after reopening: %+v %v", j, err)
	}
}
