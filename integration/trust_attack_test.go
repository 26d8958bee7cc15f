package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The trust boundary's attacks (issue: one trust policy). Each test is an
// attacker as it would really come: a page in a real browser on another
// port or site, a reverse proxy in front, another local account.

// attackPage is served from another port of 127.0.0.1: it tries to stop
// the gateway with an <img> and a no-cors fetch, then reads sessions
// over /v1/rpc, and leaves what it saw in window.result.
const attackPage = `<!doctype html><title>attack</title><script>
window.result = (async () => {
  const gw = new URLSearchParams(location.search).get('gw');
  const out = {};
  out.img = await new Promise(r => { const i = new Image(); i.onload = () => r('load'); i.onerror = () => r('error'); i.src = 'http://' + gw + '/v1/stop'; });
  try { await fetch('http://' + gw + '/v1/stop', {mode: 'no-cors', credentials: 'include'}); out.fetch = 'sent'; } catch (e) { out.fetch = String(e); }
  out.rpc = await new Promise(res => {
    let ws;
    try { ws = new WebSocket('ws://' + gw + '/v1/rpc'); } catch (e) { res({error: String(e)}); return; }
    ws.onopen = () => ws.send(JSON.stringify([
      {jsonrpc: '2.0', id: 1, method: 'server.info'},
      {jsonrpc: '2.0', id: 2, method: 'sessions.list'}]));
    ws.onmessage = m => { res({open: true, answer: m.data}); ws.close(); };
    ws.onerror = () => res({error: 'refused'});
    setTimeout(() => res({timeout: true}), 15000);
  });
  return out;
})();
</script>`

// TestAttackPageOnAnotherPort: a page on another port of the gateway's
// host (Chromium sends no Origin and Sec-Fetch-Site: same-site for its
// <img>) neither stops the gateway nor reads a token over /v1/rpc, with
// the default settings and with --allowed_origins '*'. The gateway's own
// page, in the same browser, is an administrator (the positive control).
func TestAttackPageOnAnotherPort(t *testing.T) {
	t.Parallel()
	b := newBrowser(t)
	site := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, attackPage)
	}))
	defer site.Close()
	for _, args := range [][]string{nil, {"--allowed_origins", "*"}} {
		t.Run(fmt.Sprintf("args=%v", args), func(t *testing.T) {
			g, _ := svcGateway(t, 2, nil, args...)
			tok := g.reserve(t, "Echo Service", "")["token"].(string)
			p := b.newTab()
			p.navigate(site.URL + "/?gw=" + g.httpAddr)
			var out struct {
				Img, Fetch string
				RPC        struct {
					Open    bool
					Answer  string
					Error   string
					Timeout bool
				}
			}
			p.mustEval(`window.result`, &out)
			t.Logf("the page saw: img %s, fetch %s, rpc %+v", out.Img, out.Fetch, out.RPC)
			select {
			case <-g.exited:
				t.Fatal("the page stopped the gateway")
			default:
			}
			code, st := getJSON(t, g.httpURL("/v1/status"))
			if code != http.StatusOK || !strings.Contains(fmt.Sprint(st), tok) {
				t.Fatalf("the gateway (as its loopback administrator sees it) after the attack: %d %v", code, st)
			}
			if strings.Contains(g.log.String(), "stop requested") {
				t.Fatal("the gateway took a stop request from the page")
			}
			if out.RPC.Timeout {
				t.Fatal("the RPC attempt neither opened nor was refused")
			}
			if strings.Contains(out.RPC.Answer, tok) || strings.Contains(out.RPC.Answer, `"admin":true`) {
				t.Fatalf("the page read a token or is an administrator over /v1/rpc: %s", out.RPC.Answer)
			}
			if len(args) > 0 && !out.RPC.Open {
				t.Fatalf("with --allowed_origins '*' the page's websocket should open (as an anonymous caller): %+v", out.RPC)
			}

			// Positive control: the gateway's own page is its administrator.
			own := b.newTab()
			own.navigate(g.httpURL("/wsgw/"))
			var admin bool
			own.mustEval(`fetch('/v1/status').then(r => r.json()).then(s => s.admin === true && JSON.stringify(s).includes('`+tok+`'))`, &admin)
			if !admin {
				t.Fatal("the gateway's own page is not its administrator: the test cannot tell an attack from a denial")
			}
		})
	}
}

// startNginx runs a reverse proxy in front of the gateway as Debian's
// defaults write it: Host rewritten to the upstream's address, no
// forwarding headers unless extra says so. Workers run as nobody.
func startNginx(t *testing.T, upstream, extra string) string {
	t.Helper()
	needComponent(t, "/usr/sbin/nginx", "nginx-light")
	addr := freeAddr(t)
	runNginx(t, t.TempDir(), addr, fmt.Sprintf(`server {
		listen %s;
		location / {
			proxy_pass http://%s;
			%s
		}
	}`, addr, upstream, extra))
	return addr
}

