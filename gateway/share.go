package gateway

// Share links: the owner of a running session (or an administrator)
// lets others watch it (mode view) or use it (mode control). Each
// viewer gets a connection of its own to the service (the built-in
// desktop runs Xvnc with -AlwaysShared); a view share's connection goes
// through rfb.FilterConn, which drops input and refuses unknown
// messages, so view-only holds whatever the viewer's browser does. A
// share ends when it is revoked (its viewers are closed at once), when it
// expires, or when its session starts stopping.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/mux"
	"github.com/rs/zerolog"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
	"wsgateway/reservation"
	"wsgateway/rfb"
	"wsgateway/session"
	"wsgateway/wsframe"
)

// Limits of sharing.
const (
	maxSharesPerSession = 20
	maxShareViewers     = 50
	maxShareTTL         = 7 * 24 * time.Hour
	shareDialTimeout    = 20 * time.Second
)

// ShareInfo describes a share link (the API's answer).
type ShareInfo struct {
	Share   string       `json:"share"`
	Mode    string       `json:"mode"`
	Service string       `json:"service"`
	Created time.Time    `json:"created"`
	Expires *time.Time   `json:"expires,omitempty"`
	URL     string       `json:"url"`
	Path    string       `json:"path"`
	Viewers []ViewerInfo `json:"viewers"`
}

// ViewerInfo is one viewer of a session, as presence shows it.
type ViewerInfo struct {
	Name  string    `json:"name"`
	Mode  string    `json:"mode"` // owner, view or control
	Since time.Time `json:"since"`
}

// shareRegistry holds the shares of this gateway's sessions. Its zero
// value is ready.
type shareRegistry struct {
	mu      sync.Mutex
	byToken map[string]*share
	guests  atomic.Uint64
}

type share struct {
	token   string
	session string // the session's token
	service string
	owner   string
	mode    rfb.Mode
	created time.Time
	expires time.Time // zero: lasts as long as the session
	viewers map[*shareViewer]struct{}
	ended   bool
}

type shareViewer struct {
	name  string
	since time.Time
	t     *tunnel
}

func (sh *share) info() ShareInfo {
	in := ShareInfo{Share: sh.token, Mode: sh.mode.String(), Service: sh.service, Created: sh.created,
		URL: PagesPrefix + "viewer.html#share=" + sh.token + "&mode=" + sh.mode.String(), Path: "websockify?share=" + sh.token, Viewers: []ViewerInfo{}}
	if !sh.expires.IsZero() {
		e := sh.expires
		in.Expires = &e
	}
	for v := range sh.viewers {
		in.Viewers = append(in.Viewers, ViewerInfo{Name: v.name, Mode: sh.mode.String(), Since: v.since})
	}
	sort.Slice(in.Viewers, func(i, j int) bool { return in.Viewers[i].Since.Before(in.Viewers[j].Since) })
	return in
}

// live reports whether sh may still be used at now.
func (sh *share) live(now time.Time) bool {
	return !sh.ended && (sh.expires.IsZero() || now.Before(sh.expires))
}

// endLocked ends sh and returns its viewers' tunnels to close.
func (sh *share) endLocked() []*tunnel {
	sh.ended = true
	var ts []*tunnel
	for v := range sh.viewers {
		ts = append(ts, v.t)
	}
	return ts
}

// parseMode reads a share mode.
func parseMode(m string) (rfb.Mode, error) {
	switch m {
	case "", "view":
		return rfb.ViewOnly, nil
	case "control":
		return rfb.Control, nil
	}
	return 0, httperr.Errorf(http.StatusBadRequest, "mode %q: a share is \"view\" or \"control\"", text.Cut(m, 32))
}

// managedSession finds tok's running session for c, who must be its
// owner or an administrator. Anyone else gets the same answer for a
// token that does not exist as for another's, and an unknown token
// counts as a failed authentication.
func (s *Server) managedSession(c auth.Caller, tok string) (*session.Session, reservation.Reservation, error) {
	notYours := httperr.Errorf(http.StatusForbidden, "you may share only your own sessions (this call is for administrators and the reservation's user)")
	if !c.Admin() && s.authLimit.exhausted(c.Client) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		return nil, reservation.Reservation{}, httperr.Errorf(http.StatusTooManyRequests, "too many unknown tokens from your address; wait a minute")
	}
	res, err := s.sessions.Get(tok)
	if err != nil {
		if !c.Admin() {
			s.authLimit.allow(c.Client)
			return nil, res, notYours
		}
		return nil, res, httperr.Errorf(http.StatusNotFound, "unknown token %s…: no such session", reservation.TokenPrefix(tok))
	}
	if !c.MayManage(res.Owner) {
		return nil, res, notYours
	}
	ss, err := s.sessions.Lookup(tok)
	if err != nil {
		return nil, res, httperr.Errorf(http.StatusConflict, "the session of %s… runs on another gateway replica; share it through that replica", reservation.TokenPrefix(tok))
	}
	return ss, res, nil
}

