package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The control plane's limits (issue 11, finding 3), each tested as the
// attack: a client that floods, hoards, asks for too much or never reads.

// cpGateway starts a gateway with job services for the control-plane
// tests: quick (exits at once), big (writes 1 MiB of text), ctl (1 MiB of
// control characters), and returns it with its state database's path.
func cpGateway(t *testing.T, args ...string) (*gateway, string) {
	t.Helper()
	dir := t.TempDir()
	writeScript(t, dir, "quick.sh", "echo done\n")
	writeScript(t, dir, "big.sh", "head -c 1048576 /dev/zero | tr '\\0' 'x'\n")
	writeScript(t, dir, "ctl.sh", "head -c 1048576 /dev/zero | tr '\\0' '\\001'\n")
	cfg := map[string]any{
		"quick": map[string]any{"kind": "job", "count": 4, "cmd": []string{"./quick.sh"}, "options": map[string]any{}},
		"big":   map[string]any{"kind": "job", "count": 1, "cmd": []string{"./big.sh"}, "options": map[string]any{}},
		"ctl":   map[string]any{"kind": "job", "count": 1, "cmd": []string{"./ctl.sh"}, "options": map[string]any{}},
	}
	db := filepath.Join(dir, "state.db")
	args = append(proxyArgs(), args...) // clients told apart by X-Forwarded-For (hbClientFrom)
	return startGateway(t, append([]string{"--remote_session_config", writeConfig(t, dir, cfg), "--state_db", db}, args...)...), db
}

// cpDial opens /v1/rpc from the loopback address ip; on a refusal it
// returns the status and body.
func cpDial(t *testing.T, g *gateway, ip string, hdr http.Header) (*websocket.Conn, int, string) {
	t.Helper()
	_, d := hbClientFrom(ip)
	d.HandshakeTimeout = 60 * time.Second // a bcrypt check under the race detector, on a busy machine
	ws, code, body := hbDialFrom(t, d, "ws://"+g.httpAddr+"/v1/rpc", hdr)
	if ws != nil {
		t.Cleanup(func() { ws.Close() })
	}
	return ws, code, body
}

func cpClient(t *testing.T, g *gateway, ip string) *rpcClient {
	t.Helper()
	ws, code, body := cpDial(t, g, ip, nil)
	if ws == nil {
		t.Fatalf("/v1/rpc from %s refused: %d %s", ip, code, body)
	}
	return &rpcClient{t: t, ws: ws}
}

// cpBatch sends a batch and returns its raw answer.
func cpBatch(c *rpcClient, calls []map[string]any) []byte {
	c.t.Helper()
	for i, call := range calls {
		call["jsonrpc"], call["id"] = "2.0", i+1
	}
	b, _ := json.Marshal(calls)
	return c.raw(string(b))
}

// cpRun submits a job of service and waits for it to finish.
func cpRun(t *testing.T, c *rpcClient, service string) string {
	t.Helper()
	var j rpcJob
	c.must("jobs.submit", map[string]any{"service": service}, &j)
	waitFor(t, "job "+j.ID+" to finish", 30*time.Second, func() bool {
		var got rpcJob
		c.must("jobs.get", map[string]any{"id": j.ID}, &got)
		return got.State == "succeeded"
	})
	return j.ID
}

func cpReason(e *rpcError) any {
	if e == nil || e.Data == nil {
		return nil
	}
	return e.Data["reason"]
}

// TestControlPlaneSubmitRateLimited: a client that submits a batch of 30
// jobs gets --rate_limit's burst (twice the rate) and what refills while
// the batch runs; the rest are refused with -32005 rate_limited. Another
// address keeps its own budget.
func TestControlPlaneSubmitRateLimited(t *testing.T) {
	t.Parallel()
	g, _ := cpGateway(t, "--rate_limit", "2")
	c := cpClient(t, g, "127.0.0.2")
	calls := make([]map[string]any, 30)
	for i := range calls {
		calls[i] = map[string]any{"method": "jobs.submit", "params": map[string]any{"service": "quick"}}
	}
	start := time.Now()
	var answers []rpcResponse
	if err := json.Unmarshal(cpBatch(c, calls), &answers); err != nil || len(answers) != len(calls) {
		t.Fatalf("batch answer: %v (%d answers)", err, len(answers))
	}
	elapsed := time.Since(start)
	ok, limited := 0, 0
	for _, a := range answers {
		switch {
		case a.Error == nil:
			ok++
		case a.Error.Code == -32005 && cpReason(a.Error) == "rate_limited":
			limited++
		default:
			t.Errorf("unexpected answer %+v", a.Error)
		}
	}
	most := 4 + int(2*elapsed.Seconds()) + 1
	if ok < 4 || ok > most || limited != len(calls)-ok {
		t.Fatalf("%d of %d submissions accepted in %s (want 4 to %d), %d rate limited", ok, len(calls), elapsed, most, limited)
	}
	// Keyed by address: another one submits at once.
	other := cpClient(t, g, "127.0.0.3")
	if _, e := other.call("jobs.submit", map[string]any{"service": "quick"}); e != nil {
		t.Fatalf("another address: %+v", e)
	}
}

