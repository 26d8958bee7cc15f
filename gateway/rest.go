package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
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

// httpPortHandler serves the HTTP port: websocket upgrades (same semantics
// as ws_server_port), the REST API and the static directory.
func (s *Server) httpPortHandler() http.Handler {
	r := mux.NewRouter()
	r.UseEncodedPath()
	v1 := r.PathPrefix("/v1/").Subrouter()
	v1.Handle("/reserve/{service}", s.handle(s.handleReserve)).Methods(http.MethodGet, http.MethodHead)
	v1.Handle("/release/{token}", s.handle(s.handleRelease)).Methods(http.MethodGet)
	v1.Handle("/status", s.handle(s.handleStatus)).Methods(http.MethodGet, http.MethodHead)
	v1.Handle("/status_view", s.handle(s.handleStatusView)).Methods(http.MethodGet, http.MethodHead)
	v1.Handle("/stop", s.handle(s.handleStop)).Methods(http.MethodGet)
	v1.Handle("/check_token", s.handle(s.handleCheckToken)).Methods(http.MethodGet)
	v1.Handle("/login", s.handle(s.handleLogin)).Methods(http.MethodPost)
	v1.Handle("/logout", s.handle(s.handleLogout)).Methods(http.MethodPost)
	v1.Handle("/whoami", s.handle(s.handleWhoami)).Methods(http.MethodGet)
	v1.NotFoundHandler = s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return httperr.Errorf(http.StatusNotFound, "no such API call %s; the API is /v1/reserve/<service>, /v1/release/<token>, /v1/status, /v1/status_view, /v1/stop", r.URL.Path)
	})
	v1.MethodNotAllowedHandler = s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return httperr.Errorf(http.StatusMethodNotAllowed, "method %s not allowed on %s; the REST API uses GET", r.Method, r.URL.Path)
	})
	r.Handle("/metrics", s.metricsHandler()).Methods(http.MethodGet, http.MethodHead)
	r.PathPrefix("/debug/pprof/").Handler(s.pprofHandler())
	pages := s.pagesHandler()
	r.PathPrefix(PagesPrefix + "novnc/").Handler(http.StripPrefix(PagesPrefix+"novnc", s.novncHandler()))
	r.PathPrefix(PagesPrefix).Handler(http.StripPrefix(strings.TrimSuffix(PagesPrefix, "/"), pages))
	r.Path(strings.TrimSuffix(PagesPrefix, "/")).Handler(http.RedirectHandler(PagesPrefix, http.StatusMovedPermanently))
	if s.cfg.HTTPDirectory != "" {
		r.PathPrefix("/").Handler(s.staticHandler(s.cfg.HTTPDirectory))
	} else {
		r.Path("/").Handler(pages)
		r.PathPrefix("/").Handler(s.handle(func(w http.ResponseWriter, r *http.Request) error {
			return httperr.Errorf(http.StatusNotFound, "not found: %s (no --http_directory is served; the dashboard is at %s)", text.Cut(r.URL.Path, 200), PagesPrefix)
		}))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		for _, ext := range s.cfg.Extensions {
			if ext.Match(req) {
				ext.Handler.ServeHTTP(w, req)
				return
			}
		}
		if websocket.IsWebSocketUpgrade(req) {
			s.serveWS(w, req)
			return
		}
		r.ServeHTTP(w, req)
	})
}

// requireAuth returns the caller, or 401 when credentials are needed and
// missing or wrong (429 after too many failures from the address).
func (s *Server) requireAuth(r *http.Request) (*auth.Identity, error) {
	if s.authRequired() && s.authLimit.exhausted(r.RemoteAddr) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		return nil, httperr.Errorf(http.StatusTooManyRequests, "too many failed authentications from your address; wait a minute")
	}
	id, err := s.caller(r)
	if err != nil {
		s.authLimit.allow(r.RemoteAddr)
		return nil, httperr.Errorf(http.StatusUnauthorized, "wrong user name, password, API key or session; log in again")
	}
	if id == nil && s.authRequired() {
		if r.URL.Query().Get("security_token") != "" || strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
			s.authLimit.allow(r.RemoteAddr)
		}
		if s.cfg.Users != nil {
			return nil, httperr.Errorf(http.StatusUnauthorized, "log in first: HTTP Basic, Authorization: Bearer <api key>, or the dashboard's login page %slogin.html", PagesPrefix)
		}
		return nil, httperr.Errorf(http.StatusUnauthorized, "missing or wrong security token: add ?security_token=<token> or the header Authorization: Bearer <token>")
	}
	return id, nil
}

