package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/internal/httperr"
	"wsgateway/internal/origin"
	"wsgateway/internal/text"
	"wsgateway/session"
	"wsgateway/wsframe"
)

// Bounds of the websocket passthrough.
const (
	copyBuf              = 32 << 10
	maxMessage           = 64 << 20 // one message, either way
	controlWait          = 5 * time.Second
	dialTimeout          = 10 * time.Second
	maxTunnels           = 4096
	maxTunnelsPerSession = 256
)

// heartbeatPayload marks the gateway's own pings to the client, whose
// pongs are not forwarded to the session.
const heartbeatPayload = "wsgateway-heartbeat"

// SetTunnelHost puts the /proxy tunnels under the gateway's rules
// (--max_tunnels, --heartbeat, --max_message_bytes, /v1/status and
// /metrics). Without a host they follow the launcher's own bounds only.
func (l *Launcher) SetTunnelHost(h wsframe.Host) {
	l.mu.Lock()
	l.host = h
	l.mu.Unlock()
}

// handleProxy is GET /proxy?sessionId=<id>&path=<p>: the websocket is
// forwarded to ws://<host>:<port>/<p> of the session (p defaults to "ws",
// wslink's path). It answers before the upgrade when it cannot.
func (l *Launcher) handleProxy(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		return httperr.Errorf(http.StatusMethodNotAllowed, "/proxy takes a websocket (GET with Upgrade)")
	}
	q := r.URL.Query()
	id := q.Get("sessionId")
	if id == "" {
		id = q.Get("id") // the form in the launcher API guide
	}
	if id == "" {
		return httperr.Errorf(http.StatusBadRequest, "/proxy needs ?sessionId=<id>&path=<path>")
	}
	if !websocket.IsWebSocketUpgrade(r) {
		return httperr.Errorf(http.StatusBadRequest, "/proxy forwards websockets: connect with ws:// (or wss://)")
	}
	if err := l.crossSite(r); err != nil {
		return err
	}
	p := "ws"
	if q.Has("path") {
		p = q.Get("path")
	}
	if !l.enter() {
		return httperr.Errorf(http.StatusServiceUnavailable, "The launcher is shutting down")
	}
	defer l.work.Done()
	s := l.liveSession(id)
	if s == nil {
		return httperr.Errorf(http.StatusNotFound, "No session with id: %s", text.Cut(id, 100))
	}
	target, err := backendURL(s.host, s.port, p)
	if err != nil {
		return err
	}

	l.mu.Lock()
	host := l.host
	s.tmu.Lock()
	n := len(s.tunnels)
	s.tmu.Unlock()
	if l.tunnels >= maxTunnels || n >= maxTunnelsPerSession {
		l.mu.Unlock()
		return httperr.Errorf(http.StatusServiceUnavailable, "too many websockets open; close some and retry")
	}
	l.tunnels++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.tunnels--
		l.mu.Unlock()
	}()
	var limits wsframe.Limits
	if host != nil {
		release, err := host.Admit()
		if err != nil {
			return httperr.Errorf(http.StatusServiceUnavailable, "%v", err)
		}
		defer release()
		limits = host.Limits()
	}

	d := l.dialer
	d.Subprotocols = websocket.Subprotocols(r)
	hdr := http.Header{}
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		hdr.Set("X-Forwarded-For", ip)
	}
	hdr.Set("X-Forwarded-Host", r.Host)
	dctx, cancel := context.WithTimeout(r.Context(), dialTimeout)
	back, resp, err := d.DialContext(dctx, target, hdr)
	cancel()
	if err != nil {
		if resp != nil {
			resp.Body.Close()
			return httperr.Errorf(http.StatusBadGateway, "session %s refused the websocket at %s: %s", id, target, resp.Status)
		}
		return httperr.Errorf(http.StatusBadGateway, "cannot reach session %s at %s: %w", id, target, err)
	}
	respHdr := http.Header{}
	if sp := back.Subprotocol(); sp != "" {
		respHdr.Set("Sec-WebSocket-Protocol", sp)
	}
	client, err := l.upgrader.Upgrade(w, r, respHdr)
	if err != nil {
		back.Close()
		return nil // the upgrader has answered
	}
	t := newTunnel(l, client, back, limits,
		l.log.With().Str("session", id).Str("remote", r.RemoteAddr).Str("target", target).Logger())
	// Registered with the host before it joins the session, so that a
	// gateway shutting down is the first to close it (1001 "gateway
	// shutting down"), not the session the shutdown stops.
	var done func(in, out int64)
	if host != nil {
		done = host.Register(t)
	}
	if err := l.attach(s, t, r.RemoteAddr); err != nil {
		// The session began to stop while t was being set up: t gets
		// the reason its other websockets got ("stopped by DELETE"…).
		l.mu.Lock()
		reason := s.endReason
		l.mu.Unlock()
		if reason == "" {
			reason = "session ended"
		}
		t.Close(websocket.CloseGoingAway, reason)
	}
	t.log.Info().Str("subprotocol", back.Subprotocol()).Msg("proxy open")
	t.run()
	if done != nil {
		done(t.Bytes())
	}
	l.detach(s, t)
	return nil
}

