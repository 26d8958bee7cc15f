package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

// spliceBuf is the size of the pooled copy buffers.
const spliceBuf = 64 << 10

// closeWait is how long a close handshake may take.
const closeWait = 2 * time.Second

// tunnel joins one websocket to one service connection. The websocket
// handshake is gorilla's; the frames are ours, read and written directly
// on the connection with pooled buffers, so the hot path allocates
// nothing and an idle tunnel holds no buffer (on plain TCP and Unix
// sockets it waits for readability before taking one). One goroutine
// copies each way; whichever side ends first starts the close, once.
type tunnel struct {
	s      *Server
	client net.Conn // the websocket's connection (after the handshake)
	conn   net.Conn // the service
	log    zerolog.Logger
	opened time.Time
	trace  bool
	proto  string

	up   atomic.Int64 // client → service
	down atomic.Int64 // service → client

	// policy, checked by the server's once-a-second sweep
	lastActive  atomic.Int64 // unix nanoseconds of the last payload either way
	lastPong    atomic.Int64 // unix nanoseconds of the last pong (or open)
	idleTimeout time.Duration
	maxDuration time.Duration
	onPolicy    func(reason string) // called when a policy ends the tunnel

	parser frameParser

	// writeMu serialises frames written to the client.
	writeMu   sync.Mutex
	closeSent bool
	ctrlOut   [2 + 125]byte

	initiated  atomic.Bool
	mu         sync.Mutex
	sentCode   int
	sentReason string
	clientCode int
	done       chan struct{}

	// readiness waiting without a buffer
	clientRaw, connRaw syscall.RawConn
	// one readiness probe per direction, made once (no allocation per
	// wait); a socket error the probe saw is kept for the reader, since
	// the probe consumes it (a reset must not look like a clean EOF)
	clientPeek, connPeek       func(fd uintptr) bool
	clientPeekErr, connPeekErr error

	// exitReason, for a launched service, tells after the service's
	// connection ended whether the service crashed (a reason), waiting at
	// most the given time for its exit status; "" for a clean end.
	exitReason func(wait time.Duration) string
}

var _ frameHandler = (*tunnel)(nil)

// newTunnel registers a tunnel, or closes both ends with 1001 when the
// gateway is shutting down.
func (s *Server) newTunnel(ws *websocket.Conn, conn net.Conn, log zerolog.Logger) *tunnel {
	t := &tunnel{s: s, client: ws.NetConn(), conn: conn, log: log, opened: time.Now(), done: make(chan struct{}),
		trace: log.GetLevel() <= zerolog.TraceLevel, proto: ws.Subprotocol()}
	t.clientPeek = func(fd uintptr) bool { return peek(fd, &t.clientPeekErr) }
	t.connPeek = func(fd uintptr) bool { return peek(fd, &t.connPeekErr) }
	t.parser.limit = uint64(s.cfg.MaxMessageBytes)
	t.lastActive.Store(t.opened.UnixNano())
	t.lastPong.Store(t.opened.UnixNano())
	t.clientRaw = rawConn(t.client)
	t.connRaw = rawConn(conn)
	_ = t.client.SetDeadline(time.Time{})
	if tc, ok := t.client.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		conn.Close()
		closeWS(ws, websocket.CloseGoingAway, "gateway shutting down")
		return nil
	}
	s.tunnels[t] = struct{}{}
	s.mu.Unlock()
	s.metrics.tunnels.Inc()
	s.metrics.tunnelsOpen.Inc()
	log.Info().Str("subprotocol", t.proto).Str("target", conn.RemoteAddr().String()).Msg("tunnel open")
	return t
}

// rawConn returns the connection's RawConn when readiness can be waited
// for without a buffer (plain TCP and Unix sockets, not TLS).
func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

func (s *Server) dropTunnel(t *tunnel) {
	s.mu.Lock()
	delete(s.tunnels, t)
	s.mu.Unlock()
}

