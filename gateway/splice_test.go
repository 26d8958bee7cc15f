package gateway

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/wsframe"
)

// backend is a test service: echo copies what it gets back, source
// sends want and closes.
type backend struct {
	ln   net.Listener
	want []byte // what source sends
}

func startBackend(t testing.TB, network string, want []byte, handle func(b *backend, c net.Conn)) *backend {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "svc.sock")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{ln: ln, want: want}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(b, c)
			}()
		}
	}()
	return b
}

func echo(_ *backend, c net.Conn) { _, _ = io.Copy(c, c) }

func source(b *backend, c net.Conn) { _, _ = c.Write(b.want) }

// wrappedConn hides the service connection's type, as an adapter that
// wraps it does: no RawConn, no CloseWrite.
type wrappedConn struct{ net.Conn }

// tunnelServer serves websockets on an httptest server (TLS with
// useTLS) whose tunnels go to what dial returns, through the gateway's
// own tunnel code; it returns the websocket URL and a dialer for it.
func tunnelServer(t testing.TB, cfg Config, useTLS bool, dial func() (net.Conn, error)) (*Server, string, *websocket.Dialer) {
	t.Helper()
	if cfg.SessionRoot == "" {
		cfg.SessionRoot = t.TempDir()
	}
	if cfg.ClientAddr == "" {
		cfg.ClientAddr = "127.0.0.1:9"
	}
	s, err := New(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := dial()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		ws, err := s.upgrader.Upgrade(w, r, nil)
		if err != nil {
			c.Close()
			return
		}
		tn := s.newTunnel(ws, c, zerolog.Nop())
		if tn == nil {
			return
		}
		wg.Add(1)
		tn.start(func() {
			s.dropTunnel(tn)
			wg.Done()
		})
	})
	var srv *httptest.Server
	d := &websocket.Dialer{HandshakeTimeout: 20 * time.Second}
	if useTLS {
		srv = httptest.NewTLSServer(h)
		d.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
		wg.Wait()
	})
	return s, "ws" + strings.TrimPrefix(srv.URL, "http") + "/", d
}

// dialBackend dials b, wrapped when wrap is set.
func dialBackend(b *backend, wrap bool) func() (net.Conn, error) {
	return func() (net.Conn, error) {
		c, err := net.Dial(b.ln.Addr().Network(), b.ln.Addr().String())
		if err != nil || !wrap {
			return c, err
		}
		return wrappedConn{c}, nil
	}
}

// pathCase is one way bytes can take through the splice.
type pathCase struct {
	name    string
	network string // the service's socket
	tls     bool   // wss
	wrap    bool   // the service conn hides its type
}

var pathCases = []pathCase{
	{name: "tcp", network: "tcp"},
	{name: "unix", network: "unix"},
	{name: "tls", network: "tcp", tls: true},
	{name: "wrapped", network: "tcp", wrap: true},
	{name: "tls_unix_wrapped", network: "unix", tls: true, wrap: true},
}

// checkEcho sends size random bytes in messages of random sizes and
// checks that exactly those bytes come back, in order.
func checkEcho(t *testing.T, url string, d *websocket.Dialer, size int, seed uint64) {
	t.Helper()
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	echoBurst(t, ws, size, seed)
}

// echoBurst sends size random bytes in messages of random sizes on ws and
// checks that exactly those come back, in order.
func echoBurst(t *testing.T, ws *websocket.Conn, size int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 3))
	sent := randomBytes(size, seed)
	werr := make(chan error, 1)
	go func() {
		for off := 0; off < len(sent); {
			n := min(1+rng.IntN(64<<10), len(sent)-off)
			if err := ws.WriteMessage(websocket.BinaryMessage, sent[off:off+n]); err != nil {
				werr <- err
				return
			}
			off += n
		}
		werr <- nil
	}()
	got := make([]byte, 0, size)
	_ = ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	for len(got) < size {
		typ, p, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(got), size, err)
		}
		if typ != websocket.BinaryMessage {
			t.Fatalf("message type %d, want binary", typ)
		}
		got = append(got, p...)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent) {
		t.Fatalf("echo of %d bytes differs (got %d bytes)", size, len(got))
	}
}

