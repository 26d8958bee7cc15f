package rpc

import (
	"crypto/subtle"
	"net"
	"net/http"
	"net/url"
	"strings"

	"wsgateway/auth"
	"wsgateway/internal/origin"
)

// Access decides who may use the API: the same rules as the gateway's
// REST API (the security token, users, trusted proxies, and loopback
// clients as administrators when neither a token nor users are set), and
// the websocket Origin check (same host, or --allowed_origins).
type Access struct {
	SecurityToken  string
	Users          *auth.Users
	TrustedProxies auth.TrustedProxies
	AllowedOrigins []string
}

// AuthRequired: with a security token or users, every call needs
// credentials.
func (a *Access) AuthRequired() bool { return a.SecurityToken != "" || a.Users != nil }

func (a *Access) hasToken(r *http.Request) bool {
	if a.SecurityToken == "" {
		return false
	}
	got := r.URL.Query().Get("security_token")
	if got == "" {
		if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
			got = strings.TrimPrefix(h, "Bearer ")
		}
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(a.SecurityToken)) == 1
}

// Caller works out who made r, as the gateway does: nil for an anonymous
// caller, auth.ErrBadCredentials (or another error) for wrong credentials.
func (a *Access) Caller(r *http.Request) (*auth.Identity, error) {
	if a.hasToken(r) {
		return &auth.Identity{Name: "admin", Admin: true, Via: "security_token"}, nil
	}
	if id := a.TrustedProxies.Identity(r); id != nil {
		return id, nil
	}
	if a.Users != nil {
		id, err := a.Users.Authenticate(r)
		if err != nil || id != nil {
			return id, err
		}
	}
	if !a.AuthRequired() && origin.LocalAdmin(r) {
		return &auth.Identity{Name: "", Admin: true, Via: "loopback"}, nil
	}
	return nil, nil
}

// OriginAllowed accepts requests without an Origin (non-browser clients),
// an Origin on the same host as the request, and the allow-list.
func (a *Access) OriginAllowed(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	for _, al := range a.AllowedOrigins {
		if al == "*" || strings.EqualFold(strings.TrimRight(al, "/"), o) {
			return true
		}
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" {
		return false
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(r.Host); err == nil {
		host = h
	}
	return strings.EqualFold(u.Hostname(), strings.Trim(host, "[]"))
}
