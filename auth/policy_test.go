package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"wsgateway/internal/origin"
	"wsgateway/internal/peer"
)

// request builds r as the gateway would see it: from remote, to
// 127.0.0.1:9090, with the listener's address in its context.
func request(remote, target string, hdr ...string) *http.Request {
	r := httptest.NewRequest("GET", "http://127.0.0.1:9090"+target, nil)
	r.RemoteAddr = remote
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9090}
	return r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, local))
}

func uidIs(uid int, err error) func(net.Addr, net.Addr) (int, error) {
	return func(net.Addr, net.Addr) (int, error) { return uid, err }
}

func TestLoopbackAdministrator(t *testing.T) {
	me := os.Getuid()
	cases := []struct {
		name   string
		p      Policy
		r      *http.Request
		admin  bool
		proxed bool
	}{
		{"own user, direct", Policy{PeerUID: uidIs(me, nil)}, request("127.0.0.1:5000", "/"), true, false},
		{"own user over ::1", Policy{PeerUID: uidIs(me, nil)}, request("[::1]:5000", "/"), true, false},
		{"root", Policy{PeerUID: uidIs(0, nil)}, request("127.0.0.1:5000", "/"), true, false},
		{"another local user", Policy{PeerUID: uidIs(me+4242, nil)}, request("127.0.0.1:5000", "/"), false, false},
		{"owner unknown", Policy{PeerUID: uidIs(0, errors.New("gone"))}, request("127.0.0.1:5000", "/"), false, false},
		{"remote", Policy{PeerUID: uidIs(me, nil)}, request("10.1.2.3:5000", "/"), false, false},
		{"the gateway's own page", Policy{PeerUID: uidIs(me, nil)}, request("127.0.0.1:5000", "/", "Sec-Fetch-Site", "same-origin"), true, false},
		{"<img> on another port", Policy{PeerUID: uidIs(me, nil)}, request("127.0.0.1:5000", "/", "Sec-Fetch-Site", "same-site"), false, false},
		{"fetch from another port", Policy{PeerUID: uidIs(me, nil)}, request("127.0.0.1:5000", "/", "Origin", "http://127.0.0.1:8000"), false, false},
		{"listed page", Policy{PeerUID: uidIs(me, nil), AllowedOrigins: []string{"*"}}, request("127.0.0.1:5000", "/", "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"), false, false},
		{"a proxy's forwarding header", Policy{PeerUID: uidIs(me, nil)}, request("127.0.0.1:5000", "/", "X-Forwarded-For", "203.0.113.9"), false, true},
		{"a proxy's Via", Policy{PeerUID: uidIs(me, nil)}, request("127.0.0.1:5000", "/", "Via", "1.1 nginx"), false, true},
		{"a trusted proxy without a user", Policy{PeerUID: uidIs(me, nil), TrustedProxies: mustCIDRs("127.0.0.1"), ProxyUIDs: []int{me}}, request("127.0.0.1:5000", "/"), false, true},
		{"our own user on a trusted loopback network, not the proxy's", Policy{PeerUID: uidIs(me, nil), TrustedProxies: mustCIDRs("127.0.0.1"), ProxyUIDs: []int{me + 1}}, request("127.0.0.1:5000", "/"), true, false},
		{"a token is configured", Policy{PeerUID: uidIs(me, nil), SecurityToken: "t"}, request("127.0.0.1:5000", "/"), false, false},
	}
	for _, c := range cases {
		got, err := c.p.Caller(c.r)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got.Admin() != c.admin || got.Proxied != c.proxed {
			t.Errorf("%s: admin %v proxied %v, want %v %v (%+v)", c.name, got.Admin(), got.Proxied, c.admin, c.proxed, got.ID)
		}
		if got.Admin() && (got.ID.Kind != KindLoopback || got.Owner() != "") {
			t.Errorf("%s: %+v owner %q", c.name, got.ID, got.Owner())
		}
	}
	// Without the listener's address (no connection) nobody is a
	// loopback administrator.
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "127.0.0.1:5000"
	r.Host = "127.0.0.1:9090"
	if c, _ := (&Policy{PeerUID: uidIs(me, nil)}).Caller(r); c.Admin() {
		t.Error("admin without a local address")
	}
}

