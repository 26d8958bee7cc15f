package gateway

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/internal/httperr"
	"wsgateway/internal/origin"
	"wsgateway/internal/text"
	"wsgateway/reservation"
	"wsgateway/services"
	"wsgateway/session"
	"wsgateway/wsframe"
)

// wsPortHandler serves ws_server_port: websocket upgrades on any path.
func (s *Server) wsPortHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			msg := "this port accepts websocket connections only (ws://host:port/websockify?token=<token>)"
			if s.cfg.ClientAddr != "" {
				msg = "this port accepts websocket connections only: point a websocket client such as noVNC at ws://host:port/"
			}
			s.writeError(w, r, httperr.Errorf(http.StatusUpgradeRequired, "%s", msg))
			return
		}
		s.serveWS(w, r)
	})
}

// refuse answers a websocket request with an HTTP error before the
// upgrade, and counts it.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var he *httperr.Error
	if errors.As(err, &he) {
		status = he.Status
	}
	s.metrics.refusedWith(status)
	s.writeError(w, r, err)
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if s.policy.Site(r) == origin.Foreign {
		s.refuse(w, r, httperr.Errorf(http.StatusForbidden,
			"websocket Origin %q is not allowed; start the gateway with --allowed_origins %s to allow it",
			text.Cut(r.Header.Get("Origin"), 100), text.Cut(r.Header.Get("Origin"), 100)))
		return
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.work.Add(1)
	}
	s.mu.Unlock()
	if closing {
		s.refuse(w, r, httperr.Errorf(http.StatusServiceUnavailable, "the gateway is shutting down"))
		return
	}
	if n := s.active.Add(1); s.cfg.MaxTunnels > 0 && n > int64(s.cfg.MaxTunnels) {
		s.active.Add(-1)
		s.work.Done()
		s.metrics.limited.WithLabelValues("max_tunnels").Inc()
		s.refuse(w, r, httperr.Errorf(http.StatusServiceUnavailable, "the gateway is serving its maximum of %d websockets; try again later", s.cfg.MaxTunnels))
		return
	}
	done := func() {
		s.active.Add(-1)
		s.work.Done()
	}

	q := r.URL.Query()
	tok := q.Get("token")
	id := s.connID.Add(1)
	// The connection's fields are added to what it logs when it logs
	// (a hook), not kept as a context built for every connection.
	cf := connFields{conn: id, remote: r.RemoteAddr}
	var splice func(done func())
	switch {
	case tok != "":
		splice = s.serveToken(w, r, tok, s.log.Hook(cf))
	case q.Get("share") != "":
		splice = blocking(s.serveShare(w, r, q.Get("share"), s.log.Hook(cf)))
	case s.cfg.ClientAddr != "":
		splice = s.serveBasic(w, r, cf)
	default:
		s.refuse(w, r, httperr.Errorf(http.StatusUnauthorized,
			"missing token: reserve a slot with GET /v1/reserve/<service> and connect with ?token=<token>"))
	}
	if splice == nil {
		done()
		return
	}
	// The tunnel runs on goroutines of its own (none while it is idle)
	// and the HTTP handler returns, so net/http's buffers and the
	// handler's stack are not held for the tunnel's life.
	splice(done)
}

// blocking adapts a splice that runs the tunnel to its end on the
// caller's goroutine to the form serveWS starts: a goroutine of its own
// that calls done at the end.
func blocking(f func()) func(done func()) {
	if f == nil {
		return nil
	}
	return func(done func()) {
		go func() {
			defer done()
			f()
		}()
	}
}

// connFields adds a connection's fields to each message it logs.
type connFields struct {
	conn            uint64
	remote          string
	service, target string
}

func (c connFields) Run(e *zerolog.Event, _ zerolog.Level, _ string) {
	e.Uint64("conn", c.conn).Str("remote", c.remote)
	if c.service != "" {
		e.Str("service", c.service).Str("target", c.target)
	}
}

