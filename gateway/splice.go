package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/wsframe"
)

// spliceBuf is the size of the pooled copy buffers: what one read of the
// client (several frames at a time) or, where the kernel cannot splice,
// of the service takes.
const spliceBuf = 128 << 10

// tunnel joins one websocket to one service connection. The websocket
// handshake is gorilla's; the frames are ours (package wsframe), read and
// written directly on the connection, so the hot path allocates nothing
// and an idle tunnel holds no buffer and no pipe (it waits for
// readability before taking one).
//
// Two directions, each on a goroutine of its own while its socket has
// data: clientToService reads the client, unmasks in place and writes the
// service (one write per read); serviceToClient reads the service and
// writes its data frames to the client itself, on Linux with splice(2) so
// the payload never enters user space (splice_linux.go). A direction
// whose socket stays quiet parks (poll.go): its goroutine ends, and the
// next byte resumes it on a new one. Whichever direction ends last
// finishes the tunnel (finish).
//
// Writes to the client have one owner at a time: whoever holds the
// token t.own. The service reader takes it for each data frame; pongs,
// pings and the close frame are requests (flags under t.mu) that the
// holder writes before it gives the token back (release), or, when
// nobody holds it, a goroutine started for the purpose (kick). No
// request waits: closeWith and the policy sweep never block. A close
// that cannot be delivered within wsframe.CloseTimeout (a client that
// stopped reading) ends in closing the connection, never in a deadline
// another goroutine could clear.
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
	lastAlive   atomic.Int64 // unix nanoseconds of the last pong or write progress to the client (or open)
	idleTimeout time.Duration
	maxDuration time.Duration
	onPolicy    func(reason string) // called when a policy ends the tunnel

	parser wsframe.Parser
	iov    net.Buffers // payload of one client read, written at once

	// initiated is set once, by whoever decides the tunnel ends: the
	// gateway (closeWith, a service end, a protocol error) or the client
	// (a close frame, a vanished connection).
	initiated atomic.Bool

	own  chan struct{} // the write token: holds a value while nobody writes
	done chan struct{} // the tunnel is over

	mu          sync.Mutex // guards what follows, never held during I/O
	pingDue     bool
	pongDue     bool
	pong        *[wsframe.MaxControlPayload]byte // made on the client's first ping
	pongN       int
	closeDue    bool // a close frame is to be sent (ours or an echo)
	closeSent   bool // it was written (nothing is written after it)
	readOver    bool // nothing more is read from the client: data is dropped
	closeCode   int
	closeReason string
	byGateway   bool // the gateway decided the close
	clientCode  int
	force       *time.Timer // closes the client when the close takes too long
	svcForce    *time.Timer // closes the service when its end takes too long

	// readiness waiting without a buffer
	clientRaw, connRaw syscall.RawConn
	// each direction's read into a pooled buffer (pooledRead); the
	// service's is the copy path's (the splice path has its own)
	upRd, downRd pooledRead

	// parking (poll.go), and what a parked direction resumes with
	upPark, downPark parkDir
	dirs             atomic.Int32 // directions not over yet
	onEnd            func()       // run once both are over (start)
	copyDown         bool         // the service → client direction takes the copy path
	spl              *splicer     // its zero-copy state (splice_linux.go)

	// exitReason, for a launched service, tells after the service's
	// connection ended whether the service crashed (a reason), waiting at
	// most the given time for its exit status; "" for a clean end.
	exitReason func(wait time.Duration) string
}

var (
	_ wsframe.Handler = (*tunnel)(nil)
	_ wsframe.Tunnel  = (*tunnel)(nil)
)

// Close is closeWith; code 0 (no code given) is a normal close.
func (t *tunnel) Close(code int, reason string) {
	if code == 0 {
		code = wsframe.CloseNormal
	}
	t.closeWith(code, reason)
}

// Bytes are the payload bytes so far, client to service and back.
func (t *tunnel) Bytes() (in, out int64) { return t.up.Load(), t.down.Load() }

