package launcher

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/internal/text"
	"wsgateway/wsframe"
)

// echoBackend is a real websocket server standing in for a session: it
// echoes messages, and on text commands closes ("close CODE REASON") or
// pings ("ping DATA", reporting the pong as "pong DATA"). It reports
// pings it gets as "got-ping DATA" and close frames on closes.
func echoBackend(t *testing.T) (int, chan string) {
	t.Helper()
	closes := make(chan string, 16)
	up := websocket.Upgrader{Subprotocols: []string{"proto-b"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		dl := func() time.Time { return time.Now().Add(5 * time.Second) }
		// Handlers run inside ReadMessage: this goroutine is the only writer.
		c.SetPingHandler(func(d string) error {
			_ = c.WriteMessage(websocket.TextMessage, []byte("got-ping "+d))
			return c.WriteControl(websocket.PongMessage, []byte(d), dl())
		})
		c.SetPongHandler(func(d string) error { return c.WriteMessage(websocket.TextMessage, []byte("pong "+d)) })
		c.SetCloseHandler(func(code int, text string) error {
			closes <- fmt.Sprintf("%d %s", code, text)
			return c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), dl())
		})
		if r.URL.Path != "/echo" {
			_ = c.WriteMessage(websocket.TextMessage, []byte("path "+r.URL.RequestURI()))
		}
		for {
			mt, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			s := string(p)
			switch {
			case mt == websocket.TextMessage && strings.HasPrefix(s, "close "):
				f := strings.SplitN(s, " ", 3)
				code, _ := strconv.Atoi(f[1])
				_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, f[2]), dl())
			case mt == websocket.TextMessage && strings.HasPrefix(s, "ping "):
				_ = c.WriteControl(websocket.PingMessage, []byte(strings.TrimPrefix(s, "ping ")), dl())
			case mt == websocket.TextMessage && s == "flood":
				// Writes until the connection ends.
				chunk := make([]byte, 64<<10)
				for {
					_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
					if c.WriteMessage(websocket.BinaryMessage, chunk) != nil {
						return
					}
				}
			default:
				_ = c.WriteMessage(mt, p)
			}
		}
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	port, _ := strconv.Atoi(u.Port())
	return port, closes
}

func expectMsg(t *testing.T, c *websocket.Conn, mt int, want []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	gt, p, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("reading %q: %v", text.Cut(string(want), 40), err)
	}
	if gt != mt || !bytes.Equal(p, want) {
		t.Fatalf("got type %d %q, want type %d %q", gt, text.Cut(string(p), 40), mt, text.Cut(string(want), 40))
	}
}

func expectClose(t *testing.T, c *websocket.Conn, code int, reason string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := c.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("expected close %d, got %v", code, err)
		}
		if ce.Code != code || (reason != "" && ce.Text != reason) {
			t.Fatalf("close %d %q, want %d %q", ce.Code, ce.Text, code, reason)
		}
		return
	}
}

