package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/auth"
	"wsgateway/events"
	"wsgateway/internal/text"
)

// JSON-RPC 2.0 error codes; ours are in -32000…-32099 and carry
// data.reason.
const (
	CodeParse          = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternal       = -32603
	CodeServer         = -32000 // reason says more
	CodeNotFound       = -32001
	CodeForbidden      = -32002
	CodeConflict       = -32003
	CodeNotAvailable   = -32004
	CodeLimit          = -32005
)

// Error is a JSON-RPC error object.
type Error struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data,omitempty"`
}

func (e *Error) Error() string { return e.Message }

func rpcErr(code int, reason, format string, args ...any) *Error {
	e := &Error{Code: code, Message: fmt.Sprintf(format, args...)}
	if reason != "" {
		e.Data = map[string]any{"reason": reason}
	}
	return e
}

type request struct {
	JSONRPC string          `json:"jsonrpc"`
	Method  *string         `json:"method"`
	Params  json.RawMessage `json:"params"`
	ID      json.RawMessage `json:"id"`
	hasID   bool
}

type response struct {
	JSONRPC string          `json:"jsonrpc"`
	Result  any             `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`
	ID      json.RawMessage `json:"id"`
}

type notification struct {
	JSONRPC string `json:"jsonrpc"`
	Method  string `json:"method"`
	Params  any    `json:"params"`
}

// conn is one client: one reader (serve), one writer, and the requests in
// flight.
type conn struct {
	s      *Server
	ws     *websocket.Conn
	id     *auth.Identity // caller.ID
	caller auth.Caller
	remote string
	out    chan []byte
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	reqs   sync.WaitGroup

	// queued is the bytes of output waiting in out or being written;
	// freed is signalled (without blocking) each time the writer is done
	// with a message.
	queued atomic.Int64
	freed  chan struct{}

	closeOnce sync.Once
	closeCode int
	closeText string

	mu  sync.Mutex
	sub *events.Subscription
}

func newConn(s *Server, ws *websocket.Conn, caller auth.Caller, remote string) *conn {
	ctx, cancel := context.WithCancel(context.Background())
	return &conn{s: s, ws: ws, id: caller.ID, caller: caller, remote: remote, out: make(chan []byte, s.cfg.OutQueue), ctx: ctx, cancel: cancel,
		sem: make(chan struct{}, s.cfg.MaxInFlight), freed: make(chan struct{}, 1), closeCode: websocket.CloseNormalClosure}
}

// credentialsEnded is the close reason of a connection whose credentials
// no longer hold (auth.Caller.Valid).
const credentialsEnded = "your credentials ended (logout, password change, removal or new groups); connect again"

// closeWith ends the connection, sending code and text in the close frame.
func (c *conn) closeWith(code int, text string) {
	c.closeOnce.Do(func() {
		c.closeCode, c.closeText = code, text
		c.cancel()
	})
}

func (c *conn) serve() {
	log := c.s.log.With().Str("remote", c.remote).Str("user", name(c.id)).Logger()
	log.Debug().Msg("rpc client connected")
	c.ws.SetReadLimit(c.s.cfg.MaxMessageBytes)
	deadline := func() { _ = c.ws.SetReadDeadline(time.Now().Add(3 * c.s.cfg.Ping)) }
	deadline()
	c.ws.SetPongHandler(func(string) error { deadline(); return nil })
	writerDone := make(chan struct{})
	go func() { defer close(writerDone); c.writer() }()
	for {
		_, msg, err := c.ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			switch {
			case errors.Is(err, websocket.ErrReadLimit):
				c.closeWith(websocket.CloseMessageTooBig, fmt.Sprintf("message larger than %d bytes", c.s.cfg.MaxMessageBytes))
			case errors.As(err, &ce):
				c.closeWith(websocket.CloseNormalClosure, "")
			default:
				c.closeWith(websocket.CloseGoingAway, "")
			}
			break
		}
		deadline()
		if !c.caller.Valid() {
			c.closeWith(websocket.ClosePolicyViolation, credentialsEnded)
			break
		}
		select {
		case c.sem <- struct{}{}:
		case <-c.ctx.Done():
		}
		if c.ctx.Err() != nil {
			break
		}
		c.reqs.Add(1)
		go func() {
			defer func() { <-c.sem; c.reqs.Done() }()
			c.handleMessage(msg)
		}()
	}
	c.mu.Lock()
	c.sub.Close()
	c.sub = nil
	c.mu.Unlock()
	c.cancel()
	c.reqs.Wait()
	<-writerDone
	c.ws.Close()
	log.Debug().Msg("rpc client disconnected")
}

