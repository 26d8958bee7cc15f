// Package rpc is the gateway's control plane: JSON-RPC 2.0 over a
// websocket (/v1/rpc on the HTTP port). It queues, stops and watches jobs,
// reads their logs, and pushes events (job state, progress, log output,
// queue changes) to subscribers, who can resume after a reconnect from the
// last sequence number they saw.
package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/auth"
	"wsgateway/events"
	"wsgateway/internal/httperr"
	"wsgateway/internal/origin"
	"wsgateway/internal/text"
	"wsgateway/jobs"
	"wsgateway/services"
)

// Path is where the API is mounted.
const Path = "/v1/rpc"

// Config configures a Server.
type Config struct {
	// Access is the gateway's trust policy (the same as the REST API's).
	Access   auth.Policy
	Jobs     *jobs.Manager
	Hub      *events.Hub
	Services []*services.Service // the gateway's websocket services (listed only)
	// Gateway serves reservations.* and sessions.* (nil: not available).
	Gateway GatewayAPI
	// Limits are the per-client limits shared with the REST API (nil:
	// none, for tests).
	Limits  Limits
	Version string
	// MaxMessageBytes bounds a client message (default 1 MiB).
	MaxMessageBytes int64
	// MaxInFlight bounds the requests one connection runs at once
	// (default 8).
	MaxInFlight int
	// OutQueue is how many messages may wait to be sent to a client
	// before it is dropped as too slow (default 1024).
	OutQueue int
	// MaxQueuedBytes is how many bytes of output may wait for one client
	// before it is dropped as too slow with 1008; MaxTotalQueuedBytes
	// the same for every client together (a client with output waiting
	// is dropped once the total would pass it).
	MaxQueuedBytes      int64
	MaxTotalQueuedBytes int64
	// MaxAnswerBytes bounds one answer: a larger response is replaced by
	// an answer_too_large error (at most MaxQueuedBytes).
	MaxAnswerBytes int64
	// MaxBatchCost bounds a batch's cost (see batchCost); a costlier
	// batch is refused whole.
	MaxBatchCost int
	// MaxHeavy is how many costly messages (64 jobs listed or 64 KiB of
	// log read, or more) run at once over every connection (default 4).
	MaxHeavy int
	// WriteTimeout bounds one write to the client (default 10 s); a
	// client that takes longer is dropped.
	WriteTimeout time.Duration
	// Ping is the keep-alive period (default 30s).
	Ping time.Duration
}

// Server serves the JSON-RPC API.
type Server struct {
	cfg      Config
	log      zerolog.Logger
	upgrader websocket.Upgrader
	methods  map[string]method
	started  time.Time

	queued atomic.Int64  // output bytes waiting, every connection's
	heavy  chan struct{} // the costly messages running (MaxHeavy)

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// New returns a Server.
func New(cfg Config, log zerolog.Logger) *Server {
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 1 << 20
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 8
	}
	if cfg.OutQueue <= 0 {
		cfg.OutQueue = 1024
	}
	if cfg.Ping <= 0 {
		cfg.Ping = 30 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.MaxQueuedBytes <= 0 {
		cfg.MaxQueuedBytes = DefaultMaxQueuedBytes
	}
	if cfg.MaxTotalQueuedBytes <= 0 {
		cfg.MaxTotalQueuedBytes = DefaultMaxTotalQueuedBytes
	}
	if cfg.MaxAnswerBytes <= 0 {
		cfg.MaxAnswerBytes = DefaultMaxAnswerBytes
	}
	cfg.MaxAnswerBytes = min(cfg.MaxAnswerBytes, cfg.MaxQueuedBytes)
	if cfg.MaxHeavy <= 0 {
		cfg.MaxHeavy = DefaultMaxHeavy
	}
	if cfg.MaxBatchCost <= 0 {
		cfg.MaxBatchCost = DefaultMaxBatchCost
	}
	if cfg.Limits == nil {
		cfg.Limits = unlimited{&cfg.Access}
	}
	s := &Server{cfg: cfg, log: log, conns: map[*conn]struct{}{}, started: time.Now(), heavy: make(chan struct{}, cfg.MaxHeavy)}
	s.upgrader = websocket.Upgrader{
		ReadBufferSize:   8 << 10,
		WriteBufferSize:  8 << 10,
		HandshakeTimeout: 10 * time.Second,
		// The Origin is checked before Upgrade.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	s.methods = s.registry()
	return s
}

// Match claims requests for Path.
func (s *Server) Match(r *http.Request) bool { return r.URL.Path == Path }

func writeJSONError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// ServeHTTP authorises the caller and upgrades to a websocket.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		writeJSONError(w, http.StatusBadRequest, "this is the JSON-RPC 2.0 websocket API; open a websocket to "+Path)
		return
	}
	if s.cfg.Access.Site(r) == origin.Foreign {
		writeJSONError(w, http.StatusForbidden, "websocket Origin "+text.Cut(r.Header.Get("Origin"), 100)+" is not allowed; serve the page from the gateway or add it to --allowed_origins")
		return
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		writeJSONError(w, http.StatusServiceUnavailable, "the gateway is shutting down")
		return
	}
	// The same trust policy, failed-authentication limit and websocket
	// caps as the REST API and the gateway's websockets, before the
	// upgrade.
	caller, err := s.cfg.Limits.Authenticate(r)
	if err != nil {
		writeJSONError(w, httperr.Status(err), err.Error())
		return
	}
	release, err := s.cfg.Limits.AdmitControl(caller.Client)
	if err != nil {
		writeJSONError(w, httperr.Status(err), err.Error())
		return
	}
	defer release()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		writeJSONError(w, http.StatusServiceUnavailable, "the gateway is shutting down")
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered
	}
	c := newConn(s, ws, caller, r.RemoteAddr)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	c.serve()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// StopAccepting refuses new connections; those open stay until Close.
func (s *Server) StopAccepting() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

// Close closes every connection with 1001 and waits for them, bounded by
// ctx.
func (s *Server) Close(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	cs := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.closeWith(websocket.CloseGoingAway, "gateway shutting down")
	}
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errors.Join(errors.New("rpc connections did not close in time"), ctx.Err())
	}
}

// caller helpers

// name is what the caller owns jobs and sees events as
// (auth.Identity.Key): identities of different kinds never share it. The
// loopback administrator, whose key is "" like an anonymous caller's,
// owns its jobs as "loopback": anonymous callers share the anonymous
// jobs, never an administrator's.
func name(id *auth.Identity) string {
	if id != nil && id.Kind == auth.KindLoopback {
		return LoopbackOwner
	}
	return id.Key()
}

// LoopbackOwner owns the loopback administrator's jobs.
const LoopbackOwner = "loopback"

func isAdmin(id *auth.Identity) bool { return id != nil && id.Admin }