// newTunnel registers a tunnel, or closes both ends with 1001 when the
// gateway is shutting down.
func (s *Server) newTunnel(ws *websocket.Conn, conn net.Conn, log zerolog.Logger) *tunnel {
	t := &tunnel{s: s, client: ws.NetConn(), conn: conn, log: log, opened: time.Now(),
		trace: log.GetLevel() <= zerolog.TraceLevel, proto: ws.Subprotocol(),
		own: make(chan struct{}, 1), done: make(chan struct{})}
	t.own <- struct{}{}
	t.upPark = parkDir{t: t, up: true}
	t.downPark = parkDir{t: t}
	t.upRd.init(t, 0)
	t.downRd.init(t, 0)
	t.parser.Limit = uint64(s.cfg.MaxMessageBytes)
	t.lastActive.Store(t.opened.UnixNano())
	t.lastAlive.Store(t.opened.UnixNano())
	t.clientRaw = rawConn(t.client)
	t.connRaw = rawConn(conn)
	_ = t.client.SetDeadline(time.Time{})
	// TCP_NODELAY is on already: Go sets it on every TCP connection it
	// accepts or dials, so no system call here.
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
	if ev := log.Info(); ev.Enabled() {
		ev.Str("subprotocol", t.proto).Str("target", conn.RemoteAddr().String()).Msg("tunnel open")
	}
	return t
}

// rawConn returns the connection's RawConn when readiness can be waited
// for without a buffer (plain TCP and Unix sockets, not TLS nor a
// wrapped connection).
func rawConn(c net.Conn) syscall.RawConn {
	switch c.(type) {
	case *net.TCPConn, *net.UnixConn:
	default:
		return nil
	}
	rc, err := c.(syscall.Conn).SyscallConn()
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
// and logs the totals; it returns when the tunnel is over.
func (t *tunnel) run() {
	over := make(chan struct{})
	t.start(func() { close(over) })
	<-over
}

// start copies both ways, each direction on a goroutine of its own (or
// parked while idle), and returns at once; once both directions end, the
// tunnel closes both ends, logs the totals and calls onEnd (if not nil)
// on the goroutine that ended last.
func (t *tunnel) start(onEnd func()) {
	t.onEnd = onEnd
	t.dirs.Store(2)
	go t.downLoop()
	go t.upLoop()
}

// upLoop runs (or resumes) the client → service direction.
func (t *tunnel) upLoop() {
	if t.clientToService() {
		return // parked
	}
	// Nothing more is read from the client: what is left (an echo of its
	// close, the service's last bytes) gets CloseTimeout, and data the
	// service still sends is dropped.
	t.armForce()
	t.mu.Lock()
	t.readOver = true
	t.mu.Unlock()
	t.dirOver()
}

// downLoop runs (or resumes) the service → client direction.
func (t *tunnel) downLoop() {
	if t.serviceToClient() {
		return // parked
	}
	t.dirOver()
}

// dirOver: one direction is over; the second to end finishes the tunnel.
func (t *tunnel) dirOver() {
	if t.dirs.Add(-1) == 0 {
		t.finish()
	}
}

// finish closes both ends once both directions are over.
func (t *tunnel) finish() {
	// Take the token for good: a control frame being written finishes
	// (or fails when the close timeout closes the client), what is still
	// pending is written now, and nothing is written after.
	<-t.own
	if _, err := t.writeControl(); err != nil {
		t.writeFailed()
	}
	t.mu.Lock()
	if t.force != nil {
		t.force.Stop()
	}
	if t.svcForce != nil {
		t.svcForce.Stop()
	}
	byGateway, code, reason, cc := t.byGateway, t.closeCode, t.closeReason, t.clientCode
	t.mu.Unlock()
	t.s.metrics.tunnelsOpen.Dec()
	t.client.Close()
	t.conn.Close()
	close(t.done)
	ev := t.log.Info().Int64("bytes_in", t.up.Load()).Int64("bytes_out", t.down.Load()).
		Int64("duration_ms", time.Since(t.opened).Milliseconds())
	if byGateway {
		ev = ev.Int("close_code", code).Str("close_reason", reason).Str("closed_by", "gateway")
	} else {
		ev = ev.Int("close_code", cc).Str("closed_by", "client")
	}
	ev.Msg("tunnel closed")
	if t.onEnd != nil {
		t.onEnd()
	}
}

// closeWith starts a close from the gateway's side: a close frame with
// code and reason to the client, and the service connection closed. It
// never blocks: the token's holder sends the frame, and a client that
// does not take it within wsframe.CloseTimeout has its connection closed.
func (t *tunnel) closeWith(code int, reason string) {
	if !t.initiated.CompareAndSwap(false, true) {
		return
	}
	t.requestClose(code, reason, true)
	_ = t.conn.Close()
	t.wake()
}

// requestClose asks for a close frame (once) and arms the close timeout.
// The code and reason kept (for the log) are those wsframe.ClosePayload
// will send.
func (t *tunnel) requestClose(code int, reason string, byGateway bool) {
	if code != 0 && code != wsframe.CloseNoStatus && !wsframe.ValidCloseCode(code) {
		code = wsframe.CloseInternalError
	}
	reason = wsframe.TruncateReason(reason, wsframe.MaxControlPayload-2)
	t.mu.Lock()
	if t.closeDue {
		t.mu.Unlock()
		return
	}
	t.closeDue = true
	t.closeCode, t.closeReason, t.byGateway = code, reason, byGateway
	t.mu.Unlock()
	t.armForce()
	t.kick()
	t.wake() // a parked direction sees the close (poll.go)
}

// armForce starts the close timeout (once): when it runs out, the client
// connection is closed, which ends every read and write on it.
func (t *tunnel) armForce() {
	t.mu.Lock()
	if t.force == nil {
		t.force = time.AfterFunc(wsframe.CloseTimeout, func() { _ = t.client.Close() })
	}
	t.mu.Unlock()
}

// kick gets pending control frames written without waiting: when nobody
// holds the write token a goroutine takes it, writes them and gives it
// back; otherwise the holder writes them in release.
func (t *tunnel) kick() {
	select {
	case <-t.own:
		go t.release()
	default:
	}
}

// release writes the pending control frames and gives the token back.
// A request that came after the holder looked and found the token taken
// is seen by the second look, after the token is back, so none is lost:
// the requester sets its flag, then tries the token; the holder gives the
// token back, then looks at the flags (both under t.mu or the channel),
// so either the requester's try finds the token or the holder's look
// finds the flag, and then it takes the token again if it still can
// (whoever took it instead writes the frame).
func (t *tunnel) release() {
	for {
		if _, err := t.writeControl(); err != nil {
			t.writeFailed()
		}
		if beforeTokenBack != nil {
			beforeTokenBack(t)
		}
		t.own <- struct{}{}
		if !t.controlPending() {
			return
		}
		select {
		case <-t.own:
		default:
			return
		}
	}
}

// beforeTokenBack, when set (tests), runs in release between writing
// the control frames and giving the token back: the window in which a
// request finds the token taken and relies on the holder's second look.
var beforeTokenBack func(t *tunnel)

// controlPending reports whether a control frame waits to be written.
func (t *tunnel) controlPending() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.closeSent && (t.pongDue || t.pingDue || t.closeDue)
}

