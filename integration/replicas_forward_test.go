package integration

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/internal/redistest"
)

// replicaSecret is the replicas' shared secret in these tests.
const replicaSecret = "test-replicas-secret-0123456789"

// startLinkedReplicas starts n replicas (A, B, C…) on the package's
// redis-server, each with a replica listener on 127.0.0.1 and the shared
// secret, with the services config svcs.
func startLinkedReplicas(t *testing.T, n int, svcs map[string]any, args ...string) []*gateway {
	t.Helper()
	needComponent(t, "redis-server", "redis-server")
	srv := redistest.Need(t)
	url := srv.URL(0) + "?prefix=" + redistest.Prefix(t)
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte(replicaSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, svcs)
	var gws []*gateway
	for i := 0; i < n; i++ {
		gws = append(gws, startGateway(t, append([]string{"--remote_session_config", cfg, "--state_db", url,
			"--replica_id", string(rune('A' + i)), "--replica_address", "127.0.0.1:0", "--replica_secret_file", secret,
			"--rate_limit", "0"}, args...)...))
	}
	return gws
}

// unixEchoService is a services config entry (in dir) whose service
// listens on a Unix socket: only the replica that started it reaches it.
func unixEchoService(t *testing.T, dir string, count int) map[string]any {
	t.Helper()
	// A short directory: a socket path has at most 107 bytes.
	sockDir, err := os.MkdirTemp("", "wsgw-sock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	writeScript(t, dir, "unix-echo.sh", fmt.Sprintf(`case "$1" in
start) TESTSVC_UNIX=%s/s$WSGW_INDEX.sock exec %s serve ;;
esac
`, sockDir, svcBin))
	return map[string]any{"script": filepath.Join(dir, "unix-echo.sh"), "count": count, "options": map[string]any{"reconnect_grace": 60}}
}

// echoThrough writes msg on ws and wants it back.
func echoThrough(t *testing.T, ws *websocket.Conn, msg string) {
	t.Helper()
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if got, err := readN(ws, len(msg), 15*time.Second); err != nil || string(got) != msg {
		t.Fatalf("echo of %q: %q %v", msg, got, err)
	}
}

// sessionOn returns the state and replica of tok's session in g's status.
func sessionOn(t *testing.T, g *gateway, tok string) (state, replica string) {
	t.Helper()
	for _, s := range statusSessions(t, g) {
		if s["token_prefix"] == tok[:8] {
			return fmt.Sprint(s["state"]), fmt.Sprint(s["replica"])
		}
	}
	return "", ""
}

// TestReplicasReconnectThroughOwner: a session on a Unix socket started
// by A, detached, reconnected on B reaches the same service through A;
// a second websocket meanwhile is busy everywhere; the session detaches
// again when B's client leaves; a release on C closes B's websocket with
// the release's code; a request to A's replica listener without the
// secret is refused.
func TestReplicasReconnectThroughOwner(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	gws := startLinkedReplicas(t, 3, map[string]any{"Unix Echo": unixEchoService(t, dir, 1)})
	a, b, c := gws[0], gws[1], gws[2]
	tok := c.reserve(t, "Unix Echo", "")["token"].(string)
	ws, h := connectToken(t, a, tok)
	echoThrough(t, ws, "on-A")
	ws.Close()
	waitFor(t, "the session to detach on A", 20*time.Second, func() bool {
		st, rep := sessionOn(t, b, tok)
		return st == "detached" && rep == "A"
	})

	ws2, h2 := connectToken(t, b, tok)
	defer ws2.Close()
	if h2.PID != h.PID || h2.PID == 0 {
		t.Fatalf("the reconnect on B reached service pid %d, want A's %d", h2.PID, h.PID)
	}
	echoThrough(t, ws2, "through-B-to-A")
	if st, rep := sessionOn(t, c, tok); st != "running" || rep != "A" {
		t.Fatalf("C's status: %s on %s, want running on A", st, rep)
	}
	for _, g := range gws {
		if w3, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), nil); w3 != nil || code != http.StatusConflict {
			if w3 != nil {
				w3.Close()
			}
			t.Fatalf("a second websocket while B's is open: %d %v", code, body)
		}
	}
	// B's client leaves: detached again on A; C reconnects through A too.
	ws2.Close()
	waitFor(t, "the session to detach again", 20*time.Second, func() bool {
		st, _ := sessionOn(t, a, tok)
		return st == "detached"
	})
	ws3, h3 := connectToken(t, c, tok)
	defer ws3.Close()
	if h3.PID != h.PID {
		t.Fatalf("the reconnect on C reached pid %d, want %d", h3.PID, h.PID)
	}
	echoThrough(t, ws3, "through-C")

	// Release on B: C's websocket closes with the release's normal close.
	code, body := getJSON(t, b.httpURL("/v1/release/"+tok))
	if code != 200 || body["released"] != true {
		t.Fatalf("release on B: %d %v", code, body)
	}
	_, ce, _ := readUntilClose(ws3, 20*time.Second)
	if ce == nil || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("C's websocket after the release: %v", ce)
	}
	waitFor(t, "A's service to stop", 20*time.Second, func() bool { return !alive(h.PID) })
	for _, g := range gws {
		if f := g.free(t, "Unix Echo"); f != 1 {
			t.Fatalf("free after the release: %d", f)
		}
	}

	// A's replica listener refuses a request without the secret.
	var addr string
	for _, l := range a.logLines() {
		if l["message"] == "listening for the other replicas" {
			addr = fmt.Sprint(l["address"])
		}
	}
	if addr == "" {
		t.Fatal("A did not log its replica listener")
	}
	tok2 := c.reserve(t, "Unix Echo", "")["token"].(string)
	for _, hdr := range []http.Header{
		nil,
		{"X-Wsgw-Replica-Auth": {"v1 B " + strconv.FormatInt(time.Now().Unix(), 10) + " 00 deadbeef"}},
	} {
		w4, code, _ := dialWS(t, "ws://"+addr+"/replica/v1/attach?mode=relay&token="+tok2, hdr)
		if w4 != nil || code != http.StatusUnauthorized {
			if w4 != nil {
				w4.Close()
			}
			t.Fatalf("unsigned replica request: %d, want 401", code)
		}
	}
}

// remoteEchoService is a services config entry (in dir) whose service
// outlives its start script's process group, as a service on another
// host does: the script stays as the session's process, the service runs
// in a session of its own, and its target is declared reachable from
// every replica. The test's cleanup kills the services left.
func remoteEchoService(t *testing.T, dir string) map[string]any {
	t.Helper()
	writeScript(t, dir, "remote.sh", fmt.Sprintf(`case "$1" in
start)
  d=%[1]s/svc$WSGW_INDEX; mkdir -p $d; rm -f $d/ready
  setsid %[2]s serve --pidfile $d/pid > $d/ready 2>/dev/null < /dev/null &
  while [ ! -s $d/ready ]; do sleep 0.05; done
  cat $d/ready
  exec sleep 1000 ;;
