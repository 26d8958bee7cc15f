package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gorilla/websocket"
)

// A hostile review of the trust boundary (issue 11), run against the real
// binary. The tests named TestReviewFinding… are attacks that worked when
// they were written and failed until the gateway refused them; each
// comment says what the attack did then, and the test now proves it is
// refused. The tests named TestReviewHeld… are attacks the policy
// refused from the start; they stay as regression tests.

// reviewCurlAs runs curl as uid (root is needed to take another uid) and
// returns the body and the status code.
func reviewCurlAs(t *testing.T, uid uint32, url string, hdr ...string) (string, int) {
	t.Helper()
	if _, err := exec.LookPath("curl"); err != nil {
		needComponent(t, "/usr/bin/curl", "curl")
	}
	args := []string{"-s", "-g", "-w", "\n%{http_code}"}
	for i := 0; i+1 < len(hdr); i += 2 {
		args = append(args, "-H", hdr[i]+": "+hdr[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", append(args, url)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl as uid %d %s: %v", uid, url, err)
	}
	s := string(out)
	i := strings.LastIndexByte(s, '\n')
	var code int
	fmt.Sscan(s[i+1:], &code)
	return s[:i], code
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("running as another local user needs root")
	}
}

// reviewRPCCall sends one call on ws and returns its result or error; a
// closed connection is an error too (not a test failure), so a gateway
// that drops the connection passes the tests that want the call refused.
func reviewRPCCall(ws *websocket.Conn, id int, method string, params any) (json.RawMessage, *rpcError, error) {
	req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "method": method, "params": params})
	_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := ws.WriteMessage(websocket.TextMessage, req); err != nil {
		return nil, nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_ = ws.SetReadDeadline(deadline)
		_, b, err := ws.ReadMessage()
		if err != nil {
			return nil, nil, err
		}
		var r rpcResponse
		if json.Unmarshal(b, &r) != nil || string(r.ID) != fmt.Sprint(id) {
			continue // a notification
		}
		return r.Result, r.Error, nil
	}
}

// TestReviewFindingTrustedLoopbackProxyIsEveryLocalAccount (finding 1):
// with --trusted_proxy 127.0.0.1 (what a reverse proxy on the same
// machine needs, and what the project's own proxy tests use) every other
// account on the machine is "the proxy": it connects to the gateway
// directly, asserts X-Forwarded-User and X-Forwarded-Groups: admin, and
// is an administrator. It reads the security token holder's reservation
// tokens, and /debug/pprof/cmdline hands it the security token itself.
// SECURITY.md: another account on the same machine "cannot administer
// the gateway".
func TestReviewFindingTrustedLoopbackProxyIsEveryLocalAccount(t *testing.T) {
	t.Parallel()
	needRoot(t)
	const secret = "the-security-token-0123"
	// The proxy on this machine runs as www-data: only that user may
	// assert identities from 127.0.0.1.
	g, _ := svcGateway(t, 1, nil, "--trusted_proxy", "127.0.0.1", "--trusted_proxy_user", "www-data", "--security_token", secret)
	code, m, _ := call(t, "GET", g.httpURL("/v1/reserve/Echo%20Service?security_token="+secret), nil)
	if code != http.StatusOK {
		t.Fatalf("reserve with the token: %d %v", code, m)
	}
	tok := m["token"].(string)
	// Positive control: without the headers the other account is refused.
	if _, code := reviewCurlAs(t, 65534, g.httpURL("/v1/status")); code != http.StatusUnauthorized {
		t.Fatalf("another account without credentials: %d, want 401", code)
	}
	assert := []string{"X-Forwarded-User", "mallory", "X-Forwarded-Groups", "admin"}
	body, code := reviewCurlAs(t, 65534, g.httpURL("/v1/status"), assert...)
	if code == http.StatusOK && (strings.Contains(body, tok) || strings.Contains(body, `"admin": true`) || strings.Contains(body, `"admin":true`)) {
		t.Errorf("another local account asserting a proxy identity is an administrator and reads the token holder's reservation token (%d)", code)
	}
	body, code = reviewCurlAs(t, 65534, g.httpURL("/debug/pprof/cmdline"), assert...)
	if strings.Contains(body, secret) {
		t.Errorf("another local account read the security token from /debug/pprof/cmdline (%d)", code)
	}
	if _, code := reviewCurlAs(t, 65534, g.httpURL("/v1/release/"+tok), "X-Forwarded-User", "mallory"); code == http.StatusOK {
		t.Errorf("another local account released the token holder's reservation")
	}
}

