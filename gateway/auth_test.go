package gateway

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"wsgateway/internal/httperr"

	"github.com/rs/zerolog"
)

func newTestServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.SessionRoot = t.TempDir()
	s, err := New(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestAdminAndAuth goes through the handlers' own checks (requireAuth,
// requireAdmin); the policy's cases are in package auth.
func TestAdminAndAuth(t *testing.T) {
	open := newTestServer(t, Config{})
	tok := newTestServer(t, Config{SecurityToken: "tok"})
	me := os.Getuid()
	open.policy.PeerUID = func(net.Addr, net.Addr) (int, error) { return me, nil }
	cases := []struct {
		name          string
		s             *Server
		host          string
		remote, query string
		header        map[string]string
		auth, admin   bool
		status        int
	}{
		{"loopback v4", open, "", "127.0.0.1:5000", "", nil, true, true, 0},
		{"loopback v6", open, "", "[::1]:5000", "", nil, true, true, 0},
		{"loopback, IP Host", open, "127.0.0.1:9090", "127.0.0.1:5000", "", nil, true, true, 0},
		{"loopback, rebound DNS name", open, "rebind.evil.example:9090", "127.0.0.1:5000", "", map[string]string{"Origin": "http://rebind.evil.example:9090"}, true, false, 403},
		{"remote", open, "", "10.1.2.3:5000", "", nil, true, false, 403},
		{"loopback cross-site", open, "", "127.0.0.1:5000", "", map[string]string{"Sec-Fetch-Site": "cross-site"}, true, false, 403},
		{"loopback same-site", open, "", "127.0.0.1:5000", "", map[string]string{"Sec-Fetch-Site": "same-site"}, true, false, 403},
		{"loopback foreign origin", open, "", "127.0.0.1:5000", "", map[string]string{"Origin": "https://evil.example"}, true, false, 403},
		{"loopback through a proxy", open, "", "127.0.0.1:5000", "", map[string]string{"X-Forwarded-For": "203.0.113.1"}, true, false, 403},
		{"token missing", tok, "", "127.0.0.1:5000", "", nil, false, false, 401},
		{"token in query", tok, "", "10.1.2.3:5000", "security_token=tok", nil, true, true, 0},
		{"token wrong", tok, "", "10.1.2.3:5000", "security_token=tok2", nil, false, false, 401},
		{"token prefix", tok, "", "10.1.2.3:5000", "security_token=to", nil, false, false, 401},
		{"bearer", tok, "", "10.1.2.3:5000", "", map[string]string{"Authorization": "Bearer tok"}, true, true, 0},
		{"bearer wrong scheme", tok, "", "10.1.2.3:5000", "", map[string]string{"Authorization": "Basic tok"}, false, false, 401},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/v1/status?"+c.query, nil)
		r.RemoteAddr = c.remote
		r.Host = c.host
		if r.Host == "" {
			r.Host = "localhost:9090"
		}
		for k, v := range c.header {
			r.Header.Set(k, v)
		}
		r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9090}))
		_, err := c.s.requireAuth(r)
		if got := err == nil; got != c.auth {
			t.Errorf("%s: authorized %v (%v), want %v", c.name, got, err, c.auth)
		}
		_, err = c.s.requireAdmin(r)
		if got := err == nil; got != c.admin {
			t.Errorf("%s: admin %v, want %v", c.name, got, c.admin)
		}
		if err != nil && httperr.Status(err) != c.status {
			t.Errorf("%s: status %d, want %d (%v)", c.name, httperr.Status(err), c.status, err)
		}
	}
}

func TestSafeName(t *testing.T) {
	for in, want := range map[string]string{
		"Local Desktop": "Local_Desktop",
		"../../etc":     ".._.._etc",
		"a/b\x00c":      "a_b_c",
		"ok-name_1.2":   "ok-name_1.2",
		"éèà":           "_",
		"averyveryveryveryveryverylongservicename": "averyveryveryveryveryverylongser",
	} {
		if got := safeName(in); got != want {
			t.Errorf("safeName(%q) = %q, want %q", in, got, want)
		}
	}
}