// checkSource reads what a source service sends until the close, and
// checks the bytes and the 1000 that follows them.
func checkSource(t *testing.T, url string, d *websocket.Dialer, want []byte) {
	t.Helper()
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	var got []byte
	for {
		_, p, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
				t.Fatalf("after %d of %d bytes: %v, want close 1000", len(got), len(want), err)
			}
			break
		}
		got = append(got, p...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("received %d bytes, want the %d sent, byte for byte", len(got), len(want))
	}
}

func randomBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestSplicePathsByteExact: over every path (splice on TCP and Unix
// sockets, TLS, a wrapped service connection), what the client sends
// reaches the service and what the service sends reaches the client,
// byte for byte, and a service's end is a 1000 after its last byte.
func TestSplicePathsByteExact(t *testing.T) {
	for i, pc := range pathCases {
		t.Run(pc.name, func(t *testing.T) {
			eb := startBackend(t, pc.network, nil, echo)
			_, url, d := tunnelServer(t, Config{}, pc.tls, dialBackend(eb, pc.wrap))
			checkEcho(t, url, d, 3<<20, uint64(i))

			sb := startBackend(t, pc.network, randomBytes(5<<20+13, uint64(i)), source)
			_, url, d = tunnelServer(t, Config{}, pc.tls, dialBackend(sb, pc.wrap))
			checkSource(t, url, d, sb.want)
		})
	}
}

// countFDs is the number of the process's open descriptors.
func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	return len(ents)
}

// TestSpliceNoFDLeak: 1,000 tunnels (16 at a time: open, echo, close)
// leave no descriptor behind: after they end the process holds no more
// than it held before, plus the pipes the pool keeps (at most
// pipesKept; one descriptor lost per tunnel would be a thousand).
func TestSpliceNoFDLeak(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 tunnels")
	}
	eb := startBackend(t, "tcp", nil, echo)
	s, url, d := tunnelServer(t, Config{}, false, dialBackend(eb, false))
	checkEcho(t, url, d, 1<<20, 7) // the pool and the runtime settle
	open := func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.tunnels) > 0
	}
	waitUntil(t, "the first tunnel to end", func() bool { return !open() })
	before, pipesBefore := countFDs(t), pipesOpen()

	const total, conc = 1000, 16
	errs := make(chan error, conc)
	var next sync.Mutex
	n := 0
	for range conc {
		go func() {
			for {
				next.Lock()
				if n == total {
					next.Unlock()
					errs <- nil
					return
				}
				n++
				next.Unlock()
				if err := echoOnce(d, url); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range conc {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "every tunnel to end", func() bool { return !open() })
	var after, pipesAfter int
	deadline := time.Now().Add(30 * time.Second)
	for {
		after, pipesAfter = countFDs(t), pipesOpen()
		if after-2*(pipesAfter-pipesBefore) <= before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("descriptors: %d before, %d after 1,000 tunnels, with %d → %d pipes", before, after, pipesBefore, pipesAfter)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("descriptors: %d before, %d after 1,000 tunnels; pipes kept %d → %d", before, after, pipesBefore, pipesAfter)
	// With every tunnel over, every pipe that exists is in the pool (one
	// neither kept nor closed would be a leak the count above misses).
	if open, idle := pipesOpen(), pipesIdle(); open != idle {
		t.Errorf("%d pipes open, %d of them in the pool", open, idle)
	}
}

// echoOnce opens a websocket, has 64 KiB echoed, and closes cleanly.
func echoOnce(d *websocket.Dialer, url string) error {
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		return err
	}
	defer ws.Close()
	msg := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		return err
	}
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	var got []byte
	for len(got) < len(msg) {
		_, p, err := ws.ReadMessage()
		if err != nil {
			return err
		}
		got = append(got, p...)
	}
	if !bytes.Equal(got, msg) {
		return errors.New("echo differs")
	}
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(10*time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code == 1000 {
				return nil
			}
			return err
		}
	}
}