// run copies both ways until both directions end, then closes both ends
// and logs the totals. The client-to-service direction runs on the
// caller's goroutine.
func (t *tunnel) run() {
	done := make(chan struct{})
	go func() { defer close(done); t.serviceToClient() }()
	t.clientToService()
	<-done
	t.s.metrics.tunnelsOpen.Dec()
	t.client.Close()
	t.conn.Close()
	close(t.done)
	t.mu.Lock()
	code, reason, cc := t.sentCode, t.sentReason, t.clientCode
	t.mu.Unlock()
	ev := t.log.Info().Int64("bytes_in", t.up.Load()).Int64("bytes_out", t.down.Load()).
		Dur("duration", time.Since(t.opened))
	if code != 0 {
		ev = ev.Int("close_code", code).Str("close_reason", reason).Str("closed_by", "gateway")
	} else {
		ev = ev.Int("close_code", cc).Str("closed_by", "client")
	}
	ev.Msg("tunnel closed")
}

// closeWith starts a close from the gateway's side: a close frame with
// code and reason to the client, and the service connection closed.
func (t *tunnel) closeWith(code int, reason string) {
	if !t.initiated.CompareAndSwap(false, true) {
		return
	}
	t.sendClose(code, reason)
	_ = t.conn.Close()
}

// sendClose writes a close frame (once) and gives the client closeWait to
// answer it.
func (t *tunnel) sendClose(code int, reason string) {
	reason = truncate(reason, 123)
	t.mu.Lock()
	t.sentCode, t.sentReason = code, reason
	t.mu.Unlock()
	// A writer stuck on a client that does not read gives up in time.
	_ = t.client.SetWriteDeadline(time.Now().Add(closeWait))
	t.writeControl(opClose, code, reason, nil)
	_ = t.client.SetReadDeadline(time.Now().Add(closeWait))
}

// writeControl writes a control frame; a close frame is written once and
// nothing follows it.
func (t *tunnel) writeControl(op byte, code int, reason string, payload []byte) {
	t.writeMu.Lock()
	defer t.writeMu.Unlock()
	if t.closeSent {
		return
	}
	b := t.ctrlOut[:2]
	b[0] = 0x80 | op
	if op == opClose {
		t.closeSent = true
		if code != 0 {
			b = b[:4]
			binary.BigEndian.PutUint16(b[2:4], uint16(code))
			b = append(b, reason...)
		}
	} else {
		b = append(b, payload...)
	}
	b[1] = byte(len(b) - 2)
	_ = t.client.SetWriteDeadline(time.Now().Add(closeWait))
	_, _ = t.client.Write(b)
	if op != opClose {
		_ = t.client.SetWriteDeadline(time.Time{})
	}
}

// peek is the RawConn callback that reports whether a socket has data
// (or EOF, or an error) without taking it; false makes the runtime wait
// for readability. An error is stored in *errp: MSG_PEEK consumes a
// pending socket error, which the next read would otherwise not see.
func peek(fd uintptr, errp *error) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		return false
	}
	if err != nil {
		*errp = &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("recvfrom", err)}
	}
	return true
}

// waitReadable blocks until rc has something to read, and returns the
// socket error the probe found, if any. A nil rc (TLS) returns at once
// and the caller reads with its buffer.
func (t *tunnel) waitReadable(rc syscall.RawConn, probe func(uintptr) bool, errp *error) error {
	if rc == nil {
		return nil
	}
	if err := rc.Read(probe); err != nil {
		return err
	}
	return *errp
}

// data is the frameHandler callback: payload for the service.
func (t *tunnel) data(p []byte) error {
	_, err := t.conn.Write(p)
	if err != nil {
		return err
	}
	t.lastActive.Store(time.Now().UnixNano())
	t.up.Add(int64(len(p)))
	t.s.metrics.bytesIn.Add(float64(len(p)))
	return nil
}

// errClientClosed ends the client-to-service loop after a close frame.
var errClientClosed = errors.New("client sent close")