func expectBackendClose(t *testing.T, closes chan string, want string) {
	t.Helper()
	select {
	case got := <-closes:
		if got != want {
			t.Fatalf("backend got close %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("backend got no close frame (want %q)", want)
	}
}

func TestProxyPassthrough(t *testing.T) {
	port, closes := echoBackend(t)
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{port, port}}},
		"apps":      map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	id := e.launch("hold", "")["id"].(string)
	wsBase := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/proxy?sessionId=" + id
	dial := func(path string, hdr http.Header) *websocket.Conn {
		t.Helper()
		d := websocket.Dialer{Subprotocols: []string{"proto-a", "proto-b"}, HandshakeTimeout: 5 * time.Second}
		c, resp, err := d.Dial(wsBase+"&path="+url.QueryEscape(path), hdr)
		if err != nil {
			t.Fatalf("dial: %v (%v)", err, resp)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	c := dial("echo", nil)
	if c.Subprotocol() != "proto-b" {
		t.Errorf("subprotocol %q, want the session's choice proto-b", c.Subprotocol())
	}
	// Text and binary messages pass unchanged, both ways.
	big := bytes.Repeat([]byte{0, 1, 2, 254, 255}, 300000)
	for _, m := range []struct {
		mt int
		p  []byte
	}{{websocket.TextMessage, []byte("hello é")}, {websocket.BinaryMessage, []byte{0, 1, 2, 255}}, {websocket.BinaryMessage, big}, {websocket.TextMessage, []byte{}}} {
		if err := c.WriteMessage(m.mt, m.p); err != nil {
			t.Fatal(err)
		}
		expectMsg(t, c, m.mt, m.p)
	}
	// A ping from the client reaches the session, and its pong comes back.
	pongs := make(chan string, 4)
	c.SetPongHandler(func(d string) error { pongs <- d; return nil })
	if err := c.WriteControl(websocket.PingMessage, []byte("p1"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	expectMsg(t, c, websocket.TextMessage, []byte("got-ping p1"))
	// A ping from the session reaches the client, whose pong reaches it.
	c.WriteMessage(websocket.TextMessage, []byte("ping b1"))
	expectMsg(t, c, websocket.TextMessage, []byte("pong b1"))
	select {
	case d := <-pongs:
		if d != "p1" {
			t.Errorf("pong %q", d)
		}
	default:
		t.Error("the session's pong did not reach the client")
	}
	// The session closes with a code: the client sees it, and the client's
	// answer reaches the session.
	c.WriteMessage(websocket.TextMessage, []byte("close 4001 session-bye"))
	expectClose(t, c, 4001, "session-bye")
	expectBackendClose(t, closes, "4001 ") // gorilla answers with the code only

	// A close without a code is forwarded without one, and so is the
	// answer.
	c = dial("echo", nil)
	c.WriteMessage(websocket.TextMessage, []byte("close 1005 x"))
	expectClose(t, c, websocket.CloseNoStatusReceived, "")
	expectBackendClose(t, closes, "1005 ")

	// The client closes with a code: the session sees it and its answer
	// comes back.
	c = dial("echo", nil)
	c.WriteMessage(websocket.TextMessage, []byte("x"))
	expectMsg(t, c, websocket.TextMessage, []byte("x"))
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4002, "client-bye"), time.Now().Add(time.Second))
	expectBackendClose(t, closes, "4002 client-bye")
	expectClose(t, c, 4002, "client-bye")

	// A close code that may not be on the wire is answered with 1002, and
	// the session is told the client went.
	for _, bad := range [][]byte{{0x03, 0xed}, {0x03, 0xf7}, {0x13, 0x88}} {
		c = dial("echo", nil)
		c.WriteControl(websocket.CloseMessage, bad, time.Now().Add(time.Second))
		expectClose(t, c, websocket.CloseProtocolError, "")
		expectBackendClose(t, closes, "1001 client went away")
	}

	// path reaches the session; a missing path is "ws".
	c = dial("other/p?q=1", nil)
	expectMsg(t, c, websocket.TextMessage, []byte("path /other/p?q=1"))
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c2, _, err := d.Dial(wsBase, nil)
	if err != nil {
		t.Fatal(err)
	}
	expectMsg(t, c2, websocket.TextMessage, []byte("path /ws"))
	c2.Close()

	// Refusals come before the upgrade, as JSON.
	for _, r := range []struct {
		url    string
		origin string
		code   int
	}{
		{"ws" + strings.TrimPrefix(e.srv.URL, "http") + "/proxy?sessionId=nope&path=ws", "", 404},
		{"ws" + strings.TrimPrefix(e.srv.URL, "http") + "/proxy?path=ws", "", 400},
		{wsBase, "http://evil.example", 403},
	} {
		hdr := http.Header{}
		if r.origin != "" {
			hdr.Set("Origin", r.origin)
		}
		_, resp, err := d.Dial(r.url, hdr)
		if err == nil || resp == nil || resp.StatusCode != r.code || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Errorf("%s origin %q: %v %v", r.url, r.origin, err, resp)
		}
	}
	// A page of the launcher's own origin is ours.
	hdr := http.Header{"Origin": []string{e.srv.URL}}
	if c3, _, err := d.Dial(wsBase, hdr); err != nil {
		t.Errorf("same-host origin refused: %v", err)
	} else {
		c3.Close()
	}

	// A stopped session closes its proxied sockets with 1001.
	c = dial("echo", nil)
	c.WriteMessage(websocket.TextMessage, []byte("y"))
	expectMsg(t, c, websocket.TextMessage, []byte("y"))
	if code, m := e.call("DELETE", "/paraview/"+id, ""); code != 200 {
		t.Fatalf("DELETE: %d %v", code, m)
	}
	expectClose(t, c, websocket.CloseGoingAway, "stopped by DELETE")
	waitUntil(t, "tunnels to end", 10*time.Second, func() bool {
		e.l.mu.Lock()
		defer e.l.mu.Unlock()
		return e.l.tunnels == 0
	})
}

func TestProxySessionGone(t *testing.T) {
	// A session whose port has nothing listening: 502 before the upgrade.
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{1, 1}}},
		"apps":      map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	id := e.launch("hold", "")["id"].(string)
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	_, resp, err := d.Dial("ws"+strings.TrimPrefix(e.srv.URL, "http")+"/proxy?sessionId="+id+"&path=ws", nil)
	if err == nil || resp == nil || resp.StatusCode != 502 {
		t.Errorf("dial to a dead port: %v %v", err, resp)
	}
}

