package integration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// spFlood is a basic-mode target that writes as fast as it can until the
// connection ends.
func spFlood(t *testing.T) (host, port string) {
	t.Helper()
	chunk := bytes.Repeat([]byte("flood"), 13107)
	target, _ := tcpServer(t, func(c net.Conn) {
		defer c.Close()
		for {
			_ = c.SetWriteDeadline(time.Now().Add(60 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	host, port, _ = net.SplitHostPort(target)
	return host, port
}

// spTunnelClosed returns the "tunnel closed" log lines the gateway wrote.
func spTunnelClosed(g *gateway) []map[string]any {
	var out []map[string]any
	for _, l := range g.logLines() {
		if l["message"] == "tunnel closed" {
			out = append(out, l)
		}
	}
	return out
}

// TestSpliceStalledReaderDoesNotDelayPolicy: a client that stops reading
// while its target floods is closed by the heartbeat with 1001 and a
// reason (never 1000), and while the gateway is stuck writing to it the
// idle_timeout and max_duration of other tunnels still fire on time, with
// 1008.
func TestSpliceStalledReaderDoesNotDelayPolicy(t *testing.T) {
	t.Parallel()
	host, port := spFlood(t)
	g, _ := svcGateway(t, 1, map[string]any{
		"Idle":  map[string]any{"script": "echo.sh", "count": 1, "options": map[string]any{"idle_timeout": 1}},
		"Short": map[string]any{"script": "echo.sh", "count": 1, "options": map[string]any{"max_duration": 2}},
	}, "--client_hostname", host, "--client_port", port, "--heartbeat", "1")

	stalled, code, body := hbDialRaw(t, g.wsAddr, "/")
	if stalled == nil {
		t.Fatalf("refused: %d %s", code, body)
	}
	// It never reads. The gateway decides to drop it once it has neither
	// read nor answered a ping for two heartbeats.
	waitFor(t, "the stalled client to be dropped by the heartbeat", 30*time.Second, func() bool {
		return strings.Contains(g.log.String(), "tunnel ended by policy")
	})

	// Meanwhile other tunnels' policies fire on time.
	for _, c := range []struct {
		service, reason string
	}{{"Idle", "idle"}, {"Short", "maximum duration"}} {
		tok := g.reserve(t, c.service, "")["token"].(string)
		ws, _ := connectToken(t, g, tok)
		start := time.Now()
		_, ce, err := readUntilClose(ws, 20*time.Second)
		if err != nil || ce == nil {
			t.Fatalf("%s: no close: %v", c.service, err)
		}
		if ce.Code != 1008 || !strings.Contains(ce.Text, c.reason) {
			t.Errorf("%s: close %d %q, want 1008 with %q", c.service, ce.Code, ce.Text, c.reason)
		}
		// idle_timeout 1 s / max_duration 2 s, checked every second: a
		// few seconds normally; 15 s is far beyond any sweep delay.
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("%s: policy fired after %s", c.service, d)
		}
		ws.Close()
	}

	// The stalled client's connection ends; what it finds when it reads
	// again is data, then the close frame (1001) or the end of the
	// connection, never a normal close.
	var closeCode int
	for {
		op, p, err := stalled.readFrame(30 * time.Second)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the stalled client's connection was not closed: %v", err)
			}
			break
		}
		if op == 0x8 {
			if len(p) >= 2 {
				closeCode = int(binary.BigEndian.Uint16(p))
				if len(p) == 2 {
					t.Errorf("close %d without a reason", closeCode)
				}
			}
			break
		}
	}
	if closeCode != 0 && closeCode != 1001 && closeCode != 1008 {
		t.Errorf("stalled client closed with %d, want 1001 or 1008", closeCode)
	}
	var found bool
	waitFor(t, "the stalled tunnel's log line", 20*time.Second, func() bool {
		for _, l := range spTunnelClosed(g) {
			if l["closed_by"] == "gateway" && l["close_code"] == float64(1001) &&
				strings.Contains(fmt.Sprint(l["close_reason"]), "pings") {
				found = true
			}
		}
		return found
	})
	for _, l := range spTunnelClosed(g) {
		if l["close_code"] == float64(1000) {
			t.Errorf("a tunnel was closed with 1000: %v", l)
		}
		if _, ok := l["duration_ms"].(float64); !ok {
			t.Errorf("tunnel closed without an integer duration_ms: %v", l)
		}
	}
}

// TestSpliceSlowReaderStaysAlive: with --heartbeat 1, a client that reads
// steadily but more slowly than its target writes is not dropped after
// many heartbeat periods, whether it answers the pings it gets (which
// come even under backpressure) or not (its reading is progress).
func TestSpliceSlowReaderStaysAlive(t *testing.T) {
	t.Parallel()
	host, port := spFlood(t)
	g := startGateway(t, "--client_hostname", host, "--client_port", port, "--heartbeat", "1")
	for _, answer := range []bool{true, false} {
		t.Run(fmt.Sprintf("answers pings %v", answer), func(t *testing.T) {
			t.Parallel()
			w, code, body := hbDialRaw(t, g.wsAddr, "/")
			if w == nil {
				t.Fatalf("refused: %d %s", code, body)
			}
			// About 3 MB/s: 32 KiB every 10 ms, far slower than the flood.
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			buf := make([]byte, 32<<10)
			var pings atomic.Int64
			var pending []byte
			start := time.Now()
			for time.Since(start) < 8*time.Second {
				<-tick.C
				_ = w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := w.br.Read(buf)
				if err != nil {
					t.Fatalf("after %s: the connection ended: %v", time.Since(start).Round(time.Millisecond), err)
				}
				pending = append(pending, buf[:n]...)
				// Walk whole frames; answer pings, stop at a close.
				for {
					op, p, rest, ok := spNextFrame(pending)
					if !ok {
						break
					}
					pending = rest
					switch op {
					case 0x8:
						code := 0
						if len(p) >= 2 {
							code = int(binary.BigEndian.Uint16(p))
						}
						t.Fatalf("after %s: closed with %d %q", time.Since(start).Round(time.Millisecond), code, p)
					case 0x9:
						pings.Add(1)
						if answer {
							if _, err := w.c.Write(hbData(0xa, p)); err != nil {
								t.Fatal(err)
							}
						}
					}
				}
				pending = append([]byte(nil), pending...)
			}
			if answer && pings.Load() < 2 {
				t.Errorf("%d pings in 8 s of backpressure, want at least 2", pings.Load())
			}
			if strings.Contains(g.log.String(), "did not answer pings") {
				t.Errorf("the gateway dropped a slow reader")
			}
		})
	}
}

// spNextFrame splits one whole server frame off b.
func spNextFrame(b []byte) (op byte, payload, rest []byte, ok bool) {
	if len(b) < 2 {
		return 0, nil, b, false
	}
	n, off := uint64(b[1]&0x7f), 2
	switch n {
	case 126:
		if len(b) < 4 {
			return 0, nil, b, false
		}
		n, off = uint64(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return 0, nil, b, false
		}
		n, off = binary.BigEndian.Uint64(b[2:]), 10
	}
	if uint64(len(b)-off) < n {
		return 0, nil, b, false
	}
	end := off + int(n)
	return b[0] & 0x0f, b[off:end], b[end:], true
}

// TestSpliceInvalidCloseCodes: a client's close frame with a code that
// may not be on the wire (1005, 1006, 1015, 999, 5000, 1004, 2999), or
// of one byte, or with a reason that is not UTF-8, is answered with
// 1002; a valid code is echoed; the connection then ends cleanly.
func TestSpliceInvalidCloseCodes(t *testing.T) {
	t.Parallel()
	g, _ := basicGateway(t, echo)
	for _, c := range []struct {
		name    string
		payload []byte
		want    int
	}{
		{"1005", []byte{0x03, 0xed}, 1002},
		{"1006", []byte{0x03, 0xee}, 1002},
		{"1015", []byte{0x03, 0xf7}, 1002},
		{"999", []byte{0x03, 0xe7}, 1002},
		{"5000", []byte{0x13, 0x88}, 1002},
		{"1004", []byte{0x03, 0xec}, 1002},
		{"2999", []byte{0x0b, 0xb7}, 1002},
		{"one byte", []byte{0x03}, 1002},
		{"reason not UTF-8", []byte{0x03, 0xe8, 0xc3, 0x28}, 1002},
		{"1000 is echoed", []byte{0x03, 0xe8}, 1000},
		{"4999 is echoed", []byte{0x13, 0x87, 'o', 'k'}, 4999},
		{"3000 is echoed", []byte{0x0b, 0xb8}, 3000},
		{"no code is answered without one", nil, 1005},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, code, body := hbDialRaw(t, g.wsAddr, "/")
			if w == nil {
				t.Fatalf("refused: %d %s", code, body)
			}
			if _, err := w.c.Write(hbData(0x8, c.payload)); err != nil {
				t.Fatal(err)
			}
			got, reason, _ := w.expectClose(t)
			if got != c.want {
				t.Errorf("answered %d %q, want %d", got, reason, c.want)
			}
			spExpectCleanEnd(t, w)
		})
	}
}

