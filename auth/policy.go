package auth

import (
	"crypto/subtle"
	"net/http"
	"strings"

	"wsgateway/internal/origin"
)

// Policy says who made a request, the same way for every front end of the
// gateway (REST, websockets, JSON-RPC): the holder of the security token
// (an administrator), a user (HTTP Basic, API key, session cookie), an
// identity asserted by a trusted proxy, or, when neither a security token
// nor users are configured, a local client that names the gateway by an
// IP address or localhost (an administrator).
type Policy struct {
	SecurityToken  string
	Users          *Users
	TrustedProxies TrustedProxies
}

// Required reports whether every call needs credentials (a security
// token or users are configured).
func (p *Policy) Required() bool { return p.SecurityToken != "" || p.Users != nil }

// HasToken reports whether r carries the security token, in the query
// (security_token=) or as Authorization: Bearer, compared in constant time.
func (p *Policy) HasToken(r *http.Request) bool {
	if p.SecurityToken == "" {
		return false
	}
	got := r.URL.Query().Get("security_token")
	if got == "" {
		if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
			got = strings.TrimPrefix(h, "Bearer ")
		}
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(p.SecurityToken)) == 1
}

// Caller returns the identity behind r: nil for an anonymous caller, and
// ErrBadCredentials for credentials that are wrong.
func (p *Policy) Caller(r *http.Request) (*Identity, error) {
	if p.HasToken(r) {
		return &Identity{Name: "admin", Admin: true, Via: "security_token"}, nil
	}
	if id := p.TrustedProxies.Identity(r); id != nil {
		return id, nil
	}
	if p.Users != nil {
		id, err := p.Users.Authenticate(r)
		if err != nil || id != nil {
			return id, err
		}
	}
	if !p.Required() && origin.LocalAdmin(r) {
		return &Identity{Name: "", Admin: true, Via: "loopback"}, nil
	}
	return nil, nil
}
