package gateway

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/wsframe"
)

// readPath is one way a tunnel reads its two sockets: the client with a
// RawConn (read in the readiness callback) or through TLS, the service
// by splice, by the copy path's readiness callback, or through a
// wrapped connection.
type readPath struct {
	name string
	tls  bool // the client's reads go through TLS (no RawConn)
	off  bool // splice off: the copy path reads a service with a RawConn
	wrap bool // the service's reads go through a wrapper (no RawConn)
}

var readPaths = []readPath{
	{name: "splice"},
	{name: "copy", off: true},
	{name: "tls", tls: true},
	{name: "wrapped", wrap: true},
}

// dialKeepRaw dials url and returns the websocket with the TCP
// connection under it (under TLS too), to reset it.
func dialKeepRaw(t *testing.T, d *websocket.Dialer, url string) (*websocket.Conn, *net.TCPConn) {
	t.Helper()
	dd := *d
	var raw *net.TCPConn
	dd.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var nd net.Dialer
		c, err := nd.DialContext(ctx, network, addr)
		if err == nil {
			raw = c.(*net.TCPConn)
		}
		return c, err
	}
	ws, _, err := dd.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws, raw
}

// readToClose reads messages until the close frame and returns the
// bytes before it and the close.
func readToClose(t *testing.T, ws *websocket.Conn) ([]byte, *websocket.CloseError) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
	var got []byte
	for {
		_, p, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("after %d bytes: %v, want a close frame", len(got), err)
			}
			return got, ce
		}
		got = append(got, p...)
	}
}

// waitDone waits for the tunnel to be over.
func waitDone(t *testing.T, tn *tunnel) {
	t.Helper()
	select {
	case <-tn.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the tunnel never ended")
	}
}

// TestSpliceReadEnds: on every read path, with the directions running
// or parked, how a read ends decides what the client is told: the
// service's reset after its bytes gives those bytes then 1011 "service
// connection error"; the client's reset is a client gone (1006 kept for
// the log) and the service gets a FIN, not a reset; a frame that breaks
// the protocol gives 1002 and one over the size limit 1009, what came
// before them having reached the service and nothing after.
func TestSpliceReadEnds(t *testing.T) {
	shortPark(t, 20*time.Millisecond)
	for _, rp := range readPaths {
		for _, parked := range []bool{false, true} {
			name := rp.name
			if parked {
				name += "/parked"
			}
			t.Run(name, func(t *testing.T) {
				t.Cleanup(setSpliceOff(rp.off)) // after the tunnels end (cleanups run last first)
				settle := func(tn *tunnel) {
					if parked {
						waitParked(t, tn, !rp.tls, !rp.wrap)
					}
				}

				t.Run("service_reset", func(t *testing.T) {
					want := randomBytes(300<<10+5, 11)
					reset := make(chan struct{})
					b := startBackend(t, "tcp", want, func(b *backend, c net.Conn) {
						_, _ = c.Write(b.want)
						select {
						case <-reset:
						case <-t.Context().Done():
						}
						_ = c.(*net.TCPConn).SetLinger(0)
					})
					s, url, d := tunnelServer(t, Config{}, rp.tls, dialBackend(b, rp.wrap))
					ws, _ := dialKeepRaw(t, d, url)
					tn := onlyTunnel(t, s)
					_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
					var got []byte
					for len(got) < len(want) {
						_, p, err := ws.ReadMessage()
						if err != nil {
							t.Fatalf("after %d bytes: %v", len(got), err)
						}
						got = append(got, p...)
					}
					settle(tn)
					close(reset)
					rest, ce := readToClose(t, ws)
					if !bytes.Equal(got, want) || len(rest) != 0 {
						t.Errorf("%d+%d bytes before the close, want the %d sent", len(got), len(rest), len(want))
					}
					if ce.Code != wsframe.CloseInternalError || ce.Text != "service connection error" {
						t.Errorf("close %d %q, want %d %q", ce.Code, ce.Text, wsframe.CloseInternalError, "service connection error")
					}
					waitDone(t, tn)
				})

				t.Run("client_reset", func(t *testing.T) {
					ended := make(chan error, 1)
					b := startBackend(t, "tcp", nil, func(_ *backend, c net.Conn) {
						_, err := io.Copy(c, c)
						ended <- err
					})
					s, url, d := tunnelServer(t, Config{}, rp.tls, dialBackend(b, rp.wrap))
					ws, raw := dialKeepRaw(t, d, url)
					tn := onlyTunnel(t, s)
					echoBurst(t, ws, 64<<10, 12)
					settle(tn)
					_ = raw.SetLinger(0)
					_ = raw.Close()
					waitDone(t, tn)
					tn.mu.Lock()
					code, byGateway := tn.clientCode, tn.byGateway
					tn.mu.Unlock()
					if code != wsframe.CloseAbnormal || byGateway {
						t.Errorf("client code %d (by the gateway: %v), want %d from the client", code, byGateway, wsframe.CloseAbnormal)
					}
					select {
					case err := <-ended:
						if err != nil {
							t.Errorf("the service's read ended with %v, want the gateway's FIN", err)
						}
					case <-time.After(30 * time.Second):
						t.Fatal("the service never saw the end")
					}
				})

				limits := []struct {
					name string
					bad  func(ws *websocket.Conn) error
					code int
				}{
					{"protocol_error", func(ws *websocket.Conn) error {
						// An unmasked frame, then a valid one: neither is
						// for the service.
						if _, err := ws.NetConn().Write([]byte{0x82, 3, 'b', 'a', 'd'}); err != nil {
							return err
						}
						return ws.WriteMessage(websocket.BinaryMessage, []byte("after"))
					}, wsframe.CloseProtocolError},
					{"too_big", func(ws *websocket.Conn) error {
						if err := ws.WriteMessage(websocket.BinaryMessage, bytes.Repeat([]byte{'x'}, 4096)); err != nil {
							return err
						}
						return ws.WriteMessage(websocket.BinaryMessage, []byte("after"))
					}, wsframe.CloseTooBig},
				}
				for _, lc := range limits {
					t.Run(lc.name, func(t *testing.T) {
						got := make(chan []byte, 1)
						b := startBackend(t, "tcp", nil, func(_ *backend, c net.Conn) {
							var all []byte
							buf := make([]byte, 64<<10)
							for {
								n, err := c.Read(buf)
								all = append(all, buf[:n]...)
								if n > 0 {
									_, _ = c.Write(buf[:n])
								}
								if err != nil {
									break
								}
							}
							got <- all
						})
						s, url, d := tunnelServer(t, Config{MaxMessageBytes: 1024}, rp.tls, dialBackend(b, rp.wrap))
						ws, _ := dialKeepRaw(t, d, url)
						tn := onlyTunnel(t, s)
						first := randomBytes(1000, 13)
						if err := ws.WriteMessage(websocket.BinaryMessage, first); err != nil {
							t.Fatal(err)
						}
						_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
						var echoed []byte
						for len(echoed) < len(first) {
							_, p, err := ws.ReadMessage()
							if err != nil {
								t.Fatal(err)
							}
							echoed = append(echoed, p...)
						}
						settle(tn)
						if err := lc.bad(ws); err != nil {
							t.Fatal(err)
						}
						rest, ce := readToClose(t, ws)
						if ce.Code != lc.code || len(rest) != 0 {
							t.Errorf("close %d %q after %d more bytes, want %d right away", ce.Code, ce.Text, len(rest), lc.code)
						}
						_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(ce.Code, ""), time.Now().Add(10*time.Second))
						waitDone(t, tn)
						select {
						case all := <-got:
							if !bytes.Equal(all, first) {
								t.Errorf("the service got %d bytes, want the %d before the bad frame", len(all), len(first))
							}
						case <-time.After(30 * time.Second):
							t.Fatal("the service connection never ended")
						}
					})
				}
			})
		}
	}
}

