// Package origin decides whether a browser request's Origin may use the
// gateway: the same host as the request (any port), or an allow-list.
package origin

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Allowed accepts a request without an Origin (a non-browser client), an
// Origin on the request's own host, and the origins in allow ("*" allows
// any). "null" and unparsable origins are refused. For a peer on this
// machine, "the request's own host" counts only when the Host is an IP
// literal or localhost: a DNS name there may be an attacker's, re-pointed
// at 127.0.0.1 (DNS rebinding) to reach a gateway the attacker cannot
// reach itself.
func Allowed(r *http.Request, allow []string) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	for _, a := range allow {
		if a == "*" || strings.EqualFold(strings.TrimRight(a, "/"), o) {
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
	host = strings.Trim(host, "[]")
	if loopbackPeer(r) && !unrebindable(host) {
		return false
	}
	return strings.EqualFold(u.Hostname(), host)
}

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

// LocalAdmin reports whether r comes from this machine under a name that
// cannot be rebound: a loopback peer that asked for an IP literal or
// "localhost" in its Host header. A page served from a DNS name that an
// attacker re-points at 127.0.0.1 (DNS rebinding) sends that name, and is
// not trusted as a local administrator.
func LocalAdmin(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return false
	}
	name := r.Host
	if h, _, err := net.SplitHostPort(name); err == nil {
		name = h
	}
	return unrebindable(strings.Trim(name, "[]"))
}