// TestControlPlaneJobRetention: with --keep_jobs 3, finished jobs beyond
// the newest three go, record, log and directory; with an age
// (--keep_jobs_days), a job goes once it has been finished that long.
func TestControlPlaneJobRetention(t *testing.T) {
	t.Parallel()
	t.Run("count", func(t *testing.T) {
		g, db := cpGateway(t, "--keep_jobs", "3")
		c := cpClient(t, g, "127.0.0.1")
		var ids []string
		for i := 0; i < 6; i++ {
			ids = append(ids, cpRun(t, c, "quick"))
		}
		keep := ids[3:]
		listed := func() []string {
			var list struct{ Jobs []rpcJob }
			c.must("jobs.list", map[string]any{"limit": 1000}, &list)
			var out []string
			for _, j := range list.Jobs {
				out = append(out, j.ID)
			}
			sort.Strings(out)
			return out
		}
		waitFor(t, "only the newest 3 jobs to be kept", 30*time.Second, func() bool {
			return fmt.Sprint(listed()) == fmt.Sprint(keep)
		})
		var files []string
		ents, err := os.ReadDir(db + ".jobs")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			files = append(files, e.Name())
		}
		var want []string
		for _, id := range keep {
			want = append(want, id, id+".log")
		}
		sort.Strings(want)
		if fmt.Sprint(files) != fmt.Sprint(want) {
			t.Fatalf("job directory holds %v, want %v", files, want)
		}
		for _, id := range ids[:3] {
			if _, e := c.call("jobs.get", map[string]any{"id": id}); e == nil || cpReason(e) != "not_found" {
				t.Errorf("pruned %s: %+v", id, e)
			}
		}
	})
	t.Run("age", func(t *testing.T) {
		// 0.00002 days is 1.7 s.
		g, db := cpGateway(t, "--keep_jobs", "0", "--keep_jobs_days", "0.00002")
		c := cpClient(t, g, "127.0.0.1")
		id := cpRun(t, c, "quick")
		if _, err := os.Stat(filepath.Join(db+".jobs", id+".log")); err != nil {
			t.Fatalf("log of a fresh job: %v", err)
		}
		waitFor(t, "the finished job to age out", 30*time.Second, func() bool {
			_, e := c.call("jobs.get", map[string]any{"id": id})
			return e != nil && cpReason(e) == "not_found"
		})
		for _, p := range []string{id, id + ".log"} {
			if _, err := os.Stat(filepath.Join(db+".jobs", p)); !os.IsNotExist(err) {
				t.Errorf("%s after pruning: %v", p, err)
			}
		}
	})
}