// writer sends queued messages and pings until the connection ends, then
// sends the close frame. It is the socket's only writer.
func (c *conn) writer() {
	t := time.NewTicker(c.s.cfg.Ping)
	defer t.Stop()
	write := func(b []byte, timeout time.Duration) error {
		_ = c.ws.SetWriteDeadline(time.Now().Add(timeout))
		err := c.ws.WriteMessage(websocket.TextMessage, b)
		c.done(len(b))
		return err
	}
	for {
		if c.ctx.Err() != nil {
			c.goodbye(write)
			return
		}
		select {
		case b := <-c.out:
			if err := write(b, c.s.cfg.WriteTimeout); err != nil {
				// It took nothing for WriteTimeout (or is gone).
				c.tooSlow()
				_ = c.ws.Close() // unblocks the reader
				c.discard()
				return
			}
		case <-t.C:
			if !c.caller.Valid() {
				// Idle connections end too (their events stop).
				c.closeWith(websocket.ClosePolicyViolation, credentialsEnded)
				continue
			}
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.s.cfg.WriteTimeout)); err != nil {
				c.closeWith(websocket.CloseGoingAway, "")
				_ = c.ws.Close()
				c.discard()
				return
			}
		case <-c.ctx.Done():
			c.goodbye(write)
			return
		}
	}
}

// goodbye ends the writer: what is queued (responses to answered
// requests) is flushed, unless the client is dropped for not reading,
// then the close frame is sent.
func (c *conn) goodbye(write func([]byte, time.Duration) error) {
	if c.closeCode == websocket.ClosePolicyViolation {
		c.discard()
	} else {
	flush:
		for {
			select {
			case b := <-c.out:
				if write(b, 2*time.Second) != nil {
					_ = c.ws.Close()
					c.discard()
					return
				}
			default:
				break flush
			}
		}
	}
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(c.closeCode, c.closeText), time.Now().Add(2*time.Second))
	// Give the client a moment to answer the close, then unblock the
	// reader.
	time.AfterFunc(time.Second, func() { _ = c.ws.Close() })
}

// discard drops what is queued, giving its bytes back.
func (c *conn) discard() {
	for {
		select {
		case b := <-c.out:
			c.done(len(b))
		default:
			return
		}
	}
}

// done gives back the bytes of a message the writer is finished with.
func (c *conn) done(n int) {
	c.queued.Add(-int64(n))
	c.s.queued.Add(-int64(n))
	select {
	case c.freed <- struct{}{}:
	default:
	}
}

// reserve counts n more bytes of output, unless that takes the
// connection past MaxQueuedBytes, or the gateway's connections together
// past MaxTotalQueuedBytes while this one has output unread; then the
// client is dropped with 1008 and reserve reports false.
func (c *conn) reserve(n int) bool {
	mine := c.queued.Add(int64(n))
	all := c.s.queued.Add(int64(n))
	if mine <= c.s.cfg.MaxQueuedBytes && (all <= c.s.cfg.MaxTotalQueuedBytes || mine == int64(n)) {
		return true
	}
	c.queued.Add(-int64(n))
	c.s.queued.Add(-int64(n))
	return false
}

// tooSlow drops a client that does not read its output.
func (c *conn) tooSlow() {
	if c.ctx.Err() != nil {
		return // dropped already, or leaving
	}
	c.s.log.Warn().Str("remote", c.remote).Int64("queued_bytes", c.queued.Load()).Int("queued_messages", len(c.out)).
		Msg("rpc client dropped: it does not read its answers")
	c.closeWith(websocket.ClosePolicyViolation, fmt.Sprintf("too slow: over %d bytes or %d answers and events unread; read them, then reconnect (events: since=<last seq>)", c.s.cfg.MaxQueuedBytes, c.s.cfg.OutQueue))
}

