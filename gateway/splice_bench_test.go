package gateway

import (
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/wsframe"
	"wsgateway/wsframe/wsframetest"
)

// spliceBench starts a basic-mode gateway to a backend that runs handle,
// and returns the raw connection of an upgraded websocket client.
func spliceBench(b *testing.B, handle func(net.Conn)) net.Conn {
	b.Helper()
	ws, _, err := websocket.DefaultDialer.Dial(benchGateway(b, handle), nil)
	if err != nil {
		b.Fatal(err)
	}
	return ws.NetConn()
}

// benchGateway starts a basic-mode gateway to a backend that runs handle
// on each connection, and returns its websocket URL.
func benchGateway(b *testing.B, handle func(net.Conn)) string {
	b.Helper()
	back, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := back.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	s, err := New(Config{ClientAddr: back.Addr().String(), SessionRoot: b.TempDir()}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: s.wsPortHandler()}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close(); back.Close(); s.Shutdown(b.Context()) })
	return "ws://" + ln.Addr().String() + "/"
}

// BenchmarkSpliceUpload: client → gateway → service, 64 KiB messages.
func BenchmarkSpliceUpload(b *testing.B) {
	got := make(chan int64, 1)
	want := int64(0)
	conn := spliceBench(b, func(c net.Conn) {
		buf := make([]byte, 256<<10)
		var n int64
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if n >= want && want > 0 {
				got <- n
				n = 0
			}
			if err != nil {
				return
			}
		}
	})
	frame := wsframetest.ClientFrame(true, wsframe.OpBinary, make([]byte, 64<<10), [4]byte{9, 8, 7, 6})
	want = int64(b.N) * (64 << 10)
	b.SetBytes(64 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := conn.Write(frame); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-got:
	case <-time.After(30 * time.Second):
		b.Fatal("backend did not receive everything")
	}
}

// BenchmarkSpliceDownload: service → gateway → client, 64 KiB writes.
func BenchmarkSpliceDownload(b *testing.B) {
	start := make(chan int, 1)
	conn := spliceBench(b, func(c net.Conn) {
		chunk := make([]byte, 64<<10)
		n := <-start
		for i := 0; i < n; i++ {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	buf := make([]byte, 256<<10)
	b.SetBytes(64 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	start <- b.N
	// Payload plus frame headers: read at least the payload.
	need := int64(b.N) * (64 << 10)
	var n int64
	for n < need {
		m, err := conn.Read(buf)
		n += int64(m)
		if err != nil && err != io.EOF {
			b.Fatal(err)
		}
	}
}

// BenchmarkSplicePaths measures each path of the splice in one process
// (client, gateway and service share the cores): download and upload of
// 64 KiB messages over TCP (zero-copy download on Linux), a Unix-socket
// service, the copy path (splice off), TLS and a wrapped service
// connection.
//
//	go test -run '^$' -bench SplicePaths ./gateway
func BenchmarkSplicePaths(b *testing.B) {
	for _, pc := range []struct {
		pathCase
		off bool
	}{
		{pathCase: pathCase{name: "tcp", network: "tcp"}},
		{pathCase: pathCase{name: "unix", network: "unix"}},
		{pathCase: pathCase{name: "copy", network: "tcp"}, off: true},
		{pathCase: pathCase{name: "tls", network: "tcp", tls: true}},
		{pathCase: pathCase{name: "wrapped", network: "tcp", wrap: true}},
	} {
		b.Run(pc.name+"/download", func(b *testing.B) {
			defer setSpliceOff(pc.off)()
			sb := startBackend(b, pc.network, make([]byte, 64<<10), func(bk *backend, c net.Conn) {
				for {
					if _, err := c.Write(bk.want); err != nil {
						return
					}
				}
			})
			_, url, d := tunnelServer(b, Config{}, pc.tls, dialBackend(sb, pc.wrap))
			ws, _, err := d.Dial(url, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer ws.Close()
			buf := make([]byte, 256<<10)
			b.SetBytes(64 << 10)
			b.ResetTimer()
			need := int64(b.N) * (64 << 10)
			for n := int64(0); n < need; {
				_, r, err := ws.NextReader()
				if err != nil {
					b.Fatal(err)
				}
				for {
					m, err := r.Read(buf)
					n += int64(m)
					if err != nil {
						break
					}
				}
			}
		})
		b.Run(pc.name+"/upload", func(b *testing.B) {
			defer setSpliceOff(pc.off)()
			got := make(chan struct{}, 1)
			want := int64(-1)
			var mu sync.Mutex
			sb := startBackend(b, pc.network, nil, func(_ *backend, c net.Conn) {
				buf := make([]byte, 256<<10)
				var n int64
				for {
					m, err := c.Read(buf)
					n += int64(m)
					mu.Lock()
					w := want
					mu.Unlock()
					if w >= 0 && n >= w {
						got <- struct{}{}
						return
					}
					if err != nil {
						return
					}
				}
			})
			_, url, d := tunnelServer(b, Config{}, pc.tls, dialBackend(sb, pc.wrap))
			ws, _, err := d.Dial(url, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer ws.Close()
			msg := make([]byte, 64<<10)
			mu.Lock()
			want = int64(b.N) * (64 << 10)
			mu.Unlock()
			b.SetBytes(64 << 10)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					b.Fatal(err)
				}
			}
			select {
			case <-got:
			case <-time.After(60 * time.Second):
				b.Fatal("the service did not receive everything")
			}
		})
	}
}

// BenchmarkSpliceRoundTrip: a 64-byte message to an echo service and back
// through the gateway, one at a time (the gateway's part of a round
// trip: two readiness waits, the frames both ways).
func BenchmarkSpliceRoundTrip(b *testing.B) {
	c := spliceBench(b, func(c net.Conn) { _, _ = io.Copy(c, c) })
	payload := make([]byte, 64)
	frame := wsframetest.ClientFrame(true, wsframe.OpBinary, payload, [4]byte{1, 2, 3, 4})
	reply := make([]byte, 2+len(payload))
	cpu0 := processCPU()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(frame); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, reply); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// The CPU the process (client, gateway and service) used per round
	// trip: less sensitive to a busy machine than the time per round trip.
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
}

// processCPU is the CPU time the process used so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSpliceSetup: one tunnel's life as the set-up measurement has
// it: a websocket opened (the gateway dials the service), 16 bytes
// echoed, a clean close.
func BenchmarkSpliceSetup(b *testing.B) {
	url := benchGateway(b, func(c net.Conn) { defer c.Close(); _, _ = io.Copy(c, c) })
	msg := make([]byte, 16)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		ws, _, err := websocket.DefaultDialer.Dial(url, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
			b.Fatal(err)
		}
		if _, _, err := ws.ReadMessage(); err != nil {
			b.Fatal(err)
		}
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(10*time.Second))
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				break
			}
		}
		ws.Close()
	}
}
