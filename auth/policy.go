package auth

import (
	"crypto/subtle"
	"net"
	"net/http"
	"os"
	"strings"

	"wsgateway/internal/origin"
	"wsgateway/internal/peer"
)

// Policy is the gateway's one trust policy: every front end (REST,
// websocket upgrades, JSON-RPC, the dashboard's login) asks it who made a
// request, from which site and from which client address, and then asks
// the answer (a Caller) what it may do. SECURITY.md's table is this
// type's contract.
//
// Credentials are of two sorts. Explicit ones can only be sent by a
// client that knows them: the security token (?security_token= or
// Authorization: Bearer) and API keys (Bearer). Ambient ones a browser or
// the network adds by itself: the session cookie, HTTP Basic, a trusted
// proxy's X-Forwarded-User, and the loopback address of a local
// administrator. Ambient credentials count only for requests that no
// other web page made (origin.Site.Ambient): a page on another site or on
// another port of this host is never an administrator or an owner by
// them.
type Policy struct {
	SecurityToken  string
	Users          *Users
	TrustedProxies TrustedProxies
	// AllowedOrigins is --allowed_origins: pages there may use the
	// gateway with explicit credentials and reservation tokens.
	AllowedOrigins []string
	// PeerUID finds the local user of a loopback peer (peer.UID when
	// nil); only the gateway's own user and root are loopback
	// administrators.
	PeerUID func(local, remote net.Addr) (int, error)
}

// Caller is the policy's answer for one request.
type Caller struct {
	// ID is the caller's identity, nil for an anonymous one.
	ID *Identity
	// Site is where the request comes from.
	Site origin.Site
	// Client is the client's IP address: the peer's, or behind a trusted
	// proxy the rightmost address of X-Forwarded-For that is not a
	// trusted proxy. Limits are keyed on it.
	Client string
	// Proxied: the request came through a proxy (a trusted one, or one
	// that added forwarding headers).
	Proxied bool
}

// Admin reports whether the caller administers the gateway.
func (c Caller) Admin() bool { return c.ID != nil && c.ID.Admin }

// Owner is what the caller's reservations are owned by: its identity's
// key, "" for anonymous callers and loopback administrators.
func (c Caller) Owner() string { return c.ID.Key() }

// Owns reports whether the caller owns something owned by owner: never
// for unowned ("") things.
func (c Caller) Owns(owner string) bool { return owner != "" && c.Owner() == owner }

// MayManage reports whether the caller may see the secrets of, release or
// stop something owned by owner: its owner or an administrator.
func (c Caller) MayManage(owner string) bool { return c.Admin() || c.Owns(owner) }

// InGroup reports whether the caller is in group g (administrators are in
// every group).
func (c Caller) InGroup(g string) bool { return c.ID.InGroup(g) }

// Name is the caller's name for display ("" when anonymous).
func (c Caller) Name() string {
	if c.ID == nil {
		return ""
	}
	return c.ID.Name
}

// Required reports whether every call needs credentials (a security
// token or users are configured).
func (p *Policy) Required() bool { return p.SecurityToken != "" || p.Users != nil }

// presentedToken returns the security token r presents, if any.
func presentedToken(r *http.Request) string {
	if got := r.URL.Query().Get("security_token"); got != "" {
		return got
	}
	if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
		return strings.TrimPrefix(h, "Bearer ")
	}
	return ""
}

// HasToken reports whether r carries the security token, compared in
// constant time.
func (p *Policy) HasToken(r *http.Request) bool {
	if p.SecurityToken == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(presentedToken(r)), []byte(p.SecurityToken)) == 1
}

// PresentsCredential reports whether r carries an explicit credential
// (the security token or a bearer value), right or wrong.
func PresentsCredential(r *http.Request) bool { return presentedToken(r) != "" }

// forwardingHeaders are added by proxies, never by browsers.
var forwardingHeaders = []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-Ip", "Via"}