func (s *Server) requireAdmin(r *http.Request) (*auth.Identity, error) {
	id, err := s.requireAuth(r)
	if err != nil {
		return nil, err
	}
	if s.crossSite(r) {
		return nil, httperr.Errorf(http.StatusForbidden, "cross-site requests may not call this")
	}
	if id == nil || !id.Admin {
		if !s.authRequired() {
			return nil, httperr.Errorf(http.StatusForbidden, "this call answers only to clients on this machine (loopback) unless the gateway has a --security_token or --users")
		}
		return nil, httperr.Errorf(http.StatusForbidden, "this call is for administrators (group %q or the security token)", auth.AdminGroup)
	}
	return id, nil
}

func (s *Server) handleReserve(w http.ResponseWriter, r *http.Request) error {
	id, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	if !s.reserveLimit.allow(r.RemoteAddr) {
		s.metrics.limited.WithLabelValues("rate_reserve").Inc()
		return httperr.Errorf(http.StatusTooManyRequests, "too many reservations from your address; slow down")
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
	res, err := s.reserveAs(r.Context(), id, s.crossSite(r), name, opts, wait)
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
const sessionTTL = 12 * time.Hour

// handleLogin checks a user name and password (JSON body) and sets the
// dashboard's session cookie: HttpOnly, SameSite=Strict, Secure over TLS.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Users == nil {
		return httperr.Errorf(http.StatusNotFound, "this gateway has no users (--users); use its security token")
	}
	if s.crossSite(r) {
		return httperr.Errorf(http.StatusForbidden, "cross-site login refused")
	}
	if s.authLimit.exhausted(r.RemoteAddr) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		return httperr.Errorf(http.StatusTooManyRequests, "too many failed logins from your address; wait a minute")
	}
	var body struct {
		User     string `json:"user"`
		Password string `json:"password"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&body); err != nil {
		return httperr.Errorf(http.StatusBadRequest, "send {\"user\": \"…\", \"password\": \"…\"} as JSON")
	}
	id, err := s.cfg.Users.CheckPassword(body.User, body.Password)
	if err != nil {
		s.authLimit.allow(r.RemoteAddr)
		s.log.Info().Str("user", text.Cut(body.User, 64)).Str("remote", r.RemoteAddr).Msg("login failed")
		return httperr.Errorf(http.StatusUnauthorized, "wrong user name or password")
	}
	http.SetCookie(w, &http.Cookie{Name: auth.CookieName, Value: s.cfg.Users.SessionCookie(id.Name, sessionTTL), Path: "/",
		MaxAge: int(sessionTTL / time.Second), HttpOnly: true, Secure: s.cfg.TLS != nil, SameSite: http.SameSiteStrictMode})
	s.log.Info().Str("user", id.Name).Str("remote", r.RemoteAddr).Msg("logged in")
	writeJSON(w, http.StatusOK, id)
	return nil
}

func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) error {
	http.SetCookie(w, &http.Cookie{Name: auth.CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: s.cfg.TLS != nil, SameSite: http.SameSiteStrictMode})
	writeJSON(w, http.StatusOK, map[string]bool{"logged_out": true})
	return nil
}

func (s *Server) handleWhoami(w http.ResponseWriter, r *http.Request) error {
	id, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	if id == nil {
		id = &auth.Identity{Via: "anonymous"}
	}
	writeJSON(w, http.StatusOK, id)
	return nil
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.requireAdmin(r); err != nil {
		return err
	}
	s.log.Warn().Str("remote", r.RemoteAddr).Msg("stop requested over the REST API")
	writeJSON(w, http.StatusOK, map[string]any{"stopping": true})
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	s.requestStop()
	return nil
}

// Status is the body of /v1/status.
type Status struct {
	Version      string          `json:"version"`
	Admin        bool            `json:"admin"`
	User         string          `json:"user,omitempty"`
	Login        bool            `json:"login"` // users are configured: the dashboard offers a login
	Uptime       float64         `json:"uptime_seconds"`
	BasicTarget  string          `json:"basic_target,omitempty"`
	Tunnels      int             `json:"tunnels"`
	Services     []ServiceStatus `json:"services"`
	Reservations []ResStatus     `json:"reservations"`
	Sessions     []SessionStatus `json:"sessions"`
}

// ServiceStatus describes one service's slots.
type ServiceStatus struct {
	Name    string   `json:"name"`
	Count   int      `json:"count"`
	Free    int      `json:"free"`
	Waiting int      `json:"waiting,omitempty"`
	FileExt []string `json:"file_ext,omitempty"`
	Group   string   `json:"group,omitempty"`
	BuiltIn bool     `json:"builtin"`
}

// ResStatus describes one reservation. Token is shown to admins only.
type ResStatus struct {
	Owner       string  `json:"owner,omitempty"`
	Token       string  `json:"token,omitempty"`
	TokenPrefix string  `json:"token_prefix"`
	Service     string  `json:"service"`
	Index       int     `json:"index"`
	State       string  `json:"state"`
	Age         float64 `json:"age_seconds"`
	ExpiresIn   float64 `json:"expires_in,omitempty"`
}

// SessionStatus describes one launched service instance.
type SessionStatus struct {
	Owner       string  `json:"owner,omitempty"`
	Token       string  `json:"token,omitempty"`
	TokenPrefix string  `json:"token_prefix"`
	Service     string  `json:"service"`
	Index       int     `json:"index"`
	State       string  `json:"state"`
	PID         int     `json:"pid,omitempty"`
	Age         float64 `json:"age_seconds"`
	BytesIn     int64   `json:"bytes_in"`
	BytesOut    int64   `json:"bytes_out"`
	Remote      string  `json:"remote,omitempty"`
	Log         string  `json:"log,omitempty"`
}

// status builds /v1/status for id (nil: anonymous). Administrators see
// every token; a user sees the tokens of their own reservations.
func (s *Server) status(id *auth.Identity, crossSite bool) Status {
	admin := id != nil && id.Admin && !crossSite
	user := ""
	if id != nil && !crossSite {
		user = id.Name
	}
	sees := func(owner string) bool { return admin || (user != "" && owner == user) }
	now := time.Now()
	svcs, infos := s.sessions.Snapshot()
	st := Status{Version: s.cfg.Version, Admin: admin, User: user, Login: s.cfg.Users != nil, Uptime: now.Sub(s.started).Seconds(), BasicTarget: s.cfg.ClientAddr,
		Services: []ServiceStatus{}, Reservations: []ResStatus{}, Sessions: []SessionStatus{}}
	waiting := s.sessions.Waiting()
	for _, v := range svcs {
		svc := s.svcs[v.Name]
		st.Services = append(st.Services, ServiceStatus{Name: v.Name, Count: v.Count, Free: v.Free, Waiting: waiting[v.Name],
			FileExt: svc.FileExt(), Group: svc.StringOption("group"), BuiltIn: svc.BuiltIn})
	}
	for _, r := range infos {
		rs := ResStatus{TokenPrefix: reservation.TokenPrefix(r.Token), Service: r.Service, Index: r.Index,
			State: r.State, Age: now.Sub(r.Created).Seconds()}
		if sees(r.Owner) {
			rs.Token = r.Token
			rs.Owner = r.Owner
		}
		if r.State == string(session.Reserved) || r.State == string(session.Detached) {
			rs.ExpiresIn = r.Expires.Sub(now).Seconds()
		}
		st.Reservations = append(st.Reservations, rs)
		if r.Since.IsZero() {
			continue
		}
		x := SessionStatus{TokenPrefix: reservation.TokenPrefix(r.Token), Service: r.Service, Index: r.Index,
			State: r.State, Age: now.Sub(r.Since).Seconds(), BytesIn: r.BytesIn, BytesOut: r.BytesOut}
		if inst, ok := r.Proc.(*services.Instance); ok && inst != nil {
			x.PID = inst.PID()
			if admin {
				x.Log = inst.LogPath()
			}
		}
		if admin {
			x.Remote = r.Remote
		}
		if sees(r.Owner) {
			x.Token = r.Token
			x.Owner = r.Owner
		}
		st.Sessions = append(st.Sessions, x)
	}
	s.mu.Lock()
	st.Tunnels = len(s.tunnels)
	s.mu.Unlock()
	sort.Slice(st.Sessions, func(i, j int) bool {
		if st.Sessions[i].Service != st.Sessions[j].Service {
			return st.Sessions[i].Service < st.Sessions[j].Service
		}
		return st.Sessions[i].Index < st.Sessions[j].Index
	})
	return st
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) error {
	id, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.status(id, s.crossSite(r)))
	return nil
}

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"secs": func(f float64) string { return (time.Duration(f) * time.Second).String() },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>wsgateway status</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3}
</style></head><body>
<h1>wsgateway status</h1>
<p>Version {{.Version}}, up {{secs .Uptime}}, {{.Tunnels}} open tunnel(s){{if .BasicTarget}}, basic mode to {{.BasicTarget}}{{end}}.</p>
<h2>Services</h2>
<table><tr><th>Service</th><th>Free</th><th>Total</th><th>File types</th><th>Group</th></tr>
{{range .Services}}<tr><td>{{.Name}}</td><td>{{.Free}}</td><td>{{.Count}}</td><td>{{range .FileExt}}{{.}} {{end}}</td><td>{{.Group}}</td></tr>
{{else}}<tr><td colspan="5">No services configured.</td></tr>{{end}}</table>
<h2>Reservations</h2>
<table><tr><th>Token</th><th>Service</th><th>Index</th><th>State</th><th>Age</th></tr>
{{range .Reservations}}<tr><td>{{.TokenPrefix}}…</td><td>{{.Service}}</td><td>{{.Index}}</td><td>{{.State}}</td><td>{{secs .Age}}</td></tr>
{{else}}<tr><td colspan="5">None.</td></tr>{{end}}</table>
<h2>Sessions</h2>
<table><tr><th>Token</th><th>Service</th><th>Index</th><th>State</th><th>PID</th><th>Age</th><th>Bytes in</th><th>Bytes out</th></tr>
{{range .Sessions}}<tr><td>{{.TokenPrefix}}…</td><td>{{.Service}}</td><td>{{.Index}}</td><td>{{.State}}</td><td>{{.PID}}</td><td>{{secs .Age}}</td><td>{{.BytesIn}}</td><td>{{.BytesOut}}</td></tr>
{{else}}<tr><td colspan="8">None.</td></tr>{{end}}</table>
</body></html>
`))