// runNginx runs nginx in dir (made writable by its workers) with http
// holding the inside of its http block, until the test ends, and waits
// until it listens on addr.
func runNginx(t *testing.T, dir, addr, http string) {
	t.Helper()
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 256; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	%[2]s
}
`, dir, http)
	if os.Getuid() == 0 {
		conf = "user nobody nogroup;\n" + conf
	}
	cf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	runFrontEnd(t, "nginx", addr, func(out string) string {
		b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return out + "\n" + string(b)
	}, "/usr/sbin/nginx", "-c", cf, "-p", dir, "-e", filepath.Join(dir, "error.log"))
}

// runFrontEnd runs a front end (nginx, HAProxy) in its own process
// group until the test ends, and waits until it accepts on addr. When
// the test fails, report(its output) is logged.
func runFrontEnd(t *testing.T, name, addr string, report func(out string) string, argv ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("%s: %s", name, report(out.String()))
		}
	})
	waitFor(t, name+" to listen", 20*time.Second, func() bool {
		select {
		case <-done:
			t.Fatalf("%s exited: %s", name, out.String())
		default:
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// TestAttackThroughAReverseProxy: behind nginx with its defaults (Host
// rewritten to 127.0.0.1:port, no forwarding headers) a client of the
// proxy is not the gateway's loopback administrator, with or without
// forwarding headers and with --trusted_proxy; with --trusted_proxy the
// failed-authentication limit keys on the real client, so one client's
// bad tokens do not lock another out.
func TestAttackThroughAReverseProxy(t *testing.T) {
	t.Parallel()
	t.Run("defaults", func(t *testing.T) {
		g, _ := svcGateway(t, 2, nil)
		tok := g.reserve(t, "Echo Service", "")["token"].(string)
		for _, extra := range []string{"", "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"} {
			px := startNginx(t, g.httpAddr, extra)
			code, st := getJSON(t, "http://"+px+"/v1/status")
			if code != http.StatusOK || st["admin"] == true || strings.Contains(fmt.Sprint(st), tok) {
				t.Errorf("nginx %q: status through the proxy: %d admin=%v, tokens shown: %v", extra, code, st["admin"], strings.Contains(fmt.Sprint(st), tok))
			}
			code, m := getJSON(t, "http://"+px+"/v1/release/"+tok)
			if code != http.StatusForbidden {
				t.Errorf("nginx %q: release through the proxy: %d %v", extra, code, m)
			}
			code, m = getJSON(t, "http://"+px+"/v1/stop")
			if code != http.StatusForbidden {
				t.Fatalf("nginx %q: /v1/stop through the proxy: %d %v", extra, code, m)
			}
		}
		// The positive control: the same call, direct, is the administrator's.
		if _, st := getJSON(t, g.httpURL("/v1/status")); st["admin"] != true {
			t.Fatalf("direct status is not the administrator's: %v", st)
		}
	})
	t.Run("trusted proxy", func(t *testing.T) {
		g, _ := svcGateway(t, 2, nil, "--trusted_proxy", "127.0.0.1", "--trusted_proxy_user", "nobody", "--security_token", "right-token-123",
			"--auth_fail_limit", "5") // 5 a minute: one back every 12 s, so the attacker stays limited for the test
		px := startNginx(t, g.httpAddr, "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;")
		// No user asserted, no credential: anonymous, not an administrator.
		if code, m := getJSON(t, "http://"+px+"/v1/stop"); code != http.StatusUnauthorized && code != http.StatusForbidden {
			t.Fatalf("/v1/stop through a trusted proxy, no credentials: %d %v", code, m)
		}
		// Two clients of the proxy, on two loopback addresses.
		client := func(ip string) *http.Client {
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
			return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
		}
		get := func(c *http.Client, path string) int {
			resp, err := c.Get("http://" + px + path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		attacker, victim := client("127.0.0.2"), client("127.0.0.3")
		limited := false
		for i := 0; i < 20 && !limited; i++ {
			limited = get(attacker, "/v1/status?security_token=wrong") == http.StatusTooManyRequests
		}
		if !limited {
			t.Fatal("20 wrong tokens through the proxy were never limited")
		}
		if code := get(victim, "/v1/status?security_token=right-token-123"); code != http.StatusOK {
			t.Fatalf("another client of the same proxy, with the right token: %d (the limit keyed on the proxy)", code)
		}
		if code := get(attacker, "/v1/status?security_token=right-token-123"); code != http.StatusTooManyRequests {
			t.Fatalf("the attacker, now with the right token: %d, want 429 while its limit holds", code)
		}
	})
}

// TestAttackAnotherLocalUser: with the default settings, another account
// on the same machine reaches the loopback ports but is not the
// gateway's administrator: it can neither stop it nor read its tokens.
// The gateway's own user, with the same request, is (positive control).
func TestAttackAnotherLocalUser(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("running as another user needs root")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		needComponent(t, "/usr/bin/curl", "curl")
	}
	g, _ := svcGateway(t, 1, nil)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	curlAs := func(uid uint32, path string) string {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "curl", "-s", "-w", "\n%{http_code}", g.httpURL(path))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl as uid %d: %v", uid, err)
		}
		return string(out)
	}
	st := curlAs(65534, "/v1/status")
	if strings.Contains(st, tok) || strings.Contains(st, `"admin":true`) {
		t.Fatalf("another user sees the tokens: %s", st)
	}
	if out := curlAs(65534, "/v1/stop"); !strings.HasSuffix(out, "403") {
		t.Fatalf("another user's /v1/stop: %s", out)
	}
	if out := curlAs(0, "/v1/status"); !strings.Contains(out, tok) {
		t.Fatalf("the gateway's own user (root) is not its administrator: %s", out)
	}
	select {
	case <-g.exited:
		t.Fatal("the gateway stopped")
	default:
	}
}

// TestAttackIdentityCollisions: a users-file account named "admin" and a
// proxy asserting "admin" are not the security token's holder: they see
// none of its tokens and cannot release its reservations.
func TestAttackIdentityCollisions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	writeUsers(t, users, map[string]any{"admin": map[string]any{"password_bcrypt": hashPW(t, "admin password")}})
	g, _ := svcGateway(t, 2, nil, "--security_token", "the-token-0123", "--users", users, "--trusted_proxy", "127.0.0.1", "--trusted_proxy_user", "root")
	code, m, _ := call(t, "GET", g.httpURL("/v1/reserve/Echo%20Service?security_token=the-token-0123"), nil)
	if code != http.StatusOK {
		t.Fatalf("reserve with the token: %d %v", code, m)
	}
	tok := m["token"].(string)
	for name, hdr := range map[string][]string{
		"users-file admin":  basic("admin", "admin password"),
		"proxy admin":       {"X-Forwarded-User", "admin"},
		"proxy token:admin": {"X-Forwarded-User", "token:admin"},
	} {
		code, st, _ := call(t, "GET", g.httpURL("/v1/status"), nil, hdr...)
		if code != http.StatusOK || strings.Contains(fmt.Sprint(st), tok) || st["admin"] == true {
			t.Errorf("%s: status %d, sees the token holder's token: %v", name, code, strings.Contains(fmt.Sprint(st), tok))
		}
		if code, m, _ := call(t, "GET", g.httpURL("/v1/release/"+tok), nil, hdr...); code != http.StatusForbidden {
			t.Errorf("%s: released the token holder's reservation: %d %v", name, code, m)
		}
	}
	// Positive control: the token holder sees it.
	if _, st, _ := call(t, "GET", g.httpURL("/v1/status?security_token=the-token-0123"), nil); !strings.Contains(fmt.Sprint(st), tok) {
		t.Fatal("the token holder does not see its own token")
	}
}

// TestAttackStolenCookieAfterLogout: a session cookie copied before the
// user logged out, or before the password changed, is refused after.
func TestAttackStolenCookieAfterLogout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	writeUsers(t, users, map[string]any{"alice": map[string]any{"password_bcrypt": hashPW(t, "alice password")}})
	g, _ := svcGateway(t, 1, nil, "--users", users)
	login := func() string {
		code, m, h := call(t, "POST", g.httpURL("/v1/login"), []byte(`{"user":"alice","password":"alice password"}`), "Content-Type", "application/json")
		if code != http.StatusOK {
			t.Fatalf("login: %d %v", code, m)
		}
		for _, c := range (&http.Response{Header: h}).Cookies() {
			if c.Name == "wsgw_session" {
				return c.Name + "=" + c.Value
			}
		}
		t.Fatal("no cookie")
		return ""
	}
	stolen := login()
	if code, _, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", stolen); code != http.StatusOK {
		t.Fatalf("the cookie before logout: %d", code)
	}
	if code, m, _ := call(t, "POST", g.httpURL("/v1/logout"), nil, "Cookie", stolen); code != http.StatusOK {
		t.Fatalf("logout: %d %v", code, m)
	}
	if code, m, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", stolen); code != http.StatusUnauthorized {
		t.Fatalf("the cookie after logout: %d %v", code, m)
	}
	fresh := login()
	if code, _, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", fresh); code != http.StatusOK {
		t.Fatalf("a new login after the logout: %d", code)
	}
	writeUsers(t, users, map[string]any{"alice": map[string]any{"password_bcrypt": hashPW(t, "new alice password")}})
	waitFor(t, "the password change to end the cookie", 30*time.Second, func() bool {
		code, _, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", fresh)
		return code == http.StatusUnauthorized
	})
}
