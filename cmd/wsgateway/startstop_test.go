package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStoppedDuringStartUp: a SIGTERM while the gateway reads its state
// (the context ends before the jobs are restored) is a clean stop, not
// an error about the state database.
func TestStoppedDuringStartUp(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "services.json")
	if err := os.WriteFile(conf, []byte(`{"work": {"kind": "job", "count": 1, "cmd": ["/bin/true"], "options": {}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errs bytes.Buffer
	err := run(ctx, []string{"--bind_address", "127.0.0.1", "--session_dir", filepath.Join(dir, "sessions"),
		"--state_db", filepath.Join(dir, "state.db"), "--remote_session_config", conf, "--http_port", "0", "0"}, &out, &errs)
	if err != nil {
		t.Fatalf("stopped during start-up: %v\n%s", err, errs.String())
	}
	if strings.Contains(errs.String(), "context canceled") {
		t.Fatalf("the log reports the stop as a failure:\n%s", errs.String())
	}
	if !strings.Contains(errs.String(), "stopped during start-up") {
		t.Fatalf("the stop is not said:\n%s", errs.String())
	}
}