// dataStops reports, for the token's holder, whether data frames are
// over: the close frame went out or nothing is read from the client.
func (t *tunnel) dataStops() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closeSent || t.readOver
}

// writeData is the fallback download path: it frames the payload of bp
// (n bytes after wsframe.HeaderRoom) as one binary message and writes
// it with the header in the room in front (one write, no copy), holding
// the token. errWritesOver: the frame was dropped (the tunnel is
// closing) or the client cannot be written to.
func (t *tunnel) writeData(bp *[]byte, n int) error {
	<-t.own
	defer t.release()
	if t.dataStops() {
		return errWritesOver
	}
	buf := *bp
	start := wsframe.PutHeader(buf, wsframe.OpBinary, n)
	if _, err := t.client.Write(buf[start : wsframe.HeaderRoom+n]); err != nil {
		t.writeFailed()
		return errWritesOver
	}
	t.sent(n)
	return nil
}

// sent counts n payload bytes that reached the client's socket.
func (t *tunnel) sent(n int) {
	now := time.Now().UnixNano()
	t.down.Add(int64(n))
	t.lastActive.Store(now)
	t.lastAlive.Store(now) // the client is taking what we send
	t.s.metrics.bytesOut.Add(float64(n))
	if t.trace {
		t.log.Trace().Int("bytes", n).Msg("service → client")
	}
}

// errWritesOver ends the service reader: the client is not written to
// any more.
var errWritesOver = errors.New("writes to the client are over")