// attach adds t to the session's websockets. The first one claims the
// session (detached → claimed) and attaches them (→ running); the others
// join while it runs. It fails when the session has started to stop (the
// caller closes t).
func (l *Launcher) attach(s *appSession, t *tunnel, remote string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.tmu.Lock()
	first := len(s.tunnels) == 0
	s.tunnels[t] = struct{}{}
	s.tmu.Unlock()
	var err error
	if first {
		s.bytesIn.Store(0)
		s.bytesOut.Store(0)
		if _, err = l.mgr.Claim(s.ss.Token(), 0); err == nil {
			err = s.ss.Attach(s, remote)
		}
		if err == nil {
			s.connected = true
		}
	} else if st := s.ss.State(); st == session.Stopping || st == session.Ended {
		// Checked after t joined: a stop that began later closes t itself.
		err = session.ErrReleased
	}
	if err != nil {
		s.tmu.Lock()
		delete(s.tunnels, t)
		s.tmu.Unlock()
		return fmt.Errorf("session %s: %w", s.id, err)
	}
	return nil
}

// detach removes t from the session's websockets; after the last one the
// session is detached, and the Manager stops it unless a websocket comes
// back within the reconnect grace.
func (l *Launcher) detach(s *appSession, t *tunnel) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.tmu.Lock()
	_, had := s.tunnels[t]
	delete(s.tunnels, t)
	last := had && len(s.tunnels) == 0
	s.tmu.Unlock()
	if !had {
		return
	}
	in, out := t.Bytes()
	s.bytesIn.Add(in)
	s.bytesOut.Add(out)
	if last {
		s.ss.Detach(s, l.reconnectGrace)
	}
}

// backendURL is ws://host:port/<p>, refusing a p that would change the
// host.
func backendURL(host string, port int, p string) (string, error) {
	hostport := net.JoinHostPort(host, strconv.Itoa(port))
	raw := "ws://" + hostport + "/" + strings.TrimPrefix(p, "/")
	u, err := url.Parse(raw)
	if err != nil || u.Host != hostport || u.User != nil || strings.ContainsAny(p, "\\\x00\r\n") {
		return "", httperr.Errorf(http.StatusBadRequest, "/proxy: path %q is not a URL path", text.Cut(p, 200))
	}
	return u.String(), nil
}

// originAllowed is the gateway's cross-site rule (origin.Allowed) with
// --allowed_origins.
func (l *Launcher) originAllowed(r *http.Request) bool {
	return origin.Allowed(r, l.cfg.AllowedOrigins)
}

// tunnel joins a client websocket to the session's websocket. Each socket
// has one reader (its pump, which also runs gorilla's control-frame
// handlers) and one writer (a sender goroutine): data, pings, pongs and
// the close frame reach a socket only through its sender. Closing is a
// request to the sender; one that cannot be delivered within
// wsframe.CloseTimeout ends in closing the connection.
type tunnel struct {
	l      *Launcher
	client *sender
	back   *sender
	log    zerolog.Logger
	opened time.Time
	limits wsframe.Limits

	up, down atomic.Int64 // payload bytes client → session, session → client
	lastPong atomic.Int64 // unix nanoseconds of the client's last pong (or open)

	ended      atomic.Bool // the heartbeat or a limit ended it
	mu         sync.Mutex
	clientCode int // close code the client sent, 0 if none
	backCode   int // close code the session sent, 0 if none
}

var _ wsframe.Tunnel = (*tunnel)(nil)

func newTunnel(l *Launcher, client, back *websocket.Conn, limits wsframe.Limits, log zerolog.Logger) *tunnel {
	t := &tunnel{l: l, log: log, opened: time.Now(), limits: limits}
	t.client = newSender(client, l)
	t.back = newSender(back, l)
	t.lastPong.Store(t.opened.UnixNano())
	return t
}