// TestReviewFindingLoopbackAdminJobsAreAnonymous (finding 2): without
// credentials configured, the loopback administrator's jobs are owned by
// "" (auth.Identity.Key of a loopback identity), which is also the owner
// of every anonymous caller's jobs. So a page on another port of the
// host (Listed: anonymous by SECURITY.md), a client behind a proxy, or
// another local account lists the administrator's jobs, reads their logs
// and stops them over /v1/rpc. SECURITY.md: anonymous callers see "the
// anonymous jobs"; a page on another port is "never an administrator or
// an owner"; only owners and administrators see, stop or read a job.
func TestReviewFindingLoopbackAdminJobsAreAnonymous(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1)
	admin := dialRPC(t, g, "")
	var info struct{ Admin bool }
	admin.must("server.info", nil, &info)
	if !info.Admin {
		t.Fatal("the loopback client is not the administrator: the test cannot tell an attack from a denial")
	}
	var job struct{ ID string }
	admin.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 60, "label": "admins-job"}}, &job)
	for name, hdr := range map[string][]string{
		"page on another port": {"Origin", "http://127.0.0.1:1", "Sec-Fetch-Site", "same-site"},
		"through a proxy":      {"X-Forwarded-For", "192.0.2.7"},
	} {
		t.Run(name, func(t *testing.T) {
			anon := dialRPC(t, g, "", hdr...)
			var ai struct{ Admin bool }
			anon.must("server.info", nil, &ai)
			if ai.Admin {
				t.Fatal("the anonymous caller is an administrator")
			}
			var list struct{ Jobs []struct{ ID string } }
			anon.must("jobs.list", map[string]any{}, &list)
			for _, j := range list.Jobs {
				if j.ID == job.ID {
					t.Errorf("an anonymous caller lists the administrator's job %s", job.ID)
				}
			}
			if res, rerr := anon.call("logs.read", map[string]any{"id": job.ID}); rerr == nil {
				t.Errorf("an anonymous caller reads the administrator's job log: %s", res)
			}
		})
	}
	anon := dialRPC(t, g, "", "Origin", "http://127.0.0.1:1", "Sec-Fetch-Site", "same-site")
	if res, rerr := anon.call("jobs.stop", map[string]any{"id": job.ID}); rerr == nil {
		t.Errorf("a page on another port stopped the administrator's job: %s", res)
	}
}

