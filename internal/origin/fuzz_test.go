package origin

import (
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

// FuzzClassify checks invariants stated without the classifier: a
// request whose fetch metadata says another site made it is never Own or
// Direct; one without Origin and fetch metadata is Direct (unless the
// rebinding rule applies, which needs a page); an Origin naming another
// host than the request's, not in the list, is Foreign.
func FuzzClassify(f *testing.F) {
	f.Add("127.0.0.1:9090", "http://127.0.0.1:8000", "same-site", "")
	f.Add("gw.example:443", "https://gw.example", "", "https://app.example")
	f.Add("gw.example", "null", "cross-site", "*")
	f.Add("[::1]:80", "", "none", "")
	f.Fuzz(func(t *testing.T, host, orig, fetchSite, allow string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = "192.0.2.1:5"
		r.Host = host
		if orig != "" {
			r.Header.Set("Origin", orig)
		}
		if fetchSite != "" {
			r.Header.Set("Sec-Fetch-Site", fetchSite)
		}
		if r.Header.Get("Origin") != orig || r.Header.Get("Sec-Fetch-Site") != fetchSite {
			return // not a header value an HTTP request can carry
		}
		var list []string
		if allow != "" {
			list = []string{allow}
		}
		got := Classify(r, host, list)
		fs := strings.ToLower(fetchSite)
		if (fs == "same-site" || fs == "cross-site") && got.Ambient() {
			t.Fatalf("Sec-Fetch-Site %q classified %s", fetchSite, got)
		}
		if orig == "" && fetchSite == "" && got != Direct {
			t.Fatalf("no Origin and no fetch metadata: %s", got)
		}
		if orig != "" && fs != "same-origin" && allow != "*" && !strings.EqualFold(strings.TrimRight(allow, "/"), orig) {
			u, err := url.Parse(orig)
			h := host
			if i := strings.LastIndex(h, ":"); i >= 0 && !strings.HasSuffix(h, "]") {
				h = h[:i]
			}
			h = strings.Trim(h, "[]")
			if (err != nil || !strings.EqualFold(u.Hostname(), h)) && got != Foreign {
				t.Fatalf("Origin %q on host %q, allow %q: %s, want foreign", orig, host, allow, got)
			}
		}
	})
}
