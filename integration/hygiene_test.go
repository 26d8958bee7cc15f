package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestServicesDieWithTheGatewayEvenBySIGKILL: the per-service supervisor
// notices the gateway is gone and takes the whole process group down.
func TestServicesDieWithTheGatewayEvenBySIGKILL(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 2, nil)
	var pids []int
	for i := 0; i < 2; i++ {
		tok := g.reserve(t, "Echo Service", "")["token"].(string)
		ws, h := connectToken(t, g, tok)
		defer ws.Close()
		pids = append(pids, h.PID, grandchildPID(t, h))
	}
	for _, p := range pids {
		if !alive(p) {
			t.Fatalf("pid %d not running before the kill", p)
		}
	}
	if err := g.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-g.exited
	waitFor(t, "every service process to die after the gateway's SIGKILL", 20*time.Second, func() bool {
		for _, p := range pids {
			if alive(p) {
				return false
			}
		}
		return true
	})
}

// TestNoZombiesAfterStop: the supervisor reaps the service's orphans, so
// a stopped session leaves no process behind, not even a zombie.
func TestNoZombiesAfterStop(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	ws, h := connectToken(t, g, tok)
	gc := grandchildPID(t, h)
	ws.Close()
	waitFor(t, "the slot to be free", 20*time.Second, func() bool { return g.free(t, "Echo Service") == 1 })
	for _, p := range []int{h.PID, gc} {
		waitFor(t, fmt.Sprintf("pid %d to be reaped", p), 10*time.Second, func() bool {
			_, err := os.Stat(fmt.Sprintf("/proc/%d", p))
			return os.IsNotExist(err)
		})
	}
}

// TestLauncherSessionsDieWithTheGatewayEvenBySIGKILL: launcher
// applications run under the same supervisor as services.
func TestLauncherSessionsDieWithTheGatewayEvenBySIGKILL(t *testing.T) {
	t.Parallel()
	e := lchStart(t, true, 2, map[string]any{"apps": map[string]any{
		"kids": map[string]any{"cmd": []string{"${srv}", "--port", "${port}", "--grandchild"}, "ready_line": "Starting factory"},
	}})
	code, body := e.do("POST", "/paraview/", `{"application": "kids"}`)
	if code != 200 {
		t.Fatalf("start: %d %v", code, body)
	}
	logb, _ := os.ReadFile(filepath.Join(e.logDir, body["id"].(string)+".txt"))
	var pid, gc int
	if _, err := fmt.Sscanf(string(logb[bytes.Index(logb, []byte("wslinksrv pid=")):]), "wslinksrv pid=%d grandchild=%d", &pid, &gc); err != nil {
		t.Fatalf("no pids in the session log %q: %v", logb, err)
	}
	if !alive(pid) || !alive(gc) {
		t.Fatal("application or grandchild not running")
	}
	e.g.cmd.Process.Signal(syscall.SIGKILL)
	<-e.g.exited
	waitFor(t, "the application, its grandchild and its supervisor to be gone", 20*time.Second, func() bool {
		return !alive(pid) && !alive(gc) && len(lchProcesses(e.srvPath, e.lo, e.hi)) == 0
	})
}