// serveBasic upgrades a websocket for --client_hostname:--client_port and
// returns what starts the splice (nil when it answered already).
func (s *Server) serveBasic(w http.ResponseWriter, r *http.Request, cf connFields) func(done func()) {
	cf.service, cf.target = "basic", s.cfg.ClientAddr
	log := s.log.Hook(cf)
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.cfg.ClientAddr)
	if err != nil {
		log.Warn().Err(err).Msg("cannot connect to the target")
		s.metrics.failures.WithLabelValues("target_down").Inc()
		s.refuse(w, r, &httperr.Error{Status: http.StatusBadGateway,
			Msg: fmt.Sprintf("failed to connect to downstream server %s: %v", s.cfg.ClientAddr, unwrapNetErr(err)), Err: err})
		return nil
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		c.Close()
		log.Debug().Err(err).Msg("upgrade failed")
		return nil
	}
	t := s.newTunnel(ws, c, log)
	if t == nil {
		return nil
	}
	return func(done func()) {
		t.start(func() {
			s.dropTunnel(t)
			done()
		})
	}
}

// serveToken serves a websocket carrying a reservation token: it claims
// the token's session, starts (or reattaches to) its service, and returns
// what starts the splice (nil when it is done already).
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, tok string, log zerolog.Logger) func(done func()) {
	client := s.clientOf(r) // the key of every limit below, worked out once
	if len(tok) > 128 || strings.ContainsAny(tok, " \t\r\n") {
		s.authLimit.allow(client)
		s.refuse(w, r, httperr.Errorf(http.StatusForbidden, "unknown token"))
		return nil
	}
	if s.authLimit.exhausted(client) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		s.refuse(w, r, httperr.Errorf(http.StatusTooManyRequests, "too many unknown tokens from your address; wait a minute"))
		return nil
	}
	if !s.launchLimit.allow(client) {
		s.metrics.limited.WithLabelValues("rate_launch").Inc()
		s.refuse(w, r, httperr.Errorf(http.StatusTooManyRequests, "too many connections from your address; slow down"))
		return nil
	}
	if pre, err := s.sessions.Get(tok); err == nil {
		if g := s.svcs[pre.Service].StringOption("group"); g != "" && !s.launchAllowed(r, pre, g) {
			s.refuse(w, r, httperr.Errorf(http.StatusForbidden, "service %q is restricted to group %q and this reservation's user is not (or no longer) a member", pre.Service, g))
			return nil
		}
	}
	ss, err := s.sessions.Claim(tok, s.cfg.MaxUserTunnels)
	if errors.Is(err, session.ErrElsewhere) {
		// Another replica owns the session (replicas_forward.go).
		if splice, handled := s.forward(w, r, tok, log); handled {
			return blocking(splice)
		}
	}
	if err != nil {
		if errors.Is(err, reservation.ErrUnknownToken) {
			s.authLimit.allow(client)
		}
		if errors.Is(err, session.ErrUserTunnels) {
			s.metrics.limited.WithLabelValues("user_tunnels").Inc()
		}
		s.refuse(w, r, tokenError(err, tok))
		return nil
	}
	if splice, adopted := s.serveAdopted(w, r, ss, log); adopted {
		// A session adopted from a dead replica (replicas_forward.go).
		return blocking(splice)
	}
	svc := s.svcs[ss.Service()]
	grace := reconnectGrace(svc)
	log = log.With().Str("service", ss.Service()).Int("index", ss.Index()).Str("token", reservation.TokenPrefix(tok)).Logger()

	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Debug().Err(err).Msg("upgrade failed")
		ss.Detach(nil, grace)
		return nil
	}

	var launchStart time.Time
	inst, _ := ss.Process().(launched) // set when reattaching
	if job, ok := inst.(*services.SlurmJob); ok {
		// A cluster session resumed after a restart says where it runs.
		ss.Note(map[string]any{"job_id": job.ID(), "job_state": "RUNNING", "endpoint": job.Endpoint().Address})
	}
	if inst == nil {
		launchStart = time.Now()
		if svc.Kind == services.KindSlurm {
			var job *services.SlurmJob
			if job, err = s.startSlurm(ss, svc, ws, log); err == nil {
				inst = job
			}
		} else {
			var li *services.Instance
			if li, err = s.start(ss, svc, log); err == nil {
				inst = li
			}
		}
		if err != nil {
			if errors.Is(err, session.ErrReleased) {
				closeWS(ws, websocket.CloseNormalClosure, "reservation released")
				return nil
			}
			if errors.Is(err, errClientGone) {
				ws.Close()
				return nil
			}
			s.metrics.launches.WithLabelValues(svc.Name, "failed").Inc()
			reason := "start_failed"
			if errors.Is(err, services.ErrStartTimeout) {
				reason = "start_timeout"
			}
			s.metrics.failures.WithLabelValues(reason).Inc()
			closeWS(ws, websocket.CloseInternalServerErr, err.Error())
			return nil
		}
	}
	// A release during the dial ends it.
	c, err := inst.Dial(ss.Context())
	if err != nil {
		if ss.Context().Err() != nil {
			closeWS(ws, websocket.CloseNormalClosure, "reservation released")
			ss.Detach(nil, grace)
			return nil
		}
		log.Warn().Err(err).Msg("cannot connect to the service")
		s.metrics.failures.WithLabelValues("dial").Inc()
		if !launchStart.IsZero() {
			s.metrics.launches.WithLabelValues(svc.Name, "failed").Inc()
		}
		closeWS(ws, websocket.CloseInternalServerErr, "cannot connect to the service: "+unwrapNetErr(err).Error())
		ss.Detach(nil, grace)
		return nil
	}
	if !launchStart.IsZero() {
		s.metrics.launches.WithLabelValues(svc.Name, "ok").Inc()
		s.metrics.launchSecs.WithLabelValues(svc.Name).Observe(time.Since(launchStart).Seconds())
	}
	c = s.startRecording(ss, svc, c, log)
	t := s.newTunnel(ws, c, log)
	if t == nil {
		ss.Detach(nil, 0)
		return nil
	}
	t.exitReason = inst.CrashReason
	t.idleTimeout = svc.Seconds("idle_timeout")
	t.maxDuration = svc.Seconds("max_duration")
	// A session ended by policy does not wait for a reconnect.
	t.onPolicy = func(reason string) { ss.Stop(websocket.ClosePolicyViolation, reason) }
	if err := ss.Attach(t, r.RemoteAddr); err != nil {
		t.closeWith(websocket.CloseNormalClosure, "reservation released")
	}
	return func(done func()) {
		// A service that dies ends its tunnel with a reason.
		go func() {
			select {
			case <-inst.Exited():
				if err := inst.ExitErr(); err != nil {
					s.metrics.failures.WithLabelValues("service_exited").Inc()
					msg := "service exited: " + err.Error()
					if errors.Is(err, services.ErrJobEnded) {
						msg = err.Error()
					}
					t.closeWith(websocket.CloseInternalServerErr, msg)
				}
			case <-t.done:
			}
		}()
		t.start(func() {
			s.dropTunnel(t)
			ss.Detach(t, grace)
			if ss.State() == session.Detached {
				log.Info().Int64("grace_ms", grace.Milliseconds()).Msg("websocket closed; service kept for a reconnect")
			}
			done()
		})
	}
}

