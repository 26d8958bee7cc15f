package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"

	"wsgateway/internal/httperr"
	"wsgateway/jobs"
)

// TestJobHTTPErr: the job Manager's errors a replica call answers with
// their status, so that the calling replica gets them back.
func TestJobHTTPErr(t *testing.T) {
	tests := []struct {
		err    error
		status int
	}{
		{fmt.Errorf("%w \"job-1\"", jobs.ErrNotFound), http.StatusNotFound},
		{fmt.Errorf("%w: job-1 is running", jobs.ErrNotFinished), http.StatusConflict},
		{errors.New("disk full"), http.StatusInternalServerError},
	}
	for _, tt := range tests {
		got := jobHTTPErr(tt.err)
		if httperr.Status(got) != tt.status || got.Error() != tt.err.Error() || !errors.Is(got, tt.err) {
			t.Errorf("%v: %v (status %d), want %d", tt.err, got, httperr.Status(got), tt.status)
		}
	}
	if jobHTTPErr(nil) != nil {
		t.Error("nil is not an error")
	}
}

// TestReplicaJobsBeforeTheGateway: a call before the gateway exists is a
// replica that cannot be reached, not a crash.
func TestReplicaJobsBeforeTheGateway(t *testing.T) {
	r := &replicaJobs{id: "A"}
	if _, err := r.ReadLog(context.Background(), "B", "job-1", 0, 0); !errors.Is(err, jobs.ErrReplicaGone) {
		t.Fatalf("read: %v", err)
	}
	if _, err := r.Stop(context.Background(), "B", "job-1", "ann"); !errors.Is(err, jobs.ErrReplicaGone) {
		t.Fatalf("stop: %v", err)
	}
	if err := r.Remove(context.Background(), "B", "job-1"); !errors.Is(err, jobs.ErrReplicaGone) {
		t.Fatalf("remove: %v", err)
	}
}

func TestReplicaJobDir(t *testing.T) {
	dir := t.TempDir()
	if got := replicaJobDir(&Config{SessionDir: filepath.Join(dir, "sessions")}); got != filepath.Join(dir, "jobs") {
		t.Fatalf("next to --session_dir: %s", got)
	}
	if got := replicaJobDir(&Config{}); filepath.Base(got) != "jobs" || !filepath.IsAbs(got) {
		t.Fatalf("default: %s", got)
	}
}