// TestControlPlaneAnswerAndBatchCaps: the review's batch of 100 jobs.list
// with limit 1000 is refused whole before anything runs; a batch whose
// answer would pass 4 MiB stops there, each call told; a single answer
// over 4 MiB is an error, and the same read in pieces works.
func TestControlPlaneAnswerAndBatchCaps(t *testing.T) {
	t.Parallel()
	g, _ := cpGateway(t)
	c := cpClient(t, g, "127.0.0.1")
	var calls []map[string]any
	for i := 0; i < 100; i++ {
		calls = append(calls, map[string]any{"method": "jobs.list", "params": map[string]any{"limit": 1000}})
	}
	ans := cpBatch(c, calls)
	var one rpcResponse
	if err := json.Unmarshal(ans, &one); err != nil || one.Error == nil || one.Error.Code != -32005 || cpReason(one.Error) != "batch_too_costly" || len(ans) > 1024 {
		t.Fatalf("batch of 100 jobs.list(1000): %d bytes %.300s", len(ans), ans)
	}

	big := cpRun(t, c, "big")
	calls = nil
	for i := 0; i < 5; i++ {
		calls = append(calls, map[string]any{"method": "logs.read", "params": map[string]any{"id": big}})
	}
	ans = cpBatch(c, calls)
	if len(ans) > 4<<20 {
		t.Fatalf("batch answer of %d bytes, over 4 MiB", len(ans))
	}
	var many []rpcResponse
	if err := json.Unmarshal(ans, &many); err != nil || len(many) != 5 {
		t.Fatalf("batch of 5 logs.read: %v, %d answers", err, len(many))
	}
	for i, a := range many {
		capped := a.Error != nil && a.Error.Code == -32005 && cpReason(a.Error) == "answer_too_large"
		if string(a.ID) != strconv.Itoa(i+1) || (i < 3) == capped {
			t.Errorf("answer %d (id %s): error %+v", i+1, a.ID, a.Error)
		}
	}

	ctl := cpRun(t, c, "ctl")
	if _, e := c.call("logs.read", map[string]any{"id": ctl}); e == nil || e.Code != -32005 || cpReason(e) != "answer_too_large" {
		t.Fatalf("1 MiB of control characters (6 MiB of JSON): %+v", e)
	}
	var chunk struct {
		NextOffset int64 `json:"next_offset"`
	}
	c.must("logs.read", map[string]any{"id": ctl, "limit": 256 << 10}, &chunk)
	if chunk.NextOffset != 256<<10 {
		t.Fatalf("a quarter of it: next_offset %d", chunk.NextOffset)
	}
}

// procMem returns a process's VmRSS and VmHWM in bytes.
func procMem(t *testing.T, pid int) (rss, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = n << 10
		case "VmHWM:":
			peak = n << 10
		}
	}
	return rss, peak
}

// TestControlPlaneSlowReaders: sixteen clients send batches that ask for
// about 37 MB each and never read. Each is dropped with 1008 and a
// reason once 8 MiB of its answers wait, and the gateway's memory stays
// bounded. The review's own attack (16 batches of 100 jobs.list(1000),
// never read) costs nothing: each is refused before it runs.
func TestControlPlaneSlowReaders(t *testing.T) {
	t.Parallel()
	g, _ := cpGateway(t)
	c := cpClient(t, g, "127.0.0.1")
	big := cpRun(t, c, "big")
	pid := g.cmd.Process.Pid
	rss0, peak0 := procMem(t, pid)

	listAll := make([]map[string]any, 100)
	for i := range listAll {
		listAll[i] = map[string]any{"jsonrpc": "2.0", "id": i, "method": "jobs.list", "params": map[string]any{"limit": 1000}}
	}
	review, _ := json.Marshal(listAll)
	reads := make([]map[string]any, 3)
	for i := range reads {
		reads[i] = map[string]any{"jsonrpc": "2.0", "id": i, "method": "logs.read", "params": map[string]any{"id": big}}
	}
	heavy, _ := json.Marshal(reads)

	const clients, batches = 16, 12
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		ws, code, body := cpDial(t, g, "127.0.0.2", nil)
		if ws == nil {
			t.Fatalf("client %d refused: %d %s", i, code, body)
		}
		conns[i] = ws
		if err := ws.WriteMessage(websocket.TextMessage, review); err != nil {
			t.Fatal(err)
		}
	}
	attack := func(i int) {
		for b := 0; b < batches; b++ {
			if err := conns[i].WriteMessage(websocket.TextMessage, heavy); err != nil {
				t.Fatalf("client %d batch %d: %v", i, b, err)
			}
		}
	}
	dropped := func(ws *websocket.Conn) bool {
		for _, l := range g.logLines() {
			if l["message"] == "rpc client dropped: it does not read its answers" && l["remote"] == ws.LocalAddr().String() {
				return true
			}
		}
		return false
	}
	// The first attacker alone, then it reads: what was on its way, then
	// the close, 1008 and why.
	attack(0)
	waitFor(t, "the first client to be dropped", 60*time.Second, func() bool { return dropped(conns[0]) })
	var ce *websocket.CloseError
	_ = conns[0].SetReadDeadline(time.Now().Add(30 * time.Second))
	for ce == nil {
		_, _, err := conns[0].ReadMessage()
		if err == nil {
			continue
		}
		var ok bool
		if ce, ok = err.(*websocket.CloseError); !ok {
			t.Fatalf("reading after the drop: %v, want a close frame", err)
		}
	}
	if ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "too slow") {
		t.Fatalf("close %d %q, want 1008 too slow", ce.Code, ce.Text)
	}
	// Then the fifteen others at once.
	for i := 1; i < clients; i++ {
		attack(i)
	}
	waitFor(t, "every client to be dropped", 60*time.Second, func() bool {
		for _, ws := range conns {
			if !dropped(ws) {
				return false
			}
		}
		return true
	})
	rss1, peak1 := procMem(t, pid)
	t.Logf("gateway memory: RSS %d MiB → %d MiB, peak %d MiB → %d MiB", rss0>>20, rss1>>20, peak0>>20, peak1>>20)
	// Without the limits the review saw 137 MB grow to 929 MB; with them
	// each client holds at most 8 MiB of answers before it is dropped.
	limit := int64(400 << 20)
	if len(buildFlags) > 0 { // the race detector's shadow memory
		limit *= 3
	}
	if peak1-peak0 > limit {
		t.Errorf("the gateway's peak memory grew by %d MiB, more than %d MiB", (peak1-peak0)>>20, limit>>20)
	}
	// Still serving.
	c2 := cpClient(t, g, "127.0.0.3")
	c2.must("server.info", nil, nil)
}

