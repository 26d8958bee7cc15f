package launcher

import (
	"context"
	"errors"
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

	"wsgateway/internal/origin"
)

// Bounds of the websocket passthrough.
const (
	copyBuf              = 32 << 10
	maxMessage           = 64 << 20 // one message, either way
	closeWait            = 3 * time.Second
	writeWait            = 60 * time.Second // one message to a slow peer
	controlWait          = 5 * time.Second
	dialTimeout          = 10 * time.Second
	maxTunnels           = 4096
	maxTunnelsPerSession = 256
)

// handleProxy is GET /proxy?sessionId=<id>&path=<p>: the websocket is
// forwarded to ws://<host>:<port>/<p> of the session (p defaults to "ws",
// wslink's path). It answers before the upgrade when it cannot.
func (l *Launcher) handleProxy(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		return errorf(http.StatusMethodNotAllowed, "/proxy takes a websocket (GET with Upgrade)")
	}
	q := r.URL.Query()
	id := q.Get("sessionId")
	if id == "" {
		id = q.Get("id") // the form in the launcher API guide
	}
	if id == "" {
		return errorf(http.StatusBadRequest, "/proxy needs ?sessionId=<id>&path=<path>")
	}
	if !websocket.IsWebSocketUpgrade(r) {
		return errorf(http.StatusBadRequest, "/proxy forwards websockets: connect with ws:// (or wss://)")
	}
	if !l.originAllowed(r) {
		return errorf(http.StatusForbidden, "websocket Origin %q is not allowed: use a page on this host, or add it to --allowed_origins", truncate(r.Header.Get("Origin"), 200))
	}
	p := "ws"
	if q.Has("path") {
		p = q.Get("path")
	}
	if !l.enter() {
		return errorf(http.StatusServiceUnavailable, "The launcher is shutting down")
	}
	defer l.work.Done()
	s := l.liveSession(id)
	if s == nil {
		return errorf(http.StatusNotFound, "No session with id: %s", truncate(id, 100))
	}
	target, err := backendURL(s.host, s.port, p)
	if err != nil {
		return err
	}

	l.mu.Lock()
	if l.tunnels >= maxTunnels || len(s.tunnels) >= maxTunnelsPerSession {
		l.mu.Unlock()
		return errorf(http.StatusServiceUnavailable, "too many websockets open; close some and retry")
	}
	l.tunnels++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.tunnels--
		l.mu.Unlock()
	}()

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
			return errorf(http.StatusBadGateway, "session %s refused the websocket at %s: %s", id, target, resp.Status)
		}
		return errorf(http.StatusBadGateway, "cannot reach session %s at %s: %w", id, target, err)
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
	t := &tunnel{l: l, client: client, back: back, opened: time.Now(), done: make(chan struct{}),
		log: l.log.With().Str("session", id).Str("remote", r.RemoteAddr).Str("target", target).Logger()}
	l.mu.Lock()
	gone := s.gone
	if !gone {
		s.tunnels[t] = struct{}{}
	}
	l.mu.Unlock()
	if gone {
		t.shutdown(websocket.CloseGoingAway, "session ended")
	}
	t.log.Info().Str("subprotocol", back.Subprotocol()).Msg("proxy open")
	t.run()
	l.mu.Lock()
	delete(s.tunnels, t)
	l.mu.Unlock()
	return nil
}

// backendURL is ws://host:port/<p>, refusing a p that would change the
// host.
func backendURL(host string, port int, p string) (string, error) {
	hostport := net.JoinHostPort(host, strconv.Itoa(port))
	raw := "ws://" + hostport + "/" + strings.TrimPrefix(p, "/")
	u, err := url.Parse(raw)
	if err != nil || u.Host != hostport || u.User != nil || strings.ContainsAny(p, "\\\x00\r\n") {
		return "", errorf(http.StatusBadRequest, "/proxy: path %q is not a URL path", truncate(p, 200))
	}
	return u.String(), nil
}

// originAllowed accepts no Origin (non-browser clients), an Origin on the
// request's own host (any port), and the allow-list.
func (l *Launcher) originAllowed(r *http.Request) bool {
	return origin.Allowed(r, l.cfg.AllowedOrigins)
}

// tunnel joins a client websocket to the session's websocket. Each socket
// has one reader (its pump) and one writer (the other socket's pump);
// pings, pongs and close frames are forwarded with WriteControl, which may
// run beside them.
type tunnel struct {
	l      *Launcher
	client *websocket.Conn
	back   *websocket.Conn
	log    zerolog.Logger
	opened time.Time
	done   chan struct{}

	up, down                 atomic.Int64 // payload bytes client → session, session → client
	clientClosed, backClosed atomic.Bool  // a close frame was sent to that side

	mu         sync.Mutex
	clientCode int // close code the client sent, 0 if none
	backCode   int // close code the session sent, 0 if none
}

