package redisstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/internal/redistest"
	"wsgateway/store"
	"wsgateway/store/storetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared()
	os.Exit(code)
}

// openTest opens a store on the package's redis-server with a key prefix
// of its own.
func openTest(t *testing.T) *Store {
	t.Helper()
	srv := redistest.Need(t)
	s, err := Open(context.Background(), srv.URL(0)+"?prefix="+redistest.Prefix(t), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestRedisStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return openTest(t) })
}

func TestOpenURLs(t *testing.T) {
	srv := redistest.Need(t)
	ctx := context.Background()
	tests := []struct {
		name, url, prefix string
		ok                bool
	}{
		{"default prefix", srv.URL(1), DefaultPrefix, true},
		{"own prefix", srv.URL(2) + "?prefix=site1:", "site1:", true},
		{"no such port", "redis://127.0.0.1:1/0", "", false},
		{"bad scheme", "http://" + srv.Addr, "", false},
		{"bad db", "redis://" + srv.Addr + "/x", "", false},
		{"unknown option", srv.URL(0) + "?nosuch=1", "", false},
	}
	for _, tt := range tests {
		s, err := Open(ctx, tt.url, zerolog.Nop())
		if (err == nil) != tt.ok {
			t.Errorf("%s: err %v, want ok %v", tt.name, err, tt.ok)
		}
		if err == nil {
			if s.Prefix() != tt.prefix || s.Key("x") != tt.prefix+"x" {
				t.Errorf("%s: prefix %q", tt.name, s.Prefix())
			}
			s.Close()
		}
	}
}

func TestIsURLAndRedact(t *testing.T) {
	tests := []struct {
		in   string
		is   bool
		hide bool
	}{
		{"redis://h:1/0", true, false},
		{"rediss://u:secret@h:1/0", true, true},
		{"state.db", false, false},
		{"/var/lib/redis://x", false, false},
		{"REDIS://h", false, false},
	}
	for _, tt := range tests {
		if got := IsURL(tt.in); got != tt.is {
			t.Errorf("IsURL(%q) = %v", tt.in, got)
		}
		if r := Redact(tt.in); strings.Contains(r, "secret") {
			t.Errorf("Redact(%q) = %q", tt.in, r)
		}
	}
}

func TestReadEventsWaitsForTheNext(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	if _, err := s.AppendEvent(ctx, "a", "", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	got := make(chan []store.Event, 1)
	go func() {
		evs, _ := s.ReadEvents(ctx, 1, 10, 30*time.Second)
		got <- evs
	}()
	if _, err := s.AppendEvent(ctx, "b", "", []byte(`2`)); err != nil {
		t.Fatal(err)
	}
	evs := <-got
	if len(evs) != 1 || evs[0].Seq != 2 || evs[0].Topic != "b" {
		t.Fatalf("read %+v", evs)
	}
	// Nothing newer: an empty answer when the wait runs out.
	evs, err := s.ReadEvents(ctx, 2, 10, 10*time.Millisecond)
	if err != nil || len(evs) != 0 {
		t.Fatalf("read with nothing new %+v %v", evs, err)
	}
}

// TestClaimJobRacesWithinTheLimit: 30 claims race from three clients
// (replicas) for 10 queued jobs of a service limited to 3: exactly 3
// jobs are claimed, each once; the ends of two let exactly two more in.
func TestClaimJobRacesWithinTheLimit(t *testing.T) {
	first := openTest(t)
	ctx := context.Background()
	stores := []*Store{first}
	for i := 0; i < 2; i++ {
		s2, err := Open(ctx, "redis://"+first.c.Options().Addr+"/0?prefix="+first.Prefix(), zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s2.Close() })
		stores = append(stores, s2)
	}
	for i := 0; i < 10; i++ {
		if _, err := first.EnqueueJob(ctx, store.Job{Service: "x", Created: time.Now()}, 0); err != nil {
			t.Fatal(err)
		}
	}
	race := func(n int) []store.Job {
		var mu sync.Mutex
		var got []store.Job
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(s *Store, rep string) {
				defer wg.Done()
				j, err := s.ClaimJob(ctx, rep, map[string]int{"x": 3}, time.Now())
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					t.Errorf("claim: %v", err)
				}
				if err == nil {
					mu.Lock()
					got = append(got, j)
					mu.Unlock()
				}
			}(stores[i%3], fmt.Sprintf("r%d", i%3))
		}
		wg.Wait()
		sort.Slice(got, func(a, b int) bool { return got[a].Num < got[b].Num })
		return got
	}
	got := race(30)
	if len(got) != 3 || got[0].ID != "job-1" || got[1].ID != "job-2" || got[2].ID != "job-3" {
		t.Fatalf("claimed %+v, want job-1..3 once each", got)
	}
	for _, j := range got[:2] {
		j.State, j.Finished = "succeeded", time.Now()
		if ok, err := first.UpdateJob(ctx, j, true); err != nil || !ok {
			t.Fatalf("end of %s: %v %v", j.ID, ok, err)
		}
	}
	more := race(30)
	if len(more) != 2 || more[0].ID != "job-4" || more[1].ID != "job-5" {
		t.Fatalf("claimed after two ends %+v, want job-4 and job-5", more)
	}
	if n, _ := first.c.HGet(ctx, first.Key(keyJobRunSvc), "x").Int(); n != 3 {
		t.Fatalf("x counted %d running, want 3", n)
	}
}