// TestControlPlaneConnectionCaps: idle /v1/rpc sockets count against a
// per-address cap (429) and --max_tunnels (503), refused before the
// upgrade with a JSON reason; the gateway's own websockets share the
// --max_tunnels count; a closed socket gives its place back.
func TestControlPlaneConnectionCaps(t *testing.T) {
	t.Parallel()
	g, _ := cpGateway(t, "--max_rpc_per_address", "5", "--max_tunnels", "8")
	var held []*websocket.Conn
	for i := 0; i < 5; i++ {
		ws, code, body := cpDial(t, g, "127.0.0.2", nil)
		if ws == nil {
			t.Fatalf("connection %d of 5: %d %s", i+1, code, body)
		}
		held = append(held, ws)
	}
	refused := func(ip string, want int, reason string) {
		t.Helper()
		ws, code, body := cpDial(t, g, ip, nil)
		var m map[string]string
		if ws != nil || code != want || json.Unmarshal([]byte(body), &m) != nil || !strings.Contains(m["error"], reason) {
			t.Fatalf("from %s: %d %s, want %d with %q", ip, code, body, want, reason)
		}
	}
	refused("127.0.0.2", http.StatusTooManyRequests, "--max_rpc_per_address")
	for i := 0; i < 3; i++ {
		ws, code, body := cpDial(t, g, "127.0.0.3", nil)
		if ws == nil {
			t.Fatalf("127.0.0.3 connection %d: %d %s", i+1, code, body)
		}
		held = append(held, ws)
	}
	refused("127.0.0.4", http.StatusServiceUnavailable, "maximum of 8 websockets")
	// A tunnel is a websocket too: the RPC sockets hold every place.
	if _, code, _ := dialWS(t, g.wsURL("/?token=nope"), nil); code != http.StatusServiceUnavailable {
		t.Fatalf("a tunnel while RPC sockets hold --max_tunnels: %d, want 503", code)
	}
	held[0].Close()
	waitFor(t, "the closed socket's place to come back", 30*time.Second, func() bool {
		ws, _, _ := cpDial(t, g, "127.0.0.2", nil)
		if ws != nil {
			ws.Close()
		}
		return ws != nil
	})
}

