package gateway

import (
	"encoding/json"
	"net/http"
	"time"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
)

const sessionTTL = 12 * time.Hour

// handleLogin checks a user name and password (JSON body) and sets the
// dashboard's session cookie: HttpOnly, SameSite=Strict, Secure over TLS.
func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Users == nil {
		return httperr.Errorf(http.StatusNotFound, "this gateway has no users (--users); use its security token")
	}
	client := s.clientOf(r)
	if !s.policy.Site(r).Ambient() {
		return httperr.Errorf(http.StatusForbidden, "login from a page on another site or port refused: log in on the gateway's own page %slogin.html", PagesPrefix)
	}
	if s.authLimit.exhausted(client) {
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
		s.authLimit.allow(client)
		s.log.Info().Str("user", text.Cut(body.User, 64)).Str("remote", r.RemoteAddr).Msg("login failed")
		return httperr.Errorf(http.StatusUnauthorized, "wrong user name or password")
	}
	http.SetCookie(w, &http.Cookie{Name: auth.CookieName, Value: s.cfg.Users.SessionCookie(id.Name, sessionTTL), Path: "/",
		MaxAge: int(sessionTTL / time.Second), HttpOnly: true, Secure: s.cfg.TLS != nil, SameSite: http.SameSiteStrictMode})
	s.log.Info().Str("user", id.Name).Str("remote", r.RemoteAddr).Msg("logged in")
	writeJSON(w, http.StatusOK, id)
	return nil
}

// handleLogout ends the caller's session cookies (in every browser: a
// cookie issued before a logout is refused) and clears the cookie.
func (s *Server) handleLogout(w http.ResponseWriter, r *http.Request) error {
	if !s.policy.Site(r).Ambient() {
		return httperr.Errorf(http.StatusForbidden, "logout from a page on another site or port refused")
	}
	if s.cfg.Users != nil {
		if ck, err := r.Cookie(auth.CookieName); err == nil {
			if id, err := s.cfg.Users.CheckCookie(ck.Value); err == nil {
				s.cfg.Users.EndSessions(id.Name)
				s.log.Info().Str("user", id.Name).Str("remote", r.RemoteAddr).Msg("logged out")
			}
		}
	}
	http.SetCookie(w, &http.Cookie{Name: auth.CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true,
		Secure: s.cfg.TLS != nil, SameSite: http.SameSiteStrictMode})
	writeJSON(w, http.StatusOK, map[string]bool{"logged_out": true})
	return nil
}

func (s *Server) handleWhoami(w http.ResponseWriter, r *http.Request) error {
	c, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	id := c.ID
	if id == nil {
		id = &auth.Identity{Via: "anonymous"}
	}
	writeJSON(w, http.StatusOK, id)
	return nil
}