// TestReviewFindingRPCOutlivesLogoutAndRemoval (finding 3): a /v1/rpc
// connection is authorised once, at its upgrade. One opened with a
// session cookie stays its user's, an administrator's, after the user
// logs out and after the user is removed from the users file: it still
// lists every token and releases another user's reservation. SECURITY.md:
// a cookie ends at logout and at the user's removal (and README: "removing
// a user from a group takes effect at once" for websockets).
func TestReviewFindingRPCOutlivesLogoutAndRemoval(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	bob := map[string]any{"api_keys": []string{"bob-api-key-0123456789"}}
	writeUsers(t, users, map[string]any{
		"alice": map[string]any{"password_bcrypt": hashPW(t, "alice password"), "groups": []string{"admin"}},
		"bob":   bob,
	})
	g, _ := svcGateway(t, 2, nil, "--users", users)
	code, m, h := call(t, "POST", g.httpURL("/v1/login"), []byte(`{"user":"alice","password":"alice password"}`), "Content-Type", "application/json")
	if code != http.StatusOK {
		t.Fatalf("login: %d %v", code, m)
	}
	var cookie string
	for _, c := range (&http.Response{Header: h}).Cookies() {
		if c.Name == "wsgw_session" {
			cookie = c.Name + "=" + c.Value
		}
	}
	if cookie == "" {
		t.Fatal("no cookie")
	}
	// The cookie, stolen or left in a browser, opens /v1/rpc.
	ws, code, body := dialWS(t, "ws://"+g.httpAddr+"/v1/rpc", http.Header{"Cookie": {cookie}})
	if ws == nil {
		t.Fatalf("/v1/rpc with the cookie: %d %v", code, body)
	}
	defer ws.Close()
	res, rerr, err := reviewRPCCall(ws, 1, "server.info", nil)
	if err != nil || rerr != nil || !strings.Contains(string(res), `"admin":true`) {
		t.Fatalf("before logout the connection is not alice's (admin): %s %v %v", res, rerr, err)
	}
	// Bob's reservation, the target.
	code, m, _ = call(t, "GET", g.httpURL("/v1/reserve/Echo%20Service"), nil, "Authorization", "Bearer bob-api-key-0123456789")
	if code != http.StatusOK {
		t.Fatalf("bob's reserve: %d %v", code, m)
	}
	tok := m["token"].(string)

	// Alice logs out, then an administrator removes her.
	if code, m, _ := call(t, "POST", g.httpURL("/v1/logout"), nil, "Cookie", cookie); code != http.StatusOK {
		t.Fatalf("logout: %d %v", code, m)
	}
	writeUsers(t, users, map[string]any{"bob": bob})
	waitFor(t, "the users file to be reloaded without alice", 30*time.Second, func() bool {
		code, _, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, basic("alice", "alice password")...)
		return code == http.StatusUnauthorized
	})
	if code, _, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", cookie); code != http.StatusUnauthorized {
		t.Fatalf("the cookie itself still works over REST: %d", code)
	}

	res, rerr, err = reviewRPCCall(ws, 2, "sessions.list", nil)
	if err == nil && rerr == nil && strings.Contains(string(res), tok) {
		t.Errorf("after logout and removal the cookie's /v1/rpc connection still lists bob's token")
	}
	res, rerr, err = reviewRPCCall(ws, 3, "reservations.release", map[string]any{"token": tok})
	if err == nil && rerr == nil {
		t.Errorf("after logout and removal the cookie's /v1/rpc connection released bob's reservation: %s", res)
	}
}

// reviewClientFrom is an HTTP client whose connections come from the
// loopback address ip.
func reviewClientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