func (t *tunnel) run() {
	for _, c := range []*websocket.Conn{t.client, t.back} {
		c.SetReadLimit(maxMessage)
	}
	t.client.SetPingHandler(func(d string) error { t.control(t.back, websocket.PingMessage, d); return nil })
	t.client.SetPongHandler(func(d string) error { t.control(t.back, websocket.PongMessage, d); return nil })
	t.back.SetPingHandler(func(d string) error { t.control(t.client, websocket.PingMessage, d); return nil })
	t.back.SetPongHandler(func(d string) error { t.control(t.client, websocket.PongMessage, d); return nil })
	// A close frame is not answered here but forwarded; the other side's
	// answer, forwarded back, completes the handshake.
	t.client.SetCloseHandler(func(code int, text string) error {
		t.mu.Lock()
		t.clientCode = code
		t.mu.Unlock()
		t.sendClose(t.back, &t.backClosed, code, text)
		return nil
	})
	t.back.SetCloseHandler(func(code int, text string) error {
		t.mu.Lock()
		t.backCode = code
		t.mu.Unlock()
		t.sendClose(t.client, &t.clientClosed, code, text)
		return nil
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		t.pump(t.client, t.back, &t.clientClosed, &t.backClosed, &t.up, "client", "session")
	}()
	go func() {
		defer wg.Done()
		t.pump(t.back, t.client, &t.backClosed, &t.clientClosed, &t.down, "session", "client")
	}()
	wg.Wait()
	t.client.Close()
	t.back.Close()
	close(t.done)
	t.mu.Lock()
	cc, bc := t.clientCode, t.backCode
	t.mu.Unlock()
	t.log.Info().Int64("bytes_in", t.up.Load()).Int64("bytes_out", t.down.Load()).
		Int("client_close_code", cc).Int("session_close_code", bc).
		Dur("duration", time.Since(t.opened)).Msg("proxy closed")
}

// control forwards a ping or pong; a failure shows up in the pumps.
func (t *tunnel) control(dst *websocket.Conn, mt int, data string) {
	_ = dst.WriteControl(mt, []byte(data), time.Now().Add(controlWait))
}

// sendClose sends one close frame to c (once per side) and stops waiting
// for c's answer after closeWait.
func (t *tunnel) sendClose(c *websocket.Conn, sent *atomic.Bool, code int, reason string) {
	if !sent.CompareAndSwap(false, true) {
		return
	}
	if len(reason) > 123 {
		reason = reason[:123]
	}
	var msg []byte
	if code == websocket.CloseNoStatusReceived {
		msg = []byte{} // the peer sent a close frame without a code
	} else {
		msg = websocket.FormatCloseMessage(code, reason)
	}
	_ = c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(controlWait))
	_ = c.SetReadDeadline(time.Now().Add(closeWait))
	// A message still being written to c must not hold the close up.
	_ = c.SetWriteDeadline(time.Now().Add(closeWait))
}

// shutdown closes both sides with code and reason (a stopped session, a
// launcher shutting down).
func (t *tunnel) shutdown(code int, reason string) {
	t.sendClose(t.client, &t.clientClosed, code, reason)
	t.sendClose(t.back, &t.backClosed, code, reason)
}

// pump copies messages from src to dst, keeping their type and content,
// until src sends a close frame or fails.
func (t *tunnel) pump(src, dst *websocket.Conn, srcClosed, dstClosed *atomic.Bool, count *atomic.Int64, srcName, dstName string) {
	bp := t.l.bufPool.Get().(*[]byte)
	defer t.l.bufPool.Put(bp)
	buf := *bp
	for {
		mt, rd, err := src.NextReader()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				// Forwarded by the close handler; src stays open for the
				// answer dst sends back.
				return
			}
			if errors.Is(err, websocket.ErrReadLimit) {
				t.sendClose(dst, dstClosed, websocket.CloseGoingAway, srcName+" sent a message over the proxy's limit")
			} else {
				t.sendClose(dst, dstClosed, websocket.CloseGoingAway, srcName+" went away")
			}
			if !srcClosed.Load() {
				// src is broken: nobody will answer a close on it.
				srcClosed.Store(true)
				_ = src.Close()
			}
			return
		}
		if dstClosed.Load() {
			// dst is closing: what src still sends has nowhere to go.
			_, _ = io.Copy(io.Discard, rd)
			continue
		}
		_ = dst.SetWriteDeadline(time.Now().Add(writeWait))
		wr, err := dst.NextWriter(mt)
		if err != nil {
			t.writeFailed(src, dst, srcClosed, dstClosed, dstName)
			_, _ = io.Copy(io.Discard, rd)
			continue
		}
		var n int64
		var readErr, writeErr error
		for {
			k, rerr := rd.Read(buf)
			if k > 0 {
				if _, werr := wr.Write(buf[:k]); werr != nil {
					writeErr = werr
					break
				}
				n += int64(k)
			}
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				readErr = rerr
				break
			}
		}
		count.Add(n)
		switch {
		case writeErr != nil:
			t.writeFailed(src, dst, srcClosed, dstClosed, dstName)
		case readErr != nil:
			// The message is cut short: leave it unfinished; the next
			// NextReader reports why and closes dst.
		default:
			if err := wr.Close(); err != nil {
				t.writeFailed(src, dst, srcClosed, dstClosed, dstName)
			}
		}
	}
}

// writeFailed: dst cannot take more; tell src, and let the pumps end.
func (t *tunnel) writeFailed(src, dst *websocket.Conn, srcClosed, dstClosed *atomic.Bool, dstName string) {
	dstClosed.Store(true)
	_ = dst.Close()
	t.sendClose(src, srcClosed, websocket.CloseGoingAway, dstName+" went away")
}