func (t *tunnel) run() {
	// Control frames: gorilla calls these from the reading pump; they
	// only queue work for the other side's sender.
	t.client.c.SetPingHandler(func(d string) error { t.back.control(websocket.PingMessage, d); return nil })
	t.client.c.SetPongHandler(func(d string) error {
		t.lastPong.Store(time.Now().UnixNano())
		if d != heartbeatPayload {
			t.back.control(websocket.PongMessage, d)
		}
		return nil
	})
	t.back.c.SetPingHandler(func(d string) error { t.client.control(websocket.PingMessage, d); return nil })
	t.back.c.SetPongHandler(func(d string) error { t.client.control(websocket.PongMessage, d); return nil })
	// A close frame is not answered here but forwarded; the other side's
	// answer, forwarded back, completes the handshake.
	t.client.c.SetCloseHandler(func(code int, text string) error {
		t.mu.Lock()
		t.clientCode = code
		t.mu.Unlock()
		t.back.close(code, text)
		return nil
	})
	t.back.c.SetCloseHandler(func(code int, text string) error {
		t.mu.Lock()
		t.backCode = code
		t.mu.Unlock()
		t.client.close(code, text)
		return nil
	})
	clientLimit := int64(maxMessage)
	if m := t.limits.MaxMessageBytes; m > 0 && m < clientLimit {
		clientLimit = m
	}
	stop := make(chan struct{})
	var senders, pumps sync.WaitGroup
	senders.Add(2)
	go func() {
		defer senders.Done()
		t.client.loop(stop, func() { t.back.close(websocket.CloseGoingAway, "client went away") })
	}()
	go func() {
		defer senders.Done()
		t.back.loop(stop, func() { t.client.close(websocket.CloseGoingAway, "session went away") })
	}()
	pumps.Add(2)
	go func() {
		defer pumps.Done()
		t.pump(t.client, t.back, clientLimit, &t.up, "client")
	}()
	go func() {
		defer pumps.Done()
		t.pump(t.back, t.client, maxMessage, &t.down, "session")
	}()
	pumps.Wait()
	close(stop)
	senders.Wait()
	t.client.finish()
	t.back.finish()
	t.mu.Lock()
	cc, bc := t.clientCode, t.backCode
	t.mu.Unlock()
	t.log.Info().Int64("bytes_in", t.up.Load()).Int64("bytes_out", t.down.Load()).
		Int("client_close_code", cc).Int("session_close_code", bc).
		Int64("duration_ms", time.Since(t.opened).Milliseconds()).Msg("proxy closed")
}

// pump copies messages from src to dst's sender, keeping their type and
// content, until src sends a close frame or fails. A message over limit
// closes src with 1009.
func (t *tunnel) pump(src, dst *sender, limit int64, count *atomic.Int64, srcName string) {
	for {
		mt, rd, err := src.c.NextReader()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				// Forwarded by the close handler; src stays open for the
				// answer dst sends back.
				return
			}
			// src is broken: nobody will answer a close on it.
			dst.close(websocket.CloseGoingAway, srcName+" went away")
			src.abort()
			return
		}
		var size int64
		first := true
		for {
			bp := t.l.bufPool.Get().(*[]byte)
			n, rerr := io.ReadFull(rd, *bp)
			size += int64(n)
			if size > limit {
				t.l.bufPool.Put(bp)
				reason := fmt.Sprintf("message larger than the limit of %d bytes", limit)
				src.close(websocket.CloseMessageTooBig, reason)
				dst.close(websocket.CloseGoingAway, srcName+" sent a message over the limit")
				t.drain(src)
				return
			}
			// The end of the message; any other error cuts it short, and
			// the next NextReader reports why.
			end := errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF)
			if !dst.send(chunk{mt: mt, bp: bp, n: n, first: first, last: end}) {
				t.l.bufPool.Put(bp)
			}
			count.Add(int64(n))
			first = false
			if rerr != nil {
				break
			}
		}
	}
}

// drain reads src until its close frame answers ours, its end, or the
// close timeout.
func (t *tunnel) drain(src *sender) {
	for {
		if _, _, err := src.c.NextReader(); err != nil {
			return
		}
	}
}

// Check applies the gateway's heartbeat: a client that neither answered
// a ping nor took data for two periods is closed with 1001. It never
// blocks.
func (t *tunnel) Check(now time.Time, ping bool) {
	if t.limits.Heartbeat <= 0 || t.ended.Load() {
		return
	}
	alive := max(t.lastPong.Load(), t.client.progress.Load())
	if reason := t.limits.HeartbeatLost(now, time.Unix(0, alive)); reason != "" {
		t.log.Info().Int("close_code", websocket.CloseGoingAway).Str("close_reason", reason).Msg("proxy ended by policy")
		t.Close(websocket.CloseGoingAway, reason)
		return
	}
	if ping {
		t.client.control(websocket.PingMessage, heartbeatPayload)
	}
}

// Close closes both sides with code and reason (a stopped session, a
// launcher or gateway shutting down, the heartbeat). It never blocks.
func (t *tunnel) Close(code int, reason string) {
	t.ended.Store(true)
	t.client.close(code, reason)
	t.back.close(code, reason)
}