// control is the frameHandler callback for pings, pongs and close.
func (t *tunnel) control(op byte, payload []byte) error {
	switch op {
	case opPing:
		t.writeControl(opPong, 0, "", payload)
	case opPong:
		t.lastPong.Store(time.Now().UnixNano())
	case opClose:
		code := websocket.CloseNoStatusReceived
		if len(payload) >= 2 {
			code = int(binary.BigEndian.Uint16(payload))
			if !utf8.Valid(payload[2:]) {
				code = websocket.CloseProtocolError
			}
		} else if len(payload) == 1 {
			code = websocket.CloseProtocolError
		}
		t.mu.Lock()
		t.clientCode = code
		t.mu.Unlock()
		// Echo the close (RFC 6455 §5.5.1) unless ours went first.
		echo := code
		if code == websocket.CloseNoStatusReceived {
			echo = 0
		}
		t.writeControl(opClose, echo, "", nil)
		return errClientClosed
	}
	return nil
}

func (t *tunnel) clientToService() {
	var err error
	for {
		if err = t.waitReadable(t.clientRaw, t.clientPeek, &t.clientPeekErr); err != nil {
			break
		}
		bp := t.s.bufPool.Get().(*[]byte)
		buf := *bp
		for {
			var n int
			n, err = t.client.Read(buf)
			if n > 0 {
				if t.trace {
					t.log.Trace().Int("bytes", n).Msg("client → service")
				}
				if ferr := t.parser.feed(buf[:n], t); ferr != nil {
					err = ferr
					break
				}
			}
			// A full buffer means more may be waiting; otherwise give the
			// buffer back while the client is quiet.
			if err != nil || n < len(buf) || t.clientRaw == nil {
				break
			}
		}
		t.s.bufPool.Put(bp)
		if err != nil {
			break
		}
	}
	switch {
	case errors.Is(err, errClientClosed):
		// The client closed: finish what we sent to the service, then let
		// the other direction drain briefly.
		if t.initiated.CompareAndSwap(false, true) {
			t.halfCloseService()
		}
	case errors.Is(err, errProtocol):
		if t.initiated.CompareAndSwap(false, true) {
			t.sendClose(websocket.CloseProtocolError, t.parser.reason)
			_ = t.conn.Close()
		}
	case errors.Is(err, errTooBig):
		if t.initiated.CompareAndSwap(false, true) {
			t.s.metrics.limited.WithLabelValues("message_size").Inc()
			t.sendClose(websocket.CloseMessageTooBig, t.parser.reason)
			_ = t.conn.Close()
		}
	default:
		var ne net.Error
		isWrite := !errors.Is(err, io.EOF) && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, net.ErrClosed)
		if t.initiated.CompareAndSwap(false, true) {
			if isWrite && !isReadErr(err) {
				t.sendClose(websocket.CloseInternalServerErr, "service connection lost")
				_ = t.conn.Close()
			} else {
				// The client vanished without a close frame.
				t.mu.Lock()
				t.clientCode = websocket.CloseAbnormalClosure
				t.mu.Unlock()
				t.halfCloseService()
			}
		}
	}
}

// isReadErr reports whether err came from a read (a net.OpError with Op
// "read", or an error that is not a net.OpError at all, such as a TLS
// record error) rather than a write: each direction reads one connection
// and writes the other, so this says which side failed.
func isReadErr(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Op == "read"
	}
	return true
}

func (t *tunnel) halfCloseService() {
	if cw, ok := t.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		_ = t.conn.SetReadDeadline(time.Now().Add(closeWait))
	} else {
		_ = t.conn.Close()
	}
}

