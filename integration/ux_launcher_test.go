package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// startBare runs the binary with exactly args, in dir, with nothing added
// (no --session_dir, no ports), as a person would type it.
func startBare(t *testing.T, dir string, args ...string) *gateway {
	t.Helper()
	cmd := exec.Command(gwBin, args...)
	cmd.Dir = dir
	return spawn(t, cmd, dir)
}

// listenersOf returns the "listening" lines' listener → address.
func (g *gateway) listenersOf() map[string]string {
	out := map[string]string{}
	for _, l := range g.logLines() {
		if l["message"] == "listening" {
			name, _ := l["listener"].(string)
			out[name], _ = l["address"].(string)
		}
	}
	return out
}

// The launcher alone is a complete command, as python -m wslink.launcher
// launcher.config is: no ws_server_port, no websocket or HTTP port opened,
// the launcher on its configuration.host:port, sessions reached through
// its /proxy.
func TestUxLauncherAloneIsACompleteCommand(t *testing.T) {
	t.Parallel()
	srv := lchWslinksrv(t)
	dir := t.TempDir()
	port, _ := lchPorts(t, 1)
	lo, hi := lchPorts(t, 2)
	conf := map[string]any{
		"configuration": map[string]any{
			"host": "127.0.0.1", "port": port, "endpoint": "paraview",
			"sessionURL": "ws://USE_HOST/proxy?sessionId=${id}&path=ws",
			"timeout":    10, "log_dir": "logs",
		},
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{lo, hi}}},
		"apps": map[string]any{
			"wslink": map[string]any{"cmd": []string{srv, "--port", "${port}", "--authKey", "${secret}"}, "ready_line": "Starting factory"},
		},
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "launcher.config"), append([]byte("# the launcher alone\n"), b...), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // runs after the gateway has stopped
		for _, pid := range lchProcesses(srv, lo, hi) {
			t.Errorf("wslinksrv pid %d still running after the gateway stopped", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	g := startBare(t, dir, "--launcher_config", "launcher.config")
	want := "127.0.0.1:" + strconv.Itoa(port)
	waitFor(t, "the launcher's listening line", 20*time.Second, func() bool {
		select {
		case <-g.exited:
			t.Fatalf("gateway exited: %v\n%s", g.exitErr, g.log.String())
		default:
		}
		return g.listenersOf()["launcher"] != ""
	})
	lns := g.listenersOf()
	if lns["launcher"] != want {
		t.Errorf("launcher listens on %q, want configuration.host:port %s", lns["launcher"], want)
	}
	if len(lns) != 1 {
		t.Errorf("listeners %v: only the launcher's was asked for", lns)
	}
	// The first lines say what is served and where to start.
	if lines := g.logLines(); lines[0]["message"] != "serving" || lines[0]["url"] != "http://"+want+"/paraview" {
		t.Errorf("first log line %v, want the launcher served at its URL", lines[0])
	}

	// POST a session, as the wslink client does.
	resp, err := http.Post("http://"+want+"/paraview", "", strings.NewReader(`{"application": "wslink"}`))
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	err = json.NewDecoder(resp.Body).Decode(&s)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("POST: %d %v %v", resp.StatusCode, s, err)
	}
	id, _ := s["id"].(string)
	if s["sessionURL"] != "ws://USE_HOST/proxy?sessionId="+id+"&path=ws" {
		t.Errorf("sessionURL %v", s["sessionURL"])
	}
	// Reach it through /proxy, on the launcher's own port.
	ws, code, body := dialWS(t, "ws://"+want+"/proxy?sessionId="+id+"&path=echo", nil)
	if ws == nil {
		t.Fatalf("proxy: %d %v", code, body)
	}
	defer ws.Close()
	msg := []byte(fmt.Sprintf("through the launcher alone %d", port))
	if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		t.Fatal(err)
	}
	lchExpect(t, ws, websocket.BinaryMessage, msg)
	// No state database was created for jobs that cannot exist.
	if _, err := os.Stat(filepath.Join(dir, "wsgateway-state.db")); err == nil {
		t.Error("a state database was created")
	}
}