// Bytes are the payload bytes so far, client to session and back.
func (t *tunnel) Bytes() (in, out int64) { return t.up.Load(), t.down.Load() }

// chunk is part of a message on its way to a sender: bp holds n bytes.
type chunk struct {
	mt          int
	bp          *[]byte
	n           int
	first, last bool
}

// sender is the only writer of one websocket.
type sender struct {
	c        *websocket.Conn
	l        *Launcher
	data     chan chunk
	wake     chan struct{}
	done     chan struct{} // the sender returned
	progress atomic.Int64  // unix nanoseconds of the last data written

	mu          sync.Mutex
	pings       []string // to send, oldest first (at most a few)
	pongs       []string
	closeDue    bool
	closeCode   int
	closeReason string
	force       *time.Timer
}

func newSender(c *websocket.Conn, l *Launcher) *sender {
	s := &sender{c: c, l: l, data: make(chan chunk), wake: make(chan struct{}, 1), done: make(chan struct{})}
	s.progress.Store(time.Now().UnixNano())
	return s
}

// send hands a chunk to the sender; false when the sender has ended
// (the caller keeps the buffer).
func (s *sender) send(c chunk) bool {
	select {
	case s.data <- c:
		return true
	case <-s.done:
		return false
	}
}

func (s *sender) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// control queues a ping or a pong (a few at most: older ones are
// dropped, as RFC 6455 §5.5.3 allows for pongs).
func (s *sender) control(mt int, data string) {
	s.mu.Lock()
	if mt == websocket.PingMessage {
		s.pings = append(s.pings[max(0, len(s.pings)-3):], data)
	} else {
		s.pongs = append(s.pongs[max(0, len(s.pongs)-3):], data)
	}
	s.mu.Unlock()
	s.kick()
}

// close queues a close frame (once) and arms the close timeout. A code
// that may not go on the wire is sent as none (1005 received) or 1011.
func (s *sender) close(code int, reason string) {
	s.mu.Lock()
	if s.closeDue {
		s.mu.Unlock()
		return
	}
	s.closeDue, s.closeCode, s.closeReason = true, code, reason
	if s.force == nil {
		s.force = time.AfterFunc(wsframe.CloseTimeout, s.abort)
	}
	s.mu.Unlock()
	s.kick()
}

// abort closes the connection: every read and write on it ends.
func (s *sender) abort() { _ = s.c.NetConn().Close() }

// loop writes what is handed and queued until the close frame is sent, a
// write fails (then gone is called), or stop is closed.
func (s *sender) loop(stop <-chan struct{}, gone func()) {
	defer close(s.done)
	var w io.WriteCloser
	for {
		select {
		case c := <-s.data:
			err := s.write(&w, c)
			s.l.bufPool.Put(c.bp)
			if err != nil {
				s.abort()
				gone()
				return
			}
		case <-s.wake:
		case <-stop:
			return
		}
		closed, err := s.writeControl()
		if err != nil {
			s.abort()
			gone()
			return
		}
		if closed {
			return
		}
	}
}

func (s *sender) write(w *io.WriteCloser, c chunk) error {
	if c.first {
		var err error
		if *w, err = s.c.NextWriter(c.mt); err != nil {
			return err
		}
	}
	if *w == nil {
		return nil
	}
	if c.n > 0 {
		if _, err := (*w).Write((*c.bp)[:c.n]); err != nil {
			return err
		}
	}
	if c.last {
		err := (*w).Close()
		*w = nil
		if err != nil {
			return err
		}
	}
	s.progress.Store(time.Now().UnixNano())
	return nil
}

func (s *sender) writeControl() (closed bool, err error) {
	s.mu.Lock()
	pings, pongs := s.pings, s.pongs
	s.pings, s.pongs = nil, nil
	closeDue, code, reason := s.closeDue, s.closeCode, s.closeReason
	s.mu.Unlock()
	dl := time.Now().Add(controlWait)
	for _, d := range pongs {
		if err := s.c.WriteControl(websocket.PongMessage, []byte(d), dl); err != nil {
			return false, err
		}
	}
	for _, d := range pings {
		if err := s.c.WriteControl(websocket.PingMessage, []byte(d), dl); err != nil {
			return false, err
		}
	}
	if !closeDue {
		return false, nil
	}
	return true, s.c.WriteControl(websocket.CloseMessage, wsframe.ClosePayload(code, reason), dl)
}

// finish closes the connection once the tunnel is over, and stops the
// close timeout.
func (s *sender) finish() {
	s.mu.Lock()
	if s.force != nil {
		s.force.Stop()
	}
	s.mu.Unlock()
	_ = s.c.Close()
}
