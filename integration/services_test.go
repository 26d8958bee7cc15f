package integration

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// svcGateway starts a gateway whose services config has an "Echo" service
// (count slots) backed by testsvc, plus extra services.
func svcGateway(t *testing.T, count int, extra map[string]any, args ...string) (*gateway, string) {
	t.Helper()
	dir := t.TempDir()
	writeScript(t, dir, "echo.sh", fmt.Sprintf(`case "$1" in
start) exec %s serve --grandchild "$WSGW_SESSION_DIR/grandchild.pid" ;;
stop) exit 0 ;;
esac
`, svcBin))
	cfg := map[string]any{
		"Echo Service": map[string]any{"script": "echo.sh", "count": count,
			"options":        map[string]any{"geometry": "1024x768", "file_ext": []string{".vtk", ".txt"}},
			"client_options": map[string]any{"geometry": "^[0-9]{3,4}x[0-9]{3,4}$", "user": "string", "who": "string"}},
	}
	for k, v := range extra {
		cfg[k] = v
	}
	p := writeConfig(t, dir, cfg)
	return startGateway(t, append([]string{"--remote_session_config", p}, args...)...), dir
}

type hello struct {
	Service    string         `json:"service"`
	Index      string         `json:"index"`
	Options    map[string]any `json:"options"`
	SessionDir string         `json:"session_dir"`
	TokenLen   int            `json:"token_len"`
	PID        int            `json:"pid"`
	Leak       string         `json:"leak"`
}

func connectToken(t *testing.T, g *gateway, token string) (*websocket.Conn, hello) {
	t.Helper()
	ws, code, body := dialWS(t, g.wsURL("/websockify?token="+token), nil)
	if ws == nil {
		t.Fatalf("token refused: %d %v", code, body)
	}
	line, _, err := readLine(ws, 30*time.Second)
	if err != nil {
		t.Fatalf("no greeting from the service: %v (%q)", err, line)
	}
	var h hello
	if err := json.Unmarshal(line, &h); err != nil {
		t.Fatalf("greeting %q: %v", line, err)
	}
	return ws, h
}