func TestBackendURL(t *testing.T) {
	for _, c := range []struct{ p, want string }{
		{"ws", "ws://127.0.0.1:9001/ws"},
		{"/ws", "ws://127.0.0.1:9001/ws"},
		{"", "ws://127.0.0.1:9001/"},
		{"a/b?x=1", "ws://127.0.0.1:9001/a/b?x=1"},
		{"@evil.example/", "ws://127.0.0.1:9001/@evil.example/"},
	} {
		got, err := backendURL("127.0.0.1", 9001, c.p)
		if err != nil || got != c.want {
			t.Errorf("backendURL(%q) = %q, %v; want %q", c.p, got, err, c.want)
		}
	}
	if _, err := backendURL("127.0.0.1", 9001, "x\r\nHost: evil"); err == nil {
		t.Error("CRLF accepted")
	}
}

// fakeHost is a wsframe.Host that records what the launcher asks of it.
type fakeHost struct {
	mu       sync.Mutex
	capacity int
	admitted int
	limits   wsframe.Limits
	open     map[wsframe.Tunnel]bool
	ended    [][2]int64
}

func (h *fakeHost) Admit() (func(), error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.admitted >= h.capacity {
		return nil, errors.New("the gateway is serving its maximum of websockets")
	}
	h.admitted++
	var once sync.Once
	return func() { once.Do(func() { h.mu.Lock(); h.admitted--; h.mu.Unlock() }) }, nil
}

func (h *fakeHost) Limits() wsframe.Limits { return h.limits }

func (h *fakeHost) Register(t wsframe.Tunnel) func(int64, int64) {
	h.mu.Lock()
	h.open[t] = true
	h.mu.Unlock()
	return func(in, out int64) {
		h.mu.Lock()
		delete(h.open, t)
		h.ended = append(h.ended, [2]int64{in, out})
		h.mu.Unlock()
	}
}

// only returns the one registered tunnel.
func (h *fakeHost) only(t *testing.T) wsframe.Tunnel {
	t.Helper()
	var tun wsframe.Tunnel
	waitUntil(t, "one registered tunnel", 10*time.Second, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		for x := range h.open {
			tun = x
		}
		return len(h.open) == 1
	})
	return tun
}

func (h *fakeHost) state() (admitted, open, ended int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.admitted, len(h.open), len(h.ended)
}