// spExpectCleanEnd reads after the close frame: the gateway ends the
// connection with a FIN (EOF), not a reset, within the close timeout.
func spExpectCleanEnd(t *testing.T, w *hbWS) {
	t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(io.Discard, w.br)
	if err != nil {
		t.Errorf("after the close frame: %v, want a clean end of the connection", err)
	}
}

// TestSpliceCloseFrameBeforeReset: after a 1009 (message too big) or a
// 1002 (protocol error) from a client that is still sending, while its
// target floods it (so the close frame waits behind megabytes of data in
// the gateway's socket buffer), the client reads everything up to the
// close frame and gets no ECONNRESET: the gateway keeps reading and
// discarding rather than closing with unread bytes.
func TestSpliceCloseFrameBeforeReset(t *testing.T) {
	t.Parallel()
	host, port := spFlood(t)
	g := startGateway(t, "--client_hostname", host, "--client_port", port, "--max_message_bytes", "4096")
	junk := bytes.Repeat([]byte{0x42}, 256<<10)
	for _, c := range []struct {
		name  string
		first []byte
		want  int
	}{
		// A 1 MiB message: its header is over the limit; the client keeps
		// sending the payload.
		{"1009", hbFrame(true, 0, 2, true, nil, 1<<20), 1009},
		// An unmasked frame, then more bytes.
		{"1002", hbFrame(true, 0, 2, false, []byte("x"), -1), 1002},
	} {
		t.Run(c.name, func(t *testing.T) {
			w, code, body := hbDialRaw(t, g.wsAddr, "/")
			if w == nil {
				t.Fatalf("refused: %d %s", code, body)
			}
			// The flood has started.
			if _, _, err := w.readFrame(20 * time.Second); err != nil {
				t.Fatal(err)
			}
			if _, err := w.c.Write(c.first); err != nil {
				t.Fatal(err)
			}
			sent := make(chan struct{})
			go func() {
				defer close(sent)
				// Keep sending while the gateway closes.
				_ = w.c.SetWriteDeadline(time.Now().Add(20 * time.Second))
				for i := 0; i < 4; i++ {
					if _, err := w.c.Write(junk); err != nil {
						return
					}
				}
			}()
			var frames int
			for {
				op, p, err := w.readFrame(20 * time.Second)
				if err != nil {
					t.Fatalf("after %d frames, before the close frame: %v (reset: %v)", frames, err, errors.Is(err, syscall.ECONNRESET))
				}
				frames++
				if op != 0x8 {
					continue
				}
				if len(p) <= 2 || int(binary.BigEndian.Uint16(p)) != c.want {
					t.Fatalf("close % x, want %d with a reason", p, c.want)
				}
				break
			}
			<-sent
			// The client answers; the gateway then ends the connection.
			_, _ = w.c.Write(hbData(0x8, []byte{0x03, 0xe8}))
			_ = w.c.SetReadDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.Copy(io.Discard, w.br); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("after the close: %v", err)
			}
		})
	}
}
