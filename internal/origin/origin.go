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
// any). "null" and unparsable origins are refused.
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
	return strings.EqualFold(u.Hostname(), strings.Trim(host, "[]"))
}
