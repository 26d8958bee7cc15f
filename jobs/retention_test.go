package jobs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/store"
)

func TestPruneRetention(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	// job-1 … job-5 finished 50, 40, 30, 20 and 10 hours ago; job-6 runs;
	// job-7 finished with no end time recorded.
	seed := func(t *testing.T, st store.Store, dir string) {
		for i := 1; i <= 7; i++ {
			id := fmt.Sprintf("job-%d", i)
			j := store.Job{ID: id, Num: int64(i), Service: "s", State: StateSucceeded, Params: "{}", Argv: "[]",
				LogPath: filepath.Join(dir, id+".log"), Created: now.Add(-100 * time.Hour)}
			switch {
			case i <= 5:
				j.Finished = now.Add(-time.Duration(60-10*i) * time.Hour)
			case i == 6:
				j.State = StateRunning
			}
			if err := st.SaveJob(context.Background(), j); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(j.LogPath, []byte("log\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(filepath.Join(dir, id, "out"), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name    string
		keep    int
		keepFor time.Duration
		removed []string
	}{
		{"nothing configured", 0, 0, nil},
		{"count", 3, 0, []string{"job-1", "job-2", "job-3"}},
		{"count keeps all", 6, 0, nil},
		{"count one over", 5, 0, []string{"job-1"}},
		{"age", 0, 25 * time.Hour, []string{"job-1", "job-2", "job-3"}},
		{"age boundary kept", 0, 30 * time.Hour, []string{"job-1", "job-2"}},
		{"age and count", 4, 45 * time.Hour, []string{"job-1", "job-2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			st := openStore(t, dir)
			pub := &memPub{}
			m, err := New(context.Background(), Config{Store: st, Events: pub, Dir: filepath.Join(dir, "jobs"),
				KeepFinished: tc.keep, KeepFor: tc.keepFor}, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			seed(t, st, m.cfg.Dir)
			n, err := m.Prune(context.Background(), now)
			if err != nil || n != len(tc.removed) {
				t.Fatalf("Prune: %d, %v; want %d", n, err, len(tc.removed))
			}
			gone := map[string]bool{}
			for _, id := range tc.removed {
				gone[id] = true
			}
			for i := 1; i <= 7; i++ {
				id := fmt.Sprintf("job-%d", i)
				_, gerr := st.GetJob(context.Background(), id)
				_, lerr := os.Stat(filepath.Join(m.cfg.Dir, id+".log"))
				_, derr := os.Stat(filepath.Join(m.cfg.Dir, id))
				if gone[id] {
					if gerr == nil || !os.IsNotExist(lerr) || !os.IsNotExist(derr) {
						t.Errorf("%s pruned: record %v, log %v, directory %v", id, gerr, lerr, derr)
					}
					if s := pub.states(id); len(s) != 1 || s[0] != "removed" {
						t.Errorf("%s pruned: events %v", id, s)
					}
				} else if gerr != nil || lerr != nil || derr != nil {
					t.Errorf("%s kept: record %v, log %v, directory %v", id, gerr, lerr, derr)
				}
			}
		})
	}
}

// TestPrunerAfterJobsEnd: a started manager applies the retention when a
// job ends, without waiting for its period.
func TestPrunerAfterJobsEnd(t *testing.T) {
	dir := t.TempDir()
	st := openStore(t, dir)
	m, err := New(context.Background(), Config{Services: []*Service{shService(t, dir, "echo hi\n", 1)}, Store: st,
		Dir: filepath.Join(dir, "jobs"), KeepFinished: 1, PruneEvery: time.Hour, LogFlush: 20 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	m.Start()
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	var ids []string
	for i := 0; i < 3; i++ {
		j, err := m.Submit(context.Background(), "s", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		waitState(t, m, j.ID, StateSucceeded)
		ids = append(ids, j.ID)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		js, err := m.List(context.Background(), Filter{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, j := range js {
			got = append(got, j.ID)
		}
		sort.Strings(got)
		if len(got) == 1 && got[0] == ids[2] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs %v, want only %s", got, ids[2])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