// waitUntil polls cond for up to 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSpliceControlBetweenData: pings asked for while the service
// streams, and the client's pings (answered with pongs), all reach the
// client between data frames, the data staying byte-exact; pings asked
// for while the service is idle are written by a goroutine started for
// them.
func TestSpliceControlBetweenData(t *testing.T) {
	sb := startBackend(t, "tcp", randomBytes(8<<20, 3), func(b *backend, c net.Conn) {
		_, _ = c.Write(b.want)
		_, _ = io.Copy(io.Discard, c) // then idle until the client goes
	})
	s, url, d := tunnelServer(t, Config{}, false, dialBackend(sb, false))
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	var mu sync.Mutex
	pings, pongs := 0, 0
	ws.SetPingHandler(func(string) error { mu.Lock(); pings++; mu.Unlock(); return nil })
	ws.SetPongHandler(func(a string) error {
		if a == "hello" {
			mu.Lock()
			pongs++
			mu.Unlock()
		}
		return nil
	})
	tn := onlyTunnel(t, s)
	const asks = 20
	go func() {
		for range asks {
			tn.Check(time.Now(), true)
			_ = ws.WriteControl(websocket.PingMessage, []byte("hello"), time.Now().Add(10*time.Second))
		}
	}()
	_ = ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	var got []byte
	for len(got) < len(sb.want) {
		_, p, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		got = append(got, p...)
	}
	if !bytes.Equal(got, sb.want) {
		t.Fatal("data differs")
	}
	// Now idle: a ping asked for is still written.
	mu.Lock()
	before := pings
	mu.Unlock()
	tn.Check(time.Now(), true)
	done := make(chan error, 1)
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				done <- err
				return
			}
		}
	}()
	waitUntil(t, "a ping while idle", func() bool { mu.Lock(); defer mu.Unlock(); return pings > before })
	// Pings that arrive together get one pong (the last's), so at least
	// one came during the stream; one sent now, while idle, is answered.
	mu.Lock()
	during := pongs
	mu.Unlock()
	if during == 0 {
		t.Error("no pong while the service streamed")
	}
	_ = ws.WriteControl(websocket.PingMessage, []byte("hello"), time.Now().Add(10*time.Second))
	waitUntil(t, "a pong while idle", func() bool { mu.Lock(); defer mu.Unlock(); return pongs > during })
	if tn.controlPending() {
		t.Error("a control frame is still pending with nobody writing")
	}
	ws.Close()
	<-done
}

// onlyTunnel waits for s's one tunnel and returns it.
func onlyTunnel(t *testing.T, s *Server) *tunnel {
	t.Helper()
	var tn *tunnel
	waitUntil(t, "the tunnel", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for x := range s.tunnels {
			tn, _ = x.(*tunnel)
		}
		return tn != nil
	})
	return tn
}

// TestSpliceTokenNoLostRequest: requests from many goroutines, made while
// the token changes hands, are all written: once the requests stop and
// the token is back, nothing is pending. (A holder that gave the token
// back without looking again would leave a request behind.)
func TestSpliceTokenNoLostRequest(t *testing.T) {
	sb := startBackend(t, "tcp", make([]byte, 1000), func(b *backend, c net.Conn) {
		for i := 0; i < 2000; i++ {
			if _, err := c.Write(b.want); err != nil {
				return
			}
		}
		_, _ = io.Copy(io.Discard, c)
	})
	s, url, d := tunnelServer(t, Config{}, false, dialBackend(sb, false))
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	tn := onlyTunnel(t, s)
	readErr := make(chan error, 1)
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				readErr <- err
				return
			}
		}
	}()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				tn.Check(time.Now(), true)
			}
		}()
	}
	wg.Wait()
	waitUntil(t, "every ping written", func() bool { return !tn.controlPending() })
	select {
	case err := <-readErr:
		t.Fatalf("client: %v", err)
	default:
	}
}