func grandchildPID(t *testing.T, h hello) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(h.SessionDir, "grandchild.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func TestReserveLaunchSpliceStop(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 2, nil)
	if n := g.free(t, "Echo Service"); n != 2 {
		t.Fatalf("free = %d, want 2", n)
	}
	r := g.reserve(t, "Echo Service", "geometry=800x600&user=ann")
	tok, _ := r["token"].(string)
	if !uuidV4.MatchString(tok) {
		t.Fatalf("token %q is not a UUID v4", tok)
	}
	if r["service"] != "Echo Service" || r["index"] != float64(0) || r["expires_in"] != float64(300) {
		t.Fatalf("reserve answer %v", r)
	}
	if n := g.free(t, "Echo Service"); n != 1 {
		t.Fatalf("free = %d after reserve, want 1", n)
	}
	ws, h := connectToken(t, g, tok)
	if h.Service != "Echo Service" || h.Index != "0" || h.TokenLen != 36 {
		t.Fatalf("service environment: %+v", h)
	}
	if h.Options["geometry"] != "800x600" || h.Options["user"] != "ann" {
		t.Fatalf("options not merged (reservation wins): %v", h.Options)
	}
	if fe, _ := h.Options["file_ext"].([]any); len(fe) != 2 {
		t.Fatalf("service options missing: %v", h.Options)
	}
	if h.Leak != "" {
		t.Fatalf("the gateway's environment leaked into the service: %q", h.Leak)
	}
	roundTrip(t, ws, 1<<20)

	// A second reservation gets the other index; a token serves one
	// websocket at a time.
	r2 := g.reserve(t, "Echo Service", "")
	if r2["index"] != float64(1) {
		t.Fatalf("second reservation index %v", r2["index"])
	}
	if _, code, body := dialWS(t, g.wsURL("/?token="+tok), nil); code != http.StatusConflict {
		t.Fatalf("second websocket on a busy token: %d %v", code, body)
	}

	st := g.status(t)
	sess := st["sessions"].([]any)
	if len(sess) != 1 || sess[0].(map[string]any)["state"] != "running" {
		t.Fatalf("status sessions: %v", sess)
	}
	if strings.Contains(fmt.Sprint(st), tok) && !strings.Contains(fmt.Sprint(st["reservations"]), tok) {
		t.Fatalf("token leaked outside reservations")
	}

	gc := grandchildPID(t, h)
	if !alive(h.PID) || !alive(gc) {
		t.Fatal("service or its grandchild is not running")
	}
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	ws.Close()
	waitFor(t, "the service and its grandchild to die", 20*time.Second, func() bool { return !alive(h.PID) && !alive(gc) })
	waitFor(t, "the slot to be free", 10*time.Second, func() bool { return g.free(t, "Echo Service") == 1 })
	// The token is spent.
	if _, code, _ := dialWS(t, g.wsURL("/?token="+tok), nil); code != http.StatusForbidden {
		t.Fatalf("reusing an ended token: %d", code)
	}
	// The session log stays.
	logb, err := os.ReadFile(filepath.Join(h.SessionDir, "session.log"))
	if err != nil || !strings.Contains(string(logb), "testsvc listening") || !strings.Contains(string(logb), "stopped") {
		t.Fatalf("session log: %q %v", logb, err)
	}
	// The log has the tunnel and service lines, and never a whole token.
	waitFor(t, "tunnel closed log line", 5*time.Second, func() bool { return strings.Contains(g.log.String(), "tunnel closed") })
	logs := g.log.String()
	if strings.Contains(logs, tok) {
		t.Fatal("a whole token appears in the log")
	}
	for _, want := range []string{`"message":"tunnel open"`, `"message":"tunnel closed"`, `"bytes_in":1048576`, `"token":"` + tok[:8] + `"`, `"message":"service stopped"`, `"message":"service ready"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

func TestReserveErrors(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, map[string]any{"Solve": map[string]any{"kind": "job", "count": 1, "cmd": []string{"/bin/true"}, "options": map[string]any{}}},
		"--state_db", filepath.Join(t.TempDir(), "state.db"))
	if r := g.reserve(t, "Echo Service", ""); r["options"] == nil {
		t.Fatalf("a reservation without options answers \"options\": null, not an object: %v", r)
	}
	code, body := getJSON(t, g.httpURL("/v1/reserve/Echo%20Service"))
	if msg, _ := body["error"].(string); code != http.StatusServiceUnavailable ||
		msg != `no free slot: the one slot of "Echo Service" is in use; release one or try again later` {
		t.Fatalf("full service: %d %v", code, body)
	}
	code, body = getJSON(t, g.httpURL("/v1/reserve/Nope"))
	if code != http.StatusNotFound || !strings.Contains(body["error"].(string), "Echo Service") {
		t.Fatalf("unknown service: %d %v", code, body)
	}
	// A job service is not reserved: the answer says how it is run.
	code, body = getJSON(t, g.httpURL("/v1/reserve/Solve"))
	if msg, _ := body["error"].(string); code != http.StatusNotFound || !strings.Contains(msg, `"Solve" is a batch job service`) ||
		!strings.Contains(msg, "jobs.submit") || !strings.Contains(msg, "services to reserve: Echo Service") {
		t.Fatalf("job service reserved: %d %v", code, body)
	}
	code, body = getJSON(t, g.httpURL("/v1/release/00000000-0000-4000-8000-000000000000"))
	if code != http.StatusNotFound {
		t.Fatalf("unknown release: %d %v", code, body)
	}
	code, body = getJSON(t, g.httpURL("/v1/nothing"))
	if code != http.StatusNotFound || body["error"] == nil {
		t.Fatalf("unknown call: %d %v", code, body)
	}
}

func TestTokenRefusals(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 2, nil, "--allowed_origins", "https://app.example.org")
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	cases := []struct {
		name   string
		path   string
		origin string
		code   int
		reason string
	}{
		{"missing", "/websockify", "", 401, "missing token"},
		{"unknown", "/websockify?token=0f0f0f0f-0000-4000-8000-000000000000", "", 403, "unknown token"},
		{"cross-site", "/websockify?token=" + tok, "https://evil.example.com", 403, "Origin"},
		{"null origin", "/websockify?token=" + tok, "null", 403, "Origin"},
	}
	for _, c := range cases {
		h := http.Header{}
		if c.origin != "" {
			h.Set("Origin", c.origin)
		}
		ws, code, body := dialWS(t, g.wsURL(c.path), h)
		if ws != nil {
			ws.Close()
			t.Fatalf("%s: accepted", c.name)
		}
		if code != c.code || !strings.Contains(fmt.Sprint(body["error"]), c.reason) {
			t.Errorf("%s: %d %v, want %d %q", c.name, code, body, c.code, c.reason)
		}
	}
	// Same host and allow-listed origins are accepted.
	for _, o := range []string{"http://127.0.0.1:1234", "https://app.example.org"} {
		tk := g.reserve(t, "Echo Service", "")["token"].(string)
		h := http.Header{}
		h.Set("Origin", o)
		ws, code, body := dialWS(t, g.wsURL("/websockify?token="+tk), h)
		if ws == nil {
			t.Fatalf("origin %s refused: %d %v", o, code, body)
		}
		ws.Close()
		waitFor(t, "slot back", 20*time.Second, func() bool { return g.free(t, "Echo Service") >= 1 })
	}
}

func TestUnusedReservationExpires(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil, "--timeout", "1")
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	if g.free(t, "Echo Service") != 0 {
		t.Fatal("slot not taken")
	}
	waitFor(t, "the reservation to be reclaimed", 10*time.Second, func() bool { return g.free(t, "Echo Service") == 1 })
	_, code, body := dialWS(t, g.wsURL("/?token="+tok), nil)
	if code != http.StatusForbidden || !strings.Contains(body["error"].(string), "expired") {
		t.Fatalf("expired token: %d %v", code, body)
	}
}

func TestFailingScriptCloses1011AndFreesSlot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeScript(t, dir, "fail.sh", fmt.Sprintf("exec %s fail 'cannot open display :42 (disk full)'\n", svcBin))
	writeScript(t, dir, "silent.sh", fmt.Sprintf("exec %s silent\n", svcBin))
	p := writeConfig(t, dir, map[string]any{
		"Broken": map[string]any{"script": "fail.sh", "count": 1, "options": map[string]any{}},
		"Silent": map[string]any{"script": "silent.sh", "count": 1, "options": map[string]any{}},
	})
	g := startGateway(t, "--remote_session_config", p, "--start_timeout", "1")
	for _, c := range []struct{ svc, reason string }{
		{"Broken", "cannot open display :42"},
		{"Silent", "no ready line within 1s"},
	} {
		tok := g.reserve(t, c.svc, "")["token"].(string)
		ws, code, body := dialWS(t, g.wsURL("/?token="+tok), nil)
		if ws == nil {
			t.Fatalf("%s: refused %d %v", c.svc, code, body)
		}
		_, ce, err := readUntilClose(ws, 20*time.Second)
		if err != nil {
			t.Fatalf("%s: no close frame: %v", c.svc, err)
		}
		if ce.Code != websocket.CloseInternalServerErr || !strings.Contains(ce.Text, c.reason) {
			t.Fatalf("%s: close %d %q, want 1011 with %q", c.svc, ce.Code, ce.Text, c.reason)
		}
		waitFor(t, c.svc+" slot back", 10*time.Second, func() bool { return g.free(t, c.svc) == 1 })
	}
	logs, _ := filepath.Glob(filepath.Join(g.dir, "sessions", "Broken-0-*", "session.log"))
	if len(logs) != 1 {
		t.Fatalf("session logs: %v", logs)
	}
	b, _ := os.ReadFile(logs[0])
	if !strings.Contains(string(b), "cannot open display :42 (disk full)") {
		t.Fatalf("stderr not kept in the session log: %q", b)
	}
}

func TestReleaseActiveSession(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	ws, h := connectToken(t, g, tok)
	gc := grandchildPID(t, h)
	code, body := getJSON(t, g.httpURL("/v1/release/"+tok))
	if code != 200 || body["released"] != true {
		t.Fatalf("release: %d %v", code, body)
	}
	_, ce, err := readUntilClose(ws, 10*time.Second)
	if err != nil || ce.Code != 1000 || !strings.Contains(ce.Text, "released") {
		t.Fatalf("close after release: %v %v", ce, err)
	}
	if alive(h.PID) || alive(gc) {
		t.Fatal("service still running after release answered")
	}
	if g.free(t, "Echo Service") != 1 {
		t.Fatal("slot not free after release")
	}
	// Releasing an unused reservation frees its slot too.
	tok = g.reserve(t, "Echo Service", "")["token"].(string)
	if code, body := getJSON(t, g.httpURL("/v1/release/"+tok)); code != 200 {
		t.Fatalf("release unused: %d %v", code, body)
	}
	if g.free(t, "Echo Service") != 1 {
		t.Fatal("slot not free after releasing an unused reservation")
	}
}

func TestDetachedServiceGetsStopScript(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// start: launch the server in its own session (a "daemon"), print its
	// line, exit 0. stop: record WSGW_START_OUTPUT and kill the daemon.
	writeScript(t, dir, "daemon.sh", fmt.Sprintf(`case "$1" in
start)
	setsid %[1]s serve --pidfile "$WSGW_SESSION_DIR/daemon.pid" > "$WSGW_SESSION_DIR/line" 2>/dev/null < /dev/null &
	while [ ! -s "$WSGW_SESSION_DIR/line" ]; do sleep 0.05; done
	cat "$WSGW_SESSION_DIR/line"
	exit 0 ;;
stop)
	printf '%%s' "$WSGW_START_OUTPUT" > "$WSGW_SESSION_DIR/stop-saw"
	kill "$(cat "$WSGW_SESSION_DIR/daemon.pid")"
	exit 0 ;;