// launchAllowed decides whether a websocket may launch a group-restricted
// service: credentials on the websocket itself must be a member; without
// any, the user who reserved must still be one (so removing a user from a
// group takes effect at once).
func (s *Server) launchAllowed(r *http.Request, res reservation.Reservation, group string) bool {
	c, err := s.policy.Caller(r)
	if err != nil {
		return false
	}
	if c.ID != nil {
		return c.InGroup(group)
	}
	if s.cfg.Users != nil && res.Owner != "" && !strings.Contains(res.Owner, ":") {
		if u := s.cfg.Users.Lookup(res.Owner); u != nil {
			return u.InGroup(group)
		}
	}
	return true
}

// tokenError turns a reservation error into the refusal a client sees.
func tokenError(err error, tok string) error {
	p := reservation.TokenPrefix(tok)
	switch {
	case errors.Is(err, reservation.ErrBusy):
		return httperr.Errorf(http.StatusConflict, "token %s… is already in use by another websocket; a token serves one connection at a time", p)
	case errors.Is(err, reservation.ErrExpiredToken):
		return httperr.Errorf(http.StatusForbidden, "reservation %s… expired before it was used; reserve a new slot", p)
	case errors.Is(err, reservation.ErrEnded):
		return httperr.Errorf(http.StatusForbidden, "reservation %s… is ending; reserve a new slot", p)
	case errors.Is(err, session.ErrUserTunnels):
		return &httperr.Error{Status: http.StatusTooManyRequests, Msg: err.Error() + "; close one first", Err: err}
	case errors.Is(err, session.ErrClosing):
		return httperr.Errorf(http.StatusServiceUnavailable, "the gateway is shutting down")
	case errors.Is(err, session.ErrUnavailable):
		return &httperr.Error{Status: http.StatusServiceUnavailable, Msg: "the replicas' shared state (Redis) is unavailable; try again shortly", Err: err}
	case errors.Is(err, session.ErrElsewhere):
		return &httperr.Error{Status: http.StatusConflict, Msg: fmt.Sprintf("the session of %s… runs on another gateway replica: %v; reconnect through it", p, err), Err: err}
	default:
		return httperr.Errorf(http.StatusForbidden, "unknown token; reserve a slot with GET /v1/reserve/<service>")
	}
}