esac
`, dir, svcBin))
	t.Cleanup(func() {
		pids, _ := filepath.Glob(filepath.Join(dir, "svc*", "pid"))
		for _, f := range pids {
			if p, err := os.ReadFile(f); err == nil {
				if pid, _ := strconv.Atoi(strings.TrimSpace(string(p))); pid > 0 {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	return map[string]any{"script": filepath.Join(dir, "remote.sh"), "count": 1,
		"options": map[string]any{"reconnect_grace": 60, "replica_reachable": true}}
}

// TestReplicasOwnerKilledSessionAdopted: a session whose target every
// replica reaches (declared with replica_reachable) is detached on A,
// then A is killed with SIGKILL: within the lease another replica adopts
// it; a reconnect on any replica reaches the same service; a release
// frees the slot everywhere.
func TestReplicasOwnerKilledSessionAdopted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	gws := startLinkedReplicas(t, 3, map[string]any{"Remote Echo": remoteEchoService(t, dir)}, "--replica_lease", "1")
	a, b, c := gws[0], gws[1], gws[2]
	tok := b.reserve(t, "Remote Echo", "")["token"].(string)
	ws, h := connectToken(t, a, tok)
	echoThrough(t, ws, "before")
	ws.Close()
	waitFor(t, "the session to detach on A", 20*time.Second, func() bool {
		st, rep := sessionOn(t, b, tok)
		return st == "detached" && rep == "A"
	})
	killed := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	var adopter string
	waitFor(t, "B or C to adopt the session", 20*time.Second, func() bool {
		st, rep := sessionOn(t, c, tok)
		if st == "detached" && (rep == "B" || rep == "C") {
			adopter = rep
			return true
		}
		return false
	})
	if d := time.Since(killed); d > 15*time.Second {
		t.Fatalf("adopted %s after the kill, with a 1 s lease", d)
	}
	if b.free(t, "Remote Echo") != 0 {
		t.Fatal("the adopted session's slot shows free")
	}
	// A reconnect on either replica reaches the same service: on the
	// adopter directly, on the other through it.
	for _, g := range []*gateway{b, c} {
		w, h2 := connectToken(t, g, tok)
		if h2.PID != h.PID {
			t.Fatalf("the reconnect reached pid %d, want the service's %d", h2.PID, h.PID)
		}
		echoThrough(t, w, "after-"+adopter)
		w.Close()
		waitFor(t, "the session to detach", 20*time.Second, func() bool {
			st, _ := sessionOn(t, b, tok)
			return st == "detached"
		})
	}
	// Stop works: a release on the replica that did not adopt it.
	other := b
	if adopter == "B" {
		other = c
	}
	if code, body := getJSON(t, other.httpURL("/v1/release/"+tok)); code != 200 {
		t.Fatalf("release: %d %v", code, body)
	}
	for _, g := range []*gateway{b, c} {
		if f := g.free(t, "Remote Echo"); f != 1 {
			t.Fatalf("free after the release: %d", f)
		}
	}
	adopted := 0
	for _, g := range []*gateway{b, c} {
		for _, l := range g.logLines() {
			if strings.HasPrefix(fmt.Sprint(l["message"]), "session adopted") && l["token"] == tok[:8] {
				adopted++
			}
		}
	}
	if adopted != 1 {
		t.Fatalf("%d replicas logged the adoption, want 1", adopted)
	}
}

// TestReplicasSharedMetrics: /metrics on any replica gives the whole
// deployment's slots, reservations and sessions (by replica) and the live
// replicas, beside the replica's own figures.
func TestReplicasSharedMetrics(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t, 3, 3)
	a, b, c := rs.gws[0], rs.gws[1], rs.gws[2]
	a.reserve(t, "Echo Service", "")
	tok := a.reserve(t, "Echo Service", "")["token"].(string)
	ws, _ := connectToken(t, b, tok)
	defer ws.Close()
	echoThrough(t, ws, "metrics")
	for _, g := range rs.gws {
		m := scrape(t, g)
		for series, want := range map[string]float64{
			`wsgateway_shared_state_up`:                                              1,
			`wsgateway_shared_replicas`:                                              3,
			`wsgateway_shared_slots_used{service="Echo Service"}`:                    2,
			`wsgateway_shared_reservations{service="Echo Service",state="reserved"}`: 1,
			`wsgateway_shared_reservations{service="Echo Service",state="running"}`:  1,
			`wsgateway_shared_sessions{replica="B",service="Echo Service"}`:          1,
		} {
			if got := metricValue(t, m, series); got != want {
				t.Errorf("%s on a replica: %v, want %v", series, got, want)
			}
		}
		if strings.Contains(m, `wsgateway_shared_sessions{replica="A"`) {
			t.Error("sessions listed on A, which runs none")
		}
	}
	// The replica's own figures stay its own.
	if v := metricValue(t, scrape(t, b), "wsgateway_tunnels_open"); v != 1 {
		t.Fatalf("B's open tunnels: %v", v)
	}
	if v := metricValue(t, scrape(t, c), "wsgateway_tunnels_open"); v != 0 {
		t.Fatalf("C's open tunnels: %v", v)
	}
}