func reviewGet(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReviewFindingLoopbackLimits (finding 4): the limits key on the
// address, IPv6 by /64, but all of 127.0.0.0/8 is this one machine and
// every local account shares it. So (a) one local client that rotates its
// source address through 127.x.y.z is never limited: 90 wrong security
// tokens from 90 loopback addresses, three times --auth_fail_limit, get
// no 429; and (b) another local account, with 40 wrong tokens from
// 127.0.0.1, makes the operator's right token from 127.0.0.1 get 429.
// SECURITY.md: wrong tokens count "30 a minute per address, IPv6 per
// /64"; one client may not lock another out (issue 11, finding 6).
func TestReviewFindingLoopbackLimits(t *testing.T) {
	t.Parallel()
	const secret = "the-security-token-0123"
	t.Run("rotating loopback addresses", func(t *testing.T) {
		g, _ := svcGateway(t, 1, nil, "--security_token", secret)
		limited := 0
		for i := 0; i < 90; i++ {
			c := reviewClientFrom(fmt.Sprintf("127.0.%d.%d", 1+i/200, 2+i%200))
			if reviewGet(t, c, g.httpURL(fmt.Sprintf("/v1/status?security_token=wrong-%d", i))) == http.StatusTooManyRequests {
				limited++
			}
		}
		if limited == 0 {
			t.Errorf("90 wrong security tokens from one machine (rotating 127.0.x.y) were never limited (--auth_fail_limit is 30 a minute)")
		}
	})
	t.Run("another account locks the operator out", func(t *testing.T) {
		needRoot(t)
		g, _ := svcGateway(t, 1, nil, "--security_token", secret)
		for i := 0; i < 40; i++ {
			if _, code := reviewCurlAs(t, 65534, g.httpURL("/v1/status?security_token=wrong")); code == http.StatusTooManyRequests {
				break
			}
		}
		if _, code := reviewCurlAs(t, 65534, g.httpURL("/v1/status?security_token=wrong")); code != http.StatusTooManyRequests {
			t.Fatalf("the other account's wrong tokens were never limited: %d", code)
		}
		if _, code := reviewCurlAs(t, 0, g.httpURL("/v1/status?security_token="+secret)); code != http.StatusOK {
			t.Errorf("another local account's wrong tokens lock the operator's right token out: %d", code)
		}
	})
}

// TestReviewHeldOtherAccountEveryRoute: another local account (uid 65534),
// over IPv4 and IPv6 loopback and with forwarding headers of its own
// making, is anonymous on every administrative route without
// --trusted_proxy; the gateway's own user is the administrator (the
// positive control).
func TestReviewHeldOtherAccountEveryRoute(t *testing.T) {
	t.Parallel()
	needRoot(t)
	g, _ := svcGateway(t, 1, nil, "--bind_address", "::1")
	base := "http://" + g.httpAddr
	if _, code := reviewCurlAs(t, 0, base+"/debug/pprof/"); code != http.StatusOK {
		t.Fatalf("the gateway's own user over ::1 is not its administrator: %d", code)
	}
	_, st := getJSON(t, base+"/v1/reserve/Echo%20Service")
	tok, _ := st["token"].(string)
	if tok == "" {
		t.Fatalf("reserve: %v", st)
	}
	spoof := []string{"X-Forwarded-User", "admin", "X-Forwarded-Groups", "admin", "X-Forwarded-For", "127.0.0.1", "Forwarded", "for=127.0.0.1", "X-Forwarded-Host", "127.0.0.1"}
	for _, hdr := range [][]string{nil, spoof} {
		for _, path := range []string{"/v1/stop", "/debug/pprof/", "/debug/pprof/cmdline", "/v1/release/" + tok} {
			if body, code := reviewCurlAs(t, 65534, base+path, hdr...); code != http.StatusForbidden {
				t.Errorf("another account, %s with %v: %d %s", path, hdr, code, body)
			}
		}
		for _, path := range []string{"/v1/status", "/v1/status_view", "/v1/whoami"} {
			if body, code := reviewCurlAs(t, 65534, base+path, hdr...); strings.Contains(body, tok) || strings.Contains(body, `"admin": true`) {
				t.Errorf("another account, %s with %v: %d sees the token or is an administrator", path, hdr, code)
			}
		}
	}
	select {
	case <-g.exited:
		t.Fatal("the gateway stopped")
	default:
	}
}

// TestReviewHeldBrowserHeaderTricks: forms of Sec-Fetch-Site and Origin
// a page's request may carry (any case, repeated, null, a DNS name for
// loopback) never make a loopback request the administrator, nor open
// /v1/rpc as one; a request with none is (the positive control).
func TestReviewHeldBrowserHeaderTricks(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	if _, st := getJSON(t, g.httpURL("/v1/status")); st["admin"] != true {
		t.Fatal("the loopback client is not the administrator: the test cannot tell an attack from a denial")
	}
	_, port, _ := net.SplitHostPort(g.httpAddr)
	cases := map[string]http.Header{
		"same-site upper case":         {"Sec-Fetch-Site": {"SAME-SITE"}},
		"cross-site then same-origin":  {"Sec-Fetch-Site": {"cross-site", "same-origin"}},
		"null origin":                  {"Origin": {"null"}},
		"null origin, same-site fetch": {"Origin": {"null"}, "Sec-Fetch-Site": {"same-site"}},
		"other port origin":            {"Origin": {"http://127.0.0.1:1"}},
		"rebinding name, same-origin":  {"Sec-Fetch-Site": {"same-origin"}, "Host": {"rebind.example:" + port}},
		"rebinding name, own origin":   {"Origin": {"http://rebind.example:" + port}, "Host": {"rebind.example:" + port}},
	}
	for name, h := range cases {
		req, _ := http.NewRequest("GET", g.httpURL("/v1/status"), nil)
		for k, vs := range h {
			if k == "Host" {
				req.Host = vs[0]
				continue
			}
			req.Header[k] = vs
		}
		resp, err := insecureClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var st map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if st["admin"] == true || strings.Contains(fmt.Sprint(st), tok) {
			t.Errorf("%s: /v1/status is the administrator's", name)
		}
		// The same headers on /v1/rpc: refused, or open as anonymous.
		ws, _, _ := dialWS(t, "ws://"+g.httpAddr+"/v1/rpc", h) // gorilla sends h["Host"] as the Host
		if ws != nil {
			res, rerr, err := reviewRPCCall(ws, 1, "sessions.list", nil)
			ws.Close()
			if err == nil && rerr == nil && strings.Contains(string(res), tok) {
				t.Errorf("%s: /v1/rpc lists the administrator's token", name)
			}
		}
	}
}

// TestReviewHeldCookieOfAnotherGateway: a session cookie made by another
// gateway (same users file, same user) is refused: each gateway signs
// with a key of its own.
func TestReviewHeldCookieOfAnotherGateway(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	writeUsers(t, users, map[string]any{"alice": map[string]any{"password_bcrypt": hashPW(t, "alice password")}})
	g1, _ := svcGateway(t, 1, nil, "--users", users)
	g2, _ := svcGateway(t, 1, nil, "--users", users)
	code, m, h := call(t, "POST", g1.httpURL("/v1/login"), []byte(`{"user":"alice","password":"alice password"}`), "Content-Type", "application/json")
	if code != http.StatusOK {
		t.Fatalf("login: %d %v", code, m)
	}
	var cookie string
	for _, c := range (&http.Response{Header: h}).Cookies() {
		if c.Name == "wsgw_session" {
			cookie = c.Name + "=" + c.Value
		}
	}
	if code, _, _ := call(t, "GET", g1.httpURL("/v1/whoami"), nil, "Cookie", cookie); code != http.StatusOK {
		t.Fatalf("the cookie on its own gateway: %d", code)
	}
	if code, m, _ := call(t, "GET", g2.httpURL("/v1/whoami"), nil, "Cookie", cookie); code != http.StatusUnauthorized {
		t.Fatalf("the cookie of another gateway: %d %v", code, m)
	}
}

// TestReviewHeldUserNames: a users file with a name that could pass for
// another kind of identity (token:admin, proxy:x), an empty name or a
// control character is refused at start-up, with a reason.
func TestReviewHeldUserNames(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"token:admin", "proxy:x", "", "ad\nmin"} {
		dir := t.TempDir()
		users := filepath.Join(dir, "users.json")
		writeUsers(t, users, map[string]any{name: map[string]any{"api_keys": []string{"a-long-api-key-0123456"}}})
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, gwBin, "--bind_address", "127.0.0.1", "--http_port", "0", "--session_dir", filepath.Join(dir, "s"), "--users", users, "--client_hostname", "127.0.0.1", "--client_port", "1", "0")
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil || !strings.Contains(string(out), "user name") {
			t.Errorf("user name %q: the gateway started or gave no reason: %v\n%s", name, err, out)
		}
	}
}

