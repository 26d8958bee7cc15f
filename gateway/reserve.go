package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"github.com/gorilla/websocket"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
	"wsgateway/reservation"
	"wsgateway/services"
	"wsgateway/session"
)

// Limits on what a reserve query may carry, and on waiting for a slot
// (below the HTTP server's write timeout).
const (
	maxWait           = 240 * time.Second
	maxWaiters        = 1000
	maxOptions        = 64
	maxOptionKeyLen   = 64
	maxOptionValueLen = 4096
)

func (s *Server) handleReserve(w http.ResponseWriter, r *http.Request) error {
	// Only GET reserves: a HEAD's answer has no body, so its token would
	// be lost with the slot it holds.
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return httperr.Errorf(http.StatusMethodNotAllowed, "method %s does not reserve; use GET /v1/reserve/<service>", r.Method)
	}
	c, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	name, err := unescapeVar(mux.Vars(r)["service"])
	if err != nil {
		return httperr.Errorf(http.StatusBadRequest, "bad service name in the path: %v", err)
	}
	opts := map[string]string{}
	q := r.URL.Query()
	if len(q) > maxOptions {
		return httperr.Errorf(http.StatusBadRequest, "too many options: at most %d", maxOptions)
	}
	var wait time.Duration
	for k, v := range q {
		if k == "security_token" {
			continue
		}
		if k == "wait" {
			f, err := strconv.ParseFloat(v[0], 64)
			if err != nil || f < 0 || f > maxWait.Seconds() {
				return httperr.Errorf(http.StatusBadRequest, "wait=%q: give the seconds to wait for a free slot, 0 to %d", text.Cut(v[0], 32), int(maxWait.Seconds()))
			}
			wait = time.Duration(f * float64(time.Second))
			continue
		}
		opts[k] = v[0]
	}
	if len(opts) == 0 {
		opts = nil
	}
	res, err := s.ReserveFrom(r.Context(), c, name, opts, wait)
	if err != nil {
		return err
	}
	s.log.Info().Str("service", name).Int("index", res.Index).Str("token", reservation.TokenPrefix(res.Token)).
		Str("remote", r.RemoteAddr).Str("user", res.Owner).Msg("reserved")
	if res.Options == nil {
		res.Options = map[string]string{} // an object either way, never null
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"token":      res.Token,
		"service":    res.Service,
		"index":      res.Index,
		"expires_in": int(s.cfg.Timeout / time.Second),
		"expires":    res.Expires.UTC().Format(time.RFC3339),
		"options":    res.Options,
		"path":       "websockify?token=" + res.Token,
	})
	return nil
}

// reserveAs reserves a slot of service for c, waiting up to wait for
// one. Both the REST API and the gateway's own API (JSON-RPC) come here,
// so the options are checked here: the operator's options win, and a
// client sets only those the service declares
// (services.Service.CheckClientOptions).
func (s *Server) reserveAs(ctx context.Context, c auth.Caller, name string, opts map[string]string, wait time.Duration) (reservation.Reservation, error) {
	svc, ok := s.svcs[name]
	if !ok {
		known := strings.Join(s.serviceNames(), ", ")
		if known == "" {
			known = "none"
		}
		if slices.Contains(s.cfg.JobServices, name) {
			return reservation.Reservation{}, httperr.Errorf(http.StatusNotFound,
				"%q is a batch job service: submit it with JSON-RPC jobs.submit on /v1/rpc (docs/rpc.md); services to reserve: %s", name, known)
		}
		return reservation.Reservation{}, httperr.Errorf(http.StatusNotFound, "unknown service %q; known services: %s", text.Cut(name, 128), known)
	}
	if err := checkOptions(svc, opts); err != nil {
		return reservation.Reservation{}, err
	}
	if g := svc.StringOption("group"); g != "" && !c.InGroup(g) {
		who := "you are not signed in"
		if c.Name() != "" {
			who = c.Name() + " is not a member"
		} else if !c.Site.Ambient() {
			who = "a page on another site or port is not signed in by its cookies"
		}
		return reservation.Reservation{}, httperr.Errorf(http.StatusForbidden, "service %q is restricted to group %q (%s); ask an administrator for access", name, g, who)
	}
	owner := c.Owner()
	var res reservation.Reservation
	var err error
	if wait > 0 {
		ctx, cancel := context.WithTimeout(ctx, wait)
		res, err = s.sessions.ReserveWait(ctx, name, owner, s.cfg.MaxUserReservations, maxWaiters, opts)
		cancel()
		if errors.Is(err, reservation.ErrQueueFull) {
			s.metrics.limited.WithLabelValues("wait_queue").Inc()
			return reservation.Reservation{}, &httperr.Error{Status: http.StatusServiceUnavailable, Msg: err.Error() + "; try again later", Err: err}
		}
	} else {
		res, err = s.sessions.ReserveFor(name, owner, s.cfg.MaxUserReservations, opts)
	}
	if err != nil {
		if errors.Is(err, reservation.ErrUserLimit) {
			s.metrics.limited.WithLabelValues("user_reservations").Inc()
			return reservation.Reservation{}, &httperr.Error{Status: http.StatusTooManyRequests, Msg: err.Error() + "; release one first", Err: err}
		}
		if errors.Is(err, session.ErrUnavailable) {
			return reservation.Reservation{}, &httperr.Error{Status: http.StatusServiceUnavailable, Msg: "no reservation: the replicas' shared state (Redis) is unavailable; try again shortly", Err: err}
		}
		if errors.Is(err, reservation.ErrNoSlot) {
			return reservation.Reservation{}, &httperr.Error{Status: http.StatusServiceUnavailable, Msg: err.Error() + "; release one or try again later", Err: err}
		}
		return reservation.Reservation{}, err
	}
	return res, nil
}

