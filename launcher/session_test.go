package launcher

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/proc"
	"wsgateway/session"
)

// Each launcher session is a session.Session of the launcher's Manager:
// these tests drive its life through the REST API and /proxy.

// sessionOf is the launcher's session by id (nil when forgotten).
func (e *env) sessionOf(id string) *appSession {
	e.l.mu.Lock()
	defer e.l.mu.Unlock()
	return e.l.sessions[id]
}

func (e *env) state(id string) session.State {
	s := e.sessionOf(id)
	if s == nil {
		return session.Ended
	}
	return s.ss.State()
}

func (e *env) audit() string {
	b, _ := os.ReadFile(filepath.Join(e.cfg.Configuration.LogDir, "launcherLog.log"))
	return string(b)
}

func (e *env) dialProxy(id, path string) (*websocket.Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws"+strings.TrimPrefix(e.srv.URL, "http")+"/proxy?sessionId="+id+"&path="+url.QueryEscape(path), nil)
	return c, err
}

// closeWS closes c from the client side and waits for the answer.
func closeWS(t *testing.T, c *websocket.Conn) {
	t.Helper()
	_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(5*time.Second))
	expectClose(t, c, websocket.CloseNormalClosure, "")
	c.Close()
}

// TestSessionNeverConnectedExpires is finding 7's pool exhaustion: a
// session whose /proxy websocket never comes is stopped by the Manager
// after connect_timeout, its process group ended and its port free.
func TestSessionNeverConnectedExpires(t *testing.T) {
	e := newEnv(t, map[string]any{
		"configuration": map[string]any{"connect_timeout": 0.3},
		"resources":     []any{map[string]any{"host": "127.0.0.1", "port_range": []int{9311, 9311}}},
	})
	id := e.launch("ready", "")["id"].(string)
	pg := e.pgids()[0]
	if st := e.state(id); st != session.Detached {
		t.Errorf("a ready session waiting for its websocket is %s, want detached", st)
	}
	if code, m := e.call("POST", "/paraview/", `{"application": "ready"}`); code != 503 {
		t.Fatalf("second launch with the only port held: %d %v", code, m)
	}
	waitUntil(t, "the unconnected session to expire", 20*time.Second, func() bool { return e.sessionOf(id) == nil })
	if e.free() != 1 {
		t.Errorf("port not returned: %d free", e.free())
	}
	waitUntil(t, "its process group to end", 20*time.Second, func() bool { return !proc.GroupAlive(pg) })
	if code, _ := e.call("GET", "/paraview/"+id, ""); code != 404 {
		t.Errorf("GET of an expired session: %d", code)
	}
	if e.proxyFile() != "" {
		t.Errorf("proxy file lists the expired session: %q", e.proxyFile())
	}
	if a := e.audit(); !strings.Contains(a, "not connected within connect_timeout") {
		t.Errorf("launcherLog.log does not say why the session ended:\n%s", a)
	}
	e.launch("ready", "")
}