// reviewBrowser is newBrowser with attacker.test and rebind.test
// resolving to 127.0.0.1 (as a DNS name an attacker points there would).
func reviewBrowser(t *testing.T) *browser {
	t.Helper()
	needComponent(t, chromiumPath, "chromium")
	dataDir := t.TempDir()
	b := &browser{t: t, dataDir: dataDir, out: &syncBuf{}}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("host-resolver-rules", "MAP attacker.test 127.0.0.1, MAP rebind.test 127.0.0.1"),
		chromedp.UserDataDir(dataDir),
		chromedp.CombinedOutput(b.out),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	b.ctx = ctx
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		killChromium(t, dataDir)
		if t.Failed() {
			t.Logf("chromium output (last 4 kB):\n%s", tail(b.out.String(), 4096))
		}
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v\n%s", chromiumPath, err, b.out.String())
	}
	return b
}

// reviewAttackPage is served on attacker.test (127.0.0.1, another port).
// ?gw= is the gateway's host:port, ?imgs= how many <img> with a wrong
// security token to fire first. It then tries, and reports in
// window.result: /v1/rpc from its own origin, from a sandboxed iframe
// (Origin null) and under a DNS name for the gateway (rebind.test), a
// login and a logout by no-cors POST, and /v1/stop by <img>.
const reviewAttackPage = `<!doctype html><title>attack</title><body><script>
function rpc(url) {
  return new Promise(res => {
    let ws;
    try { ws = new WebSocket(url); } catch (e) { res('throw ' + e); return; }
    ws.onopen = () => ws.send(JSON.stringify({jsonrpc: '2.0', id: 1, method: 'sessions.list'}));
    ws.onmessage = m => { res('answer ' + m.data); ws.close(); };
    ws.onerror = () => res('refused');
    setTimeout(() => res('timeout'), 4000);
  });
}
function img(src) { return new Promise(r => { const i = new Image(); i.onload = () => r('load'); i.onerror = () => r('error'); i.src = src; }); }
window.result = (async () => {
  const q = new URLSearchParams(location.search), gw = q.get('gw'), port = gw.split(':')[1];
  const out = {};
  for (let i = 0; i < Number(q.get('imgs') || 0); i++) await img('http://' + gw + '/v1/status?security_token=wrong' + i);
  out.rpc = await rpc('ws://' + gw + '/v1/rpc');
  out.rebind = await rpc('ws://rebind.test:' + port + '/v1/rpc');
  out.sandboxed = await new Promise(res => {
    window.addEventListener('message', e => res(String(e.data)));
    const f = document.createElement('iframe');
    f.sandbox = 'allow-scripts';
    f.srcdoc = '<script>const ws = new WebSocket("ws://' + gw + '/v1/rpc"); ws.onopen = () => { ws.send(JSON.stringify({jsonrpc: "2.0", id: 1, method: "sessions.list"})); }; ws.onmessage = m => parent.postMessage("answer " + m.data, "*"); ws.onerror = () => parent.postMessage("refused", "*");<' + '/script>';
    document.body.appendChild(f);
    setTimeout(() => res('timeout'), 4000);
  });
  for (const p of ['/v1/login', '/v1/logout']) {
    try { await fetch('http://' + gw + p, {method: 'POST', mode: 'no-cors', credentials: 'include', body: '{"user":"alice","password":"alice password"}'}); } catch (e) {}
  }
  out.stop = await img('http://' + gw + '/v1/stop');
  return out;
})();
</script>`