esac
`, svcBin))
	p := writeConfig(t, dir, map[string]any{"Daemon": map[string]any{"script": "daemon.sh", "count": 1, "options": map[string]any{}}})
	g := startGateway(t, "--remote_session_config", p)
	tok := g.reserve(t, "Daemon", "")["token"].(string)
	ws, h := connectToken(t, g, tok)
	t.Cleanup(func() { syscall.Kill(h.PID, syscall.SIGKILL) })
	roundTrip(t, ws, 10000)
	ws.Close()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(h.SessionDir, "session.log"))
			t.Logf("session log:\n%s", b)
		}
	})
	waitFor(t, "the daemon to be stopped", 20*time.Second, func() bool { return !alive(h.PID) })
	waitFor(t, "the slot", 10*time.Second, func() bool { return g.free(t, "Daemon") == 1 })
	saw, err := os.ReadFile(filepath.Join(h.SessionDir, "stop-saw"))
	if err != nil {
		t.Fatalf("stop script did not run: %v", err)
	}
	line, _ := os.ReadFile(filepath.Join(h.SessionDir, "line"))
	if strings.TrimSpace(string(saw)) != strings.TrimSpace(string(line)) {
		t.Fatalf("WSGW_START_OUTPUT %q, want the ready line %q", saw, line)
	}
}

func TestSecurityToken(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 2, nil, "--security_token", "s3cret-token")
	for _, p := range []string{"/v1/reserve/Echo%20Service", "/v1/status", "/v1/status_view", "/v1/stop", "/v1/release/x"} {
		code, body := getJSON(t, g.httpURL(p))
		if code != http.StatusUnauthorized || !strings.Contains(body["error"].(string), "security token") {
			t.Errorf("%s without token: %d %v", p, code, body)
		}
		code, _ = getJSON(t, g.httpURL(p+"?security_token=wrong"))
		if code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d", p, code)
		}
	}
	code, body := getJSON(t, g.httpURL("/v1/reserve/Echo%20Service?security_token=s3cret-token"))
	if code != 200 {
		t.Fatalf("reserve with token: %d %v", code, body)
	}
	if o, _ := body["options"].(map[string]any); o["security_token"] != nil {
		t.Fatal("security_token became a service option")
	}
	code, body = getJSON(t, g.httpURL("/v1/status"), "Authorization", "Bearer s3cret-token")
	if code != 200 {
		t.Fatalf("status with bearer: %d %v", code, body)
	}
	res := body["reservations"].([]any)[0].(map[string]any)
	if res["token"] == nil {
		t.Fatal("the admin does not see tokens in status")
	}
}

func TestStatusHidesTokensFromNonAdmins(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	// From loopback without a security token the caller is an admin...
	_, body := getJSON(t, g.httpURL("/v1/status"))
	if !strings.Contains(fmt.Sprint(body), tok) {
		t.Fatal("loopback admin does not see the token")
	}
	// ...but not from a cross-site browser page.
	_, body = getJSON(t, g.httpURL("/v1/status"), "Sec-Fetch-Site", "cross-site")
	if strings.Contains(fmt.Sprint(body), tok) {
		t.Fatal("a cross-site request sees the token")
	}
	code, _ := getJSON(t, g.httpURL("/v1/stop"), "Origin", "https://evil.example.com")
	if code != http.StatusForbidden {
		t.Fatalf("cross-site stop: %d", code)
	}
	resp, err := insecureClient.Get(g.httpURL("/v1/status_view"))
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	var page strings.Builder
	for sc.Scan() {
		page.WriteString(sc.Text())
	}
	resp.Body.Close()
	if !strings.Contains(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(page.String(), "Echo Service") || strings.Contains(page.String(), tok) {
		t.Fatalf("status_view: %q", page.String())
	}
}

func TestShutdownClosesTunnelsAndStopsServices(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"SIGTERM", "SIGINT", "/v1/stop"} {
		t.Run(how, func(t *testing.T) {
			g, _ := svcGateway(t, 2, nil)
			tok := g.reserve(t, "Echo Service", "")["token"].(string)
			ws, h := connectToken(t, g, tok)
			gc := grandchildPID(t, h)
			start := time.Now()
			switch how {
			case "SIGTERM":
				g.cmd.Process.Signal(syscall.SIGTERM)
			case "SIGINT":
				g.cmd.Process.Signal(syscall.SIGINT)
			default:
				if code, body := getJSON(t, g.httpURL("/v1/stop")); code != 200 {
					t.Fatalf("stop: %d %v", code, body)
				}
			}
			_, ce, err := readUntilClose(ws, 15*time.Second)
			if err != nil || ce.Code != websocket.CloseGoingAway {
				t.Fatalf("tunnel close: %v %v, want 1001", ce, err)
			}
			select {
			case <-g.exited:
			case <-time.After(30 * time.Second):
				t.Fatal("gateway did not exit")
			}
			if g.exitErr != nil {
				t.Fatalf("gateway exit: %v", g.exitErr)
			}
			if alive(h.PID) || alive(gc) {
				t.Fatal("a service process outlived the gateway")
			}
			t.Logf("%s: exited in %s", how, time.Since(start).Round(time.Millisecond))
		})
	}
}

func TestLogFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	lf := filepath.Join(dir, "gw.log")
	g, _ := basicGateway(t, echo, "--log_file", lf)
	ws, _, _ := dialWS(t, g.wsURL("/"), nil)
	roundTrip(t, ws, 5000)
	ws.Close()
	waitFor(t, "tunnel lines in the log file", 10*time.Second, func() bool {
		b, _ := os.ReadFile(lf)
		return strings.Contains(string(b), `"message":"tunnel closed"`) && strings.Contains(string(b), `"bytes_out":5000`)
	})
	if strings.Contains(g.log.String(), "tunnel") {
		t.Fatal("with --log_file the log still goes to stderr")
	}
}

func TestReserveWaitsForAFreeSlot(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil)
	first := g.reserve(t, "Echo Service", "")["token"].(string)
	// A waiter that gives up: 503 after its wait.
	start := time.Now()
	code, body := getJSON(t, g.httpURL("/v1/reserve/Echo%20Service?wait=0.5"))
	if code != http.StatusServiceUnavailable || time.Since(start) < 400*time.Millisecond {
		t.Fatalf("timed-out wait: %d %v after %s", code, body, time.Since(start))
	}
	// Two waiters are served in order as slots free.
	type result struct {
		code int
		body map[string]any
	}
	results := make(chan result, 2)
	for i, opt := range []string{"who=first", "who=second"} {
		u := g.httpURL("/v1/reserve/Echo%20Service?wait=30&" + opt)
		go func() { // no t.Fatal here: a failure is a result
			resp, err := insecureClient.Get(u)
			if err != nil {
				results <- result{0, map[string]any{"error": err.Error()}}
				return
			}
			defer resp.Body.Close()
			var b map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&b)
			results <- result{resp.StatusCode, b}
		}()
		waitFor(t, fmt.Sprintf("%d waiting", i+1), 10*time.Second, func() bool {
			for _, s := range g.status(t)["services"].([]any) {
				if w, _ := s.(map[string]any)["waiting"].(float64); int(w) == i+1 {
					return true
				}
			}
			return false
		})
	}
	getJSON(t, g.httpURL("/v1/release/"+first))
	r1 := <-results
	if o, _ := r1.body["options"].(map[string]any); r1.code != 200 || o["who"] != "first" {
		t.Fatalf("first waiter: %v", r1)
	}
	tok1, _ := r1.body["token"].(string)
	getJSON(t, g.httpURL("/v1/release/"+tok1))
	r2 := <-results
	if o, _ := r2.body["options"].(map[string]any); r2.code != 200 || o["who"] != "second" {
		t.Fatalf("second waiter: %v", r2)
	}
	if code, body := getJSON(t, g.httpURL("/v1/reserve/Echo%20Service?wait=abc")); code != 400 {
		t.Fatalf("bad wait: %d %v", code, body)
	}
}

// TestReservationsSurviveSIGKILL: with --state_db, unused reservations
// outlive the gateway; sessions that were running come back interrupted.
func TestReservationsSurviveSIGKILL(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "state.db")
	g, cfgDir := svcGateway(t, 3, nil, "--state_db", db)
	unused := g.reserve(t, "Echo Service", "who=kept")["token"].(string)
	running := g.reserve(t, "Echo Service", "")["token"].(string)
	ws, h := connectToken(t, g, running)
	defer ws.Close()
	g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.exited
	waitFor(t, "the old service to die", 20*time.Second, func() bool { return !alive(h.PID) })

	g2 := startGateway(t, "--remote_session_config", filepath.Join(cfgDir, "services.json"), "--state_db", db)
	if n := g2.free(t, "Echo Service"); n != 2 {
		t.Fatalf("free after restart = %d, want 2 (the unused reservation is held again)", n)
	}
	ws2, h2 := connectToken(t, g2, unused)
	if h2.Options["who"] != "kept" {
		t.Fatalf("restored reservation lost its options: %v", h2.Options)
	}
	ws2.Close()
	if _, code, body := dialWS(t, g2.wsURL("/?token="+running), nil); code != http.StatusForbidden {
		t.Fatalf("the interrupted session's token: %d %v", code, body)
	}
	c := dialRPC(t, g2, "")
	c.must("events.subscribe", map[string]any{"topics": []string{"session.state"}, "since": 0}, nil)
	c.waitEvent("the interrupted session", 10*time.Second, func(e rpcEvent) bool {
		return e.Data["state"] == "interrupted" && e.Data["token_prefix"] == running[:8]
	})
}

// TestPassEnv: a variable of the gateway's environment reaches a service
// only when --pass_env names it (here by prefix); the security token
// never does, even when a prefix covers it.
func TestPassEnv(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil, "--pass_env", "WSGW_TEST_*")
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	_, h := connectToken(t, g, tok)
	if h.Leak != "secret-from-parent" {
		t.Fatalf("--pass_env WSGW_TEST_*: the service saw WSGW_TEST_LEAK=%q, want the gateway's value", h.Leak)
	}
	for _, bad := range []string{"*", "WEBSOCKETSERVER_SECURITY_TOKEN", "1BAD"} {
		out, err := exec.Command(gwBin, "--pass_env", bad, "0").CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "pass_env") {
			t.Errorf("--pass_env %q: %v, want exit 2 naming the flag; output %q", bad, err, out)
		}
	}
}