func (s *Server) handleStatusView(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.requireAuth(r); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	return statusTmpl.Execute(w, s.status(nil, true))
}

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

// staticHandler serves dir with no directory listings and nothing from
// outside dir (symlinks included: the directory is opened as an os.Root).
func (s *Server) staticHandler(dir string) http.Handler {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return s.handle(func(w http.ResponseWriter, r *http.Request) error {
			return httperr.Errorf(http.StatusInternalServerError, "cannot open the http directory: %v", err)
		})
	}
	fsys := noListFS{root.FS()}
	fileServer := http.FileServer(http.FS(fsys))
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return httperr.Errorf(http.StatusMethodNotAllowed, "method %s not allowed for files", r.Method)
		}
		p := r.URL.Path
		if strings.Contains(p, "\x00") || strings.Contains(p, "\\") {
			return httperr.Errorf(http.StatusBadRequest, "bad path")
		}
		clean := path.Clean("/" + p)
		name := strings.TrimPrefix(clean, "/")
		if name == "" {
			name = "."
		}
		if !fs.ValidPath(name) {
			return httperr.Errorf(http.StatusNotFound, "not found: %s", text.Cut(p, 200))
		}
		f, err := fsys.Open(name)
		if err != nil {
			return httperr.Errorf(http.StatusNotFound, "not found: %s", text.Cut(p, 200))
		}
		f.Close()
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fileServer.ServeHTTP(w, r)
		return nil
	})
}

// noListFS refuses to open a directory that has no index.html, so the
// file server never lists one.
type noListFS struct{ fs.FS }

func (n noListFS) Open(name string) (fs.File, error) {
	f, err := n.FS.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsDir() {
		idx, err := n.FS.Open(path.Join(name, "index.html"))
		if err != nil {
			f.Close()
			return nil, fs.ErrNotExist
		}
		idx.Close()
	}
	return f, nil
}
