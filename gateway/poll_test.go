package gateway

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/wsframe"
)

// shortPark makes directions park after d for one test.
func shortPark(t *testing.T, d time.Duration) {
	t.Helper()
	if getPoller() == nil || parkOff {
		t.Skip("no parking poller on this system")
	}
	old := parkAfterNs.Swap(int64(d))
	t.Cleanup(func() { parkAfterNs.Store(old) })
}

// waitParked waits until tn's directions that can park (up: the client
// socket has a RawConn; down: the service's has) have parked.
func waitParked(t *testing.T, tn *tunnel, up, down bool) {
	t.Helper()
	waitUntil(t, "the idle tunnel to park", func() bool {
		return (!up || tn.upPark.parked.Load()) && (!down || tn.downPark.parked.Load())
	})
}

// TestParkedTunnelByteExact: on every path, a tunnel left idle past the
// parking point parks the directions whose socket can be waited on
// without a buffer (not the TLS client, not a wrapped service), and a
// burst after each idle spell wakes both and crosses byte-exact both
// ways, several times over.
func TestParkedTunnelByteExact(t *testing.T) {
	shortPark(t, 20*time.Millisecond)
	for i, pc := range pathCases {
		t.Run(pc.name, func(t *testing.T) {
			eb := startBackend(t, pc.network, nil, echo)
			s, url, d := tunnelServer(t, Config{}, pc.tls, dialBackend(eb, pc.wrap))
			ws, _, err := d.Dial(url, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			tn := onlyTunnel(t, s)
			up, down := !pc.tls, !pc.wrap
			for round := range 3 {
				echoBurst(t, ws, 1<<20+round, uint64(10*i+round))
				waitParked(t, tn, up, down)
			}
			if !up && tn.upPark.parked.Load() || !down && tn.downPark.parked.Load() {
				t.Errorf("parked a direction without a RawConn: up %v, down %v", tn.upPark.parked.Load(), tn.downPark.parked.Load())
			}
		})
	}
}

// TestParkedTunnelsHoldNoGoroutine: idle tunnels, once parked, hold no
// goroutine of the gateway (two each before): what is left is the test
// backend's one per connection.
func TestParkedTunnelsHoldNoGoroutine(t *testing.T) {
	shortPark(t, 20*time.Millisecond)
	eb := startBackend(t, "tcp", nil, echo)
	s, url, d := tunnelServer(t, Config{}, false, dialBackend(eb, false))
	checkEcho(t, url, d, 1<<10, 1) // the server and the poller start
	waitUntil(t, "the first tunnel to end", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.tunnels) == 0 })
	before := runtime.NumGoroutine()
	const n = 40
	var wss []*websocket.Conn
	for i := range n {
		ws, _, err := d.Dial(url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ws.Close()
		echoBurst(t, ws, 100, uint64(i))
		wss = append(wss, ws)
	}
	var tns []*tunnel
	waitUntil(t, "the tunnels", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		tns = tns[:0]
		for x := range s.tunnels {
			tns = append(tns, x.(*tunnel))
		}
		return len(tns) == n
	})
	for _, tn := range tns {
		waitParked(t, tn, true, true)
	}
	// n backend goroutines, and some slack for the runtime's own; with
	// the tunnels' goroutines there would be 2n more.
	if got := runtime.NumGoroutine() - before; got > n+n/2 {
		t.Errorf("%d goroutines more with %d parked tunnels, want at most %d (the backend's)", got, n, n+n/2)
	}
	for i, ws := range wss {
		echoBurst(t, ws, 10<<10, uint64(100+i)) // every one wakes
	}
}

// closingBackend echoes and hands each connection to the test, which may
// close it; while hold is set, it keeps a connection open after the
// gateway's FIN, until the test ends.
func closingBackend(t *testing.T) (*backend, chan net.Conn, *atomic.Bool) {
	conns := make(chan net.Conn, 16)
	hold := new(atomic.Bool)
	b := startBackend(t, "tcp", nil, func(_ *backend, c net.Conn) {
		conns <- c
		_, _ = io.Copy(c, c)
		if hold.Load() {
			<-t.Context().Done()
		}
	})
	return b, conns, hold
}