// writeControl, for the token's holder, writes the pending pong, ping
// and close frame in one write, and reports whether the close frame went
// out. Nothing is written after the close frame.
func (t *tunnel) writeControl() (closed bool, err error) {
	t.mu.Lock()
	if t.closeSent {
		t.pongDue, t.pingDue = false, false
		t.mu.Unlock()
		return true, nil
	}
	if !t.pongDue && !t.pingDue && !t.closeDue {
		t.mu.Unlock()
		return false, nil
	}
	bp := ctrlBufs.Get().(*[ctrlBufSize]byte)
	defer ctrlBufs.Put(bp)
	b := bp[:0]
	// Once a close is due, it is all that goes: a pong or ping asked for
	// meanwhile would only delay it.
	if t.pongDue && !t.closeDue {
		b = wsframe.AppendControl(b, wsframe.OpPong, t.pong[:t.pongN])
	}
	if t.pingDue && !t.closeDue {
		b = wsframe.AppendControl(b, wsframe.OpPing, nil)
	}
	t.pongDue, t.pingDue = false, false
	if t.closeDue {
		b = wsframe.AppendClose(b, t.closeCode, t.closeReason)
		t.closeSent = true
		closed = true
	}
	t.mu.Unlock()
	_, err = t.client.Write(b)
	return closed, err
}

// ctrlBufSize holds a pong, a ping and a close frame, the most one
// writeControl writes; the buffers are pooled, not kept by each tunnel.
const ctrlBufSize = 3 * (2 + wsframe.MaxControlPayload)

var ctrlBufs = sync.Pool{New: func() any { return new([ctrlBufSize]byte) }}

// writeFailed: the client cannot be written to; it is gone.
func (t *tunnel) writeFailed() {
	if t.initiated.CompareAndSwap(false, true) {
		t.mu.Lock()
		t.clientCode = wsframe.CloseAbnormal
		t.mu.Unlock()
	}
	t.mu.Lock()
	t.closeSent = true // nothing more can be written
	t.mu.Unlock()
	_ = t.conn.Close()
	_ = t.client.Close()
	t.wake()
}

// Data is the wsframe.Handler callback: payload for the service,
// collected and written once per client read (flushUp).
func (t *tunnel) Data(p []byte) error {
	t.iov = append(t.iov, p)
	return nil
}

// flushUp writes the payload collected from one client read to the
// service: one write (writev when it spans frames). Once the tunnel is
// ending, what the service cannot take is dropped, so the client's close
// frame is still read.
func (t *tunnel) flushUp() error {
	if len(t.iov) == 0 {
		return nil
	}
	var n int
	for _, p := range t.iov {
		n += len(p)
	}
	var err error
	if len(t.iov) == 1 {
		_, err = t.conn.Write(t.iov[0])
	} else {
		bufs := t.iov // WriteTo consumes the slice it is given
		_, err = bufs.WriteTo(t.conn)
	}
	clear(t.iov)
	t.iov = t.iov[:0]
	if err != nil {
		if t.initiated.Load() {
			return nil
		}
		return err
	}
	t.lastActive.Store(time.Now().UnixNano())
	t.up.Add(int64(n))
	t.s.metrics.bytesIn.Add(float64(n))
	return nil
}

// errClientClosed ends the client-to-service loop after a close frame.
var errClientClosed = errors.New("client sent close")

// closeError is a client close frame that breaks RFC 6455: answered with
// 1002.
type closeError struct{ err error }

func (e *closeError) Error() string { return e.err.Error() }
func (e *closeError) Unwrap() error { return e.err }

// Control is the wsframe.Handler callback for pings, pongs and close.
func (t *tunnel) Control(op byte, payload []byte) error {
	switch op {
	case wsframe.OpPing:
		t.mu.Lock()
		if t.pong == nil {
			t.pong = new([wsframe.MaxControlPayload]byte)
		}
		t.pongN = copy(t.pong[:], payload)
		t.pongDue = true
		t.mu.Unlock()
		t.kick()
	case wsframe.OpPong:
		t.lastAlive.Store(time.Now().UnixNano())
	case wsframe.OpClose:
		code, _, err := wsframe.ParseClose(payload)
		if err != nil {
			t.mu.Lock()
			t.clientCode = wsframe.CloseProtocolError
			t.mu.Unlock()
			return &closeError{err}
		}
		t.mu.Lock()
		t.clientCode = code
		t.mu.Unlock()
		// What the client sent before its close reaches the service
		// before the service hears of the close.
		_ = t.flushUp() // a service that failed hears of the close anyway
		// Echo the close (RFC 6455 §5.5.1) unless ours went first.
		if t.initiated.CompareAndSwap(false, true) {
			t.requestClose(code, "", false)
			t.halfCloseService()
		}
		return errClientClosed
	}
	return nil
}