// send queues a response without waiting; a client whose unread output
// would pass the limits (bytes or messages) is dropped.
func (c *conn) send(b []byte) {
	if !c.reserve(len(b)) {
		c.tooSlow()
		return
	}
	select {
	case c.out <- b:
	default:
		c.done(len(b))
		c.tooSlow()
	}
}

// trySend queues b without waiting (live events); a full queue drops the
// client.
func (c *conn) trySend(b []byte) bool {
	if !c.reserve(len(b)) {
		c.tooSlow()
		return false
	}
	select {
	case c.out <- b:
		return true
	default:
		c.done(len(b))
		c.tooSlow()
		return false
	}
}

// sendWaiting queues b, waiting up to the write timeout for room in
// the queue (replayed history, which may be longer than the queue); a
// client that reads nothing meanwhile is dropped.
func (c *conn) sendWaiting(b []byte) bool {
	t := time.NewTimer(c.s.cfg.WriteTimeout)
	defer t.Stop()
	for !c.reserve(len(b)) {
		select {
		case <-c.freed:
		case <-c.ctx.Done():
			return false
		case <-t.C:
			c.tooSlow()
			return false
		}
	}
	select {
	case c.out <- b:
		return true
	case <-c.ctx.Done():
	case <-t.C:
		c.tooSlow()
	}
	c.done(len(b))
	return false
}

// encode is a response's JSON, or, when it is larger than
// MaxAnswerBytes, an error response in its place.
func (c *conn) encode(r response) []byte {
	b, err := json.Marshal(r)
	if err != nil {
		c.s.log.Error().Err(err).Msg("rpc response not encodable")
		r.Result, r.Error = nil, rpcErr(CodeInternal, "internal", "internal error: the answer could not be encoded")
		b, _ = json.Marshal(r)
		return b
	}
	if int64(len(b)) > c.s.cfg.MaxAnswerBytes {
		r.Result, r.Error = nil, tooLarge(len(b), c.s.cfg.MaxAnswerBytes)
		b, _ = json.Marshal(r)
	}
	return b
}

func tooLarge(n int, max int64) *Error {
	return rpcErr(CodeLimit, "answer_too_large", "the answer would be %d bytes, over the limit of %d; ask for less (a lower limit, or logs.read in pieces)", n, max)
}

func (c *conn) sendJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		c.s.log.Error().Err(err).Msg("rpc response not encodable")
		return
	}
	c.send(b)
}

// handleMessage answers one message: a request, a notification or a
// batch.
func (c *conn) handleMessage(msg []byte) {
	trimmed := bytes.TrimSpace(msg)
	// Calls that may build a large answer take turns, gateway-wide, so
	// that the memory they hold while they run stays bounded whatever
	// the number of clients.
	// (A batch over MaxBatchCost is refused below without running.)
	if cost := messageCost(trimmed); cost >= heavyCost && cost <= c.s.cfg.MaxBatchCost {
		select {
		case c.s.heavy <- struct{}{}:
			defer func() { <-c.s.heavy }()
		case <-c.ctx.Done():
			return
		}
	}
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(trimmed, &items); err != nil {
			c.sendJSON(response{JSONRPC: "2.0", Error: rpcErr(CodeParse, "", "parse error: %v", err), ID: json.RawMessage("null")})
			return
		}
		if len(items) == 0 {
			c.sendJSON(response{JSONRPC: "2.0", Error: rpcErr(CodeInvalidRequest, "", "invalid request: empty batch"), ID: json.RawMessage("null")})
			return
		}
		if len(items) > maxBatch {
			c.sendJSON(response{JSONRPC: "2.0", Error: rpcErr(CodeInvalidRequest, "batch_too_large", "invalid request: a batch holds at most %d calls", maxBatch), ID: json.RawMessage("null")})
			return
		}
		if cost, max := batchCost(items), c.s.cfg.MaxBatchCost; cost > max {
			c.sendJSON(response{JSONRPC: "2.0", Error: rpcErr(CodeLimit, "batch_too_costly",
				"this batch would cost %d (1 per call, plus jobs listed and KiB of log read); at most %d per batch: split it or ask for less", cost, max),
				ID: json.RawMessage("null")})
			return
		}
		// The answer is built as the calls run. Room is kept for a short
		// "not run" error to every call after the current one; once a
		// call's answer does not fit, it is replaced by an error and the
		// calls after it are not run, so the whole answer stays within
		// MaxAnswerBytes.
		max := int(c.s.cfg.MaxAnswerBytes)
		skip := make([][]byte, len(items))
		tail := make([]int, len(items)+1) // tail[i]: room for skip[i:]
		for i := len(items) - 1; i >= 0; i-- {
			if r, reply := c.skipped(items[i]); reply {
				skip[i], _ = json.Marshal(r)
				tail[i] = len(skip[i]) + 1
			}
			tail[i] += tail[i+1]
		}
		var out bytes.Buffer
		var afters []func()
		n, full := 0, false
		for i, it := range items {
			b := skip[i]
			if !full {
				r, after, reply := c.call(it)
				if !reply {
					continue
				}
				b = c.encode(r)
				if out.Len()+len(b)+1+tail[i+1]+1 > max {
					full, after = true, nil
					r.Result, r.Error = nil, rpcErr(CodeLimit, "answer_too_large", "ran; answer dropped: the batch's answer would pass %d bytes", max)
					b, _ = json.Marshal(r)
				}
				if after != nil {
					afters = append(afters, after)
				}
			}
			if b == nil {
				continue
			}
			if n == 0 {
				out.WriteByte('[')
			} else {
				out.WriteByte(',')
			}
			out.Write(b)
			n++
		}
		if n > 0 {
			out.WriteByte(']')
			c.send(out.Bytes())
		}
		for _, f := range afters {
			f()
		}
		return
	}
	if !json.Valid(trimmed) {
		c.sendJSON(response{JSONRPC: "2.0", Error: rpcErr(CodeParse, "", "parse error: not valid JSON"), ID: json.RawMessage("null")})
		return
	}
	r, after, reply := c.call(trimmed)
	if reply {
		c.send(c.encode(r))
	}
	if after != nil {
		after()
	}
}