// Site says which site r comes from (see origin.Classify); behind a
// trusted proxy the name the client used is its X-Forwarded-Host.
func (p *Policy) Site(r *http.Request) origin.Site {
	host := r.Host
	if p.TrustedProxies.contains(remoteIP(r.RemoteAddr)) {
		if fh := firstValue(r.Header.Get("X-Forwarded-Host")); fh != "" {
			host = fh
		}
	}
	return origin.Classify(r, host, p.AllowedOrigins)
}

// Client is r's client address as limits key it: the peer's IP, or
// behind a trusted proxy the client's (see Caller.Client).
func (p *Policy) Client(r *http.Request) string {
	peerIP := remoteIP(r.RemoteAddr)
	c := ipString(peerIP, r.RemoteAddr)
	if p.TrustedProxies.contains(peerIP) {
		c = p.TrustedProxies.clientFor(r, c)
	}
	return c
}

// Caller returns who made r. Wrong explicit credentials (and wrong
// ambient ones where they count) are ErrBadCredentials, with the rest of
// the Caller (site, client address) filled in for the failure limits.
func (p *Policy) Caller(r *http.Request) (Caller, error) {
	peerIP := remoteIP(r.RemoteAddr)
	trusted := p.TrustedProxies.contains(peerIP)
	c := Caller{Client: ipString(peerIP, r.RemoteAddr), Site: p.Site(r)}
	if trusted {
		c.Proxied = true
		c.Client = p.TrustedProxies.clientFor(r, c.Client)
	}
	for _, h := range forwardingHeaders {
		if r.Header.Get(h) != "" {
			c.Proxied = true
		}
	}
	ambient := c.Site.Ambient()

	// Explicit credentials: count from any site.
	if p.HasToken(r) {
		c.ID = &Identity{Name: "admin", Admin: true, Kind: KindToken, Via: "security_token"}
		return c, nil
	}
	if p.Users != nil {
		if h := r.Header.Get("Authorization"); strings.HasPrefix(h, "Bearer ") {
			if id, err := p.Users.CheckAPIKey(strings.TrimPrefix(h, "Bearer ")); err == nil {
				c.ID = id
				return c, nil
			}
		}
	}
	if !ambient {
		// A page elsewhere: its cookies, Basic and the proxy's assertion
		// are the browser's doing, not the page's. A wrong explicit
		// credential is still wrong.
		if p.Required() && PresentsCredential(r) {
			return c, ErrBadCredentials
		}
		return c, nil
	}
	if trusted {
		if id := p.TrustedProxies.Identity(r); id != nil {
			c.ID = id
			return c, nil
		}
	}
	if p.Users != nil {
		id, err := p.Users.Authenticate(r)
		if err != nil || id != nil {
			c.ID = id
			return c, err
		}
	}
	if p.Required() && PresentsCredential(r) {
		return c, ErrBadCredentials
	}
	if !p.Required() && !c.Proxied && p.localAdmin(r) {
		c.ID = &Identity{Admin: true, Kind: KindLoopback, Via: "loopback"}
	}
	return c, nil
}

// localAdmin: a loopback peer that names the gateway by an IP address or
// localhost (not a DNS name an attacker could re-point) and runs as the
// gateway's own user or root.
func (p *Policy) localAdmin(r *http.Request) bool {
	if !origin.LocalName(r) {
		return false
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if local == nil {
		return false
	}
	remote, err := net.ResolveTCPAddr("tcp", r.RemoteAddr)
	if err != nil {
		return false
	}
	find := p.PeerUID
	if find == nil {
		find = peer.UID
	}
	uid, err := find(local, remote)
	if err != nil {
		return false
	}
	return uid == os.Getuid() || uid == 0
}

func remoteIP(addr string) net.IP {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return net.ParseIP(host)
}

func ipString(ip net.IP, fallback string) string {
	if ip == nil {
		return fallback
	}
	return ip.String()
}

func firstValue(h string) string {
	v, _, _ := strings.Cut(h, ",")
	return strings.TrimSpace(v)
}