// pooledRead is one direction's read of its socket into a pooled
// buffer. Its RawConn callback (made once: a read allocates nothing)
// takes a buffer if none is held, reads into it, and when the socket is
// empty gives the buffer back, arms the park deadline and waits; so an
// idle direction holds no buffer. Only its direction's goroutine uses it.
// (Kept small: two are in every tunnel, whose size class matters at
// thousands of idle tunnels.)
type pooledRead struct {
	t   *tunnel
	bp  *[]byte
	err error
	fn  func(fd uintptr) bool
	n   int32
	max int32 // the most one read takes (0: the buffer's room)
}

// init readies r, t.upRd or a read of t's service, to read at most max
// bytes at a time (0: the buffer's room).
func (r *pooledRead) init(t *tunnel, max int32) {
	r.t, r.max = t, max
	r.fn = r.readFn
}

// up: r reads the client's socket (otherwise the service's).
func (r *pooledRead) up() bool { return r == &r.t.upRd }

func (r *pooledRead) conn() (net.Conn, syscall.RawConn, *parkDir) {
	if r.up() {
		return r.t.client, r.t.clientRaw, &r.t.upPark
	}
	return r.t.conn, r.t.connRaw, &r.t.downPark
}

// room is where a read goes in buffer b: from its start for the client's
// payload, after wsframe.HeaderRoom for the service's (the frame header
// is put in front).
func (r *pooledRead) room(b []byte) []byte {
	if !r.up() {
		b = b[wsframe.HeaderRoom:]
	}
	if r.max > 0 {
		b = b[:r.max]
	}
	return b
}

func (r *pooledRead) readFn(fd uintptr) bool {
	for {
		if r.bp == nil {
			r.bp = r.t.s.bufPool.Get().(*[]byte)
		}
		n, err := syscall.Read(int(fd), r.room(*r.bp))
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			r.t.s.bufPool.Put(r.bp)
			r.bp = nil
			c, _, d := r.conn()
			r.t.armPark(d, c)
			return false
		case err != nil:
			r.n, r.err = 0, readError(r, os.NewSyscallError("read", err))
		case n == 0:
			r.n, r.err = 0, io.EOF
		default:
			r.n, r.err = int32(n), nil
		}
		return true
	}
}

