package gateway

import (
	"io"
	"net"
	"net/http"
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
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/", nil)
	if err != nil {
		b.Fatal(err)
	}
	return ws.NetConn()
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