// start runs the service script for a claimed session: claimed →
// starting → started (or ended, when the start fails or the session is
// released meanwhile: then nothing is left running).
func (s *Server) start(ss *session.Session, svc *services.Service, log zerolog.Logger) (*services.Instance, error) {
	ctx, err := ss.BeginStart()
	if err != nil {
		return nil, err
	}
	opts, err := svc.MergedOptions(ss.Options())
	if err != nil {
		ss.StartFailed(err.Error())
		return nil, err
	}
	spec := s.launchSpec(ss.Token(), ss.Index(), svc, opts)
	dir := spec.SessionDir
	inst, err := services.Start(ctx, spec, log)
	if err != nil {
		released := ctx.Err() != nil
		ss.StartFailed(err.Error())
		if released {
			return nil, session.ErrReleased
		}
		return nil, fmt.Errorf("%w (log: %s)", err, filepath.Join(dir, services.LogName))
	}
	return inst, ss.Started(inst)
}

// sweep reclaims unused reservations and sessions whose reconnect grace
// has run out.
func (s *Server) sweep() {
	for _, r := range s.sessions.Sweep() {
		if s.sweptShared(r) {
			continue
		}
		s.log.Info().Str("service", r.Service).Int("index", r.Index).Str("token", reservation.TokenPrefix(r.Token)).
			Str("state", r.State).Msg("reservation reclaimed: unused for too long")
	}
}

// sessionDir is the directory of a session of svc in slot index.
func (s *Server) sessionDir(svc *services.Service, index int, tok string) string {
	return filepath.Join(s.cfg.SessionRoot, fmt.Sprintf("%s-%d-%s", safeName(svc.Name), index, reservation.TokenPrefix(tok)))
}

func reconnectGrace(svc *services.Service) time.Duration {
	return svc.Seconds("reconnect_grace")
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

func safeName(s string) string {
	s = unsafeChars.ReplaceAllString(s, "_")
	if len(s) > 32 {
		s = s[:32]
	}
	return s
}

// closeWS sends a close frame with code and reason, then closes.
func closeWS(ws *websocket.Conn, code int, reason string) {
	// Before a tunnel exists this goroutine is the socket's only user,
	// so deadlines are safe here.
	deadline := time.Now().Add(wsframe.CloseTimeout)
	_ = ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(code, wsframe.TruncateReason(reason, wsframe.MaxControlPayload-2)), deadline)
	// Give the client the close timeout to answer the close.
	_ = ws.SetReadDeadline(deadline)
	for {
		if _, _, err := ws.NextReader(); err != nil {
			break
		}
	}
	ws.Close()
}

func unwrapNetErr(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// newStdLog adapts the zerolog logger for http.Server's error log.
func newStdLog(l zerolog.Logger) *log.Logger {
	return log.New(stdWriter{l}, "", 0)
}

type stdWriter struct{ l zerolog.Logger }

func (w stdWriter) Write(p []byte) (int, error) {
	w.l.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