// TestSessionConnectedOutlivesConnectTimeout: a session whose websocket
// came is not expired by connect_timeout. B, launched after A and never
// connected, expires; A, whose deadline came first, still runs.
func TestSessionConnectedOutlivesConnectTimeout(t *testing.T) {
	port, _ := echoBackend(t)
	e := newEnv(t, map[string]any{
		"configuration": map[string]any{"connect_timeout": 0.5},
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{port, port}},
			map[string]any{"host": "localhost", "port_range": []int{1, 1}}},
		"apps": map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	a := e.launch("hold", "")
	if a["host"] != "127.0.0.1" {
		t.Fatalf("first session on %v", a["host"])
	}
	idA := a["id"].(string)
	c, err := e.dialProxy(idA, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if st := e.state(idA); st != session.Running {
		t.Errorf("session with its websocket is %s, want running", st)
	}
	idB := e.launch("hold", "")["id"].(string)
	waitUntil(t, "the unconnected session B to expire", 20*time.Second, func() bool { return e.sessionOf(idB) == nil })
	if code, m := e.call("GET", "/paraview/"+idA, ""); code != 200 {
		t.Fatalf("connected session A after B expired: %d %v", code, m)
	}
	c.WriteMessage(websocket.TextMessage, []byte("still here"))
	expectMsg(t, c, websocket.TextMessage, []byte("still here"))
}

// TestSessionReconnectAndGrace: a session's websockets are one Tunnel to
// the Manager: it runs while any is open, is detached after the last one
// closes, takes a websocket again within the reconnect grace, and is
// stopped by the Manager when the grace runs out.
func TestSessionReconnectAndGrace(t *testing.T) {
	port, _ := echoBackend(t)
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{port, port}}},
		"apps":      map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	id := e.launch("hold", "")["id"].(string)
	c1, err := e.dialProxy(id, "echo")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := e.dialProxy(id, "echo")
	if err != nil {
		t.Fatal(err)
	}
	closeWS(t, c1)
	c2.WriteMessage(websocket.TextMessage, []byte("two"))
	expectMsg(t, c2, websocket.TextMessage, []byte("two"))
	if st := e.state(id); st != session.Running {
		t.Errorf("with one of two websockets closed: %s, want running", st)
	}
	closeWS(t, c2)
	waitUntil(t, "the session to be detached", 10*time.Second, func() bool { return e.state(id) == session.Detached })
	c3, err := e.dialProxy(id, "echo")
	if err != nil {
		t.Fatalf("reconnection within the grace: %v", err)
	}
	c3.WriteMessage(websocket.TextMessage, []byte("back"))
	expectMsg(t, c3, websocket.TextMessage, []byte("back"))
	if st := e.state(id); st != session.Running {
		t.Errorf("after a reconnection: %s, want running", st)
	}
	e.l.mu.Lock()
	e.l.reconnectGrace = 200 * time.Millisecond
	e.l.mu.Unlock()
	closeWS(t, c3)
	waitUntil(t, "the session to end after its grace", 20*time.Second, func() bool { return e.sessionOf(id) == nil })
	if e.free() != 1 {
		t.Errorf("port not returned after the grace")
	}
	if a := e.audit(); !strings.Contains(a, "no websocket within the reconnect grace") {
		t.Errorf("launcherLog.log does not say why the session ended:\n%s", a)
	}
}

// TestSessionDeleteAndExitThroughManager: DELETE releases through the
// Manager (websockets closed with 1001, port free when it answers); a
// process that exits ends its session, whose websocket gets 1001.
func TestSessionDeleteAndExitThroughManager(t *testing.T) {
	port, _ := echoBackend(t)
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{port, port}}},
		"apps":      map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	id := e.launch("hold", "")["id"].(string)
	c, err := e.dialProxy(id, "echo")
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := e.call("DELETE", "/paraview/"+id, ""); code != 200 {
		t.Fatalf("DELETE: %d", code)
	}
	if e.free() != 1 || e.sessionOf(id) != nil {
		t.Errorf("after DELETE: %d free, session kept %v", e.free(), e.sessionOf(id) != nil)
	}
	expectClose(t, c, websocket.CloseGoingAway, "stopped by DELETE")
	c.Close()

	id = e.launch("hold", "")["id"].(string)
	c, err = e.dialProxy(id, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := e.sessionOf(id)
	if s == nil {
		t.Fatal("session forgotten at once")
	}
	s.proc.p.Kill()
	expectClose(t, c, websocket.CloseGoingAway, "session ended")
	waitUntil(t, "the port to be free", 10*time.Second, func() bool { return e.free() == 1 })
}

// TestCloseWithSessionsInEveryState: Close (StopAll) ends sessions
// waiting for their websocket, running ones and detached ones, within
// its bound, and nothing of them runs afterwards.
func TestCloseWithSessionsInEveryState(t *testing.T) {
	port, _ := echoBackend(t)
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{port, port}},
			map[string]any{"host": "localhost", "port_range": []int{1, 1}}},
		"apps": map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	idA := e.launch("hold", "")["id"].(string)
	c, err := e.dialProxy(idA, "echo")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	e.launch("hold", "")
	pgs := e.pgids()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	expectClose(t, c, websocket.CloseGoingAway, "launcher shutting down")
	for _, pg := range pgs {
		if proc.GroupAlive(pg) {
			t.Errorf("group %d alive after Close", pg)
		}
	}
	if code, _ := e.call("POST", "/paraview/", `{"application": "hold"}`); code != http.StatusServiceUnavailable {
		t.Errorf("launch after Close: %d", code)
	}
}