// TestParkedTunnelEnds: a tunnel whose both directions are parked ends
// by every way a tunnel ends (the client's close frame, the client
// vanishing, the service closing, the gateway's close, the idle policy,
// the gateway's shutdown), also when the other side then stays silent
// (the close timeouts end it): the client gets the close frame it should,
// the tunnel is dropped, and no descriptor is left behind.
func TestParkedTunnelEnds(t *testing.T) {
	shortPark(t, 20*time.Millisecond)
	cases := []struct {
		name   string
		end    func(s *Server, tn *tunnel, ws *websocket.Conn, svc net.Conn)
		code   int  // the close code the client reads; 0: none (it left)
		silent bool // the client reads nothing until the tunnel is over
		hold   bool // the service stays open after the gateway's FIN
	}{
		{"client close frame", func(_ *Server, _ *tunnel, ws *websocket.Conn, _ net.Conn) {
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4000, "bye"), time.Now().Add(10*time.Second))
		}, 4000, false, false},
		{"client vanishes", func(_ *Server, _ *tunnel, ws *websocket.Conn, _ net.Conn) {
			_ = ws.NetConn().Close()
		}, 0, false, false},
		{"service closes", func(_ *Server, _ *tunnel, _ *websocket.Conn, svc net.Conn) {
			_ = svc.Close()
		}, wsframe.CloseNormal, false, false},
		{"gateway closes", func(_ *Server, tn *tunnel, _ *websocket.Conn, _ net.Conn) {
			tn.Close(wsframe.CloseGoingAway, "test")
		}, wsframe.CloseGoingAway, false, false},
		{"idle policy", func(_ *Server, tn *tunnel, _ *websocket.Conn, _ net.Conn) {
			tn.idleTimeout = time.Millisecond
			tn.Check(time.Now().Add(time.Second), false)
		}, wsframe.ClosePolicy, false, false},
		{"shutdown", func(s *Server, _ *tunnel, _ *websocket.Conn, _ net.Conn) {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				_ = s.Shutdown(ctx)
			}()
		}, wsframe.CloseGoingAway, false, false},
		// The client never answers the close: its close timeout ends the
		// tunnel, with the client direction still parked.
		{"service closes, client silent", func(_ *Server, _ *tunnel, _ *websocket.Conn, svc net.Conn) {
			_ = svc.Close()
		}, wsframe.CloseNormal, true, false},
		// The service never closes after the FIN: its close timeout ends
		// the tunnel, with the service direction still parked.
		{"client close frame, service silent", func(_ *Server, _ *tunnel, ws *websocket.Conn, _ net.Conn) {
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(10*time.Second))
		}, wsframe.CloseNormal, false, true},
		{"client vanishes, service silent", func(_ *Server, _ *tunnel, ws *websocket.Conn, _ net.Conn) {
			_ = ws.NetConn().Close()
		}, 0, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			eb, conns, hold := closingBackend(t)
			s, url, d := tunnelServer(t, Config{}, false, dialBackend(eb, false))
			checkEcho(t, url, d, 1<<10, 1) // the server, the poller, the pipe pool start
			waitUntil(t, "the first tunnel to end", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.tunnels) == 0 })
			<-conns
			before := countSockets(t)
			hold.Store(tc.hold)

			ws, _, err := d.Dial(url, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			svc := <-conns
			tn := onlyTunnel(t, s)
			echoBurst(t, ws, 64<<10, 2)
			waitParked(t, tn, true, true)

			tc.end(s, tn, ws, svc)
			if tc.silent {
				select {
				case <-tn.done:
				case <-time.After(10 * wsframe.CloseTimeout):
					t.Fatal("the parked tunnel never ended while the client stayed silent")
				}
			}
			if tc.code != 0 {
				_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
				var ce *websocket.CloseError
				for {
					_, _, err := ws.ReadMessage()
					if err == nil {
						continue
					}
					if !errors.As(err, &ce) {
						t.Fatalf("read %v, want close %d", err, tc.code)
					}
					break
				}
				if ce.Code != tc.code {
					t.Errorf("close code %d (%q), want %d", ce.Code, ce.Text, tc.code)
				}
			}
			select {
			case <-tn.done:
			case <-time.After(30 * time.Second):
				t.Fatal("the parked tunnel never ended")
			}
			waitUntil(t, "the tunnel to be dropped", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.tunnels) == 0 })
			ws.Close()
			svc.Close()
			waitUntil(t, "the sockets to be closed", func() bool { return countSockets(t) <= before })
			if open, idle := pipesOpen(), pipesIdle(); open != idle {
				t.Errorf("%d pipes open, %d of them in the pool", open, idle)
			}
		})
	}
}

// TestParkRacesClose: tunnels that park within a millisecond of going
// quiet, ended at once by the client or the gateway while they park or
// resume, all end, and leave no descriptor behind (a close that reached
// a direction while it parked, unseen, would leave the tunnel open).
func TestParkRacesClose(t *testing.T) {
	shortPark(t, time.Millisecond)
	eb := startBackend(t, "tcp", nil, echo)
	s, url, d := tunnelServer(t, Config{}, false, dialBackend(eb, false))
	checkEcho(t, url, d, 1<<10, 1)
	open := func() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.tunnels) }
	waitUntil(t, "the first tunnel to end", func() bool { return open() == 0 })
	before := countSockets(t)

	const total, conc = 200, 8
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 4))
			for range total / conc {
				ws, _, err := d.Dial(url, nil)
				if err != nil {
					errs <- err
					return
				}
				msg := []byte("ping")
				if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					errs <- err
				}
				_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
				if _, _, err := ws.ReadMessage(); err != nil {
					errs <- err
				}
				// Let the directions be near their parking point, or past it.
				for spin := rng.IntN(3000); spin > 0; spin-- {
					runtime.Gosched()
				}
				switch rng.IntN(3) {
				case 0:
					_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(10*time.Second))
					for {
						if _, _, err := ws.ReadMessage(); err != nil {
							break
						}
					}
				case 1:
					_ = ws.NetConn().Close()
				case 2:
					s.mu.Lock()
					for x := range s.tunnels {
						if tn, ok := x.(*tunnel); ok && tn.client.RemoteAddr().String() == ws.NetConn().LocalAddr().String() {
							go tn.Close(wsframe.CloseGoingAway, "race")
						}
					}
					s.mu.Unlock()
					for {
						if _, _, err := ws.ReadMessage(); err != nil {
							break
						}
					}
				}
				ws.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitUntil(t, "every tunnel to end", func() bool { return open() == 0 })
	waitUntil(t, "the sockets to be closed", func() bool { return countSockets(t) <= before })
	if open, idle := pipesOpen(), pipesIdle(); open != idle {
		t.Errorf("%d pipes open, %d of them in the pool", open, idle)
	}
}

// countSockets is the number of the process's open sockets (pipes come
// and go with other tests' child processes; the splice's are checked
// against the pool).
func countSockets(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd:", err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}