func mustCIDRs(s ...string) TrustedProxies {
	t, err := ParseCIDRs(s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestSecurityTokenIsExplicit(t *testing.T) {
	p := Policy{SecurityToken: "sekret-token"}
	cases := []struct {
		name  string
		r     *http.Request
		admin bool
		bad   bool
	}{
		{"query", request("10.0.0.1:5", "/?security_token=sekret-token"), true, false},
		{"bearer", request("10.0.0.1:5", "/", "Authorization", "Bearer sekret-token"), true, false},
		{"from a listed page it is still the token", request("10.0.0.1:5", "/?security_token=sekret-token", "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"), true, false},
		{"wrong", request("10.0.0.1:5", "/?security_token=sekret-tokeN"), false, true},
		{"prefix", request("10.0.0.1:5", "/?security_token=sekret"), false, true},
		{"wrong from a foreign page", request("10.0.0.1:5", "/?security_token=x", "Sec-Fetch-Site", "cross-site"), false, true},
		{"Basic is not bearer", request("10.0.0.1:5", "/", "Authorization", "Basic sekret-token"), false, false},
		{"none", request("10.0.0.1:5", "/"), false, false},
	}
	for _, c := range cases {
		got, err := p.Caller(c.r)
		if (err != nil) != c.bad || got.Admin() != c.admin {
			t.Errorf("%s: admin %v err %v", c.name, got.Admin(), err)
		}
		if c.admin && (got.ID.Kind != KindToken || got.Owner() != "token:admin") {
			t.Errorf("%s: %+v", c.name, got.ID)
		}
	}
}

func TestIdentitiesOfDifferentKindsNeverMeet(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	u, err := LoadUsers(writeFile(t, map[string]any{"users": map[string]any{
		"admin": map[string]any{"password_bcrypt": h, "api_keys": []string{"0123456789abcdef-adm"}},
		"alice": map[string]any{"password_bcrypt": h},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{SecurityToken: "tok", Users: u, TrustedProxies: mustCIDRs("10.9.0.0/16")}
	token, _ := p.Caller(request("10.0.0.1:5", "/?security_token=tok"))
	user, _ := p.Caller(request("10.0.0.1:5", "/", "Authorization", "Bearer 0123456789abcdef-adm"))
	proxied, _ := p.Caller(request("10.9.0.1:5", "/", "X-Forwarded-User", "admin"))
	proxiedToken, _ := p.Caller(request("10.9.0.1:5", "/", "X-Forwarded-User", "token:admin"))
	if user.Admin() || proxied.Admin() {
		t.Fatalf("a user or proxy identity named admin is an administrator: %+v %+v", user.ID, proxied.ID)
	}
	owners := map[string]string{"token": token.Owner(), "user": user.Owner(), "proxy": proxied.Owner(), "proxy token": proxiedToken.Owner()}
	seen := map[string]string{}
	for kind, o := range owners {
		if o == "" {
			t.Errorf("%s has no owner key", kind)
		}
		if other, dup := seen[o]; dup {
			t.Errorf("%s and %s share the owner %q", kind, other, o)
		}
		seen[o] = kind
	}
	for _, c := range []Caller{user, proxied, proxiedToken} {
		if c.MayManage(token.Owner()) {
			t.Errorf("%+v may manage the token holder's things", c.ID)
		}
	}
	if !token.MayManage(user.Owner()) || !user.MayManage(user.Owner()) || user.MayManage("") || (Caller{}).Owns("") {
		t.Error("MayManage")
	}
}

func TestAmbientCredentialsNeedOurOwnSite(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	u, err := LoadUsers(writeFile(t, map[string]any{"users": map[string]any{
		"alice": map[string]any{"password_bcrypt": h, "api_keys": []string{"0123456789abcdef-ali"}, "groups": []string{"admin"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{Users: u, TrustedProxies: mustCIDRs("10.9.0.1"), AllowedOrigins: []string{"https://app.example"}}
	cookie := "wsgw_session=" + u.SessionCookie("alice", time.Hour)
	basic := func(r *http.Request) *http.Request { r.SetBasicAuth("alice", "correct horse"); return r }
	cases := []struct {
		name string
		r    *http.Request
		user string
		bad  bool
	}{
		{"cookie from our page", request("10.0.0.1:5", "/", "Cookie", cookie, "Sec-Fetch-Site", "same-origin"), "alice", false},
		{"cookie, no page", request("10.0.0.1:5", "/", "Cookie", cookie), "alice", false},
		{"cookie from another port", request("10.0.0.1:5", "/", "Cookie", cookie, "Sec-Fetch-Site", "same-site"), "", false},
		{"cookie from a listed site", request("10.0.0.1:5", "/", "Cookie", cookie, "Origin", "https://app.example", "Sec-Fetch-Site", "cross-site"), "", false},
		{"basic from our page", basic(request("10.0.0.1:5", "/", "Sec-Fetch-Site", "same-origin")), "alice", false},
		{"basic from another site", basic(request("10.0.0.1:5", "/", "Origin", "https://evil.example")), "", false},
		{"API key from a listed site", request("10.0.0.1:5", "/", "Authorization", "Bearer 0123456789abcdef-ali", "Origin", "https://app.example"), "alice", false},
		{"proxy user, own page", request("10.9.0.1:5", "/", "X-Forwarded-User", "bob", "Sec-Fetch-Site", "same-origin"), "bob", false},
		{"proxy user from another site", request("10.9.0.1:5", "/", "X-Forwarded-User", "bob", "Sec-Fetch-Site", "cross-site"), "", false},
		{"X-Forwarded-User from an untrusted peer", request("10.9.0.2:5", "/", "X-Forwarded-User", "bob"), "", false},
		{"wrong cookie", request("10.0.0.1:5", "/", "Cookie", "wsgw_session=x.y"), "", true},
		{"wrong API key", request("10.0.0.1:5", "/", "Authorization", "Bearer 0123456789abcdef-xxx"), "", true},
	}
	for _, c := range cases {
		got, err := p.Caller(c.r)
		if got.Name() != c.user || (err != nil) != c.bad {
			t.Errorf("%s: %q, %v", c.name, got.Name(), err)
		}
	}
}

func TestClientBehindATrustedProxy(t *testing.T) {
	p := Policy{TrustedProxies: mustCIDRs("10.9.0.0/24", "::1"), ProxyUIDs: []int{33}, PeerUID: uidIs(33, nil)}
	cases := []struct {
		remote, xff, want string
	}{
		{"10.9.0.1:5", "203.0.113.7", "203.0.113.7"},
		{"10.9.0.1:5", "198.51.100.1, 203.0.113.7", "203.0.113.7"},
		{"10.9.0.1:5", "203.0.113.7, 10.9.0.2", "203.0.113.7"},
		{"10.9.0.1:5", "10.9.0.3, 10.9.0.2", "10.9.0.1"},
		{"10.9.0.1:5", "garbage, 203.0.113.7", "203.0.113.7"},
		{"10.9.0.1:5", "203.0.113.7, garbage", "10.9.0.1"},
		{"10.9.0.1:5", "", "10.9.0.1"},
		{"[::1]:5", "2001:db8::1", "2001:db8::/64"},
		{"[::1]:5", "2001:db8:0:1::5", "2001:db8:0:1::/64"},
		{"203.0.113.50:5", "1.2.3.4", "203.0.113.50"},
	}
	for _, c := range cases {
		r := request(c.remote, "/")
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		got, _ := p.Caller(r)
		if got.Client != c.want || p.Client(r) != c.want {
			t.Errorf("peer %s XFF %q: %s / %s, want %s", c.remote, c.xff, got.Client, p.Client(r), c.want)
		}
	}
	r := request("10.9.0.1:5", "/", "X-Forwarded-Host", "viz.example.org", "Origin", "http://viz.example.org")
	if s := p.Site(r); s != origin.Own {
		t.Errorf("a trusted proxy's X-Forwarded-Host is our name: %s", s)
	}
	r = request("10.9.9.9:5", "/", "X-Forwarded-Host", "viz.example.org", "Origin", "http://viz.example.org")
	if s := p.Site(r); s == origin.Own {
		t.Error("an untrusted peer's X-Forwarded-Host was believed")
	}
	// A proxy that ends TLS: the page is https://viz.example.org (port
	// 443), the gateway is reached over http.
	// The other way round (reached over TLS, the page is http): a
	// trusted proxy's "http" is believed, a value that is no scheme is not.
	tlsPage := []struct {
		remote, proto, page string
		tls, own            bool
	}{
		{"10.9.0.1:5", "https", "https://viz.example.org", false, true},
		{"10.9.0.1:5", "HTTPS", "https://viz.example.org", false, true},
		{"10.9.0.1:5", "", "https://viz.example.org", false, false},       // plain http: port 80, not the page's 443
		{"10.9.0.1:5", "gopher", "https://viz.example.org", false, false}, // not a scheme: plain http
		{"10.9.9.9:5", "https", "https://viz.example.org", false, false},  // not a trusted proxy
		{"10.9.0.1:5", "http", "http://viz.example.org", true, true},
		{"10.9.0.1:5", "http", "https://viz.example.org", true, false},
		{"10.9.0.1:5", "gopher", "https://viz.example.org", true, true}, // not a scheme: the connection's https
		{"10.9.0.1:5", "", "https://viz.example.org", true, true},
		{"10.9.9.9:5", "http", "http://viz.example.org", true, false}, // not a trusted proxy: https
	}
	for _, c := range tlsPage {
		r := request(c.remote, "/", "X-Forwarded-Host", "viz.example.org", "Origin", c.page)
		if c.proto != "" {
			r.Header.Set("X-Forwarded-Proto", c.proto)
		}
		if c.tls {
			r.TLS = &tls.ConnectionState{}
		}
		if s := p.Site(r); (s == origin.Own) != c.own {
			t.Errorf("peer %s, TLS %v, X-Forwarded-Proto %q, page %s: %s, own site: %v", c.remote, c.tls, c.proto, c.page, s, c.own)
		}
	}
}

func TestCookiesEnd(t *testing.T) {
	h1, _ := HashPassword("first password")
	path := writeFile(t, map[string]any{"users": map[string]any{
		"alice": map[string]any{"password_bcrypt": h1},
		"bob":   map[string]any{"password_bcrypt": h1},
	}})
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	alice, bob := u.SessionCookie("alice", time.Hour), u.SessionCookie("bob", time.Hour)
	if _, err := u.CheckCookie(alice); err != nil {
		t.Fatal(err)
	}
	u.EndSessions("alice") // logout
	if _, err := u.CheckCookie(alice); err == nil {
		t.Error("a cookie outlived its user's logout")
	}
	if _, err := u.CheckCookie(bob); err != nil {
		t.Errorf("alice's logout ended bob's cookie: %v", err)
	}
	again := u.SessionCookie("alice", time.Hour)
	if _, err := u.CheckCookie(again); err != nil {
		t.Errorf("a new login after the logout: %v", err)
	}
	// Bob's password changes: his cookie ends, alice's does not.
	h2, _ := HashPassword("second password")
	b, _ := jsonUsers(map[string]any{"alice": map[string]any{"password_bcrypt": h1}, "bob": map[string]any{"password_bcrypt": h2}})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := u.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := u.CheckCookie(bob); err == nil {
		t.Error("a cookie outlived its user's password change")
	}
	if _, err := u.CheckCookie(again); err != nil {
		t.Errorf("bob's password change ended alice's cookie: %v", err)
	}
	// Alice is removed.
	b, _ = jsonUsers(map[string]any{"bob": map[string]any{"password_bcrypt": h2}})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := u.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := u.CheckCookie(again); err == nil {
		t.Error("a cookie outlived its user")
	}
	if _, err := u.CheckCookie(u.SessionCookie("bob", -time.Second)); err == nil {
		t.Error("an expired cookie")
	}
}

// TestLimitKeys: what every per-client limit counts a request under.
func TestLimitKeys(t *testing.T) {
	me := os.Getuid()
	p := Policy{PeerUID: uidIs(me, nil)}
	cases := []struct {
		name string
		r    *http.Request
		want string
	}{
		{"remote IPv4", request("203.0.113.5:1", "/"), "203.0.113.5"},
		{"remote IPv6 by /64", request("[2001:db8::7]:1", "/"), "2001:db8::/64"},
		{"a local process by its user", request("127.0.0.1:1", "/"), fmt.Sprintf("local-uid-%d", me)},
		{"another loopback address, the same user", request("127.0.3.9:1", "/"), fmt.Sprintf("local-uid-%d", me)},
		{"a page on another site, from a remote client", request("203.0.113.5:1", "/", "Sec-Fetch-Site", "cross-site"), "203.0.113.5|pages"},
		{"our own page", request("203.0.113.5:1", "/", "Sec-Fetch-Site", "same-origin"), "203.0.113.5"},
	}
	for _, c := range cases {
		got, _ := p.Caller(c.r)
		if got.Client != c.want || p.Client(c.r) != c.want {
			t.Errorf("%s: %q / %q, want %q", c.name, got.Client, p.Client(c.r), c.want)
		}
	}
	unknown := Policy{PeerUID: uidIs(0, errors.New("gone"))}
	if got := unknown.Client(request("127.0.0.2:1", "/")); got != "local" {
		t.Errorf("a local process of unknown user: %q", got)
	}
	other := Policy{PeerUID: uidIs(me+7, nil)}
	if got := other.Client(request("127.0.0.1:1", "/")); got != fmt.Sprintf("local-uid-%d", me+7) {
		t.Errorf("another local user: %q", got)
	}
}

// TestValidEndsWithTheCredentials: a Caller made from a cookie, a
// password or an API key stops being valid when they end or the user's
// rights change; one made from the token or loopback stays valid.
func TestValidEndsWithTheCredentials(t *testing.T) {
	h, _ := HashPassword("correct horse")
	path := writeFile(t, map[string]any{"users": map[string]any{
		"alice": map[string]any{"password_bcrypt": h, "groups": []string{"viz"}},
		"bob":   map[string]any{"api_keys": []string{"0123456789abcdef-bob"}},
		"carol": map[string]any{"password_bcrypt": h},
	}})
	u, err := LoadUsers(path)
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{Users: u, SecurityToken: "tok"}
	cookie, _ := p.Caller(request("10.0.0.1:1", "/", "Cookie", CookieName+"="+u.SessionCookie("alice", time.Hour)))
	basicReq := request("10.0.0.1:1", "/")
	basicReq.SetBasicAuth("carol", "correct horse")
	basic, _ := p.Caller(basicReq)
	key, _ := p.Caller(request("10.0.0.1:1", "/", "Authorization", "Bearer 0123456789abcdef-bob"))
	token, _ := p.Caller(request("10.0.0.1:1", "/?security_token=tok"))
	for name, c := range map[string]Caller{"cookie": cookie, "basic": basic, "key": key, "token": token} {
		if c.ID == nil || !c.Valid() {
			t.Fatalf("%s: %+v valid %v", name, c.ID, c.Valid())
		}
	}
	// Alice changes groups, carol's password changes, bob's key goes.
	h2, _ := HashPassword("another horse")
	b, _ := jsonUsers(map[string]any{
		"alice": map[string]any{"password_bcrypt": h, "groups": []string{"viz", "admin"}},
		"bob":   map[string]any{"api_keys": []string{"0123456789abcdef-bob2"}},
		"carol": map[string]any{"password_bcrypt": h2},
	})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := u.Reload(); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]Caller{"cookie (new groups)": cookie, "basic (new password)": basic, "key (removed)": key} {
		if c.Valid() {
			t.Errorf("%s is still valid", name)
		}
	}
	if !token.Valid() || !(Caller{}).Valid() {
		t.Error("the token's or an anonymous caller stopped being valid")
	}
	// A user logged out: the cookie's caller ends; a fresh one is valid.
	fresh, _ := p.Caller(request("10.0.0.1:1", "/", "Cookie", CookieName+"="+u.SessionCookie("alice", time.Hour)))
	if !fresh.Valid() {
		t.Fatal("a fresh cookie")
	}
	u.EndSessions("alice")
	if fresh.Valid() {
		t.Error("a logged-out cookie's caller is still valid")
	}
	// Same rights: nothing changes for carol's new caller if the file is
	// rewritten the same.
	basicReq2 := request("10.0.0.1:1", "/")
	basicReq2.SetBasicAuth("carol", "another horse")
	carol, _ := p.Caller(basicReq2)
	if err := u.Reload(); err != nil || !carol.Valid() {
		t.Errorf("an unchanged user after a reload: %v", err)
	}
}

// TestPeerUIDOverridesTheConnection: a Policy's PeerUID decides even for
// a request whose context holds the connection the server accepted (whose
// socket, a pipe here, has no owner to find).
func TestPeerUIDOverridesTheConnection(t *testing.T) {
	me := os.Getuid()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	withConn := func() *http.Request {
		r := request("127.0.0.1:5000", "/")
		return r.WithContext(peer.WithConn(r.Context(), a))
	}
	got, err := (&Policy{PeerUID: uidIs(me, nil)}).Caller(withConn())
	if err != nil || !got.Admin() {
		t.Errorf("PeerUID says our user: admin %v, %v", got.Admin(), err)
	}
	// Without PeerUID the connection's owner is looked up and not found.
	got, err = (&Policy{}).Caller(withConn())
	if err != nil || got.Admin() {
		t.Errorf("a connection without an owner: admin %v, %v", got.Admin(), err)
	}
}
