package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/internal/redistest"
)

// replicaSet is three gateway processes sharing the package's one
// redis-server, under a key prefix of their own.
type replicaSet struct {
	gws []*gateway
	url string
}

// startReplicas starts n replicas (A, B, C…) whose services config has an
// "Echo Service" with count slots, backed by testsvc.
func startReplicas(t *testing.T, n, count int, args ...string) *replicaSet {
	t.Helper()
	needComponent(t, "redis-server", "redis-server")
	srv := redistest.Need(t)
	return startReplicasOn(t, srv.URL(0)+"?prefix="+redistest.Prefix(t), n, count, args...)
}

// startReplicasOn starts n replicas on the Redis of url.
func startReplicasOn(t *testing.T, url string, n, count int, args ...string) *replicaSet {
	t.Helper()
	dir := t.TempDir()
	writeScript(t, dir, "echo.sh", fmt.Sprintf(`case "$1" in
start) exec %s serve ;;
stop) exit 0 ;;
esac
`, svcBin))
	cfg := writeConfig(t, dir, map[string]any{"Echo Service": map[string]any{"script": "echo.sh", "count": count,
		"options": map[string]any{"reconnect_grace": 30}}})
	rs := &replicaSet{url: url}
	for i := 0; i < n; i++ {
		id := string(rune('A' + i))
		rs.gws = append(rs.gws, startGateway(t, append([]string{"--remote_session_config", cfg, "--state_db", rs.url,
			"--replica_id", id, "--rate_limit", "0"}, args...)...))
	}
	return rs
}

// statusSessions returns the sessions a replica's status lists.
func statusSessions(t *testing.T, g *gateway) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, s := range g.status(t)["sessions"].([]any) {
		out = append(out, s.(map[string]any))
	}
	return out
}

// TestReplicasFiftyReserveForFiveSlots: 50 reservations race over three
// replicas for five slots: exactly five succeed, indexes 0 to 4 once each.
func TestReplicasFiftyReserveForFiveSlots(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t, 3, 5)
	var mu sync.Mutex
	var idx []int
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(g *gateway) {
			defer wg.Done()
			resp, err := insecureClient.Get(g.httpURL("/v1/reserve/Echo%20Service"))
			if err != nil {
				t.Errorf("reserve: %v", err)
				return
			}
			defer resp.Body.Close()
			var m map[string]any
			_ = jsonDecode(resp, &m)
			mu.Lock()
			defer mu.Unlock()
			codes[resp.StatusCode]++
			if resp.StatusCode == 200 {
				idx = append(idx, int(m["index"].(float64)))
			}
		}(rs.gws[i%3])
	}
	wg.Wait()
	sort.Ints(idx)
	if codes[200] != 5 || codes[503] != 45 || fmt.Sprint(idx) != "[0 1 2 3 4]" {
		t.Fatalf("answers %v, indexes %v; want five 200s with indexes 0-4 and forty-five 503s", codes, idx)
	}
	for _, g := range rs.gws {
		if f := g.free(t, "Echo Service"); f != 0 {
			t.Fatalf("a replica shows %d free slots, want 0", f)
		}
	}
}

// TestReplicasReserveConnectReleaseOnThree: reserve on A, the websocket
// on B, release on C; the token serves one websocket at a time across
// replicas; every replica's status and /v1/rpc events show the session.
func TestReplicasReserveConnectReleaseOnThree(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t, 3, 1)
	a, b, c := rs.gws[0], rs.gws[1], rs.gws[2]
	ev := dialRPC(t, c, "")
	ev.must("events.subscribe", map[string]any{"topics": []string{"session.state"}}, nil)
	res := a.reserve(t, "Echo Service", "")
	tok := res["token"].(string)
	if res["index"].(float64) != 0 {
		t.Fatalf("reservation %v", res)
	}
	ws, h := connectToken(t, b, tok)
	defer ws.Close()
	if h.Service != "Echo Service" || h.Index != "0" {
		t.Fatalf("greeting %+v", h)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte("ping-through-B")); err != nil {
		t.Fatal(err)
	}
	if got, err := readN(ws, len("ping-through-B"), 10*time.Second); err != nil || string(got) != "ping-through-B" {
		t.Fatalf("echo %q %v", got, err)
	}
	// One websocket at a time, whichever replica the second lands on.
	for _, g := range rs.gws {
		if w2, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), nil); w2 != nil || code != http.StatusConflict {
			if w2 != nil {
				w2.Close()
			}
			t.Fatalf("second websocket: %d %v", code, body)
		}
	}
	// C's subscriber saw B's session run; C's status lists it on B.
	e := ev.waitEvent("the session running on B", 20*time.Second, func(e rpcEvent) bool {
		return e.Method == "session.state" && e.Data["state"] == "running"
	})
	if e.Seq <= 0 {
		t.Fatalf("event %+v", e)
	}
	var onB map[string]any
	for _, s := range statusSessions(t, c) {
		if s["token_prefix"] == tok[:8] {
			onB = s
		}
	}
	if onB == nil || onB["replica"] != "B" || onB["state"] != "running" {
		t.Fatalf("C's status: %v", statusSessions(t, c))
	}
	if c.free(t, "Echo Service") != 0 {
		t.Fatal("the slot shows free on C")
	}
	// Release on C: B closes the websocket and stops the service.
	code, body := getJSON(t, c.httpURL("/v1/release/"+tok))
	if code != 200 || body["released"] != true {
		t.Fatalf("release on C: %d %v", code, body)
	}
	_, ce, _ := readUntilClose(ws, 20*time.Second)
	if ce == nil || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("the websocket on B was not closed by the release: %v", ce)
	}
	for _, g := range rs.gws {
		if f := g.free(t, "Echo Service"); f != 1 {
			t.Fatalf("free after the release: %d", f)
		}
	}
	if w2, code, _ := dialWS(t, a.wsURL("/websockify?token="+tok), nil); w2 != nil || code != http.StatusForbidden {
		t.Fatalf("a released token on A: %d", code)
	}
}

