package integration

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// haproxyUser is the user the test's HAProxy runs as, for the replicas'
// --trusted_proxy_user: the shipped file's "haproxy" when the test runs
// as root, else the test's own user (HAProxy cannot change users then).
func haproxyUser() string {
	if os.Getuid() == 0 {
		return "haproxy"
	}
	return strconv.Itoa(os.Getuid())
}

// haproxyFront is a running HAProxy: the address of its front end (the
// shipped file's TLS one, here plain) and its stats socket.
type haproxyFront struct {
	addr  string
	stats string
}

// startShippedHAProxy runs Debian's haproxy with
// contrib/haproxy/wsgateway.cfg as shipped, but for its addresses (the
// replicas' HTTP ports for the example servers, free ports of 127.0.0.1
// for its two front ends, the stats socket in a temporary directory), a
// maxconn the test machine's descriptor limit allows, no
// TLS (the test has no certificate for gateway.example.org), and client
// timeouts of 1 s instead of 60 s and 10 s, so that the test sees within
// seconds that a quiet websocket outlives them.
func startShippedHAProxy(t *testing.T, gws []*gateway) haproxyFront {
	t.Helper()
	needComponent(t, "/usr/sbin/haproxy", "haproxy")
	shipped, err := os.ReadFile(filepath.Join(repoDir, "contrib", "haproxy", "wsgateway.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	conf := string(shipped)
	servers := regexp.MustCompile(`(?m)^(\s*server gw\d+ )10\.0\.0\.1\d:9090 `).FindAllStringSubmatch(conf, -1)
	if len(servers) != len(gws) {
		t.Fatalf("the shipped file has %d servers, the test %d replicas", len(servers), len(gws))
	}
	for i, s := range servers {
		conf = strings.Replace(conf, s[0], s[1]+gws[i].httpAddr+" ", 1)
	}
	dir := t.TempDir()
	front := haproxyFront{addr: freeAddr(t), stats: filepath.Join(dir, "admin.sock")}
	tlsBind := regexp.MustCompile(`(?m)^(\s*)bind :443 ssl .*$`)
	if !tlsBind.MatchString(conf) {
		t.Fatal("the shipped file has no TLS bind on :443")
	}
	conf = tlsBind.ReplaceAllString(conf, "${1}bind "+front.addr)
	for _, r := range [][2]string{
		{"bind :80\n", "bind " + freeAddr(t) + "\n"},
		{"stats socket /run/haproxy/admin.sock", "stats socket " + front.stats},
		// HAProxy wants two descriptors a connection, more than a test
		// machine may allow.
		{"maxconn 20000", "maxconn 1000"},
		{"timeout client  60s", "timeout client  1s"},
		{"timeout http-request 10s", "timeout http-request 1s"},
		// Its log in the test's output (shown when the test fails).
		{"log /dev/log local0", "log stderr local0"},
	} {
		if !strings.Contains(conf, r[0]) {
			t.Fatalf("the shipped file has no %q", r[0])
		}
		conf = strings.Replace(conf, r[0], r[1], 1)
	}
	if os.Getuid() != 0 {
		conf = regexp.MustCompile(`(?m)^\s*(user|group) haproxy\n`).ReplaceAllString(conf, "")
	}
	cf := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	runFrontEnd(t, "haproxy", front.addr, func(out string) string {
		return out + "\nits configuration:\n" + conf
	}, "/usr/sbin/haproxy", "-db", "-f", cf)
	return front
}

// serverState is a backend server's line of HAProxy's "show stat".
type serverState struct {
	status, check string // UP, DOWN, …; the last check's result (L7OK, L4CON, …)
}

// servers returns the state of the backend's servers by name (gw1, gw2…).
func (h haproxyFront) servers(t *testing.T) map[string]serverState {
	t.Helper()
	c, err := net.DialTimeout("unix", h.stats, 5*time.Second)
	if err != nil {
		t.Fatalf("haproxy's stats socket: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "show stat\n"); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("show stat: %v", err)
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(strings.TrimSpace(string(b)), "# ")))
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) < 2 {
		t.Fatalf("show stat: %q %v", b, err)
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[name] = i
	}
	out := map[string]serverState{}
	for _, row := range rows[1:] {
		if len(row) > col["check_status"] && row[col["pxname"]] == "wsgateway_replicas" && strings.HasPrefix(row[col["svname"]], "gw") {
			out[row[col["svname"]]] = serverState{status: row[col["status"]], check: row[col["check_status"]]}
		}
	}
	return out
}

// clientFrom is an HTTP client whose connections come from ip (one of
// 127.0.0.0/8), one connection per request.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// TestReplicasBehindHAProxy: three replicas behind the shipped HAProxy
// front end, round robin. The health checks pass on every replica (with
// a security token set); a reservation and its websocket through HAProxy
// land on two replicas and the websocket carries bytes both ways; a quiet
// websocket outlives the client timeouts that close an idle connection;
// the replicas' limits key on the client HAProxy names in
// X-Forwarded-For, not on what the client wrote there; a client's own
// X-Forwarded-User and X-Forwarded-Host are not passed on; a replica
// killed with SIGKILL is marked down by the health check and no request
// fails afterwards.
func TestReplicasBehindHAProxy(t *testing.T) {
	t.Parallel()
	const secToken = "haproxy-test-token-0123"
	dir := t.TempDir()
	gws := startLinkedReplicas(t, 3, map[string]any{"Unix Echo": unixEchoService(t, dir, 3)},
		"--trusted_proxy", "127.0.0.1", "--trusted_proxy_user", haproxyUser(),
		"--security_token", secToken, "--auth_fail_limit", "2") // 2 a minute, one back every 30 s
	hp := startShippedHAProxy(t, gws)
	local := clientFrom("127.0.0.1")
	get := func(c *http.Client, path string, hdr ...string) (int, map[string]any) {
		t.Helper()
		return getThrough(t, c, hp.addr, path, hdr...)
	}
	// The replica running tok's session, from the replicas' own status
	// (with the token: no loopback administrator once it is set).
	sessionReplica := func(tok string) string {
		t.Helper()
		for _, g := range gws {
			select {
			case <-g.exited:
				continue
			default:
			}
			code, st := getJSON(t, g.httpURL("/v1/status?security_token="+secToken))
			if code != http.StatusOK {
				t.Fatalf("status: %d %v", code, st)
			}
			for _, s := range st["sessions"].([]any) {
				if m := s.(map[string]any); m["token_prefix"] == tok[:8] && m["replica"] != nil {
					return fmt.Sprint(m["replica"])
				}
			}
			return ""
		}
		return ""
	}

	// Every replica passes the health check.
	waitFor(t, "haproxy's health checks to pass on the three replicas", 30*time.Second, func() bool {
		st := hp.servers(t)
		for _, name := range []string{"gw1", "gw2", "gw3"} {
			if st[name].status != "UP" || st[name].check != "L7OK" {
				return false
			}
		}
		return true
	})

	// Reserve through HAProxy; the websocket, the next request, goes to
	// the next replica, which runs the session.
	code, res := get(local, "/v1/reserve/Unix%20Echo?security_token="+secToken)
	if code != http.StatusOK {
		t.Fatalf("reserve through haproxy: %d %v", code, res)
	}
	tok := res["token"].(string)
	reservedOn := ""
	// The replica may write its "reserved" line just after its answer.
	waitFor(t, "the reserving replica's log line", 15*time.Second, func() bool {
		for i, g := range gws {
			for _, l := range g.logLines() {
				if l["message"] == "reserved" && l["token"] == tok[:8] {
					reservedOn = string(rune('A' + i))
				}
			}
		}
		return reservedOn != ""
	})
	ws, code, body := dialWS(t, "ws://"+hp.addr+"/websockify?token="+tok, nil)
	if ws == nil {
		t.Fatalf("websocket through haproxy: %d %v", code, body)
	}
	defer ws.Close()
	line, _, err := readLine(ws, 30*time.Second)
	var h hello
	if err != nil || json.Unmarshal(line, &h) != nil || h.Service != "Unix Echo" {
		t.Fatalf("greeting through haproxy: %q %v", line, err)
	}
	echoThrough(t, ws, strings.Repeat("both ways through haproxy ", 4096))
	runsOn := sessionReplica(tok)
	if reservedOn == "" || runsOn == "" || runsOn == reservedOn {
		t.Fatalf("reserved on %q, the session runs on %q: want two replicas", reservedOn, runsOn)
	}

	// The websocket stays quiet while two idle connections to HAProxy
	// are closed by its client-side timeouts (1 s here): an upgraded
	// websocket is under the file's timeout tunnel instead.
	for i := 0; i < 2; i++ {
		c, err := net.DialTimeout("tcp", hp.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err = io.Copy(io.Discard, c)
		c.Close()
		if err != nil {
			t.Fatalf("an idle connection to haproxy was not closed by its client timeout: %v", err)
		}
	}
	echoThrough(t, ws, "after a quiet spell")

	tok2 := checkForwarding(t, hp.addr, secToken)

	// kill -9 of a replica that runs no session: the health check marks
	// it down, the others stay up, and no request fails.
	victimIdx := -1
	for i := range gws {
		if id := string(rune('A' + i)); id != runsOn && id != sessionReplica(tok2) {
			victimIdx = i
		}
	}
	if victimIdx < 0 {
		t.Fatal("every replica runs a session")
	}
	if err := gws[victimIdx].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-gws[victimIdx].exited
	dead := fmt.Sprintf("gw%d", victimIdx+1)
	waitFor(t, "haproxy to mark the killed replica down", 30*time.Second, func() bool {
		return hp.servers(t)[dead].status == "DOWN"
	})
	for name, s := range hp.servers(t) {
		if name != dead && s.status != "UP" {
			t.Fatalf("%s is %s after another replica was killed", name, s.status)
		}
	}
	for i := 0; i < 6; i++ {
		if c, m := get(local, "/wsgw/"); c != http.StatusOK {
			t.Fatalf("request %d after %s was marked down: %d %v", i, dead, c, m)
		}
		if c, m := get(local, "/v1/status?security_token="+secToken); c != http.StatusOK {
			t.Fatalf("status %d after %s was marked down: %d %v", i, dead, c, m)
		}
	}
	echoThrough(t, ws, "still through haproxy")
}

// getThrough does a GET of path on the front end at addr with client c
// and headers hdr (name, value, …), and decodes a JSON answer.
func getThrough(t *testing.T, c *http.Client, addr, path string, hdr ...string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s through the front end: %v", path, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// checkForwarding checks what three replicas with --trusted_proxy (the
// front end's user), --security_token secToken and --auth_fail_limit 2
// see of clients through the round-robin front end at front: their
// limits key on the client the front end names in X-Forwarded-For, not
// on what the client wrote there; a client's own X-Forwarded-User,
// X-Forwarded-Groups and X-Forwarded-Host do not reach them. It leaves a
// detached session of "Unix Echo" behind and returns its token.
func checkForwarding(t *testing.T, front, secToken string) string {
	t.Helper()
	get := func(c *http.Client, path string, hdr ...string) (int, map[string]any) {
		t.Helper()
		return getThrough(t, c, front, path, hdr...)
	}
	local := clientFrom("127.0.0.1")
	// Limits key on the client the front end saw. The attacker (127.0.0.2)
	// writes the victim's address (127.0.0.3) into X-Forwarded-For; the
	// replicas must take the front end's hop, the rightmost. Twelve wrong
	// tokens round robin: four per replica, over its limit of two.
	attacker, victim := clientFrom("127.0.0.2"), clientFrom("127.0.0.3")
	var last []int
	for i := 0; i < 12; i++ {
		c, _ := get(attacker, "/v1/status?security_token=wrong", "X-Forwarded-For", "127.0.0.3")
		last = append(last, c)
	}
	if fmt.Sprint(last[9:]) != "[429 429 429]" {
		t.Fatalf("twelve wrong tokens through the front end, answers %v: want the last three (one per replica) 429", last)
	}
	for i := 0; i < 3; i++ {
		if c, m := get(victim, "/v1/status?security_token="+secToken); c != http.StatusOK {
			t.Fatalf("the victim with the right token, request %d: %d %v (a limit keyed on the address the attacker wrote)", i, c, m)
		}
		if c, m := get(attacker, "/v1/status?security_token="+secToken); c != http.StatusTooManyRequests {
			t.Fatalf("the attacker with the right token, request %d: %d %v, want 429 while its limit holds", i, c, m)
		}
	}

	// A client's own X-Forwarded-User and -Groups do not reach the
	// replicas (which believe the front end's): no credentials, no caller.
	for i := 0; i < 3; i++ {
		if c, m := get(clientFrom("127.0.0.4"), "/v1/whoami", "X-Forwarded-User", "mallory", "X-Forwarded-Groups", "admin"); c != http.StatusUnauthorized {
			t.Fatalf("whoami through the front end asserting a user: %d %v, want 401", c, m)
		}
	}
	// Nor does its X-Forwarded-Host: the front end names the host the client
	// used, so a page of another origin stays foreign.
	code, res := get(local, "/v1/reserve/Unix%20Echo?security_token="+secToken)
	if code != http.StatusOK {
		t.Fatalf("reservation through the front end: %d %v", code, res)
	}
	tok2 := res["token"].(string)
	forged := http.Header{"Origin": {"http://127.0.0.9:1"}, "X-Forwarded-Host": {"127.0.0.9:1"}}
	if w, code, body := dialWS(t, "ws://"+front+"/websockify?token="+tok2, forged); w != nil || code != http.StatusForbidden {
		if w != nil {
			w.Close()
		}
		t.Fatalf("a foreign page with its own X-Forwarded-Host: %d %v, want 403", code, body)
	}
	own := http.Header{"Origin": {"http://" + front}}
	w2, code, body := dialWS(t, "ws://"+front+"/websockify?token="+tok2, own)
	if w2 == nil {
		t.Fatalf("the front end's own page: %d %v", code, body)
	}
	w2.Close()
	return tok2
}

// TestReplicasBehindNginxForwarding: the shipped nginx front end, in
// front of three replicas that trust it, passes on the client's address
// and none of the identity or host headers the client wrote.
func TestReplicasBehindNginxForwarding(t *testing.T) {
	t.Parallel()
	const secToken = "nginx-test-token-0123"
	user := "nobody" // runNginx's workers, when the test runs as root
	if os.Getuid() != 0 {
		user = strconv.Itoa(os.Getuid())
	}
	gws := startLinkedReplicas(t, 3, map[string]any{"Unix Echo": unixEchoService(t, t.TempDir(), 3)},
		"--trusted_proxy", "127.0.0.1", "--trusted_proxy_user", user,
		"--security_token", secToken, "--auth_fail_limit", "2")
	checkForwarding(t, startShippedNginx(t, gws), secToken)
}
