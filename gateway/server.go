// Package gateway is the network face of wsgateway: the websocket and HTTP
// listeners, the REST API, the static file server, and the splice that
// joins a websocket to a service's socket. It asks the reservation package
// for slots and the services package for running instances.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/internal/peer"
	"wsgateway/proc"
	"wsgateway/reservation"
	"wsgateway/services"
	"wsgateway/session"
	"wsgateway/wsframe"
)

// Config is everything the gateway needs to run.
type Config struct {
	// HTTPDirectory is served as static files on the HTTP listener.
	HTTPDirectory string
	// NovncDirectory holds noVNC (core/rfb.js); served under /wsgw/novnc/.
	NovncDirectory string
	// SecurityToken protects the REST API when set.
	SecurityToken string
	// Services are the launchable services (config file and built-ins).
	Services []*services.Service
	// JobServices names the services config's batch job services (run
	// with JSON-RPC jobs.submit, not reserved): a reservation of one is
	// told so.
	JobServices []string
	// ClientAddr (host:port) enables basic mode: every websocket without a
	// token is spliced to it.
	ClientAddr string
	// Timeout reclaims reservations left unused.
	Timeout time.Duration
	// StartTimeout bounds a service's start (ready line and first dial).
	StartTimeout time.Duration
	// StopGrace is the time between SIGTERM and SIGKILL.
	StopGrace time.Duration
	// DialTimeout bounds the basic-mode dial.
	DialTimeout time.Duration
	// SessionRoot holds one directory per launched session.
	SessionRoot string
	// KeepSessions is how many old session directories are kept.
	KeepSessions int
	// AllowedOrigins are extra websocket Origins allowed besides the
	// gateway's own host ("*" allows all).
	AllowedOrigins []string
	// TLS, when set, serves https and wss on every listener.
	TLS *tls.Config
	// ShutdownGrace bounds a graceful shutdown, from the first listener
	// closed to the last service stopped (default StopGrace + 5 s).
	ShutdownGrace time.Duration
	// Version is reported by /v1/status.
	Version string
	// MaxMessageBytes closes a websocket with 1009 when a client message
	// is larger (0: no limit).
	MaxMessageBytes int64
	// MaxTunnels caps the websockets served at once, control-plane
	// connections included (0: no cap).
	MaxTunnels int
	// MaxControlPerAddress caps the control-plane (JSON-RPC) connections
	// one client address holds open (0: no cap).
	MaxControlPerAddress int
	// Heartbeat, when set, pings every client this often and drops one
	// that does not answer within two periods.
	Heartbeat time.Duration
	// RateLimit is reserve and launch requests per second per client
	// address (burst: twice as many); 0 turns it off.
	RateLimit float64
	// AuthFailLimit is failed authentications per minute per client
	// address before further attempts get 429; 0 turns it off.
	AuthFailLimit float64
	// Users, when set, are the accounts that may use the gateway.
	Users *auth.Users
	// TrustedProxies may assert X-Forwarded-User and X-Forwarded-Groups.
	TrustedProxies auth.TrustedProxies
	// ProxyUIDs are the local users a trusted proxy on this machine runs
	// as (auth.Policy.ProxyUIDs).
	ProxyUIDs []int
	// MaxUserTunnels and MaxUserReservations cap what one user holds
	// (0: no cap).
	MaxUserTunnels      int
	MaxUserReservations int
	// Persist, when set, records reservations as they change, and
	// Restored are the reservations it recorded before a restart.
	Persist session.Persister
	// Durable: Persist outlives the process (--state_db is a file), so
	// cluster jobs are left running at shutdown for the next gateway.
	Durable  bool
	Restored []reservation.Reservation
	// Shared, when set, is the state this gateway shares with its
	// replicas (--state_db redis://…), and ReplicaID its name among them;
	// Persist and Restored are then unused.
	Shared    session.Shared
	ReplicaID string
	// ReplicaSecret, with Shared, signs the requests replicas make to
	// each other's replica listener (ReplicaHandler) to join a client to
	// a session another replica owns; nil turns that off.
	ReplicaSecret []byte
	// Publish, when set, receives the gateway's events: session.state and
	// reservation.expired (owner restricts who may see them).
	Publish func(topic, owner string, data map[string]any)
	// EnvPolicy is what started services inherit of the gateway's
	// environment besides the built-in allowlist.
	EnvPolicy proc.Policy
	// Supervisor runs service scripts under a supervisor process (nil:
	// scripts run directly).
	Supervisor *services.Supervisor
	// StopAccepting are called first in a shutdown, with the gateway's
	// own listeners: each stops accepting new work (another listener, a
	// control plane).
	StopAccepting []func()
	// Stoppers are called in a shutdown, in parallel with the closing of
	// the tunnels and the stopping of the services, under the same
	// deadline: each stops what it runs (jobs, launcher applications,
	// control-plane connections).
	Stoppers []func(ctx context.Context) error
	// Extensions claim requests on the HTTP port (websocket upgrades
	// included) before the gateway's own routes; the first whose Match
	// is true serves the request.
	Extensions []Extension
}

