package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/url"
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
	id, err := s.requireAuth(r)
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
		if len(k) > maxOptionKeyLen || len(v[0]) > maxOptionValueLen {
			return httperr.Errorf(http.StatusBadRequest, "option %q is too long: keys at most %d bytes, values at most %d", text.Cut(k, 64), maxOptionKeyLen, maxOptionValueLen)
		}
		opts[k] = v[0]
	}
	if len(opts) == 0 {
		opts = nil
	}
	res, err := s.ReserveFrom(r.Context(), r.RemoteAddr, id, s.crossSite(r), name, opts, wait)
	if err != nil {
		return err
	}
	s.log.Info().Str("service", name).Int("index", res.Index).Str("token", reservation.TokenPrefix(res.Token)).
		Str("remote", r.RemoteAddr).Str("user", res.Owner).Msg("reserved")
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

// reserveAs reserves a slot of service for id (nil: anonymous), waiting
// up to wait for one; crossSite callers are never group members.
func (s *Server) reserveAs(ctx context.Context, id *auth.Identity, crossSite bool, name string, opts map[string]string, wait time.Duration) (reservation.Reservation, error) {
	svc, ok := s.svcs[name]
	if !ok {
		return reservation.Reservation{}, httperr.Errorf(http.StatusNotFound, "unknown service %q; known services: %s", text.Cut(name, 128), strings.Join(s.serviceNames(), ", "))
	}
	if g := svc.StringOption("group"); g != "" && (!id.InGroup(g) || crossSite) {
		who := "you are not signed in"
		if id != nil && id.Name != "" {
			who = id.Name + " is not a member"
		}
		return reservation.Reservation{}, httperr.Errorf(http.StatusForbidden, "service %q is restricted to group %q (%s); ask an administrator for access", name, g, who)
	}
	owner := ""
	if id != nil {
		owner = id.Name
	}
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
		if errors.Is(err, reservation.ErrNoSlot) {
			return reservation.Reservation{}, &httperr.Error{Status: http.StatusServiceUnavailable, Msg: "no free slot: " + err.Error() + "; release one or try again later", Err: err}
		}
		return reservation.Reservation{}, err
	}
	return res, nil
}

func (s *Server) handleRelease(w http.ResponseWriter, r *http.Request) error {
	id, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	tok, err := unescapeVar(mux.Vars(r)["token"])
	if err != nil {
		return httperr.Errorf(http.StatusBadRequest, "bad token in the path: %v", err)
	}
	res, err := s.releaseAs(r.Context(), id, s.crossSite(r), tok)
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
	if s.authLimit.exhausted(r.RemoteAddr) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		return httperr.Errorf(http.StatusTooManyRequests, "too many unknown tokens from your address; wait a minute")
	}
	res, err := s.sessions.Check(tok)
	if errors.Is(err, reservation.ErrUnknownToken) {
		s.authLimit.allow(r.RemoteAddr) // a guess counts as a failed authentication
	}
	if err != nil {
		return tokenError(err, tok)
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "service": res.Service, "index": res.Index, "state": res.State})
	return nil
}

// releaseAs releases tok for id: administrators release anything, a
// user their own reservations. It returns once the service has stopped.
func (s *Server) releaseAs(ctx context.Context, id *auth.Identity, crossSite bool, tok string) (reservation.Reservation, error) {
	admin := id != nil && id.Admin && !crossSite
	res, err := s.sessions.Get(tok)
	if err != nil {
		if !admin {
			return res, httperr.Errorf(http.StatusForbidden, "this call is for administrators or the reservation's user")
		}
		return res, httperr.Errorf(http.StatusNotFound, "unknown token %s…: nothing to release", reservation.TokenPrefix(tok))
	}
	// Administrators release anything; a user releases their own.
	own := id != nil && id.Name != "" && id.Name == res.Owner && !crossSite
	if !own && !admin {
		return res, httperr.Errorf(http.StatusForbidden, "you may release only your own reservations (this call is for administrators)")
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
