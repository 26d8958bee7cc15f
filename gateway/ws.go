package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/reservation"
	"wsgateway/services"
)

// session is a reservation that a websocket has used: its running service
// instance and the tunnel that currently holds it.
type session struct {
	token    string
	res      reservation.Reservation
	svc      *services.Service
	inst     *services.Instance
	tun      *tunnel
	created  time.Time
	state    string // starting, running, idle, stopping
	stopping bool
	released bool
	remote   string
	bytesUp  int64
	bytesDn  int64
	done     chan struct{} // closed when the service has stopped and the slot is free
}

// wsPortHandler serves ws_server_port: websocket upgrades on any path.
func (s *Server) wsPortHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !websocket.IsWebSocketUpgrade(r) {
			msg := "this port accepts websocket connections only (ws://host:port/websockify?token=<token>)"
			if s.cfg.ClientAddr != "" {
				msg = "this port accepts websocket connections only: point a websocket client such as noVNC at ws://host:port/"
			}
			s.writeError(w, r, errorf(http.StatusUpgradeRequired, "%s", msg))
			return
		}
		s.serveWS(w, r)
	})
}

// refuse answers a websocket request with an HTTP error before the
// upgrade, and counts it.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var he *httpError
	if errors.As(err, &he) {
		status = he.status
	}
	s.metrics.refusedWith(status)
	s.writeError(w, r, err)
}

func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if !s.originAllowed(r) {
		s.refuse(w, r, errorf(http.StatusForbidden,
			"websocket Origin %q is not allowed; start the gateway with --allowed_origins %s to allow it",
			truncate(r.Header.Get("Origin"), 100), truncate(r.Header.Get("Origin"), 100)))
		return
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.work.Add(1)
	}
	s.mu.Unlock()
	if closing {
		s.refuse(w, r, errorf(http.StatusServiceUnavailable, "the gateway is shutting down"))
		return
	}
	if n := s.active.Add(1); s.cfg.MaxTunnels > 0 && n > int64(s.cfg.MaxTunnels) {
		s.active.Add(-1)
		s.work.Done()
		s.metrics.limited.WithLabelValues("max_tunnels").Inc()
		s.refuse(w, r, errorf(http.StatusServiceUnavailable, "the gateway is serving its maximum of %d websockets; try again later", s.cfg.MaxTunnels))
		return
	}
	done := func() {
		s.active.Add(-1)
		s.work.Done()
	}

	tok := r.URL.Query().Get("token")
	id := s.connID.Add(1)
	log := s.log.With().Uint64("conn", id).Str("remote", r.RemoteAddr).Logger()
	var splice func()
	switch {
	case tok != "":
		splice = s.serveToken(w, r, tok, log)
	case s.cfg.ClientAddr != "":
		splice = s.serveBasic(w, r, log)
	default:
		s.refuse(w, r, errorf(http.StatusUnauthorized,
			"missing token: reserve a slot with GET /v1/reserve/<service> and connect with ?token=<token>"))
	}
	if splice == nil {
		done()
		return
	}
	// The tunnel runs on goroutines of its own and the HTTP handler
	// returns, so net/http's buffers and the handler's stack are not
	// held for the tunnel's life.
	go func() {
		defer done()
		splice()
	}()
}

