// Package origin says which site a request comes from: no web page at all
// (curl, a script, a server back end, a typed URL), a page of the
// gateway's own origin, a page the operator lists (or one on this host at
// another port), or any other page. The trust policy (package auth) uses
// the answer to decide whether a request's ambient credentials (a
// loopback address, a cookie, HTTP Basic, a proxy's assertion) count, and
// every websocket upgrade uses it to refuse foreign pages.
package origin

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Site is where a request comes from, as far as the gateway can tell.
type Site int

const (
	// Direct: not sent by a web page: no Origin and no Sec-Fetch-Site, or
	// Sec-Fetch-Site "none" (a URL the user typed or a bookmark).
	Direct Site = iota
	// Own: a page of the gateway's own origin (Sec-Fetch-Site
	// "same-origin", or an Origin equal to the request's scheme-less
	// host and port).
	Own
	// Listed: a page on an origin in --allowed_origins, or on this host
	// at another port. It may use the gateway with what it carries
	// explicitly (a reservation token, a bearer credential), never with
	// ambient credentials.
	Listed
	// Foreign: any other page, and every page that reached a loopback
	// listener under a DNS name (DNS rebinding).
	Foreign
)

func (s Site) String() string {
	switch s {
	case Direct:
		return "direct"
	case Own:
		return "own"
	case Listed:
		return "listed"
	}
	return "foreign"
}

// Ambient reports whether a request from s may use ambient credentials:
// only requests that no other page made (Direct) and the gateway's own
// pages (Own).
func (s Site) Ambient() bool { return s == Direct || s == Own }

// Classify says where r comes from. host is the name the client used to
// reach the gateway: r.Host, or the X-Forwarded-Host a trusted proxy
// passed on. allow is --allowed_origins ("*" lists every origin).
//
// Sec-Fetch-Site, which a page cannot set, decides first: "same-origin"
// is Own, "none" is Direct, "same-site" and "cross-site" are Listed or
// Foreign by the Origin (Foreign when there is none, as for an <img>).
// Without it, no Origin is Direct and the Origin decides.
func Classify(r *http.Request, host string, allow []string) Site {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return ClassifyScheme(r, host, scheme, allow)
}

// ClassifyScheme is Classify for a request the client made with scheme
// ("http" or "https"), which is not r's own behind a proxy that ends TLS
// (the X-Forwarded-Proto a trusted proxy passed on): a port the Origin
// leaves out is that scheme's default.
func ClassifyScheme(r *http.Request, host, scheme string, allow []string) Site {
	fetchSite := strings.ToLower(r.Header.Get("Sec-Fetch-Site"))
	o := r.Header.Get("Origin")
	page := o != "" || (fetchSite != "" && fetchSite != "none")
	hostName, hostPort := splitHost(host)
	if page && loopbackPeer(r) && !unrebindable(hostName) {
		return Foreign
	}
	switch fetchSite {
	case "same-origin":
		return Own
	case "none":
		if o == "" {
			return Direct
		}
	case "same-site", "cross-site":
		if o == "" {
			return Foreign
		}
		if listed(o, hostName, allow) {
			return Listed
		}
		return Foreign
	}
	if o == "" {
		return Direct
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		if listed(o, hostName, allow) {
			return Listed
		}
		return Foreign
	}
	if strings.EqualFold(u.Hostname(), hostName) && originPort(u) == defaultPort(hostPort, scheme) {
		return Own
	}
	if listed(o, hostName, allow) {
		return Listed
	}
	return Foreign
}

// Allowed reports whether a page from r's site may use the gateway at
// all (open a websocket, call the launcher): everything but Foreign.
func Allowed(r *http.Request, allow []string) bool {
	return Classify(r, r.Host, allow) != Foreign
}

// listed: in allow, or on the request's own host at another port.
func listed(o, hostName string, allow []string) bool {
	if o == "null" {
		return false // an opaque origin (sandbox, data: URL) is nobody's: even "*" does not list it
	}
	for _, a := range allow {
		if a == "*" || strings.EqualFold(strings.TrimRight(a, "/"), o) {
			return true
		}
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	return strings.EqualFold(u.Hostname(), hostName)
}

func splitHost(host string) (name, port string) {
	if h, p, err := net.SplitHostPort(host); err == nil {
		return strings.Trim(h, "[]"), p
	}
	return strings.Trim(host, "[]"), ""
}

func originPort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	return defaultPort("", u.Scheme)
}

func defaultPort(port, scheme string) string {
	if port != "" {
		return port
	}
	if scheme == "https" {
		return "443"
	}
	return "80"
}

// LoopbackPeer reports whether r's peer address is a loopback address.
func LoopbackPeer(r *http.Request) bool { return loopbackPeer(r) }

func loopbackPeer(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// unrebindable: an IP literal or localhost, names DNS cannot re-point.
func unrebindable(host string) bool {
	return host == "" || strings.EqualFold(host, "localhost") || net.ParseIP(host) != nil
}

// LocalName reports whether r comes from a loopback address under a name
// that cannot be rebound: an IP literal or "localhost" in its Host
// header. A page served from a DNS name that an attacker re-points at
// 127.0.0.1 (DNS rebinding) sends that name.
func LocalName(r *http.Request) bool {
	if !loopbackPeer(r) {
		return false
	}
	name, _ := splitHost(r.Host)
	return unrebindable(name)
}