// CreateShare makes a share link of tok's running session for c (its
// owner or an administrator): mode "view" (the default) or "control",
// ending after ttl (0: with the session).
func (s *Server) CreateShare(c auth.Caller, tok, mode string, ttl time.Duration) (ShareInfo, error) {
	m, err := parseMode(mode)
	if err != nil {
		return ShareInfo{}, err
	}
	if ttl < 0 || ttl > maxShareTTL {
		return ShareInfo{}, httperr.Errorf(http.StatusBadRequest, "expires_in: give 1 to %d seconds, or nothing for a share that lasts as long as the session", int(maxShareTTL.Seconds()))
	}
	ss, res, err := s.managedSession(c, tok)
	if err != nil {
		return ShareInfo{}, err
	}
	if _, ok := ss.Process().(launched); !ok {
		return ShareInfo{}, httperr.Errorf(http.StatusConflict, "the session of %s… has not started yet (state %s); open it first, then share it", reservation.TokenPrefix(tok), ss.State())
	}
	if ss.Context().Err() != nil {
		return ShareInfo{}, httperr.Errorf(http.StatusConflict, "the session of %s… is ending", reservation.TokenPrefix(tok))
	}
	st, err := reservation.NewToken()
	if err != nil {
		return ShareInfo{}, fmt.Errorf("making a share token: %w", err)
	}
	now := time.Now()
	sh := &share{token: st, session: tok, service: res.Service, owner: res.Owner, mode: m, created: now,
		viewers: map[*shareViewer]struct{}{}}
	if ttl > 0 {
		sh.expires = now.Add(ttl)
	}
	r := &s.shares
	r.mu.Lock()
	n := 0
	for _, o := range r.byToken {
		if o.session == tok && o.live(now) {
			n++
		}
	}
	if n >= maxSharesPerSession {
		r.mu.Unlock()
		return ShareInfo{}, httperr.Errorf(http.StatusTooManyRequests, "this session has %d shares already; revoke one first", n)
	}
	first := n == 0
	if r.byToken == nil {
		r.byToken = map[string]*share{}
	}
	r.byToken[st] = sh
	info := sh.info()
	r.mu.Unlock()
	if first {
		// The session's shares end with it (at once: when it starts
		// stopping), and are forgotten.
		go func() {
			select {
			case <-ss.Context().Done():
			case <-s.baseCtx.Done():
			}
			s.endShares(func(o *share) bool { return o.session == tok }, wsframe.CloseNormal, "the shared session ended")
		}()
	}
	if !sh.expires.IsZero() {
		time.AfterFunc(ttl, func() {
			s.endShares(func(o *share) bool { return o == sh }, wsframe.ClosePolicy, "the share link expired")
		})
	}
	s.log.Info().Str("service", res.Service).Str("token", reservation.TokenPrefix(tok)).Str("share", reservation.TokenPrefix(st)).
		Str("mode", m.String()).Str("by", c.Name()).Msg("share created")
	return info, nil
}

// endShares ends (and forgets) the shares match selects, closing their
// viewers with code and reason.
func (s *Server) endShares(match func(*share) bool, code int, reason string) int {
	r := &s.shares
	var ts []*tunnel
	n := 0
	r.mu.Lock()
	for k, sh := range r.byToken {
		if match(sh) {
			ts = append(ts, sh.endLocked()...)
			delete(r.byToken, k)
			n++
		}
	}
	r.mu.Unlock()
	for _, t := range ts {
		t.closeWith(code, reason)
	}
	return n
}

