package integration

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestShutdownIsBoundedWithEverythingRunning: with a websocket client
// that has stopped reading, a service that ignores SIGTERM, a running job
// that ignores SIGTERM and a launcher application, SIGTERM stops the
// gateway within its one deadline (--stop_grace plus the fixed margin),
// with exit status 0 and nothing left running.
func TestShutdownIsBoundedWithEverythingRunning(t *testing.T) {
	t.Parallel()
	const stopGrace = 2 * time.Second
	const margin = 5 * time.Second // gateway.ShutdownMargin, stated in the README
	dir := t.TempDir()
	writeScript(t, dir, "stubborn-svc.sh", fmt.Sprintf(`case "$1" in
start) TESTSVC_IGNORE_TERM=1 exec %s serve --grandchild "$WSGW_SESSION_DIR/grandchild.pid" ;;
esac
`, svcBin))
	writeScript(t, dir, "stubborn-job.sh", `trap 'echo ignoring TERM' TERM
echo ready
while :; do sleep 0.1; done
`)
	cfg := writeConfig(t, dir, map[string]any{
		"Stubborn Service": map[string]any{"script": "stubborn-svc.sh", "count": 1, "options": map[string]any{}},
		"stubborn":         map[string]any{"kind": "job", "count": 1, "cmd": []string{"./stubborn-job.sh"}, "options": map[string]any{}},
	})
	e := lchStart(t, true, 2, nil, "--remote_session_config", cfg, "--state_db", filepath.Join(dir, "state.db"))
	g := e.g
	// The stop grace lchStart gives must be the one this test assumes.
	if !strings.Contains(strings.Join(g.cmd.Args, " "), "--stop_grace 2") {
		t.Fatalf("gateway started with %v, want --stop_grace 2", g.cmd.Args)
	}

	// A launcher application.
	app := e.launch(`{"application": "wslink"}`)
	if app["id"] == nil {
		t.Fatalf("launcher answer: %v", app)
	}

	// A running job that ignores SIGTERM.
	c := dialRPC(t, g, "")
	c.must("events.subscribe", map[string]any{"topics": []string{"job.state"}}, nil)
	var job struct{ ID string }
	c.must("jobs.submit", map[string]any{"service": "stubborn", "params": map[string]any{}}, &job)
	c.waitEvent("job running", 20*time.Second, jobState(job.ID, "running"))

	// A service that ignores SIGTERM, whose client has stopped reading:
	// the echo fills every buffer between them.
	tok := g.reserve(t, "Stubborn Service", "")["token"].(string)
	ws, h := connectToken(t, g, tok)
	gc := grandchildPID(t, h)
	flooded := make(chan error, 1)
	go func() {
		chunk := make([]byte, 64<<10)
		_ = ws.UnderlyingConn().SetWriteDeadline(time.Now().Add(60 * time.Second))
		for i := 0; i < 2048; i++ { // at most 128 MiB; the buffers fill long before
			if err := ws.WriteMessage(websocket.BinaryMessage, chunk); err != nil {
				flooded <- err
				return
			}
		}
		flooded <- nil
	}()
	// Wait until the gateway has bytes queued for this client that it
	// cannot write: the bytes counted in stop moving.
	var last float64 = -1
	waitFor(t, "the client's direction to back up", 30*time.Second, func() bool {
		st := g.status(t)
		ss, _ := st["sessions"].([]any)
		if len(ss) != 1 {
			return false
		}
		in, _ := ss[0].(map[string]any)["bytes_in"].(float64)
		stalled := in > 1<<20 && in == last
		last = in
		if !stalled {
			time.Sleep(200 * time.Millisecond) // a sampling interval, not a wait for an event
		}
		return stalled
	})

	start := time.Now()
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	bound := stopGrace + margin
	select {
	case <-g.exited:
	case <-time.After(3 * bound):
		t.Fatalf("gateway still running %s after SIGTERM (bound %s)", 3*bound, bound)
	}
	took := time.Since(start)
	if g.exitErr != nil {
		t.Fatalf("gateway exit after %s: %v (a shutdown over its deadline exits non-zero)", took, g.exitErr)
	}
	// The job and the launcher application are stopped by the one
	// shutdown, before it is complete, not after it.
	var complete, jobStopped, appsStopped bool
	for _, l := range g.logLines() {
		switch {
		case l["message"] == "shutdown complete":
			complete = true
		case complete:
		case l["message"] == "job finished" && l["state"] == "interrupted":
			jobStopped = true
		case l["message"] == "launcher stopped":
			appsStopped = true
		}
	}
	if !complete {
		t.Fatalf("no 'shutdown complete' line after %s", took)
	}
	if !jobStopped || !appsStopped {
		t.Errorf("before 'shutdown complete': job interrupted %v, launcher stopped %v; both belong to the one shutdown", jobStopped, appsStopped)
	}
	t.Logf("shutdown took %s (bound %s)", took.Round(time.Millisecond), bound)
	if testing.Verbose() {
		t.Log(g.log.String())
	}
	if alive(h.PID) || alive(gc) {
		t.Error("the SIGTERM-ignoring service outlived the gateway")
	}
	for _, pid := range processesWithArg(filepath.Join(dir, "stubborn-job.sh")) {
		t.Errorf("the job (pid %d) outlived the gateway", pid)
	}
	for _, pid := range processesWithArg("./stubborn-job.sh") {
		t.Errorf("the job (pid %d) outlived the gateway", pid)
	}
	<-flooded
}
