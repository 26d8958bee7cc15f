package gateway

import (
	"net/http"
	"strings"

	"github.com/gorilla/mux"
	"github.com/gorilla/websocket"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
)

// httpPortHandler serves the HTTP port: websocket upgrades (same semantics
// as ws_server_port), the REST API and the static directory.
func (s *Server) httpPortHandler() http.Handler {
	r := mux.NewRouter()
	r.UseEncodedPath()
	v1 := r.PathPrefix("/v1/").Subrouter()
	// Every method reaches handleReserve, which reserves on GET only and
	// answers anything else (HEAD included) with 405.
	v1.Handle("/reserve/{service}", s.handle(s.handleReserve))
	v1.Handle("/release/{token}", s.handle(s.handleRelease)).Methods(http.MethodGet)
	v1.Handle("/status", s.handle(s.handleStatus)).Methods(http.MethodGet, http.MethodHead)
	v1.Handle("/status_view", s.handle(s.handleStatusView)).Methods(http.MethodGet, http.MethodHead)
	v1.Handle("/stop", s.handle(s.handleStop)).Methods(http.MethodGet)
	v1.Handle("/check_token", s.handle(s.handleCheckToken)).Methods(http.MethodGet)
	v1.Handle("/login", s.handle(s.handleLogin)).Methods(http.MethodPost)
	v1.Handle("/logout", s.handle(s.handleLogout)).Methods(http.MethodPost)
	v1.Handle("/whoami", s.handle(s.handleWhoami)).Methods(http.MethodGet)
	v1.Handle("/share/{token}", s.handle(s.handleShareCreate)).Methods(http.MethodPost)
	v1.Handle("/share/{token}", s.handle(s.handleShareList)).Methods(http.MethodGet)
	v1.Handle("/share/{token}/{share}", s.handle(s.handleShareRevoke)).Methods(http.MethodDelete)
	v1.Handle("/viewers", s.handle(s.handleViewers)).Methods(http.MethodGet)
	v1.Handle("/recordings", s.handle(s.handleRecordings)).Methods(http.MethodGet)
	v1.Handle("/recordings/{dir}/{name}", s.handle(s.handleRecording)).Methods(http.MethodGet, http.MethodHead)
	v1.NotFoundHandler = s.handle(func(w http.ResponseWriter, r *http.Request) error {
		return httperr.Errorf(http.StatusNotFound, "no such API call %s; the API is /v1/reserve/<service>, /v1/release/<token>, /v1/status, /v1/status_view, /v1/stop, /v1/share/<token>, /v1/viewers, /v1/recordings", r.URL.Path)
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

// requireAuth returns the caller (see auth.Policy), or 401 when
// credentials are needed and missing or wrong (429 after too many
// failures from the client's address): Authenticate, which /v1/rpc
// calls too.
func (s *Server) requireAuth(r *http.Request) (auth.Caller, error) {
	return s.Authenticate(r)
}

func (s *Server) requireAdmin(r *http.Request) (auth.Caller, error) {
	c, err := s.requireAuth(r)
	if err != nil {
		return c, err
	}
	if !c.Admin() {
		return c, s.notAdmin(c)
	}
	return c, nil
}

// notAdmin says why c is not an administrator.
func (s *Server) notAdmin(c auth.Caller) error {
	switch {
	case !c.Site.Ambient():
		return httperr.Errorf(http.StatusForbidden, "a page on another site or port (%s) is never an administrator by its cookies, HTTP Basic or address; send the security token or an API key", c.Site)
	case s.authRequired():
		return httperr.Errorf(http.StatusForbidden, "this call is for administrators (group %q or the security token)", auth.AdminGroup)
	case c.Proxied:
		return httperr.Errorf(http.StatusForbidden, "a request through a proxy is never a loopback administrator; give the gateway a --security_token or --users")
	}
	return httperr.Errorf(http.StatusForbidden, "this call answers only to the gateway's own user on this machine (loopback, by IP address or localhost) unless the gateway has a --security_token or --users")
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