// Extension is a capability mounted on the gateway's HTTP port, such as
// the ParaViewWeb launcher API.
type Extension struct {
	Name    string
	Match   func(r *http.Request) bool
	Handler http.Handler
}

func (c *Config) defaults() {
	if c.Timeout <= 0 {
		c.Timeout = 300 * time.Second
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 30 * time.Second
	}
	if c.StopGrace <= 0 {
		c.StopGrace = 5 * time.Second
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.SessionRoot == "" {
		c.SessionRoot = filepath.Join(os.TempDir(), fmt.Sprintf("wsgateway-%d", os.Getuid()), "sessions")
	}
	if c.KeepSessions <= 0 {
		c.KeepSessions = 200
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = c.StopGrace + ShutdownMargin
	}
}

// ShutdownMargin is what a shutdown may take beyond the stop grace: the
// websockets' close handshakes and the last SIGKILLs.
const ShutdownMargin = 5 * time.Second

// Server is a running gateway.
type Server struct {
	cfg          Config
	log          zerolog.Logger
	sessions     *session.Manager
	svcs         map[string]*services.Service
	clusterTag   string          // this gateway's jobs in Slurm (their --comment)
	resumedJobs  map[string]bool // cluster jobs taken back after a restart
	upgrader     websocket.Upgrader
	bufPool      sync.Pool
	started      time.Time
	connID       atomic.Uint64
	replicaAuth  *replicaAuth // signs and checks replica-to-replica requests (nil: none)
	metrics      *metrics
	active       atomic.Int64 // websocket handlers running
	checking     atomic.Bool  // a checkTunnels pass is running
	policy       auth.Policy
	lastPing     time.Time
	reserveLimit *rateLimiter
	launchLimit  *rateLimiter
	authLimit    *rateLimiter
	addr         *addrLimits   // per-address limits shared with the control plane (limit.go)
	shares       shareRegistry // share links of running sessions (share.go)

	baseCtx    context.Context
	baseCancel context.CancelFunc

	mu      sync.Mutex
	tunnels map[wsframe.Tunnel]struct{} // the gateway's own and the hosted ones (tunnels.go)
	closing bool
	servers []*http.Server
	lns     []net.Listener
	work    sync.WaitGroup // websocket handlers and their tunnels

	stopOnce sync.Once
	stopCh   chan struct{}
}

// New checks cfg and returns a Server.
func New(cfg Config, log zerolog.Logger) (*Server, error) {
	cfg.defaults()
	if cfg.HTTPDirectory != "" {
		st, err := os.Stat(cfg.HTTPDirectory)
		if err != nil {
			return nil, fmt.Errorf("http directory: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("http directory %s is not a directory", cfg.HTTPDirectory)
		}
	}
	if err := services.PrepareSessionRoot(cfg.SessionRoot); err != nil {
		return nil, fmt.Errorf("--session_dir: %w", err)
	}
	counts := map[string]int{}
	svcs := map[string]*services.Service{}
	for _, s := range cfg.Services {
		if _, dup := svcs[s.Name]; dup {
			return nil, fmt.Errorf("service %q is defined twice (config file and --local_session?)", s.Name)
		}
		svcs[s.Name] = s
		counts[s.Name] = s.Count
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: cfg,
		log: log,

		svcs:       svcs,
		started:    time.Now(),
		baseCtx:    ctx,
		baseCancel: cancel,
		tunnels:    map[wsframe.Tunnel]struct{}{},
		stopCh:     make(chan struct{}),
	}
	scfg := session.Config{Counts: counts, Timeout: cfg.Timeout, Persist: cfg.Persist, Durable: cfg.Durable,
		StopTimeout: 2*cfg.StopGrace + 10*time.Second, Publish: cfg.Publish, Shared: cfg.Shared, Resume: s.resume}
	s.shareSessions(&scfg)
	s.sessions = session.New(scfg)
	s.clusterTag = services.ClusterTag(cfg.SessionRoot)
	s.resumedJobs = map[string]bool{}
	s.policy = auth.Policy{SecurityToken: cfg.SecurityToken, Users: cfg.Users, TrustedProxies: cfg.TrustedProxies, ProxyUIDs: cfg.ProxyUIDs, AllowedOrigins: cfg.AllowedOrigins}
	s.metrics = newMetrics(s)
	s.reserveLimit = newRateLimiter(cfg.RateLimit, int(2*cfg.RateLimit))
	s.launchLimit = newRateLimiter(cfg.RateLimit, int(2*cfg.RateLimit))
	s.authLimit = newRateLimiter(cfg.AuthFailLimit/60, int(cfg.AuthFailLimit))
	s.addr = newAddrLimits(cfg.RateLimit, cfg.MaxControlPerAddress)
	s.bufPool.New = func() any { b := make([]byte, spliceBuf); return &b }
	s.upgrader = websocket.Upgrader{
		// After the handshake the splice reads and writes the connection
		// itself; gorilla only writes refusals and close frames, so it
		// reuses net/http's buffers rather than allocating its own.
		ReadBufferSize:   0,
		WriteBufferSize:  0,
		Subprotocols:     []string{"binary"},
		HandshakeTimeout: 10 * time.Second,
		// The Origin is checked before Upgrade is called.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			s.writeError(w, r, &httperr.Error{Status: status, Msg: "websocket handshake failed: " + reason.Error()})
		},
	}
	services.PruneSessionDirs(cfg.SessionRoot, cfg.KeepSessions, log)
	if len(cfg.Restored) > 0 {
		restored, interrupted := s.sessions.Restore(cfg.Restored)
		log.Info().Int("restored", len(restored)).Int("interrupted", len(interrupted)).
			Int("dropped", len(cfg.Restored)-len(restored)-len(interrupted)).Msg("reservations from before the restart")
	}
	s.cancelForgotten()
	return s, nil
}

// StopRequested is closed when a client asked the gateway to stop
// (GET /v1/stop).
func (s *Server) StopRequested() <-chan struct{} { return s.stopCh }

func (s *Server) requestStop() { s.stopOnce.Do(func() { close(s.stopCh) }) }

// Serve accepts websocket connections on wsLn and, when httpLn is not nil,
// HTTP (static files, REST API and websockets) on httpLn. It returns when
// ctx ends or a stop is requested, after a graceful Shutdown.
func (s *Server) Serve(ctx context.Context, wsLn, httpLn net.Listener) error {
	errCh := make(chan error, 2)
	start := func(ln net.Listener, h http.Handler, name string) {
		if s.cfg.TLS != nil {
			ln = tls.NewListener(ln, s.cfg.TLS)
		}
		srv := &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       60 * time.Second,
			WriteTimeout:      5 * time.Minute,
			IdleTimeout:       2 * time.Minute,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          newStdLog(s.log),
			BaseContext:       func(net.Listener) context.Context { return s.baseCtx },
			// The peer's local user is read at most once per connection
			// (auth.Policy asks it of loopback peers).
			ConnContext: peer.WithConn,
		}
		s.mu.Lock()
		s.servers = append(s.servers, srv)
		s.lns = append(s.lns, ln)
		s.mu.Unlock()
		scheme := "ws"
		if name == "http" {
			scheme = "http"
		}
		if s.cfg.TLS != nil {
			scheme += "s"
		}
		s.log.Info().Str("listener", name).Str("address", ln.Addr().String()).Str("scheme", scheme).Msg("listening")
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errCh <- fmt.Errorf("%s listener: %w", name, err)
			}
		}()
	}
	if wsLn != nil {
		start(wsLn, s.wsPortHandler(), "websocket")
	}
	if httpLn != nil {
		start(httpLn, s.httpPortHandler(), "http")
	}

	sweep := s.cfg.Timeout / 4
	if sweep > time.Second {
		sweep = time.Second
	}
	if sweep < 50*time.Millisecond {
		sweep = 50 * time.Millisecond
	}
	tick := time.NewTicker(sweep)
	defer tick.Stop()
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			s.log.Info().Msg("shutting down: signal")
			break loop
		case <-s.stopCh:
			s.log.Info().Msg("shutting down: /v1/stop")
			break loop
		case runErr = <-errCh:
			s.log.Error().Err(runErr).Msg("listener failed; shutting down")
			break loop
		case <-tick.C:
			s.sweep()
			// Closing a tunnel may wait for a stuck write; the loop never
			// waits for it.
			if s.checking.CompareAndSwap(false, true) {
				go func() {
					defer s.checking.Store(false)
					s.checkTunnels(time.Now())
				}()
			}
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// Shutdown is the gateway's one shutdown, bounded by ctx: it stops
// accepting on every listener (and the StopAccepting hooks), then, in
// parallel, closes every tunnel with 1001, stops every service and runs
// the Stoppers (jobs, launcher applications, the control plane), and
// waits for all of it. Unused reservations are kept for a restart.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.closing = true
	servers := append([]*http.Server(nil), s.servers...)
	lns := append([]net.Listener(nil), s.lns...)
	tunnels := s.tunnelListLocked()
	s.mu.Unlock()
	start := time.Now()

	// First, nothing new comes in.
	for _, ln := range lns {
		_ = ln.Close()
	}
	for _, f := range s.cfg.StopAccepting {
		f()
	}

	// Every tunnel, the launcher's too, hears why (closing never blocks:
	// a client that does not read is cut by its own close timeout).
	for _, t := range tunnels {
		t.Close(wsframe.CloseGoingAway, "gateway shutting down")
	}

	// Then everything stops at once, under the one deadline.
	var wg sync.WaitGroup
	errs := make(chan error, len(servers)+len(s.cfg.Stoppers)+1)
	for _, srv := range servers {
		wg.Add(1)
		go func(srv *http.Server) {
			defer wg.Done()
			// Shutdown waits for requests in flight and idle keep-alive
			// connections; hijacked websockets are closed below.
			if err := srv.Shutdown(ctx); err != nil {
				_ = srv.Close()
			}
		}(srv)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.sessions.StopAll(ctx, websocket.CloseGoingAway, "gateway shutting down"); err != nil {
			errs <- err
		}
	}()
	for _, f := range s.cfg.Stoppers {
		wg.Add(1)
		go func(f func(context.Context) error) {
			defer wg.Done()
			if err := f(ctx); err != nil {
				errs <- err
			}
		}(f)
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		s.work.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("shutdown did not finish in time: %w", ctx.Err())
	}
	s.baseCancel()
	s.sessions.Close()
	var all []error
	for more := true; more; {
		select {
		case e := <-errs:
			all = append(all, e)
		default:
			more = false
		}
	}
	if err == nil {
		err = errors.Join(all...)
	}
	if err != nil {
		s.log.Warn().Err(err).Int64("duration_ms", time.Since(start).Milliseconds()).Msg("shutdown incomplete")
		return err
	}
	s.log.Info().Int64("duration_ms", time.Since(start).Milliseconds()).Msg("shutdown complete")
	return nil
}

// checkTunnels applies the idle, duration and heartbeat policies.
func (s *Server) checkTunnels(now time.Time) {
	ping := s.cfg.Heartbeat > 0 && now.Sub(s.lastPing) >= s.cfg.Heartbeat
	if ping {
		s.lastPing = now
	}
	s.mu.Lock()
	ts := s.tunnelListLocked()
	s.mu.Unlock()
	for _, t := range ts {
		t.Check(now, ping)
	}
}

// tunnelListLocked returns every open tunnel.
func (s *Server) tunnelListLocked() []wsframe.Tunnel {
	ts := make([]wsframe.Tunnel, 0, len(s.tunnels))
	for t := range s.tunnels {
		ts = append(ts, t)
	}
	return ts
}

// authRequired: with a security token or users, every REST call needs
// credentials.
func (s *Server) authRequired() bool { return s.policy.Required() }

// clientOf is r's client address as the limits key it (behind a trusted
// proxy, the client's, not the proxy's).
func (s *Server) clientOf(r *http.Request) string { return s.policy.Client(r) }
