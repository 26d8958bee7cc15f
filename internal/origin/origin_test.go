package origin

import (
	"net/http/httptest"
	"testing"
)

func TestClassify(t *testing.T) {
	allow := []string{"https://app.example.org"}
	cases := []struct {
		name, remote, host, origin, fetchSite string
		allow                                 []string
		want                                  Site
	}{
		{"curl", "10.0.0.1:5", "gw.example.org:9090", "", "", allow, Direct},
		{"typed URL", "10.0.0.1:5", "gw.example.org:9090", "", "none", allow, Direct},
		{"none with a foreign Origin", "10.0.0.1:5", "gw.example.org:9090", "https://evil.example", "none", allow, Foreign},
		{"none with our Origin", "10.0.0.1:5", "gw.example.org:9090", "http://gw.example.org:9090", "none", allow, Own},
		{"own page by fetch metadata", "10.0.0.1:5", "gw.example.org:9090", "https://elsewhere.example", "same-origin", allow, Own},
		{"own page by Origin", "10.0.0.1:5", "gw.example.org:9090", "http://gw.example.org:9090", "", allow, Own},
		{"own page, host case", "10.0.0.1:5", "GW.example.org:9090", "http://gw.EXAMPLE.org:9090", "", allow, Own},
		{"own page, default port http", "10.0.0.1:5", "gw.example.org", "http://gw.example.org", "", allow, Own},
		{"own page, default port https", "10.0.0.1:5", "gw.example.org", "https://gw.example.org", "", allow, Listed},
		{"own page, explicit default port", "10.0.0.1:5", "gw.example.org:443", "https://gw.example.org", "", allow, Own},
		{"other port, no metadata", "10.0.0.1:5", "gw.example.org:9090", "http://gw.example.org:8000", "", allow, Listed},
		{"other port, same-site", "10.0.0.1:5", "gw.example.org:9090", "http://gw.example.org:8000", "same-site", allow, Listed},
		{"img from other port", "10.0.0.1:5", "gw.example.org:9090", "", "same-site", allow, Foreign},
		{"img from other site", "10.0.0.1:5", "gw.example.org:9090", "", "cross-site", allow, Foreign},
		{"listed origin", "10.0.0.1:5", "gw.example.org:9090", "https://app.example.org", "cross-site", allow, Listed},
		{"listed origin, trailing slash in list", "10.0.0.1:5", "gw.example.org:9090", "https://app.example.org", "", []string{"https://app.example.org/"}, Listed},
		{"listed origin, other port", "10.0.0.1:5", "gw.example.org:9090", "https://app.example.org:8443", "", allow, Foreign},
		{"star", "10.0.0.1:5", "gw.example.org:9090", "https://evil.example", "cross-site", []string{"*"}, Listed},
		{"foreign", "10.0.0.1:5", "gw.example.org:9090", "https://evil.example", "cross-site", allow, Foreign},
		{"foreign suffix", "10.0.0.1:5", "gw.example.org", "https://gw.example.org.evil.com", "", allow, Foreign},
		{"null origin", "10.0.0.1:5", "gw.example.org:9090", "null", "", allow, Foreign},
		{"null origin, star", "10.0.0.1:5", "gw.example.org:9090", "null", "", []string{"*"}, Foreign},
		{"file scheme", "10.0.0.1:5", "gw.example.org:9090", "file://gw.example.org", "", allow, Foreign},
		{"loopback by IP", "127.0.0.1:5", "127.0.0.1:9090", "http://127.0.0.1:9090", "", nil, Own},
		{"loopback v6", "[::1]:5", "[::1]:9090", "http://[::1]:9090", "", nil, Own},
		{"loopback, localhost vs IP", "127.0.0.1:5", "127.0.0.1:9091", "http://localhost:9090", "", nil, Foreign},
		{"rebinding: same-origin under a DNS name", "127.0.0.1:5", "rebind.evil.example:9090", "", "same-origin", nil, Foreign},
		{"rebinding: Origin under a DNS name", "127.0.0.1:5", "rebind.evil.example:9090", "http://rebind.evil.example:9090", "", nil, Foreign},
		{"DNS name from loopback without a page", "127.0.0.1:5", "myhost.example:9090", "", "", nil, Direct},
		{"fetch metadata in capitals", "10.0.0.1:5", "gw.example.org:9090", "", "CROSS-SITE", allow, Foreign},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		r.Host = c.host
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		if c.fetchSite != "" {
			r.Header.Set("Sec-Fetch-Site", c.fetchSite)
		}
		if got := Classify(r, r.Host, c.allow); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, got, c.want)
		}
		if got := Allowed(r, c.allow); got != (c.want != Foreign) {
			t.Errorf("%s: Allowed %v", c.name, got)
		}
	}
}

func TestClassifyUsesTheGivenHost(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.0.0.9:5"
	r.Host = "127.0.0.1:9090" // rewritten by a proxy
	r.Header.Set("Origin", "https://viz.example.org")
	if got := Classify(r, r.Host, nil); got != Foreign {
		t.Fatalf("with the rewritten Host: %s", got)
	}
	if got := Classify(r, "viz.example.org:443", nil); got != Own {
		t.Fatalf("with the forwarded host: %s", got)
	}
}

func TestAmbient(t *testing.T) {
	for s, want := range map[Site]bool{Direct: true, Own: true, Listed: false, Foreign: false} {
		if s.Ambient() != want {
			t.Errorf("%s.Ambient() = %v", s, !want)
		}
	}
	if Site(99).String() != "foreign" || Listed.String() != "listed" || Own.String() != "own" || Direct.String() != "direct" {
		t.Error("names")
	}
}

func TestLocalName(t *testing.T) {
	cases := []struct {
		remote, host string
		want         bool
	}{
		{"127.0.0.1:5", "127.0.0.1:9090", true},
		{"127.0.0.1:5", "localhost:9090", true},
		{"127.0.0.1:5", "LOCALHOST", true},
		{"[::1]:5", "[::1]:9090", true},
		{"127.0.0.1:5", "", true},
		{"127.0.0.1:5", "rebind.example:9090", false},
		{"10.0.0.1:5", "127.0.0.1:9090", false},
		{"garbage", "127.0.0.1:9090", false},
	}
	for _, c := range cases {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = c.remote
		r.Host = c.host
		if got := LocalName(r); got != c.want {
			t.Errorf("remote %s host %s: %v", c.remote, c.host, got)
		}
		if LoopbackPeer(r) != (c.remote != "10.0.0.1:5" && c.remote != "garbage") {
			t.Errorf("LoopbackPeer(%s)", c.remote)
		}
	}
}