// Shares lists the live shares of tok's session for c (its owner or an
// administrator), with their viewers.
func (s *Server) Shares(c auth.Caller, tok string) ([]ShareInfo, error) {
	if _, _, err := s.managedSession(c, tok); err != nil {
		return nil, err
	}
	now := time.Now()
	out := []ShareInfo{}
	r := &s.shares
	r.mu.Lock()
	for _, sh := range r.byToken {
		if sh.session == tok && sh.live(now) {
			out = append(out, sh.info())
		}
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// RevokeShare ends a share of tok's session for c (its owner or an
// administrator); its viewers are closed at once.
func (s *Server) RevokeShare(c auth.Caller, tok, shareTok string) error {
	if _, _, err := s.managedSession(c, tok); err != nil {
		return err
	}
	n := s.endShares(func(o *share) bool { return o.session == tok && o.token == shareTok }, wsframe.ClosePolicy, "the share was revoked")
	if n == 0 {
		return httperr.Errorf(http.StatusNotFound, "no share %s… of this session (revoked, expired, or never made)", reservation.TokenPrefix(shareTok))
	}
	s.log.Info().Str("token", reservation.TokenPrefix(tok)).Str("share", reservation.TokenPrefix(shareTok)).Str("by", c.Name()).Msg("share revoked")
	return nil
}

// shareRequest is the body of POST /v1/share/<token> (the query string
// may carry the same fields).
type shareRequest struct {
	Mode      string  `json:"mode"`
	ExpiresIn float64 `json:"expires_in"`
}

const maxShareBody = 4 << 10

func (s *Server) handleShareCreate(w http.ResponseWriter, r *http.Request) error {
	c, tok, err := s.callerAndToken(r)
	if err != nil {
		return err
	}
	var req shareRequest
	q := r.URL.Query()
	req.Mode = q.Get("mode")
	if v := q.Get("expires_in"); v != "" {
		if req.ExpiresIn, err = strconv.ParseFloat(v, 64); err != nil {
			return httperr.Errorf(http.StatusBadRequest, "expires_in=%q: give seconds", text.Cut(v, 32))
		}
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct == "application/json" {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxShareBody+1))
		if err != nil {
			return fmt.Errorf("reading the request: %w", err)
		}
		if len(body) > maxShareBody {
			return httperr.Errorf(http.StatusRequestEntityTooLarge, "the request body is limited to %d bytes", maxShareBody)
		}
		if len(body) > 0 {
			if err := json.Unmarshal(body, &req); err != nil {
				return httperr.Errorf(http.StatusBadRequest, "the body is not a share request ({\"mode\":\"view\",\"expires_in\":3600}): %v", err)
			}
		}
	}
	if req.ExpiresIn < 0 || req.ExpiresIn > maxShareTTL.Seconds() {
		return httperr.Errorf(http.StatusBadRequest, "expires_in: give 1 to %d seconds, or nothing for a share that lasts as long as the session", int(maxShareTTL.Seconds()))
	}
	info, err := s.CreateShare(c, tok, req.Mode, time.Duration(req.ExpiresIn*float64(time.Second)))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}

func (s *Server) handleShareList(w http.ResponseWriter, r *http.Request) error {
	c, tok, err := s.callerAndToken(r)
	if err != nil {
		return err
	}
	list, err := s.Shares(c, tok)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"shares": list})
	return nil
}

func (s *Server) handleShareRevoke(w http.ResponseWriter, r *http.Request) error {
	c, tok, err := s.callerAndToken(r)
	if err != nil {
		return err
	}
	st, err := unescapeVar(mux.Vars(r)["share"])
	if err != nil {
		return httperr.Errorf(http.StatusBadRequest, "bad share in the path: %v", err)
	}
	if err := s.RevokeShare(c, tok, st); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"revoked": true})
	return nil
}

// handleViewers is presence: who watches a session. The session's token
// (X-Wsgw-Token) or a live share of it (X-Wsgw-Share) is the credential,
// as for the websocket itself; viewers are named, never addressed.
func (s *Server) handleViewers(w http.ResponseWriter, r *http.Request) error {
	client := s.clientOf(r)
	if s.authLimit.exhausted(client) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		return httperr.Errorf(http.StatusTooManyRequests, "too many unknown tokens from your address; wait a minute")
	}
	tok := r.Header.Get("X-Wsgw-Token")
	if st := r.Header.Get("X-Wsgw-Share"); st != "" {
		sh, ok := s.liveShare(st)
		if !ok {
			s.authLimit.allow(client)
			return httperr.Errorf(http.StatusForbidden, "unknown share link: it was revoked, expired, or its session ended")
		}
		tok = sh.session
	} else if tok == "" {
		return httperr.Errorf(http.StatusBadRequest, "send the session's token in X-Wsgw-Token or a share's in X-Wsgw-Share")
	}
	res, err := s.sessions.Get(tok)
	if err != nil {
		s.authLimit.allow(client)
		return tokenError(err, tok)
	}
	viewers := []ViewerInfo{}
	if res.State == string(session.Running) {
		name := res.Owner
		if name == "" {
			name = "owner"
		}
		viewers = append(viewers, ViewerInfo{Name: name, Mode: "owner"})
	}
	now := time.Now()
	r2 := &s.shares
	r2.mu.Lock()
	for _, sh := range r2.byToken {
		if sh.session == tok && sh.live(now) {
			viewers = append(viewers, sh.info().Viewers...)
		}
	}
	r2.mu.Unlock()
	sort.SliceStable(viewers, func(i, j int) bool {
		return viewers[i].Mode == "owner" || (viewers[j].Mode != "owner" && viewers[i].Since.Before(viewers[j].Since))
	})
	writeJSON(w, http.StatusOK, map[string]any{"service": res.Service, "viewers": viewers})
	return nil
}