// serveBasic upgrades a websocket for --client_hostname:--client_port and
// returns the splice to run (nil when it answered already).
func (s *Server) serveBasic(w http.ResponseWriter, r *http.Request, log zerolog.Logger) func() {
	log = log.With().Str("service", "basic").Str("target", s.cfg.ClientAddr).Logger()
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", s.cfg.ClientAddr)
	if err != nil {
		log.Warn().Err(err).Msg("cannot connect to the target")
		s.metrics.failures.WithLabelValues("target_down").Inc()
		s.refuse(w, r, &httpError{status: http.StatusBadGateway,
			msg: fmt.Sprintf("failed to connect to downstream server %s: %v", s.cfg.ClientAddr, unwrapNetErr(err)), err: err})
		return nil
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
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
	return func() {
		t.run()
		s.dropTunnel(t)
	}
}

// serveToken serves a websocket carrying a reservation token: it claims
// the token, launches (or reattaches to) the service, and returns the
// splice to run (nil when it is done already).
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, tok string, log zerolog.Logger) func() {
	if len(tok) > 128 || strings.ContainsAny(tok, " \t\r\n") {
		s.authLimit.allow(r.RemoteAddr)
		s.refuse(w, r, errorf(http.StatusForbidden, "unknown token"))
		return nil
	}
	if s.authLimit.exhausted(r.RemoteAddr) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		s.refuse(w, r, errorf(http.StatusTooManyRequests, "too many unknown tokens from your address; wait a minute"))
		return nil
	}
	if !s.launchLimit.allow(r.RemoteAddr) {
		s.metrics.limited.WithLabelValues("rate_launch").Inc()
		s.refuse(w, r, errorf(http.StatusTooManyRequests, "too many connections from your address; slow down"))
		return nil
	}
	if pre, err := s.res.Get(tok); err == nil {
		if g := s.svcs[pre.Service].StringOption("group"); g != "" && !s.launchAllowed(r, pre, g) {
			s.refuse(w, r, errorf(http.StatusForbidden, "service %q is restricted to group %q and this reservation's user is not (or no longer) a member", pre.Service, g))
			return nil
		}
		if max := s.cfg.MaxUserTunnels; max > 0 && pre.Owner != "" && s.userTunnels(pre.Owner) >= max {
			s.metrics.limited.WithLabelValues("user_tunnels").Inc()
			s.refuse(w, r, errorf(http.StatusTooManyRequests, "%s already has %d open sessions (the limit); close one first", pre.Owner, max))
			return nil
		}
	}
	res, err := s.res.Claim(tok)
	if err != nil {
		if errors.Is(err, reservation.ErrUnknownToken) {
			s.authLimit.allow(r.RemoteAddr)
		}
		s.refuse(w, r, tokenError(err, tok))
		return nil
	}
	svc := s.svcs[res.Service]
	log = log.With().Str("service", res.Service).Int("index", res.Index).Str("token", reservation.TokenPrefix(tok)).Logger()

	s.mu.Lock()
	ss := s.sessions[tok]
	if ss == nil {
		ss = &session{token: tok, res: res, svc: svc, created: time.Now(), state: "starting", done: make(chan struct{})}
		s.sessions[tok] = ss
	}
	ss.remote = r.RemoteAddr
	s.mu.Unlock()

	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Debug().Err(err).Msg("upgrade failed")
		s.afterTunnel(ss, log)
		return nil
	}

	var launchStart time.Time
	if ss.inst == nil {
		s.sessionEvent(ss, "starting")
		launchStart = time.Now()
		inst, err := s.launch(ss, log)
		if err != nil {
			s.metrics.launches.WithLabelValues(ss.svc.Name, "failed").Inc()
			reason := "start_failed"
			if errors.Is(err, services.ErrStartTimeout) {
				reason = "start_timeout"
			}
			s.metrics.failures.WithLabelValues(reason).Inc()
			closeWS(ws, websocket.CloseInternalServerErr, err.Error())
			s.afterTunnel(ss, log)
			return nil
		}
		s.mu.Lock()
		ss.inst = inst
		s.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(s.baseCtx)
	go func() {
		// A release during the dial ends it.
		select {
		case <-ctx.Done():
		case <-ss.done:
			cancel()
		}
	}()
	c, err := ss.inst.Dial(ctx)
	cancel()
	if err != nil {
		log.Warn().Err(err).Msg("cannot connect to the service")
		s.metrics.failures.WithLabelValues("dial").Inc()
		if !launchStart.IsZero() {
			s.metrics.launches.WithLabelValues(ss.svc.Name, "failed").Inc()
		}
		closeWS(ws, websocket.CloseInternalServerErr, "cannot connect to the service: "+unwrapNetErr(err).Error())
		s.afterTunnel(ss, log)
		return nil
	}
	if !launchStart.IsZero() {
		s.metrics.launches.WithLabelValues(ss.svc.Name, "ok").Inc()
		s.metrics.launchSecs.WithLabelValues(ss.svc.Name).Observe(time.Since(launchStart).Seconds())
	}
	t := s.newTunnel(ws, c, log)
	if t == nil {
		s.afterTunnel(ss, log)
		return nil
	}
	t.exitReason = ss.inst.CrashReason
	t.idleTimeout = durationOption(ss.svc, "idle_timeout")
	t.maxDuration = durationOption(ss.svc, "max_duration")
	t.onPolicy = func(string) {
		// A session ended by policy does not wait for a reconnect.
		s.mu.Lock()
		ss.released = true
		s.mu.Unlock()
	}
	s.mu.Lock()
	if ss.released || ss.stopping {
		s.mu.Unlock()
		t.closeWith(websocket.CloseNormalClosure, "reservation released")
	} else {
		ss.tun = t
		ss.state = "running"
		s.mu.Unlock()
		s.sessionEvent(ss, "running")
	}
	return func() {
		// A service that dies ends its tunnel with a reason.
		go func() {
			select {
			case <-ss.inst.Exited():
				if err := ss.inst.ExitErr(); err != nil {
					s.metrics.failures.WithLabelValues("service_exited").Inc()
					t.closeWith(websocket.CloseInternalServerErr, "service exited: "+err.Error())
				}
			case <-t.done:
			}
		}()
		t.run()
		s.dropTunnel(t)
		s.mu.Lock()
		ss.tun = nil
		ss.bytesUp += t.up.Load()
		ss.bytesDn += t.down.Load()
		s.mu.Unlock()
		s.afterTunnel(ss, log)
	}
}