// TestSpliceRequestWhileTokenReturns: a ping asked for after the holder
// wrote its control frames and before it gave the token back (the
// request finds the token taken) is still written, by the holder's
// second look.
func TestSpliceRequestWhileTokenReturns(t *testing.T) {
	idle := startBackend(t, "tcp", nil, func(_ *backend, c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	s, url, d := tunnelServer(t, Config{}, false, dialBackend(idle, false))
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	pinged := make(chan struct{}, 4)
	ws.SetPingHandler(func(string) error { pinged <- struct{}{}; return nil })
	go func() {
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	tn := onlyTunnel(t, s)
	var once sync.Once
	beforeTokenBack = func(x *tunnel) {
		if x == tn {
			once.Do(func() { tn.Check(time.Now(), true) }) // finds the token taken
		}
	}
	defer func() { beforeTokenBack = nil }()
	<-tn.own
	tn.release() // nothing pending at first: the request comes in the window
	select {
	case <-pinged:
	case <-time.After(30 * time.Second):
		t.Fatal("the ping asked for while the token went back was never written")
	}
	waitUntil(t, "nothing pending", func() bool { return !tn.controlPending() })
}

// TestSpliceCloseNeverWaits: with a client that stopped reading and a
// service that keeps sending, closeWith returns at once, and the
// tunnel ends within the close timeout (the connection is closed).
func TestSpliceCloseNeverWaits(t *testing.T) {
	for _, pc := range pathCases {
		t.Run(pc.name, func(t *testing.T) {
			sb := startBackend(t, pc.network, nil, func(b *backend, c net.Conn) {
				chunk := make([]byte, 64<<10)
				for {
					if _, err := c.Write(chunk); err != nil {
						return
					}
				}
			})
			s, url, d := tunnelServer(t, Config{}, pc.tls, dialBackend(sb, pc.wrap))
			ws, _, err := d.Dial(url, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			tn := onlyTunnel(t, s)
			// The client does not read: wait until the gateway is stuck
			// writing (the byte count stops moving).
			last := int64(-1)
			waitUntil(t, "the download to stall", func() bool {
				_, out := tn.Bytes()
				stalled := out == last && out > 0
				last = out
				time.Sleep(50 * time.Millisecond)
				return stalled
			})
			returned := make(chan struct{})
			go func() { tn.closeWith(wsframe.ClosePolicy, "test"); close(returned) }()
			select {
			case <-returned:
			case <-time.After(10 * time.Second):
				t.Fatal("closeWith blocked")
			}
			select {
			case <-tn.done:
			case <-time.After(10 * wsframe.CloseTimeout):
				t.Fatal("the tunnel did not end after the close timeout")
			}
			// The frame left in its pipe is not handed to the next tunnel.
			want := randomBytes(1<<20, 11)
			src := startBackend(t, pc.network, want, source)
			_, url, d = tunnelServer(t, Config{}, pc.tls, dialBackend(src, pc.wrap))
			checkSource(t, url, d, want)
			waitUntil(t, "every pipe back in the pool", func() bool { return pipesOpen() == pipesIdle() })
		})
	}
}

// TestSpliceNothingAfterClose: once the close frame is written, pings
// asked for afterwards are not: the client reads exactly one frame, the
// close with the gateway's code and reason.
func TestSpliceNothingAfterClose(t *testing.T) {
	idle := startBackend(t, "tcp", nil, func(_ *backend, c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	s, url, d := tunnelServer(t, Config{}, false, dialBackend(idle, false))
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	tn := onlyTunnel(t, s)
	tn.closeWith(wsframe.ClosePolicy, "policy")
	for range 10 {
		tn.Check(time.Now(), true)
		tn.mu.Lock()
		tn.pingDue = true // Check stops asking once the tunnel is closing
		tn.mu.Unlock()
		tn.kick()
	}
	raw := ws.NetConn()
	_ = raw.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, _ := io.ReadAll(raw) // until the gateway closes (close timeout)
	want := wsframe.AppendClose(nil, wsframe.ClosePolicy, "policy")
	if !bytes.Equal(got, want) {
		t.Fatalf("client read % x, want only the close frame % x", got, want)
	}
}