const maxBatch = 100

// call runs one request; reply is false for a notification.
func (c *conn) call(raw json.RawMessage) (resp response, after func(), reply bool) {
	null := json.RawMessage("null")
	resp = response{JSONRPC: "2.0", ID: null}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		resp.Error = rpcErr(CodeInvalidRequest, "", "invalid request: not a JSON object")
		return resp, nil, true
	}
	idRaw, hasID := fields["id"]
	if hasID {
		t := bytes.TrimSpace(idRaw)
		if len(t) == 0 || !(t[0] == '"' || t[0] == '-' || (t[0] >= '0' && t[0] <= '9') || string(t) == "null") {
			resp.Error = rpcErr(CodeInvalidRequest, "", "invalid request: id must be a string, a number or null")
			return resp, nil, true
		}
		resp.ID = t
	}
	var req request
	if err := json.Unmarshal(raw, &req); err != nil || req.JSONRPC != "2.0" || req.Method == nil {
		resp.Error = rpcErr(CodeInvalidRequest, "", `invalid request: want {"jsonrpc": "2.0", "method": "...", "params": {...}, "id": ...}`)
		return resp, nil, true
	}
	if !hasID {
		// A notification: the API has no method worth calling without an
		// answer, so it is ignored without a reply (JSON-RPC 2.0 §4.1).
		return resp, nil, false
	}
	m, ok := c.s.methods[*req.Method]
	if !ok {
		resp.Error = rpcErr(CodeMethodNotFound, "", "method not found: %q", text.Cut(*req.Method, 64))
		return resp, nil, true
	}
	params := req.Params
	if p := bytes.TrimSpace(params); len(p) == 0 || string(p) == "null" {
		params = json.RawMessage("{}")
	} else if p[0] != '{' {
		resp.Error = rpcErr(CodeInvalidParams, "params_not_object", "invalid params: params must be an object of named parameters")
		return resp, nil, true
	}
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Minute)
	defer cancel()
	res, after, err := m(ctx, c, params)
	if err != nil {
		var re *Error
		if !errors.As(err, &re) {
			if c.ctx.Err() == nil {
				c.s.log.Error().Err(err).Str("method", *req.Method).Msg("rpc call failed")
			}
			re = rpcErr(CodeInternal, "internal", "internal error: %v", err)
		}
		resp.Error = re
		return resp, nil, true
	}
	if res == nil {
		res = struct{}{}
	}
	resp.Result = res
	return resp, after, true
}