func reviewAttackSite(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, reviewAttackPage)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return "http://attacker.test:" + port
}

// TestReviewHeldForeignPages: a page on another site (a DNS name for
// 127.0.0.1), the same page reaching the gateway under a DNS name, and a
// sandboxed iframe (Origin null), all in a real Chromium, neither open
// /v1/rpc, nor log a user in, nor stop the gateway; with the default
// settings and with users configured. The gateway's own user, directly,
// is the administrator (the positive control).
func TestReviewHeldForeignPages(t *testing.T) {
	t.Parallel()
	b := reviewBrowser(t)
	site := reviewAttackSite(t)
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	writeUsers(t, users, map[string]any{"alice": map[string]any{"password_bcrypt": hashPW(t, "alice password"), "groups": []string{"admin"}}})
	for _, args := range [][]string{nil, {"--users", users}} {
		t.Run(fmt.Sprintf("args=%v", args), func(t *testing.T) {
			g, _ := svcGateway(t, 1, nil, args...)
			p := b.newTab()
			p.navigate(site + "/?gw=" + g.httpAddr)
			var out map[string]string
			p.mustEval(`window.result`, &out)
			t.Logf("the page saw: %v", out)
			for _, k := range []string{"rpc", "rebind", "sandboxed"} {
				if strings.HasPrefix(out[k], "answer") || out[k] == "timeout" {
					t.Errorf("%s: /v1/rpc from the page: %s", k, out[k])
				}
			}
			select {
			case <-g.exited:
				t.Fatal("the page stopped the gateway")
			default:
			}
			if l := g.log.String(); strings.Contains(l, `"logged in"`) || strings.Contains(l, "stop requested") {
				t.Error("the page logged a user in or asked for a stop")
			}
			if len(args) == 0 {
				if _, st := getJSON(t, g.httpURL("/v1/status")); st["admin"] != true {
					t.Fatal("the gateway's own user, directly, is not its administrator")
				}
			}
		})
	}
}

