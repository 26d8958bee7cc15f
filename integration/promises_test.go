package integration

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Tests of what the README promises and nothing else checked: each fails
// when the behaviour it names is removed.

// TestSecurityTokenFromEnvironment: without --security_token the token is
// $WEBSOCKETSERVER_SECURITY_TOKEN; were that default lost, a loopback
// client would be an administrator without any credential.
func TestSecurityTokenFromEnvironment(t *testing.T) {
	const tok = "env-token-0123456789abcdef"
	t.Setenv("WEBSOCKETSERVER_SECURITY_TOKEN", tok)
	g, _ := svcGateway(t, 1, nil)
	if code, body := getJSON(t, g.httpURL("/v1/status")); code != http.StatusUnauthorized {
		t.Fatalf("status without the token: %d %v, want 401", code, body)
	}
	if code, body := getJSON(t, g.httpURL("/v1/status?security_token=wrong-"+tok)); code != http.StatusUnauthorized {
		t.Fatalf("status with a wrong token: %d %v, want 401", code, body)
	}
	if code, body := getJSON(t, g.httpURL("/v1/status?security_token="+tok)); code != http.StatusOK {
		t.Fatalf("status with the environment's token: %d %v, want 200", code, body)
	}
	if code, body := getJSON(t, g.httpURL("/v1/status"), "Authorization", "Bearer "+tok); code != http.StatusOK {
		t.Fatalf("status with the token as a bearer: %d %v, want 200", code, body)
	}
}

// TestMaxUserTunnels429: a user's open sessions are capped at
// --max_user_tunnels; the next websocket gets 429, and once one closes
// the user may open another.
func TestMaxUserTunnels429(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	usersPath := filepath.Join(dir, "users.json")
	writeUsers(t, usersPath, map[string]any{"bob": map[string]any{"api_keys": []string{"bob-key-0123456789abcdef"}}})
	g, _ := svcGateway(t, 3, nil, "--users", usersPath, "--max_user_tunnels", "1")
	bob := []string{"Authorization", "Bearer bob-key-0123456789abcdef"}
	var toks []string
	for i := 0; i < 2; i++ {
		code, body, _ := call(t, "GET", g.httpURL("/v1/reserve/Echo%20Service"), nil, bob...)
		if code != http.StatusOK {
			t.Fatalf("bob's reservation %d: %d %v", i+1, code, body)
		}
		toks = append(toks, body["token"].(string))
	}
	hdr := http.Header{"Authorization": {"Bearer bob-key-0123456789abcdef"}}
	first, code, body := dialWS(t, g.wsURL("/websockify?token="+toks[0]), hdr)
	if first == nil {
		t.Fatalf("bob's first session: %d %v", code, body)
	}
	if line, _, err := readLine(first, 30*time.Second); err != nil || !strings.Contains(string(line), `"service"`) {
		t.Fatalf("no greeting from bob's first session: %v %q", err, line)
	}
	if ws, code, body := dialWS(t, g.wsURL("/websockify?token="+toks[1]), hdr); ws != nil || code != http.StatusTooManyRequests {
		if ws != nil {
			ws.Close()
		}
		t.Fatalf("bob's second session: %d %v, want 429", code, body)
	}
	first.Close()
	waitFor(t, "bob's second session once the first closed", 30*time.Second, func() bool {
		ws, _, _ := dialWS(t, g.wsURL("/websockify?token="+toks[1]), hdr)
		if ws == nil {
			return false
		}
		ws.Close()
		return true
	})
}

// TestLoginPageLogoutAndSecureCookie: over TLS the dashboard's login page
// is served, the login cookie is Secure (and HttpOnly, SameSite=Strict),
// and POST /v1/logout clears it, Secure too.
func TestLoginPageLogoutAndSecureCookie(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	usersPath := filepath.Join(dir, "users.json")
	writeUsers(t, usersPath, map[string]any{"alice": map[string]any{"password_bcrypt": hashPW(t, "alice-password")}})
	g, _ := svcGateway(t, 1, nil, "--users", usersPath, "--cert", cert, "--key", key)

	resp, err := insecureClient.Get(g.httpURL("/wsgw/login.html"))
	if err != nil {
		t.Fatal(err)
	}
	page := readAll(t, resp)
	if resp.StatusCode != http.StatusOK || resp.TLS == nil || !strings.Contains(page, `type="password"`) {
		t.Fatalf("login page: %d TLS=%v\n%.400s", resp.StatusCode, resp.TLS != nil, page)
	}

	lb, _ := json.Marshal(map[string]string{"user": "alice", "password": "alice-password"})
	code, body, hdr := call(t, "POST", g.httpURL("/v1/login"), lb, "Content-Type", "application/json")
	if code != http.StatusOK || body["user"] != "alice" {
		t.Fatalf("login: %d %v", code, body)
	}
	c := parseSetCookie(t, hdr)
	if c.Name != "wsgw_session" || c.Value == "" || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Fatalf("login cookie over TLS: %+v, want Secure, HttpOnly, SameSite=Strict", c)
	}
	cookie := c.Name + "=" + c.Value
	if _, st, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", cookie); st["user"] != "alice" {
		t.Fatalf("whoami with the cookie: %v", st)
	}

	code, body, hdr = call(t, "POST", g.httpURL("/v1/logout"), nil, "Cookie", cookie)
	if code != http.StatusOK || body["logged_out"] != true {
		t.Fatalf("logout: %d %v", code, body)
	}
	out := parseSetCookie(t, hdr)
	if out.Name != "wsgw_session" || out.Value != "" || out.MaxAge >= 0 || !out.Secure {
		t.Fatalf("logout cookie: %+v, want wsgw_session emptied and expired, Secure", out)
	}
	// The cleared cookie is no login.
	if code, _, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", "wsgw_session="); code != http.StatusUnauthorized {
		t.Fatalf("whoami after logout: %d, want 401", code)
	}
}