func TestProxyUnderHost(t *testing.T) {
	port, closes := echoBackend(t)
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{port, port}}},
		"apps":      map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	h := &fakeHost{capacity: 1, open: map[wsframe.Tunnel]bool{},
		limits: wsframe.Limits{MaxMessageBytes: 100, Heartbeat: time.Second}}
	e.l.SetTunnelHost(h)
	id := e.launch("hold", "")["id"].(string)
	url := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/proxy?sessionId=" + id + "&path=echo"
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}

	c, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tun := h.only(t)
	// The host's cap: a second proxy is refused before the upgrade.
	if _, resp, err := d.Dial(url, nil); err == nil || resp == nil || resp.StatusCode != 503 {
		t.Errorf("over the host's cap: %v %v, want 503", err, resp)
	}
	// At the limit passes; one byte over is 1009 to the client, and the
	// session is told the client went.
	at := bytes.Repeat([]byte{7}, 100)
	c.WriteMessage(websocket.BinaryMessage, at)
	expectMsg(t, c, websocket.BinaryMessage, at)

	// The heartbeat: a ping to the client, whose pong is not forwarded.
	tun.Check(time.Now(), true)
	c.WriteMessage(websocket.TextMessage, []byte("after-ping"))
	expectMsg(t, c, websocket.TextMessage, []byte("after-ping"))
	// Alive now; two periods and a second later without a pong or a
	// read, dropped with 1001.
	tun.Check(time.Now(), false)
	c.WriteMessage(websocket.TextMessage, []byte("still"))
	expectMsg(t, c, websocket.TextMessage, []byte("still"))
	tun.Check(time.Now().Add(3*time.Second+100*time.Millisecond), false)
	expectClose(t, c, websocket.CloseGoingAway, "")
	expectBackendClose(t, closes, "1001 the browser did not answer pings nor read for 2s")
	waitUntil(t, "the tunnel to end", 10*time.Second, func() bool { a, o, n := h.state(); return a == 0 && o == 0 && n == 1 })
	h.mu.Lock()
	if h.ended[0] != [2]int64{100 + 10 + 5, 100 + 10 + 5} {
		t.Errorf("bytes counted %v", h.ended[0])
	}
	h.mu.Unlock()

	c, _, err = d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h.only(t)
	c.WriteMessage(websocket.BinaryMessage, append(at, 8))
	expectClose(t, c, websocket.CloseMessageTooBig, "message larger than the limit of 100 bytes")
	expectBackendClose(t, closes, "1001 client sent a message over the limit")
	waitUntil(t, "the tunnel to end", 10*time.Second, func() bool { a, o, _ := h.state(); return a == 0 && o == 0 })
}

// TestProxyStalledClient: a client that stops reading while its session
// floods it never blocks Close (the session's stop, the gateway's
// sweep); its tunnel ends within the close timeout.
func TestProxyStalledClient(t *testing.T) {
	port, _ := echoBackend(t)
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{port, port}}},
		"apps":      map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	h := &fakeHost{capacity: 10, open: map[wsframe.Tunnel]bool{}}
	e.l.SetTunnelHost(h)
	id := e.launch("hold", "")["id"].(string)
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws"+strings.TrimPrefix(e.srv.URL, "http")+"/proxy?sessionId="+id+"&path=echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tun := h.only(t)
	c.WriteMessage(websocket.TextMessage, []byte("flood"))
	// The client never reads: wait until the proxy's writes to it stall.
	var last int64 = -1
	waitUntil(t, "the writes to the client to stall", 30*time.Second, func() bool {
		_, out := tun.Bytes()
		stalled := out > 0 && out == last
		last = out
		if !stalled {
			time.Sleep(200 * time.Millisecond) // a sampling period, not a wait for readiness
		}
		return stalled
	})
	start := time.Now()
	tun.Close(websocket.CloseGoingAway, "gateway shutting down")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %s", d)
	}
	waitUntil(t, "the stalled tunnel to end", 20*time.Second, func() bool { _, o, n := h.state(); return o == 0 && n == 1 })
}

// TestProxyOverLimitEndsCleanly: a client still sending a message over
// the limit gets its 1009, and after its answer the connection ends with
// a FIN, not a reset: the proxy reads and discards the rest of what the
// client sent until its close frame.
func TestProxyOverLimitEndsCleanly(t *testing.T) {
	port, closes := echoBackend(t)
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{port, port}}},
		"apps":      map[string]any{"hold": map[string]any{"cmd": []string{"sleep", "60"}}},
	})
	h := &fakeHost{capacity: 1, open: map[wsframe.Tunnel]bool{}, limits: wsframe.Limits{MaxMessageBytes: 100}}
	e.l.SetTunnelHost(h)
	id := e.launch("hold", "")["id"].(string)
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	c, _, err := d.Dial("ws"+strings.TrimPrefix(e.srv.URL, "http")+"/proxy?sessionId="+id+"&path=echo", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := make(chan error, 1)
	go func() {
		_ = c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		sent <- c.WriteMessage(websocket.BinaryMessage, make([]byte, 4<<20))
	}()
	// gorilla answers the close frame as it reads it.
	expectClose(t, c, websocket.CloseMessageTooBig, "message larger than the limit of 100 bytes")
	expectBackendClose(t, closes, "1001 client sent a message over the limit")
	_ = c.NetConn().SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, c.NetConn()); err != nil {
		t.Errorf("after the close: %v, want a clean end of the connection", err)
	}
	<-sent
}
