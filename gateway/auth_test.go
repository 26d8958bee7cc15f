package gateway

import (
	"net/http/httptest"
	"testing"

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

func TestOriginAllowed(t *testing.T) {
	s := newTestServer(t, Config{AllowedOrigins: []string{"https://app.example.org"}})
	cases := []struct {
		host, origin string
		want         bool
	}{
		{"gw.example.org:9091", "", true},
		{"gw.example.org:9091", "http://gw.example.org:9090", true},
		{"gw.example.org:9091", "https://GW.example.org", true},
		{"gw.example.org", "https://gw.example.org.evil.com", false},
		{"gw.example.org:9091", "https://app.example.org", true},
		{"gw.example.org:9091", "https://app.example.org:8443", false},
		{"gw.example.org:9091", "null", false},
		{"[::1]:9091", "http://[::1]:9090", true},
		{"127.0.0.1:9091", "http://localhost:9090", false},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.Host = c.host
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		if got := s.originAllowed(r); got != c.want {
			t.Errorf("host %s origin %q: %v, want %v", c.host, c.origin, got, c.want)
		}
	}
	star := newTestServer(t, Config{AllowedOrigins: []string{"*"}})
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Origin", "https://anything.example")
	if !star.originAllowed(r) {
		t.Error("* does not allow every origin")
	}
}

func TestAdminAndAuth(t *testing.T) {
	open := newTestServer(t, Config{})
	tok := newTestServer(t, Config{SecurityToken: "tok"})
	cases := []struct {
		name          string
		s             *Server
		host          string
		remote, query string
		header        map[string]string
		auth, admin   bool
	}{
		{"loopback v4", open, "", "127.0.0.1:5000", "", nil, true, true},
		{"loopback v6", open, "", "[::1]:5000", "", nil, true, true},
		{"loopback, IP Host", open, "127.0.0.1:9090", "127.0.0.1:5000", "", nil, true, true},
		{"loopback, rebound DNS name", open, "rebind.evil.example:9090", "127.0.0.1:5000", "", map[string]string{"Origin": "http://rebind.evil.example:9090"}, true, false},
		{"remote", open, "", "10.1.2.3:5000", "", nil, true, false},
		{"loopback cross-site", open, "", "127.0.0.1:5000", "", map[string]string{"Sec-Fetch-Site": "cross-site"}, true, false},
		{"loopback foreign origin", open, "", "127.0.0.1:5000", "", map[string]string{"Origin": "https://evil.example"}, true, false},
		{"token missing", tok, "", "127.0.0.1:5000", "", nil, false, false},
		{"token in query", tok, "", "10.1.2.3:5000", "security_token=tok", nil, true, true},
		{"token wrong", tok, "", "10.1.2.3:5000", "security_token=tok2", nil, false, false},
		{"token prefix", tok, "", "10.1.2.3:5000", "security_token=to", nil, false, false},
		{"bearer", tok, "", "10.1.2.3:5000", "", map[string]string{"Authorization": "Bearer tok"}, true, true},
		{"bearer wrong scheme", tok, "", "10.1.2.3:5000", "", map[string]string{"Authorization": "Basic tok"}, false, false},
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
		_, err := c.s.requireAuth(r)
		if got := err == nil; got != c.auth {
			t.Errorf("%s: authorized %v, want %v", c.name, got, c.auth)
		}
		if got := c.s.isAdmin(r); got != c.admin {
			t.Errorf("%s: admin %v, want %v", c.name, got, c.admin)
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