func parseSetCookie(t *testing.T, hdr http.Header) *http.Cookie {
	t.Helper()
	cs := (&http.Response{Header: hdr}).Cookies()
	if len(cs) != 1 {
		t.Fatalf("Set-Cookie: %q, want one cookie", hdr.Values("Set-Cookie"))
	}
	return cs[0]
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// TestFailuresTotalCountsStartFailures: a service whose start script
// fails is counted in wsgateway_failures_total{reason="start_failed"},
// once per failed launch.
func TestFailuresTotalCountsStartFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeScript(t, dir, "broken.sh", "case \"$1\" in\nstart) echo 'cannot start' >&2; exit 3 ;;\nstop) exit 0 ;;\nesac\n")
	g, _ := svcGateway(t, 1, map[string]any{"Broken": map[string]any{"script": filepath.Join(dir, "broken.sh"), "count": 1, "options": map[string]any{}}})
	before := scrape(t, g)
	if strings.Contains(before, `wsgateway_failures_total{reason="start_failed"}`) &&
		metricValue(t, before, `wsgateway_failures_total{reason="start_failed"}`) != 0 {
		t.Fatalf("start failures before any launch:\n%s", before)
	}
	for i := 1; i <= 2; i++ {
		tok := g.reserve(t, "Broken", "")["token"].(string)
		if ws, _, _ := dialWS(t, g.wsURL("/websockify?token="+tok), nil); ws != nil {
			// Refused after the upgrade: the close says the start failed.
			_, ce, err := readUntilClose(ws, 60*time.Second)
			ws.Close()
			if err != nil || ce == nil || ce.Code == 1000 {
				t.Fatalf("launch %d of a broken service: close %v %v, want an error close", i, ce, err)
			}
		}
		waitFor(t, "the failure counted", 30*time.Second, func() bool {
			text := scrape(t, g)
			return strings.Contains(text, `wsgateway_failures_total{reason="start_failed"}`) &&
				metricValue(t, text, `wsgateway_failures_total{reason="start_failed"}`) == float64(i)
		})
	}
	// A launch that works counts nothing.
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	ws, _ := connectToken(t, g, tok)
	ws.Close()
	if v := metricValue(t, scrape(t, g), `wsgateway_failures_total{reason="start_failed"}`); v != 2 {
		t.Fatalf("start_failed %v after a good launch, want 2", v)
	}
}

// TestIPv6ClientsAreLimited: over ::1 the gateway listens, serves and
// applies --rate_limit to an IPv6 client (the /64 grouping itself is
// TestLimitsKeyIPv6By64 in package gateway: one host has one address).
func TestIPv6ClientsAreLimited(t *testing.T) {
	t.Parallel()
	if ln, err := net.Listen("tcp", "[::1]:0"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no ::1 on this machine: %v", err)
		}
		t.Skipf("no ::1: %v", err)
	} else {
		ln.Close()
	}
	dir := t.TempDir()
	writeScript(t, dir, "echo.sh", "case \"$1\" in\nstart) exec "+svcBin+" serve ;;\nstop) exit 0 ;;\nesac\n")
	cfg := writeConfig(t, dir, map[string]any{"Echo Service": map[string]any{"script": "echo.sh", "count": 5, "options": map[string]any{}}})
	g := startGatewayExact(t, "--verbose", "2", "--bind_address", "::1", "--http_port", "0",
		"--remote_session_config", cfg, "--rate_limit", "2", "0")
	if !strings.HasPrefix(g.httpAddr, "[::1]:") {
		t.Fatalf("HTTP address %q is not on ::1", g.httpAddr)
	}
	got := []int{}
	for i := 0; i < 6; i++ {
		code, _ := getJSON(t, g.httpURL("/v1/reserve/Echo%20Service"))
		got = append(got, code)
		if code == http.StatusTooManyRequests {
			break
		}
	}
	if got[0] != http.StatusOK || got[len(got)-1] != http.StatusTooManyRequests {
		t.Fatalf("reservations from ::1 answered %v, want 200 first and then 429", got)
	}
}
