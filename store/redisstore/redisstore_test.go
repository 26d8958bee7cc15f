package redisstore

import (
	"context"
	"os"
	"strings"
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