// checkOptions applies the size limits and the service's client options
// to a reservation's options (400 naming the option when refused).
func checkOptions(svc *services.Service, opts map[string]string) error {
	if len(opts) > maxOptions {
		return httperr.Errorf(http.StatusBadRequest, "too many options: at most %d", maxOptions)
	}
	for k, v := range opts {
		if len(k) > maxOptionKeyLen || len(v) > maxOptionValueLen {
			return httperr.Errorf(http.StatusBadRequest, "option %q is too long: keys at most %d bytes, values at most %d", text.Cut(k, 64), maxOptionKeyLen, maxOptionValueLen)
		}
	}
	if err := svc.CheckClientOptions(opts); err != nil {
		return &httperr.Error{Status: http.StatusBadRequest, Msg: err.Error(), Err: err}
	}
	return nil
}

// callerAndToken is the caller (requireAuth) and the reservation token of
// a route /v1/…/{token}.
func (s *Server) callerAndToken(r *http.Request) (auth.Caller, string, error) {
	c, err := s.requireAuth(r)
	if err != nil {
		return c, "", err
	}
	tok, err := unescapeVar(mux.Vars(r)["token"])
	if err != nil {
		return c, "", httperr.Errorf(http.StatusBadRequest, "bad token in the path: %v", err)
	}
	return c, tok, nil
}

func (s *Server) handleRelease(w http.ResponseWriter, r *http.Request) error {
	c, tok, err := s.callerAndToken(r)
	if err != nil {
		return err
	}
	res, err := s.releaseAs(r.Context(), c, tok)
	if err != nil {
		return err
	}
	s.log.Info().Str("service", res.Service).Int("index", res.Index).Str("token", reservation.TokenPrefix(tok)).
		Str("remote", r.RemoteAddr).Msg("released")
	writeJSON(w, http.StatusOK, map[string]any{"released": true, "service": res.Service, "index": res.Index})
	return nil
}

// handleCheckToken answers, over plain HTTP, what a websocket with this
// token would be told: browsers hide a refused upgrade's answer, so the
// viewer asks here. The token travels in the X-Wsgw-Token header.
func (s *Server) handleCheckToken(w http.ResponseWriter, r *http.Request) error {
	tok := r.Header.Get("X-Wsgw-Token")
	if tok == "" {
		return httperr.Errorf(http.StatusBadRequest, "send the token in the X-Wsgw-Token header")
	}
	client := s.clientOf(r)
	if s.authLimit.exhausted(client) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		return httperr.Errorf(http.StatusTooManyRequests, "too many unknown tokens from your address; wait a minute")
	}
	res, err := s.sessions.Check(tok)
	if errors.Is(err, reservation.ErrUnknownToken) {
		s.authLimit.allow(client) // a guess counts as a failed authentication
	}
	if err != nil {
		return tokenError(err, tok)
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "service": res.Service, "index": res.Index, "state": res.State})
	return nil
}

// releaseAs releases tok for c: administrators release anything, a user
// their own reservations. It returns once the service has stopped.
func (s *Server) releaseAs(ctx context.Context, c auth.Caller, tok string) (reservation.Reservation, error) {
	// Anyone but an administrator gets the same answer for a token that
	// does not exist and for one that is not theirs, and an unknown
	// token counts as a failed authentication: release is no oracle.
	notYours := httperr.Errorf(http.StatusForbidden, "you may release only your own reservations (this call is for administrators and the reservation's user)")
	if !c.Admin() && s.authLimit.exhausted(c.Client) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		return reservation.Reservation{}, httperr.Errorf(http.StatusTooManyRequests, "too many unknown tokens from your address; wait a minute")
	}
	res, err := s.sessions.Get(tok)
	if err != nil {
		if !c.Admin() {
			s.authLimit.allow(c.Client)
			return res, notYours
		}
		return res, httperr.Errorf(http.StatusNotFound, "unknown token %s…: nothing to release", reservation.TokenPrefix(tok))
	}
	if !c.MayManage(res.Owner) {
		return res, notYours
	}
	ctx, cancel := context.WithTimeout(ctx, 2*s.cfg.StopGrace+15*time.Second)
	defer cancel()
	if _, err := s.sessions.Release(ctx, tok, websocket.CloseNormalClosure, "reservation released"); err != nil {
		if errors.Is(err, reservation.ErrUnknownToken) || errors.Is(err, reservation.ErrExpiredToken) {
			// Ended meanwhile: released all the same.
			return res, nil
		}
		if errors.Is(err, context.DeadlineExceeded) {
			return res, httperr.Errorf(http.StatusGatewayTimeout, "the session of %s… is still stopping; check /v1/status", reservation.TokenPrefix(tok))
		}
		return res, err
	}
	return res, nil
}

// sessionTTL is how long a dashboard login lasts.
func (s *Server) serviceNames() []string {
	out := make([]string, 0, len(s.svcs))
	for n := range s.svcs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func unescapeVar(v string) (string, error) {
	return url.PathUnescape(v)
}
