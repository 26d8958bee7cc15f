package launcher

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wsgateway/proc"
)

// TestCloseIsBoundedAndParallel: two apps that ignore SIGTERM and a stop
// grace far longer than Close's deadline: Close returns by its deadline,
// both groups get SIGKILL when it ends, and nothing of either app runs
// afterwards.
func TestCloseIsBoundedAndParallel(t *testing.T) {
	e := newEnv(t, map[string]any{
		"apps": map[string]any{
			"stubborn": map[string]any{"cmd": []string{"/bin/sh", "-c",
				"trap '' TERM; sleep 1000 & printf 'wslink: Starting factory'; wait"},
				"ready_line": "Starting factory"},
		},
	})
	e.cfg.StopGrace = time.Minute
	e.l.stopGrace = time.Minute
	e.launch("stubborn", "")
	e.launch("stubborn", "")
	pgids := e.pgids()
	if len(pgids) != 2 {
		t.Fatalf("%d sessions, want 2", len(pgids))
	}
	const deadline = 2 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	t0 := time.Now()
	err := e.l.Close(ctx)
	took := time.Since(t0)
	if took > deadline+10*time.Second {
		t.Errorf("Close took %v with a deadline of %v and a grace of a minute", took, deadline)
	}
	t.Logf("Close: %v after %v", err, took)
	for _, pg := range pgids {
		waitUntil(t, "the app's group to die", 20*time.Second, func() bool { return !proc.GroupAlive(pg) })
	}
}

// TestAppEnvironment: an app gets proc's allow-listed environment, never
// the security token nor the gateway's other variables.
func TestAppEnvironment(t *testing.T) {
	t.Setenv(proc.SecurityTokenVar, "the-gateway-secret")
	t.Setenv("WSGWTEST_OTHER", "not for apps")
	t.Setenv("LANG", "C.UTF-8")
	e := newEnv(t, map[string]any{
		"apps": map[string]any{
			"env": map[string]any{"cmd": []string{"/bin/sh", "-c",
				"env; printf 'wslink: Starting factory'; exec sleep 60"},
				"ready_line": "Starting factory"},
		},
	})
	m := e.launch("env", "")
	b, err := os.ReadFile(filepath.Join(e.cfg.Configuration.LogDir, m["id"].(string)+".txt"))
	if err != nil {
		t.Fatal(err)
	}
	log := string(b)
	for _, bad := range []string{"the-gateway-secret", "WSGWTEST_OTHER"} {
		if strings.Contains(log, bad) {
			t.Errorf("the app saw %q:\n%s", bad, log)
		}
	}
	for _, good := range []string{"LANG=C.UTF-8\n", "PATH="} {
		if !strings.Contains(log, good) {
			t.Errorf("the app did not see %q:\n%s", good, log)
		}
	}
}

// TestWaitReadyExitWinsOverContext: a process that exits ends its
// session, and so the context of the launch that waits for it; when
// both have happened, waitReady says the process exited (the launch
// then answers "the process ended (status)"), never that the client went
// away. Both are ready at once here, so a random choice between them
// fails this within a few rounds.
func TestWaitReadyExitWinsOverContext(t *testing.T) {
	p := filepath.Join(t.TempDir(), "session.txt")
	if err := os.WriteFile(p, []byte("starting\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	close(exited)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 200; i++ {
		if err := waitReady(ctx, p, "never printed", exited, time.Minute); err != ErrExited {
			t.Fatalf("round %d: waitReady = %v, want ErrExited", i, err)
		}
	}
}
