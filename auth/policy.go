package auth

import (
	"crypto/subtle"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
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
	// ProxyUIDs are the local users a --trusted_proxy on this machine
	// runs as (--trusted_proxy_user); a local peer of a trusted network
	// running as anyone else is not trusted.
	ProxyUIDs []int
}

// Caller is the policy's answer for one request.
type Caller struct {
	// ID is the caller's identity, nil for an anonymous one.
	ID *Identity
	// Site is where the request comes from.
	Site origin.Site
	// Client is the key every per-client limit counts the request
	// under: the client's IP (behind a trusted proxy, the rightmost
	// X-Forwarded-For hop that is not a trusted proxy; IPv6 by /64), or
	// for a process on this machine its user ("local-uid-N"), with
	// "|pages" added for requests made by a web page other than the
	// gateway's own (see Policy.client).
	Client string
	// Proxied: the request came through a proxy (a trusted one, or one
	// that added forwarding headers).
	Proxied bool

	recheck func() bool // nil: the credentials cannot change
}

// Valid reports whether the credentials the Caller was made from still
// hold with the same rights: a cookie not ended by a logout or a
// password change, a password or API key unchanged, the user still in
// the users file in the same groups. A long-lived connection (/v1/rpc)
// asks before each request and ends when they do not.
func (c Caller) Valid() bool { return c.recheck == nil || c.recheck() }

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

// trustedPeer reports whether r's peer is a --trusted_proxy. A peer on
// this machine (a loopback address, or the address it connected to) is
// one only when it runs as one of ProxyUIDs: every local account can
// connect from 127.0.0.1, and must not be able to assert a user.
func (p *Policy) trustedPeer(r *http.Request) bool {
	ip := remoteIP(r.RemoteAddr)
	if !p.TrustedProxies.contains(ip) {
		return false
	}
	if !localPeer(r, ip) {
		return true
	}
	uid, err := p.peerUID(r)
	return err == nil && slices.Contains(p.ProxyUIDs, uid)
}

// localPeer: ip is a loopback address or the address r reached (a
// process on this machine connecting through one of its addresses).
func localPeer(r *http.Request, ip net.IP) bool {
	if ip.IsLoopback() {
		return true
	}
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if local == nil {
		return false
	}
	return ip.Equal(remoteIP(local.String()))
}

// peerUID is the local user of r's peer: PeerUID when set (tests), else
// the connection's, read from the socket tables once per connection.
func (p *Policy) peerUID(r *http.Request) (int, error) {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if p.PeerUID == nil {
		if uid, ok, err := peer.UIDFromContext(r.Context()); ok {
			return uid, err
		}
	}
	if local == nil {
		return 0, peer.ErrUnknown
	}
	remote, err := net.ResolveTCPAddr("tcp", r.RemoteAddr)
	if err != nil {
		return 0, err
	}
	if p.PeerUID != nil {
		return p.PeerUID(local, remote)
	}
	return peer.UID(local, remote)
}

// Site says which site r comes from (see origin.Classify); behind a
// trusted proxy the name the client used is its X-Forwarded-Host, and
// the scheme its X-Forwarded-Proto (a proxy that ends TLS).
func (p *Policy) Site(r *http.Request) origin.Site {
	return p.site(r, p.trustedPeer(r))
}

func (p *Policy) site(r *http.Request, trusted bool) origin.Site {
	host := r.Host
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if trusted {
		if fh := firstValue(r.Header.Get("X-Forwarded-Host")); fh != "" {
			host = fh
		}
		if fp := strings.ToLower(firstValue(r.Header.Get("X-Forwarded-Proto"))); fp == "http" || fp == "https" {
			scheme = fp
		}
	}
	return origin.ClassifyScheme(r, host, scheme, p.AllowedOrigins)
}

// Client is the key limits count r under (see Caller.Client).
func (p *Policy) Client(r *http.Request) string {
	trusted := p.trustedPeer(r)
	return p.client(r, trusted, p.site(r, trusted))
}

// client: the client's address (behind a trusted proxy, the rightmost
// untrusted X-Forwarded-For hop), IPv6 by /64; a process on this machine
// by its user ("local-uid-N", or "local" when unknown), so that
// rotating loopback addresses changes nothing and one local account
// cannot lock another out; and, for requests a web page other than the
// gateway's own made, the suffix "|pages", so that a foreign page can
// exhaust only what pages share, never the limits of its visitor's own
// direct requests.
func (p *Policy) client(r *http.Request, trusted bool, site origin.Site) string {
	ip := remoteIP(r.RemoteAddr)
	var key string
	if trusted {
		key = groupIP(net.ParseIP(p.TrustedProxies.clientFor(r, ipString(ip, r.RemoteAddr))))
	} else if ip != nil && localPeer(r, ip) {
		key = "local"
		if uid, err := p.peerUID(r); err == nil {
			key = "local-uid-" + strconv.Itoa(uid)
		}
	} else if key = groupIP(ip); key == "" {
		key = r.RemoteAddr
	}
	if !site.Ambient() {
		key += "|pages"
	}
	return key
}

// groupIP is an address as limits count it: IPv4 whole, IPv6 by /64
// (one host gets a /64 and could rotate within it).
func groupIP(ip net.IP) string {
	if ip == nil {
		return ""
	}
	if ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return ip.String()
}

// Caller returns who made r. Wrong explicit credentials (and wrong
// ambient ones where they count) are ErrBadCredentials, with the rest of
// the Caller (site, client address) filled in for the failure limits.
func (p *Policy) Caller(r *http.Request) (Caller, error) {
	trusted := p.trustedPeer(r)
	c := Caller{Site: p.site(r, trusted), Proxied: trusted}
	c.Client = p.client(r, trusted, c.Site)
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
			key := strings.TrimPrefix(h, "Bearer ")
			if id, err := p.Users.CheckAPIKey(key); err == nil {
				c.ID = id
				c.recheck = func() bool { now, err := p.Users.CheckAPIKey(key); return err == nil && sameRights(id, now) }
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
		if id := assertedIdentity(r); id != nil {
			c.ID = id
			return c, nil
		}
	}
	if p.Users != nil {
		id, recheck, err := p.Users.authenticate(r)
		if err != nil || id != nil {
			c.ID, c.recheck = id, recheck
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
	if local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr); local == nil {
		return false
	}
	uid, err := p.peerUID(r)
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