// TestReviewFindingForeignPageLocksOutItsVisitor (finding 5): a page on
// another site fires 40 <img> at /v1/status with a wrong security token.
// They come from the visitor's address, so the visitor's own scripts,
// with the right token, then get 429 for a minute (and the page can do it
// again every minute). A page on another site is Foreign, "never ... by
// the browser's ambient credentials"; here the visitor's address is the
// ambient thing it spends. One client may not lock another out.
func TestReviewFindingForeignPageLocksOutItsVisitor(t *testing.T) {
	t.Parallel()
	b := reviewBrowser(t)
	site := reviewAttackSite(t)
	const secret = "the-security-token-0123"
	g, _ := svcGateway(t, 1, nil, "--security_token", secret)
	p := b.newTab()
	p.navigate(site + "/?imgs=40&gw=" + g.httpAddr)
	var out map[string]string
	p.mustEval(`window.result`, &out)
	if code, m := getJSON(t, g.httpURL("/v1/status?security_token="+secret)); code != http.StatusOK {
		t.Errorf("after a foreign page's wrong tokens, the visitor's own right token: %d %v", code, m)
	}
}

// TestReviewFindingReleaseIsATokenOracle (finding 6, low): GET
// /v1/release/<token> answers an anonymous caller differently for a token
// that exists ("you may release only your own reservations") and one that
// does not ("this call is for administrators or the reservation's user"),
// and unknown tokens there do not count against --auth_fail_limit (40 in
// a row, no 429), where /v1/check_token and websockets count them. So it
// is an unlimited oracle for guessing tokens. SECURITY.md: unknown
// reservation tokens count against --auth_fail_limit.
func TestReviewFindingReleaseIsATokenOracle(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	anon := []string{"X-Forwarded-For", "192.0.2.9"} // not the loopback administrator
	_, known, _ := call(t, "GET", g.httpURL("/v1/release/"+tok), nil, anon...)
	limited := false
	var unknown map[string]any
	for i := 0; i < 40 && !limited; i++ {
		var code int
		code, unknown, _ = call(t, "GET", g.httpURL(fmt.Sprintf("/v1/release/00000000-0000-4000-8000-%012d", i)), nil, anon...)
		limited = code == http.StatusTooManyRequests
	}
	if fmt.Sprint(known) != fmt.Sprint(unknown) && !limited {
		t.Errorf("/v1/release tells a live token (%v) from an unknown one (%v), and 40 unknown ones were never limited", known, unknown)
	}
}