// readError is a failed read of r's socket, as net.Conn.Read gives it.
func readError(r *pooledRead, err error) error {
	c, _, _ := r.conn()
	return &net.OpError{Op: "read", Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}

// read reads what the socket has into bp (taken from the pool if nil) and
// returns it with the buffer, or park: the socket stayed quiet for
// parkAfter (the buffer is then back in the pool). Without a RawConn
// (TLS, a wrapped connection) it is a plain, blocking read.
func (r *pooledRead) read(bp *[]byte) (n int, _ *[]byte, park bool, err error) {
	c, rc, d := r.conn()
	if rc == nil {
		if bp == nil {
			bp = r.t.s.bufPool.Get().(*[]byte)
		}
		n, err = c.Read(r.room(*bp))
		return n, bp, false, err
	}
	r.bp = bp
	err = rc.Read(r.fn)
	bp, r.bp = r.bp, nil
	if r.t.disarm(d, c, err) {
		return 0, bp, true, nil
	}
	if err != nil {
		return 0, bp, false, readError(r, err)
	}
	return int(r.n), bp, false, r.err
}

// clientToService moves the client's frames to the service until the
// client's close, its end or an error, and reports whether it parked
// instead (then it resumes from the start, holding nothing).
func (t *tunnel) clientToService() (parked bool) {
	var err error
	var bp *[]byte
	var rest []byte // what the parser left of the last read after an error
	for {
		var n int
		var park bool
		n, bp, park, err = t.upRd.read(bp)
		if park {
			if t.park(&t.upPark, t.clientRaw) {
				return true
			}
			continue
		}
		if n > 0 {
			buf := *bp
			if t.trace {
				t.log.Trace().Int("bytes", n).Msg("client → service")
			}
			ferr := t.parser.Feed(buf[:n], t)
			if werr := t.flushUp(); werr != nil && ferr == nil {
				// The service failed; the parser is in step.
				ferr, rest = werr, buf[n:n]
			}
			if ferr != nil {
				err = ferr
				if rest == nil {
					rest = buf[n-t.parser.Unconsumed() : n]
				}
				break
			}
		}
		if err != nil {
			break
		}
		if t.clientRaw == nil {
			// TLS: the read blocks; hold no buffer while it does.
			t.s.bufPool.Put(bp)
			bp = nil
		}
	}
	var ce *closeError
	switch {
	case errors.Is(err, errClientClosed):
		// The client closed (or answered our close): nothing more comes.
	case errors.As(err, &ce):
		// A close frame that breaks the protocol: 1002; the client sends
		// nothing after its close frame.
		if t.initiated.CompareAndSwap(false, true) {
			t.requestClose(wsframe.CloseProtocolError, ce.err.Error(), true)
			_ = t.conn.Close()
		}
		t.drain(bp, nil)
	case errors.Is(err, wsframe.ErrProtocol):
		if t.initiated.CompareAndSwap(false, true) {
			t.requestClose(wsframe.CloseProtocolError, t.parser.Reason(), true)
			_ = t.conn.Close()
		}
		t.drain(bp, nil)
	case errors.Is(err, wsframe.ErrTooBig):
		if t.initiated.CompareAndSwap(false, true) {
			t.s.metrics.limited.WithLabelValues("message_size").Inc()
			t.requestClose(wsframe.CloseTooBig, t.parser.Reason(), true)
			_ = t.conn.Close()
		}
		// The parser is still in step: look for the client's close.
		t.drain(bp, rest)
	default:
		var ne net.Error
		isWrite := !errors.Is(err, io.EOF) && !(errors.As(err, &ne) && ne.Timeout()) && !errors.Is(err, net.ErrClosed)
		if t.initiated.CompareAndSwap(false, true) {
			if isWrite && !isReadErr(err) {
				t.requestClose(wsframe.CloseInternalError, "service connection lost", true)
				_ = t.conn.Close()
				t.drain(bp, rest)
			} else {
				// The client vanished without a close frame.
				t.mu.Lock()
				t.clientCode = wsframe.CloseAbnormal
				t.mu.Unlock()
				t.halfCloseService()
			}
		}
	}
	if bp != nil {
		t.s.bufPool.Put(bp)
	}
	return false
}

// drain reads and discards what the client sends after the gateway's
// close frame, so the client gets that frame rather than a reset. With
// rest (what the parser left of the last read, the parser still in step
// with the stream) it parses on until the client's close frame; without,
// it reads until the client's end. The close timeout, armed here, closes
// the connection if neither comes. bp is a buffer to read into (nil:
// take one).
func (t *tunnel) drain(bp *[]byte, rest []byte) {
	t.armForce()
	parse := rest != nil
	t.parser.Limit = 0
	var sink closeSink
	feed := func(p []byte) bool {
		if parse && len(p) > 0 {
			if t.parser.Feed(p, &sink) != nil {
				parse = false
			}
		}
		return sink.closed
	}
	if feed(rest) {
		return
	}
	if bp == nil {
		bp = t.s.bufPool.Get().(*[]byte)
		defer t.s.bufPool.Put(bp)
	}
	buf := *bp
	for {
		n, err := t.client.Read(buf)
		if feed(buf[:n]) || err != nil {
			return
		}
	}
}

// closeSink discards data and notes a close frame.
type closeSink struct{ closed bool }

func (c *closeSink) Data([]byte) error { return nil }
func (c *closeSink) Control(op byte, _ []byte) error {
	if op == wsframe.OpClose {
		c.closed = true
		return errClientClosed
	}
	return nil
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

// halfCloseService ends what the client sent to the service with a FIN
// and gives the service the close timeout to finish: then its connection
// is closed (a timer, not a read deadline, which the parked service
// direction would not see, and which would be confused with the park
// deadline).
func (t *tunnel) halfCloseService() {
	if cw, ok := t.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		t.mu.Lock()
		if t.svcForce == nil {
			t.svcForce = time.AfterFunc(wsframe.CloseTimeout, func() { _ = t.conn.Close() })
		}
		t.mu.Unlock()
	} else {
		_ = t.conn.Close()
	}
	t.wake()
}

// serviceToClient moves the service's bytes to the client, each read as
// one binary message: by splice(2) where the kernel can (download in
// splice_linux.go), by a pooled buffer otherwise; then it asks for the
// close frame that says how the service ended. It reports whether it
// parked instead (then it resumes where it was, holding nothing).
func (t *tunnel) serviceToClient() (parked bool) {
	// After errParked nothing of the direction is touched: it may run on
	// another goroutine already.
	var err error
	if !t.copyDown {
		err = t.download()
		if errors.Is(err, errParked) {
			return true
		}
		if errors.Is(err, errNoSplice) {
			t.copyDown = true
		}
	}
	if t.copyDown {
		if err = t.downloadCopy(); errors.Is(err, errParked) {
			return true
		}
	}
	if errors.Is(err, errWritesOver) {
		return false
	}
	if t.initiated.CompareAndSwap(false, true) {
		if t.exitReason != nil && (errors.Is(err, io.EOF) || isReadErr(err)) {
			// The service's connection ended: did the service crash?
			if reason := t.exitReason(300 * time.Millisecond); reason != "" {
				t.s.metrics.failures.WithLabelValues("service_exited").Inc()
				t.requestClose(wsframe.CloseInternalError, reason, true)
				return false
			}
		}
		if errors.Is(err, io.EOF) {
			t.requestClose(wsframe.CloseNormal, "Target closed", true)
		} else {
			t.requestClose(wsframe.CloseInternalError, "service connection error", true)
		}
	}
	return false
}

// errParked: the direction parked; its goroutine returns.
var errParked = errors.New("parked")

// errNoSplice: the zero-copy path is not available for this tunnel (and
// nothing was moved by it); the copy path takes over.
var errNoSplice = errors.New("splice not available")

// downloadCopy reads the service into a pooled buffer and writes each
// read as a frame: for TLS, wrapped connections and kernels that refuse
// splice. It returns the service's read error (io.EOF at its end), or
// errWritesOver.
func (t *tunnel) downloadCopy() error {
	var bp *[]byte
	defer func() {
		if bp != nil {
			t.s.bufPool.Put(bp)
		}
	}()
	for {
		var n int
		var park bool
		var err error
		n, bp, park, err = t.downRd.read(bp)
		if park {
			if t.park(&t.downPark, t.connRaw) {
				return errParked
			}
			continue
		}
		if n > 0 {
			if werr := t.writeData(bp, n); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
		if t.connRaw == nil {
			// A wrapped connection: the read blocks; hold no buffer
			// while it does.
			t.s.bufPool.Put(bp)
			bp = nil
		}
	}
}

// Check is wsframe.Tunnel's policy sweep: it ends the tunnel when it has
// been idle or open too long (1008), or its client neither read nor
// answered pings for two heartbeats (1001); otherwise it asks for a ping
// when one is due. It never blocks: the server calls it for every tunnel
// about once a second.
func (t *tunnel) Check(now time.Time, ping bool) {
	if t.initiated.Load() {
		return
	}
	limits := wsframe.Limits{Heartbeat: t.s.cfg.Heartbeat}
	var reason string
	code := wsframe.ClosePolicy
	idle := now.Sub(time.Unix(0, t.lastActive.Load()))
	switch {
	case t.maxDuration > 0 && now.Sub(t.opened) >= t.maxDuration:
		reason = fmt.Sprintf("the session reached its maximum duration of %s", t.maxDuration)
	case t.idleTimeout > 0 && idle >= t.idleTimeout:
		reason = fmt.Sprintf("the session was idle (no data either way) for %s", t.idleTimeout.Round(time.Second))
	default:
		if reason = limits.HeartbeatLost(now, time.Unix(0, t.lastAlive.Load())); reason != "" {
			code = wsframe.CloseGoingAway
		}
	}
	if reason != "" {
		if t.onPolicy != nil {
			t.onPolicy(reason)
		}
		t.s.metrics.limited.WithLabelValues("policy").Inc()
		t.log.Info().Int("close_code", code).Str("close_reason", reason).Msg("tunnel ended by policy")
		t.closeWith(code, reason)
		return
	}
	if ping {
		// Whoever holds the write token sends it; nothing here waits.
		t.mu.Lock()
		t.pingDue = true
		t.mu.Unlock()
		t.kick()
	}
}