// TestReplicasExpiryIsGlobalAndOnce: an unused reservation expires once
// for the whole deployment, and its token is "expired" on every replica.
func TestReplicasExpiryIsGlobalAndOnce(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t, 3, 2, "--timeout", "1")
	tok := rs.gws[1].reserve(t, "Echo Service", "")["token"].(string)
	for _, g := range rs.gws {
		g := g
		waitFor(t, "the slot to be free again", 20*time.Second, func() bool { return g.free(t, "Echo Service") == 2 })
	}
	reclaimed := 0
	for _, g := range rs.gws {
		for _, l := range g.logLines() {
			if strings.HasPrefix(fmt.Sprint(l["message"]), "reservation reclaimed") && l["token"] == tok[:8] {
				reclaimed++
			}
		}
	}
	if reclaimed != 1 {
		t.Fatalf("%d replicas reclaimed the reservation, want exactly 1", reclaimed)
	}
	for _, g := range rs.gws {
		_, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), nil)
		if code != http.StatusForbidden || !strings.Contains(fmt.Sprint(body), "expired") {
			t.Fatalf("expired token: %d %v", code, body)
		}
	}
}

// TestReplicasOwnerKilled: kill -9 of the replica running a session frees
// its slot within the lease, on the others, which mark it interrupted.
func TestReplicasOwnerKilled(t *testing.T) {
	t.Parallel()
	rs := startReplicas(t, 2, 1, "--replica_lease", "1")
	a, b := rs.gws[0], rs.gws[1]
	tok := a.reserve(t, "Echo Service", "")["token"].(string)
	ws, h := connectToken(t, b, tok)
	defer ws.Close()
	if a.free(t, "Echo Service") != 0 {
		t.Fatal("slot free while the session runs")
	}
	killed := time.Now()
	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.exited
	waitFor(t, "A to free the dead replica's slot", 20*time.Second, func() bool { return a.free(t, "Echo Service") == 1 })
	if d := time.Since(killed); d > 15*time.Second {
		t.Fatalf("the slot was freed %s after the kill, with a 1 s lease", d)
	}
	// The slot is free in Redis a moment before A logs it.
	waitFor(t, "A to log the session as interrupted", 20*time.Second, func() bool {
		for _, l := range a.logLines() {
			if strings.HasPrefix(fmt.Sprint(l["message"]), "session interrupted") && l["token"] == tok[:8] {
				return true
			}
		}
		return false
	})
	// The orphaned service process of the killed replica is ended by the
	// test's own cleanup of strays.
	if h.PID > 0 {
		_ = syscall.Kill(h.PID, syscall.SIGKILL)
	}
	if r := a.reserve(t, "Echo Service", ""); r["index"].(float64) != 0 {
		t.Fatalf("reservation after the kill: %v", r)
	}
}

func jsonDecode(resp *http.Response, v any) error {
	return json.NewDecoder(resp.Body).Decode(v)
}

// TestReplicasRedisRestart: while Redis is down a reservation answers 503
// with a reason and a running tunnel keeps running; once it is back (with
// its append-only file) the replicas resume by themselves and a token
// reserved before the restart still works, on another replica.
func TestReplicasRedisRestart(t *testing.T) {
	t.Parallel()
	needComponent(t, "redis-server", "redis-server")
	srv, err := redistest.StartAt(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	rs := startReplicasOn(t, srv.URL(0), 2, 2)
	a, b := rs.gws[0], rs.gws[1]
	running := a.reserve(t, "Echo Service", "")["token"].(string)
	kept := a.reserve(t, "Echo Service", "")["token"].(string)
	ws, _ := connectToken(t, a, running)
	defer ws.Close()

	srv.Stop()
	code, body := getJSON(t, b.httpURL("/v1/reserve/Echo%20Service"))
	if code != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(body), "Redis") {
		t.Fatalf("reserve with Redis down: %d %v", code, body)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte("still-here")); err != nil {
		t.Fatal(err)
	}
	if got, err := readN(ws, len("still-here"), 10*time.Second); err != nil || string(got) != "still-here" {
		t.Fatalf("the running tunnel with Redis down: %q %v", got, err)
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	var w2 *websocket.Conn
	waitFor(t, "the token reserved before the restart to work on B", 30*time.Second, func() bool {
		var c int
		w2, c, _ = dialWS(t, b.wsURL("/websockify?token="+kept), nil)
		if w2 == nil && c != http.StatusServiceUnavailable {
			t.Fatalf("the kept token after the restart: %d", c)
		}
		return w2 != nil
	})
	w2.Close()
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte("after")); err != nil {
		t.Fatal(err)
	}
	if got, err := readN(ws, len("after"), 10*time.Second); err != nil || string(got) != "after" {
		t.Fatalf("the running tunnel after the restart: %q %v", got, err)
	}
}
