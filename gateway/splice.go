package gateway

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

// spliceBuf is the size of the pooled copy buffers.
const spliceBuf = 32 << 10

// closeWait is how long a close handshake may take.
const closeWait = 2 * time.Second

// tunnel joins one websocket to one service connection. One goroutine
// copies each way; whichever side ends first starts the close, once.
type tunnel struct {
	s      *Server
	ws     *websocket.Conn
	conn   net.Conn
	log    zerolog.Logger
	opened time.Time
	trace  bool

	up   atomic.Int64 // client → service
	down atomic.Int64 // service → client

	initiated  atomic.Bool
	mu         sync.Mutex
	sentCode   int
	sentReason string
	clientCode int
	done       chan struct{}
}

// newTunnel registers a tunnel, or closes both ends with 1001 when the
// gateway is shutting down.
func (s *Server) newTunnel(ws *websocket.Conn, conn net.Conn, log zerolog.Logger) *tunnel {
	t := &tunnel{s: s, ws: ws, conn: conn, log: log, opened: time.Now(), done: make(chan struct{}),
		trace: log.GetLevel() <= zerolog.TraceLevel}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		conn.Close()
		closeWS(ws, websocket.CloseGoingAway, "gateway shutting down")
		return nil
	}
	s.tunnels[t] = struct{}{}
	s.mu.Unlock()
	log.Info().Str("subprotocol", ws.Subprotocol()).Str("target", conn.RemoteAddr().String()).Msg("tunnel open")
	return t
}

func (s *Server) dropTunnel(t *tunnel) {
	s.mu.Lock()
	delete(s.tunnels, t)
	s.mu.Unlock()
}

// run copies both ways until both directions end, then closes both ends
// and logs the totals.
func (t *tunnel) run() {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); t.clientToService() }()
	go func() { defer wg.Done(); t.serviceToClient() }()
	wg.Wait()
	t.ws.Close()
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

func (t *tunnel) sendClose(code int, reason string) {
	reason = truncate(reason, 123)
	t.mu.Lock()
	t.sentCode, t.sentReason = code, reason
	t.mu.Unlock()
	_ = t.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason), time.Now().Add(closeWait))
	// The client answers the close frame; stop waiting for it after a while.
	_ = t.ws.SetReadDeadline(time.Now().Add(closeWait))
}

// writerOnly hides ReadFrom so io.CopyBuffer uses our pooled buffer.
type writerOnly struct{ io.Writer }

func (t *tunnel) clientToService() {
	bp := t.s.bufPool.Get().(*[]byte)
	defer t.s.bufPool.Put(bp)
	buf := *bp
	dst := writerOnly{t.conn}
	for {
		mt, rd, err := t.ws.NextReader()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				t.mu.Lock()
				t.clientCode = ce.Code
				t.mu.Unlock()
			}
			break
		}
		if mt != websocket.BinaryMessage && mt != websocket.TextMessage {
			continue
		}
		n, err := io.CopyBuffer(dst, rd, buf)
		t.up.Add(n)
		if t.trace {
			t.log.Trace().Int64("bytes", n).Msg("client → service")
		}
		if err != nil {
			// The service side failed, or the client's frame did.
			if t.initiated.CompareAndSwap(false, true) {
				t.sendClose(websocket.CloseInternalServerErr, "service connection lost")
			}
			break
		}
	}
	if t.initiated.CompareAndSwap(false, true) {
		// The client closed first: finish what we sent to the service,
		// then let the other direction drain briefly.
		if cw, ok := t.conn.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
			_ = t.conn.SetReadDeadline(time.Now().Add(closeWait))
		} else {
			_ = t.conn.Close()
		}
	}
}

func (t *tunnel) serviceToClient() {
	bp := t.s.bufPool.Get().(*[]byte)
	defer t.s.bufPool.Put(bp)
	buf := *bp
	for {
		n, err := t.conn.Read(buf)
		if n > 0 {
			if werr := t.ws.WriteMessage(websocket.BinaryMessage, buf[:n]); werr != nil {
				if t.initiated.CompareAndSwap(false, true) {
					_ = t.conn.Close()
				}
				return
			}
			t.down.Add(int64(n))
			if t.trace {
				t.log.Trace().Int("bytes", n).Msg("service → client")
			}
		}
		if err != nil {
			if t.initiated.CompareAndSwap(false, true) {
				if errors.Is(err, io.EOF) {
					t.sendClose(websocket.CloseNormalClosure, "Target closed")
				} else {
					t.sendClose(websocket.CloseInternalServerErr, "service connection error")
				}
			}
			return
		}
	}
}
