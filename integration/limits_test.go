package integration

import (
	"bytes"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestMaxMessageBytesCloses1009(t *testing.T) {
	t.Parallel()
	g, _ := basicGateway(t, echo, "--max_message_bytes", "4096")
	ws, _, _ := dialWS(t, g.wsURL("/"), nil)
	roundTrip(t, ws, 4096) // at the limit: fine
	ws.WriteMessage(websocket.BinaryMessage, make([]byte, 5000))
	_, ce, err := readUntilClose(ws, 10*time.Second)
	if err != nil || ce.Code != websocket.CloseMessageTooBig || !strings.Contains(ce.Text, "4096") {
		t.Fatalf("close %v %v, want 1009 naming the limit", ce, err)
	}
	// A fragmented message is limited as a whole.
	ws2, _, _ := dialWS(t, g.wsURL("/"), nil)
	w, _ := ws2.NextWriter(websocket.BinaryMessage)
	for i := 0; i < 3; i++ {
		w.Write(make([]byte, 2000))
		if f, ok := w.(interface{ Flush() error }); ok {
			f.Flush()
		}
	}
	w.Close()
	_, ce, err = readUntilClose(ws2, 10*time.Second)
	if err != nil || ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("fragmented: close %v %v, want 1009", ce, err)
	}
}

func TestMaxTunnels503(t *testing.T) {
	t.Parallel()
	g, _ := basicGateway(t, echo, "--max_tunnels", "2")
	var open []*websocket.Conn
	for i := 0; i < 2; i++ {
		ws, code, body := dialWS(t, g.wsURL("/"), nil)
		if ws == nil {
			t.Fatalf("tunnel %d refused: %d %v", i, code, body)
		}
		open = append(open, ws)
	}
	_, code, body := dialWS(t, g.wsURL("/"), nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(body["error"].(string), "maximum of 2") {
		t.Fatalf("third tunnel: %d %v", code, body)
	}
	open[0].Close()
	waitFor(t, "a free tunnel", 10*time.Second, func() bool {
		ws, _, err := dialer.Dial(g.wsURL("/"), nil)
		if err == nil {
			ws.Close()
			return true
		}
		return false
	})
	open[1].Close()
}

func TestRateLimits429(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 100, nil, "--rate_limit", "2", "--auth_fail_limit", "3")
	var got429 bool
	for i := 0; i < 10; i++ {
		code, body := getJSON(t, g.httpURL("/v1/reserve/Echo%20Service"))
		if code == http.StatusTooManyRequests {
			got429 = strings.Contains(body["error"].(string), "slow down")
			break
		}
	}
	if !got429 {
		t.Fatal("reserve was never rate limited")
	}
	// Guessing tokens: after the allowed failures, 429 even for a real one.
	for i := 0; i < 3; i++ {
		if _, code, _ := dialWS(t, g.wsURL("/?token=guess-"+strings.Repeat("x", i)), nil); code != http.StatusForbidden {
			t.Fatalf("guess %d: %d", i, code)
		}
	}
	_, code, body := dialWS(t, g.wsURL("/?token=guess-again"), nil)
	if code != http.StatusTooManyRequests || !strings.Contains(body["error"].(string), "wait a minute") {
		t.Fatalf("after failures: %d %v", code, body)
	}
	if v := metricValue(t, scrape(t, g), `wsgateway_limited_total{limit="auth_failures"}`); v < 1 {
		t.Fatalf("auth_failures not counted: %v", v)
	}
}

func TestIdleTimeoutAndMaxDuration(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, map[string]any{
		"Idle":  map[string]any{"script": "echo.sh", "count": 1, "options": map[string]any{"idle_timeout": 1, "reconnect_grace": 30}},
		"Short": map[string]any{"script": "echo.sh", "count": 1, "options": map[string]any{"max_duration": 2}},
	})
	tok := g.reserve(t, "Idle", "")["token"].(string)
	ws, h := connectToken(t, g, tok)
	_, ce, err := readUntilClose(ws, 15*time.Second)
	if err != nil || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "idle") {
		t.Fatalf("idle close: %v %v", ce, err)
	}
	// Ended by policy: no reconnect grace, the service stops.
	waitFor(t, "the idle service to stop", 20*time.Second, func() bool { return !alive(h.PID) && g.free(t, "Idle") == 1 })

	tok = g.reserve(t, "Short", "")["token"].(string)
	ws, _ = connectToken(t, g, tok)
	start := time.Now()
	// Keep it busy: max_duration applies even to an active session.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for time.Since(start) < 20*time.Second {
			if ws.WriteMessage(websocket.BinaryMessage, []byte("x")) != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	_, ce, err = readUntilClose(ws, 15*time.Second)
	if err != nil || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "maximum duration") {
		t.Fatalf("max_duration close: %v %v", ce, err)
	}
	<-done
}

func TestHeartbeatDropsSilentClient(t *testing.T) {
	t.Parallel()
	g, conns := basicGateway(t, func(c net.Conn) {}, "--heartbeat", "1")
	// A raw websocket client that never answers pings.
	ws, _, err := dialer.Dial(g.wsURL("/"), nil)
	if err != nil {
		t.Fatal(err)
	}
	raw := ws.NetConn()
	var backend net.Conn
	select {
	case backend = <-conns:
	case <-time.After(10 * time.Second):
		t.Fatal("no backend connection")
	}
	raw.SetReadDeadline(time.Now().Add(20 * time.Second))
	var seen bytes.Buffer
	buf := make([]byte, 4096)
	for !bytes.Contains(seen.Bytes(), []byte("did not answer pings")) {
		n, err := raw.Read(buf)
		seen.Write(buf[:n])
		if err != nil {
			t.Fatalf("read: %v; got %q", err, seen.Bytes())
		}
	}
	if seen.Bytes()[0] != 0x89 {
		t.Fatalf("first frame %x, want a ping", seen.Bytes()[0])
	}
	backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := backend.Read(buf); err == nil {
		t.Fatal("backend still open after the client was dropped")
	}
	// A client that answers pings (gorilla does while reading) stays.
	ws2, _, _ := dialWS(t, g.wsURL("/"), nil)
	ws2.SetReadDeadline(time.Now().Add(4 * time.Second))
	if _, _, err := ws2.ReadMessage(); err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("answering client: %v, want only our read timeout", err)
	}
}