func (t *tunnel) serviceToClient() {
	var err error
	for {
		if err = t.waitReadable(t.connRaw, t.connPeek, &t.connPeekErr); err != nil {
			break
		}
		bp := t.s.bufPool.Get().(*[]byte)
		buf := *bp
		for {
			var n int
			n, err = t.conn.Read(buf[headerRoom:])
			if n > 0 {
				if werr := t.writeData(buf, n); werr != nil {
					err = werr
					break
				}
			}
			if err != nil || n < len(buf)-headerRoom || t.connRaw == nil {
				break
			}
		}
		t.s.bufPool.Put(bp)
		if err != nil {
			break
		}
	}
	if errors.Is(err, errCloseSent) {
		return
	}
	if t.initiated.CompareAndSwap(false, true) {
		if t.exitReason != nil && (errors.Is(err, io.EOF) || isReadErr(err)) {
			// The service's connection ended: did the service crash?
			if reason := t.exitReason(300 * time.Millisecond); reason != "" {
				t.s.metrics.failures.WithLabelValues("service_exited").Inc()
				t.sendClose(websocket.CloseInternalServerErr, reason)
				return
			}
		}
		if errors.Is(err, io.EOF) {
			t.sendClose(websocket.CloseNormalClosure, "Target closed")
		} else if isReadErr(err) {
			t.sendClose(websocket.CloseInternalServerErr, "service connection error")
		} else {
			// Writing to the client failed: it is gone.
			_ = t.conn.Close()
			_ = t.client.Close()
		}
	}
}

var errCloseSent = errors.New("close frame already sent")

// writeData frames buf[headerRoom:headerRoom+n] as one binary message and
// writes it with the header in the room in front: one write, no copy.
func (t *tunnel) writeData(buf []byte, n int) error {
	start := putHeader(buf, opBinary, n)
	t.writeMu.Lock()
	if t.closeSent {
		t.writeMu.Unlock()
		return errCloseSent
	}
	_, err := t.client.Write(buf[start : headerRoom+n])
	t.writeMu.Unlock()
	if err != nil {
		return err
	}
	t.down.Add(int64(n))
	t.lastActive.Store(time.Now().UnixNano())
	t.s.metrics.bytesOut.Add(float64(n))
	if t.trace {
		t.log.Trace().Int("bytes", n).Msg("service → client")
	}
	return nil
}

// checkPolicy ends the tunnel when it has been idle or open too long, or
// its client stopped answering pings; otherwise it sends a ping when
// heartbeats are on. The server calls it about once a second.
func (t *tunnel) checkPolicy(now time.Time, heartbeat time.Duration, ping bool) {
	if t.initiated.Load() {
		return
	}
	var reason string
	idle := now.Sub(time.Unix(0, t.lastActive.Load()))
	switch {
	case t.maxDuration > 0 && now.Sub(t.opened) >= t.maxDuration:
		reason = fmt.Sprintf("the session reached its maximum duration of %s", t.maxDuration)
	case t.idleTimeout > 0 && idle >= t.idleTimeout:
		reason = fmt.Sprintf("the session was idle (no data either way) for %s", t.idleTimeout.Round(time.Second))
	case heartbeat > 0 && now.Sub(time.Unix(0, t.lastPong.Load())) > 2*heartbeat+time.Second:
		reason = fmt.Sprintf("the browser did not answer pings for %s", (2 * heartbeat).Round(time.Second))
	}
	if reason != "" {
		if t.onPolicy != nil {
			t.onPolicy(reason)
		}
		t.s.metrics.limited.WithLabelValues("policy").Inc()
		t.closeWith(websocket.CloseNormalClosure, reason)
		return
	}
	if ping {
		t.tryPing()
	}
}

// tryPing sends a ping unless a data write holds the connection: a
// client that stops reading must not stall the caller (the server's
// once-a-second sweep). Such a client answers no pings and is dropped by
// the heartbeat.
func (t *tunnel) tryPing() {
	if !t.writeMu.TryLock() {
		return
	}
	defer t.writeMu.Unlock()
	if t.closeSent {
		return
	}
	b := t.ctrlOut[:2]
	b[0], b[1] = 0x80|opPing, 0
	_ = t.client.SetWriteDeadline(time.Now().Add(closeWait))
	_, _ = t.client.Write(b)
	_ = t.client.SetWriteDeadline(time.Time{})
}
