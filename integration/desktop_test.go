package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestDesktopBuiltinReachesXvnc launches the built-in desktop service (a
// real TigerVNC Xvnc) and reads its RFB greeting through the websocket.
func TestDesktopBuiltinReachesXvnc(t *testing.T) {
	t.Parallel()
	needComponent(t, "Xvnc", "tigervnc-standalone-server")
	g := startGateway(t, "--local_session", "desktop", "1")
	r := g.reserve(t, "desktop", "geometry=1024x768")
	tok := r["token"].(string)
	d := *dialer
	d.Subprotocols = []string{"binary"}
	ws, _, err := d.Dial(g.wsURL("/websockify?token="+tok), nil)
	if err != nil {
		t.Fatal(err)
	}
	greeting, err := readN(ws, 12, 40*time.Second)
	if err != nil {
		t.Fatalf("no RFB greeting: %v (%q)", err, greeting)
	}
	if string(greeting[:12]) != "RFB 003.008\n" {
		t.Fatalf("greeting %q", greeting)
	}
	// Answer with our version and check the security types offer None (1):
	// the socket is private to the gateway.
	ws.WriteMessage(websocket.BinaryMessage, []byte("RFB 003.008\n"))
	sec, err := readN(ws, 2, 10*time.Second)
	if err != nil || sec[0] < 1 {
		t.Fatalf("security types: %v %v", sec, err)
	}
	// Xvnc listens on a Unix socket only, inside the session directory.
	socks, _ := filepath.Glob(filepath.Join(g.dir, "sessions", "desktop-0-*", "vnc.sock"))
	if len(socks) != 1 {
		t.Fatalf("vnc.sock: %v", socks)
	}
	st, err := os.Stat(socks[0])
	if err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Fatalf("socket mode: %v %v", st.Mode(), err)
	}
	pid := sessionPID(t, g)
	ws.Close()

	// The built-in desktop has a reconnect grace: a page reload reattaches
	// to the same running desktop.
	waitFor(t, "the session to be idle", 10*time.Second, func() bool {
		s := g.status(t)["sessions"].([]any)
		return len(s) == 1 && s[0].(map[string]any)["state"] == "detached"
	})
	if !alive(pid) || !xvncRunning(socks[0]) {
		t.Fatal("the desktop stopped at once despite its reconnect grace")
	}
	ws, _, err = d.Dial(g.wsURL("/websockify?token="+tok), nil)
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	if greeting, err := readN(ws, 12, 20*time.Second); err != nil || string(greeting) != "RFB 003.008\n" {
		t.Fatalf("greeting after reconnect: %q %v", greeting, err)
	}
	if sessionPID(t, g) != pid {
		t.Fatal("reconnect started a new desktop")
	}
	// Release stops Xvnc and everything it started, and frees the slot.
	if code, body := getJSON(t, g.httpURL("/v1/release/"+tok)); code != 200 {
		t.Fatalf("release: %d %v", code, body)
	}
	waitFor(t, "Xvnc to stop", 20*time.Second, func() bool { return !alive(pid) && !xvncRunning(socks[0]) })
	waitFor(t, "the slot", 10*time.Second, func() bool { return g.free(t, "desktop") == 1 })
	ws.Close()
}

func sessionPID(t *testing.T, g *gateway) int {
	t.Helper()
	for _, s := range g.status(t)["sessions"].([]any) {
		if p, ok := s.(map[string]any)["pid"].(float64); ok {
			return int(p)
		}
	}
	t.Fatal("no session pid in status")
	return 0
}

// xvncRunning reports whether an Xvnc with this socket path is alive.
func xvncRunning(sock string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if strings.Contains(string(b), sock) && strings.Contains(string(b), "Xvnc") {
			return true
		}
	}
	return false
}
