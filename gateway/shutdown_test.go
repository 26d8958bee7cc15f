package gateway

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

// TestShutdownClosesTunnelsAndReturns: a gateway in basic mode with an
// open tunnel whose client does not read; cancelling Serve's context
// closes the tunnel with 1001 (the client reads it once it looks) and
// Serve returns nil well within the shutdown deadline.
func TestShutdownClosesTunnelsAndReturns(t *testing.T) {
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			// More than the client will read, then the target stays open (its
			// own close would race the shutdown's 1001 with a 1000).
			go func() { defer c.Close(); _, _ = c.Write(make([]byte, 1<<20)); _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	srv, err := New(Config{ClientAddr: target.Addr().String(), SessionRoot: t.TempDir(), StopGrace: time.Second}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln, nil) }()

	ws, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		srv.mu.Lock()
		n := len(srv.tunnels)
		srv.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the tunnel never registered")
		}
		time.Sleep(5 * time.Millisecond)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * (time.Second + ShutdownMargin)):
		t.Fatal("Serve did not return after its context ended")
	}
	t.Logf("shutdown took %s", time.Since(start))
	srv.mu.Lock()
	left := len(srv.tunnels)
	srv.mu.Unlock()
	if left != 0 {
		t.Errorf("%d tunnels still registered after the shutdown", left)
	}
	// The client, reading now, finds the 1001 (or, having been too slow
	// to take it, a closed connection: never another code).
	_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if ce, ok := err.(*websocket.CloseError); ok && ce.Code != websocket.CloseGoingAway {
				t.Fatalf("close %d %q, want 1001", ce.Code, ce.Text)
			}
			break
		}
	}
}