// launchAllowed decides whether a websocket may launch a group-restricted
// service: credentials on the websocket itself must be a member; without
// any, the user who reserved must still be one (so removing a user from a
// group takes effect at once).
func (s *Server) launchAllowed(r *http.Request, res reservation.Reservation, group string) bool {
	id, err := s.caller(r)
	if err != nil {
		return false
	}
	if id != nil {
		return id.InGroup(group)
	}
	if s.cfg.Users != nil && res.Owner != "" {
		if u := s.cfg.Users.Lookup(res.Owner); u != nil {
			return u.InGroup(group)
		}
	}
	return true
}

// userTunnels counts the open websockets of a user's sessions.
func (s *Server) userTunnels(owner string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ss := range s.sessions {
		if ss.res.Owner == owner && ss.tun != nil {
			n++
		}
	}
	return n
}

// tokenError turns a reservation error into the refusal a client sees.
func tokenError(err error, tok string) error {
	p := reservation.TokenPrefix(tok)
	switch {
	case errors.Is(err, reservation.ErrBusy):
		return errorf(http.StatusConflict, "token %s… is already in use by another websocket; a token serves one connection at a time", p)
	case errors.Is(err, reservation.ErrExpiredToken):
		return errorf(http.StatusForbidden, "reservation %s… expired before it was used; reserve a new slot", p)
	case errors.Is(err, reservation.ErrEnded):
		return errorf(http.StatusForbidden, "reservation %s… is ending; reserve a new slot", p)
	default:
		return errorf(http.StatusForbidden, "unknown token; reserve a slot with GET /v1/reserve/<service>")
	}
}

// launch runs the service script for a session.
func (s *Server) launch(ss *session, log zerolog.Logger) (*services.Instance, error) {
	opts, err := ss.svc.MergedOptions(ss.res.Options)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(s.cfg.SessionRoot, fmt.Sprintf("%s-%d-%s", safeName(ss.svc.Name), ss.res.Index, reservation.TokenPrefix(ss.token)))
	spec := services.Spec{
		Service:      ss.svc,
		Index:        ss.res.Index,
		Token:        ss.token,
		Options:      opts,
		SessionDir:   dir,
		StartTimeout: s.cfg.StartTimeout,
		StopGrace:    s.cfg.StopGrace,
		Supervisor:   s.cfg.Supervisor,
	}
	inst, err := services.Start(s.baseCtx, spec, log)
	if err != nil {
		return nil, fmt.Errorf("%w (log: %s)", err, filepath.Join(dir, services.LogName))
	}
	return inst, nil
}

