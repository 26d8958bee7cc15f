package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func open(t *testing.T, path string) *SQLite {
	t.Helper()
	s, err := Open(context.Background(), path, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestStoreMigrationsAreVersioned(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "s.db")
	s := open(t, path)
	v, err := s.Version(ctx)
	if err != nil || v != SchemaVersion {
		t.Fatalf("version %d %v, want %d", v, err, SchemaVersion)
	}
	created := time.Unix(1700000000, 0).UTC()
	if err := s.SaveJob(ctx, Job{ID: "kept", Num: 1, Service: "x", State: "queued", QueuePos: 1, Created: created}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Reopening applies nothing again and keeps the data.
	s = open(t, path)
	if v, _ := s.Version(ctx); v != SchemaVersion {
		t.Fatalf("version after reopen %d", v)
	}
	if j, err := s.GetJob(ctx, "kept"); err != nil || j.State != "queued" || !j.Created.Equal(created) {
		t.Fatalf("the job after reopening: %+v %v", j, err)
	}
	// A database from a newer wsgateway is refused.
	if _, err := s.db.Exec(`UPDATE schema_version SET version = 999`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(ctx, path, zerolog.Nop()); err == nil {
		t.Fatal("a newer schema was accepted")
	}
}

func TestStoreJobsAndQueue(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "s.db"))
	now := time.Now().UTC().Truncate(time.Microsecond)
	for i, id := range []string{"a", "b", "c"} {
		if err := s.SaveJob(ctx, Job{ID: id, Num: int64(i + 1), Service: "x", State: "queued", QueuePos: int64(i + 1), Created: now}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetQueue(ctx, []string{"c", "a", "b"}); err != nil {
		t.Fatal(err)
	}
	q, err := s.ListJobs(ctx, JobFilter{States: []string{"queued"}})
	if err != nil || len(q) != 3 || q[0].ID != "c" || q[1].ID != "a" || q[2].ID != "b" {
		t.Fatalf("queue %+v %v", q, err)
	}
	exit := 3
	j := q[0]
	j.State, j.Exit, j.Finished = "failed", &exit, now
	if err := s.SaveJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetJob(ctx, "c")
	if err != nil || got.Exit == nil || *got.Exit != 3 || !got.Finished.Equal(now) || !got.Created.Equal(now) {
		t.Fatalf("get %+v %v", got, err)
	}
	if n, _ := s.MaxJobNum(ctx); n != 3 {
		t.Fatalf("max num %d", n)
	}
	if err := s.DeleteJob(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetJob(ctx, "c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted job: %v", err)
	}
	if err := s.DeleteJob(ctx, "c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

func TestStoreEventsSequenceAndPrune(t *testing.T) {
	ctx := context.Background()
	s := open(t, filepath.Join(t.TempDir(), "s.db"))
	for i := 1; i <= 20; i++ {
		e, err := s.AppendEvent(ctx, "job.state", "", []byte(`{}`))
		if err != nil || e.Seq != int64(i) {
			t.Fatalf("event %d: seq %d %v", i, e.Seq, err)
		}
	}
	if err := s.PruneEvents(ctx, 5); err != nil {
		t.Fatal(err)
	}
	lo, hi, err := s.EventBounds(ctx)
	if err != nil || lo != 16 || hi != 20 {
		t.Fatalf("bounds %d %d %v", lo, hi, err)
	}
	evs, err := s.EventsSince(ctx, 17, 10)
	if err != nil || len(evs) != 3 || evs[0].Seq != 18 {
		t.Fatalf("since 17: %+v %v", evs, err)
	}
	// Sequence numbers continue after a prune, never restart.
	if err := s.PruneEvents(ctx, 1); err != nil {
		t.Fatal(err)
	}
	e, _ := s.AppendEvent(ctx, "x", "", []byte(`1`))
	if e.Seq != 21 {
		t.Fatalf("seq after prune %d", e.Seq)
	}
}

func TestStoreInMemory(t *testing.T) {
	ctx := context.Background()
	s := open(t, Memory)
	if _, err := s.AppendEvent(ctx, "x", "", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, hi, err := s.EventBounds(ctx); err != nil || hi != 1 {
		t.Fatalf("bounds %d %v", hi, err)
	}
}