// TestSpliceBuffersReused: on every read path, with the directions
// parking between messages or not, each read's pooled buffer goes back
// to the pool: a long run of round trips takes (almost) no new buffer.
// One buffer kept per message (a read that waits or parks without
// giving its buffer back, an end that forgets it) would take one per
// round. Under the race detector, which drops a quarter of what is put
// back, the bound is one new buffer per round trip (over more rounds):
// it then catches a kept buffer where a round trip takes more than one.
func TestSpliceBuffersReused(t *testing.T) {
	gc := debug.SetGCPercent(-1) // a collection empties the pool
	defer debug.SetGCPercent(gc)
	rounds, bound := 100, 10
	if raceBuild {
		rounds, bound = 300, 300
	}
	for _, rp := range readPaths {
		for _, parked := range []bool{false, true} {
			name := rp.name
			if parked {
				name += "/parked"
			}
			t.Run(name, func(t *testing.T) {
				// Restored after the tunnels end (cleanups run last first).
				t.Cleanup(setSpliceOff(rp.off))
				if parked {
					shortPark(t, time.Millisecond)
				}
				eb := startBackend(t, "tcp", nil, echo)
				s, url, d := tunnelServer(t, Config{}, rp.tls, dialBackend(eb, rp.wrap))
				var made atomic.Int64
				s.bufPool.New = func() any { made.Add(1); b := make([]byte, spliceBuf); return &b }
				ws, _ := dialKeepRaw(t, d, url)
				tn := onlyTunnel(t, s)
				echoBurst(t, ws, 4<<10, 20) // the pool fills
				before := made.Load()
				msg := []byte("round trip")
				for range rounds {
					if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
						t.Fatal(err)
					}
					_ = ws.SetReadDeadline(time.Now().Add(30 * time.Second))
					if _, p, err := ws.ReadMessage(); err != nil || !bytes.Equal(p, msg) {
						t.Fatalf("echo %q %v", p, err)
					}
					if parked {
						waitParked(t, tn, !rp.tls, !rp.wrap)
					}
				}
				if n := made.Load() - before; n > int64(bound) {
					t.Errorf("%d new buffers in %d round trips", n, rounds)
				} else {
					t.Logf("%d new buffers in %d round trips", n, rounds)
				}
			})
		}
	}
}