// afterTunnel decides, when a websocket ends, whether the session waits
// for a reconnect (reconnect_grace) or stops now.
func (s *Server) afterTunnel(ss *session, log zerolog.Logger) {
	grace := reconnectGrace(ss.svc)
	s.mu.Lock()
	keep := grace > 0 && ss.inst != nil && !ss.released && !ss.stopping && !s.closing && !ss.inst.Detached()
	if keep {
		select {
		case <-ss.inst.Exited():
			keep = false
		default:
		}
	}
	if keep {
		ss.state = "idle"
		s.mu.Unlock()
		s.sessionEvent(ss, "idle")
		s.res.Unclaim(ss.token, grace)
		log.Info().Int64("grace_ms", grace.Milliseconds()).Msg("websocket closed; service kept for a reconnect")
		return
	}
	if ss.stopping {
		s.mu.Unlock()
		return
	}
	ss.stopping = true
	s.mu.Unlock()
	s.stopSession(ss, "websocket closed")
}

// stopSession stops the session's service, then frees its slot. The
// caller has set ss.stopping.
func (s *Server) stopSession(ss *session, why string) {
	s.res.MarkStopping(ss.token)
	s.mu.Lock()
	ss.state = "stopping"
	inst := ss.inst
	s.mu.Unlock()
	s.sessionEvent(ss, "stopping")
	if inst != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.StopGrace+10*time.Second)
		_ = inst.Stop(ctx)
		cancel()
	}
	_, _ = s.res.End(ss.token)
	s.mu.Lock()
	delete(s.sessions, ss.token)
	s.mu.Unlock()
	close(ss.done)
	s.sessionEvent(ss, "stopped")
	s.log.Debug().Str("service", ss.svc.Name).Int("index", ss.res.Index).
		Str("token", reservation.TokenPrefix(ss.token)).Str("why", why).Msg("session ended; slot free")
}

// sweep reclaims unused reservations and sessions whose reconnect grace
// has run out.
func (s *Server) sweep() {
	for _, r := range s.res.Sweep() {
		s.mu.Lock()
		ss := s.sessions[r.Token]
		var stop bool
		if ss != nil && !ss.stopping && ss.tun == nil {
			ss.stopping = true
			stop = true
		}
		closing := s.closing
		if stop && !closing {
			s.work.Add(1)
		}
		s.mu.Unlock()
		s.log.Info().Str("service", r.Service).Int("index", r.Index).Str("token", reservation.TokenPrefix(r.Token)).
			Str("state", string(r.State)).Msg("reservation reclaimed: unused for too long")
		s.publish("reservation.expired", r.Owner, map[string]any{"service": r.Service, "index": r.Index,
			"token_prefix": reservation.TokenPrefix(r.Token), "state": string(r.State)})
		if stop && !closing {
			go func() {
				defer s.work.Done()
				s.stopSession(ss, "reconnect grace expired")
			}()
		}
	}
}

func reconnectGrace(svc *services.Service) time.Duration {
	return durationOption(svc, "reconnect_grace")
}

// durationOption reads a service option in seconds (a number or a numeric
// string); absent or not positive is 0.
func durationOption(svc *services.Service, key string) time.Duration {
	raw, ok := svc.Options[key]
	if !ok {
		return 0
	}
	var f float64
	if err := json.Unmarshal(raw, &f); err != nil {
		var str string
		if json.Unmarshal(raw, &str) != nil {
			return 0
		}
		f, _ = strconv.ParseFloat(str, 64)
	}
	if f <= 0 {
		return 0
	}
	return time.Duration(f * float64(time.Second))
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
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, truncate(reason, 123)), time.Now().Add(time.Second))
	// Give the client a moment to answer the close.
	_ = ws.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, _, err := ws.NextReader(); err != nil {
			break
		}
	}
	ws.Close()
}

// truncate cuts s to at most n bytes on a UTF-8 boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
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