// TestControlPlaneReserveLimits: one address floods reservations.create
// with wait over RPC, 48 at once; --rate_limit and the per-address bound
// on waiting reservations refuse the rest (-32005), only 32 wait, and a
// legitimate ?wait=30 from another address queues and gets the slot.
func TestControlPlaneReserveLimits(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil, proxyArgs()...)
	hold := g.reserve(t, "Echo Service", "")
	const conns, each = 6, 8 // 8: the requests one connection runs at once
	answers := make(chan rpcResponse, conns*each)
	var wg sync.WaitGroup
	var attackers []*websocket.Conn
	for i := 0; i < conns; i++ {
		ws, code, body := cpDial(t, g, "127.0.0.2", nil)
		if ws == nil {
			t.Fatalf("attacker %d: %d %s", i, code, body)
		}
		attackers = append(attackers, ws)
		for j := 0; j < each; j++ {
			msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"reservations.create","params":{"service":"Echo Service","wait":240}}`, j)
			if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
				t.Fatal(err)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, p, err := ws.ReadMessage()
				if err != nil {
					return
				}
				var r rpcResponse
				if json.Unmarshal(p, &r) == nil && r.ID != nil {
					answers <- r
				}
			}
		}()
	}
	waiting := func() int {
		for _, s := range g.status(t)["services"].([]any) {
			if m := s.(map[string]any); m["name"] == "Echo Service" {
				w, _ := m["waiting"].(float64)
				return int(w)
			}
		}
		return -1
	}
	refused := 0
	waitFor(t, "16 refusals", 30*time.Second, func() bool {
		for {
			select {
			case r := <-answers:
				if r.Error == nil || r.Error.Code != -32005 || (cpReason(r.Error) != "rate_limited" && cpReason(r.Error) != "address_limit") {
					t.Fatalf("an attacker's reservation: %+v", r.Error)
				}
				refused++
			default:
				return refused >= conns*each-32
			}
		}
	})
	waitFor(t, "32 waiting", 30*time.Second, func() bool { return waiting() == 32 })
	if refused != conns*each-32 {
		t.Fatalf("%d refused, want %d", refused, conns*each-32)
	}
	// A legitimate client from elsewhere queues behind them.
	legit := make(chan int, 1)
	client, _ := hbClientFrom("127.0.0.3")
	go func() {
		resp, err := client.Get(g.httpURL("/v1/reserve/Echo%20Service?wait=30"))
		if err != nil {
			legit <- 0
			return
		}
		resp.Body.Close()
		legit <- resp.StatusCode
	}()
	waitFor(t, "the legitimate reservation to queue", 30*time.Second, func() bool { return waiting() == 33 })
	for _, ws := range attackers {
		ws.Close()
	}
	wg.Wait()
	waitFor(t, "the attackers' reservations to leave the queue", 30*time.Second, func() bool { return waiting() == 1 })
	if code, m := getJSON(t, g.httpURL("/v1/release/"+hold["token"].(string))); code != 200 {
		t.Fatalf("release: %d %v", code, m)
	}
	select {
	case code := <-legit:
		if code != 200 {
			t.Fatalf("legitimate ?wait=30: %d", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("legitimate ?wait=30 unanswered")
	}
}

// TestControlPlaneAuthFailures: 60 wrong passwords at the /v1/rpc upgrade
// from one address: after --auth_fail_limit of them every attempt gets
// 429, the right password too, while another address still connects.
func TestControlPlaneAuthFailures(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	writeUsers(t, users, map[string]any{"alice": map[string]any{"password_bcrypt": hashPW(t, "right-password-1")}})
	// 6 a minute: one back every 10 s, so the limit still holds when the
	// right password comes, however slow the machine.
	g, _ := cpGateway(t, "--users", users, "--auth_fail_limit", "6")
	hdr := func(pw string) http.Header {
		h := http.Header{}
		b := basic("alice", pw)
		h.Set(b[0], b[1])
		return h
	}
	codes := map[int]int{}
	start := time.Now()
	for i := 0; i < 60; i++ {
		ws, code, _ := cpDial(t, g, "127.0.0.2", hdr("wrong-"+strconv.Itoa(i)))
		if ws != nil {
			t.Fatalf("wrong password %d accepted", i)
		}
		codes[code]++
	}
	// 6 at once, then the bucket refills at 6 a minute (each bcrypt
	// check takes a while under the race detector).
	most := 6 + int(time.Since(start).Seconds()/10) + 1
	if codes[http.StatusUnauthorized] < 6 || codes[http.StatusUnauthorized] > most || codes[http.StatusTooManyRequests] != 60-codes[http.StatusUnauthorized] {
		t.Fatalf("60 wrong passwords in %s answered %v, want 6 to %d × 401, then 429", time.Since(start), codes, most)
	}
	ws, code, body := cpDial(t, g, "127.0.0.2", hdr("right-password-1"))
	if ws != nil || code != http.StatusTooManyRequests || !strings.Contains(body, "too many failed") {
		t.Fatalf("the right password while the limit holds: %d %s", code, body)
	}
	// The REST API counts the same failures: it refuses the address too.
	client, _ := hbClientFrom("127.0.0.2")
	if code, _ := hbDo(t, client, http.MethodGet, g.httpURL("/v1/whoami"), basic("alice", "right-password-1")...); code != http.StatusTooManyRequests {
		t.Fatalf("REST after RPC failures: %d", code)
	}
	if ws, code, body := cpDial(t, g, "127.0.0.3", hdr("right-password-1")); ws == nil {
		t.Fatalf("another address: %d %s", code, body)
	}
}