// liveShare finds a live share by its token.
func (s *Server) liveShare(st string) (*share, bool) {
	r := &s.shares
	r.mu.Lock()
	defer r.mu.Unlock()
	sh, ok := r.byToken[st]
	if !ok || !sh.live(time.Now()) {
		return nil, false
	}
	return sh, true
}

// serveShare serves a share link's websocket: a connection of its own to
// the shared session's service, filtered for a view share, and returns
// the splice to run (nil when it answered already).
func (s *Server) serveShare(w http.ResponseWriter, r *http.Request, st string, log zerolog.Logger) func() {
	client := s.clientOf(r)
	if len(st) > 128 || strings.ContainsAny(st, " \t\r\n") {
		s.authLimit.allow(client)
		s.refuse(w, r, httperr.Errorf(http.StatusForbidden, "unknown share link"))
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
	sh, ok := s.liveShare(st)
	if !ok {
		s.authLimit.allow(client)
		s.refuse(w, r, httperr.Errorf(http.StatusForbidden, "unknown share link: it was revoked, expired, or its session ended"))
		return nil
	}
	ss, err := s.sessions.Lookup(sh.session)
	var inst launched
	if err == nil {
		inst, _ = ss.Process().(launched)
	}
	if inst == nil || ss.Context().Err() != nil {
		s.refuse(w, r, httperr.Errorf(http.StatusForbidden, "the shared session has ended"))
		return nil
	}
	name := ""
	if c, err := s.policy.Caller(r); err == nil {
		name = c.Name()
	}
	if name == "" {
		name = fmt.Sprintf("guest %d", s.shares.guests.Add(1))
	}
	log = log.With().Str("service", sh.service).Str("token", reservation.TokenPrefix(sh.session)).
		Str("share", reservation.TokenPrefix(st)).Str("mode", sh.mode.String()).Str("viewer", name).Logger()

	ctx, cancel := context.WithTimeout(ss.Context(), shareDialTimeout)
	c, err := inst.Dial(ctx)
	cancel()
	if err != nil {
		log.Warn().Err(err).Msg("share: cannot connect to the service")
		s.refuse(w, r, &httperr.Error{Status: http.StatusBadGateway, Msg: "cannot connect to the shared session: " + unwrapNetErr(err).Error(), Err: err})
		return nil
	}
	fc := rfb.NewFilterConn(c, sh.mode)
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		fc.Close()
		log.Debug().Err(err).Msg("upgrade failed")
		return nil
	}
	t := s.newTunnel(ws, fc, log)
	if t == nil {
		return nil
	}
	fc.OnRefuse = func(reason string) {
		log.Warn().Str("reason", reason).Msg("share: viewer refused")
		s.metrics.failures.WithLabelValues("share_refused").Inc()
		t.closeWith(wsframe.ClosePolicy, reason)
	}
	v := &shareViewer{name: name, since: time.Now(), t: t}
	s.shares.mu.Lock()
	switch {
	case !sh.live(time.Now()):
		err = errors.New("the share was revoked")
	case len(sh.viewers) >= maxShareViewers:
		err = fmt.Errorf("this share has its maximum of %d viewers", maxShareViewers)
	default:
		sh.viewers[v] = struct{}{}
	}
	s.shares.mu.Unlock()
	if err != nil {
		t.closeWith(wsframe.ClosePolicy, err.Error())
	}
	return func() {
		t.run()
		s.dropTunnel(t)
		s.shares.mu.Lock()
		delete(sh.viewers, v)
		s.shares.mu.Unlock()
		log.Info().Int64("input_dropped", fc.Dropped()).Msg("share: viewer left")
	}
}
