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
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/proc"
)

// rpcClient is a synchronous JSON-RPC 2.0 client: call waits for its
// response and keeps the notifications that arrive meanwhile.
type rpcClient struct {
	t      *testing.T
	ws     *websocket.Conn
	nextID int
	events []rpcEvent
}

type rpcEvent struct {
	Method string
	Seq    int64
	Data   map[string]any
}

type rpcError struct {
	Code    int            `json:"code"`
	Message string         `json:"message"`
	Data    map[string]any `json:"data"`
}

type rpcResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   *rpcError       `json:"error"`
}

func dialRPC(t *testing.T, g *gateway, query string, hdr ...string) *rpcClient {
	t.Helper()
	u := "ws://" + g.httpAddr + "/v1/rpc" + query
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	ws, code, body := dialWS(t, u, h)
	if ws == nil {
		t.Fatalf("dial /v1/rpc: %d %v", code, body)
	}
	c := &rpcClient{t: t, ws: ws}
	t.Cleanup(func() { ws.Close() })
	return c
}

// read returns the next message, keeping notifications aside; it returns
// nil, raw for a non-notification message.
func (c *rpcClient) readMsg(timeout time.Duration) ([]byte, error) {
	_ = c.ws.SetReadDeadline(time.Now().Add(timeout))
	_, p, err := c.ws.ReadMessage()
	return p, err
}

func (c *rpcClient) keepIfEvent(p []byte) bool {
	var n struct {
		Method string `json:"method"`
		Params struct {
			Seq  int64          `json:"seq"`
			Data map[string]any `json:"data"`
		} `json:"params"`
		ID *json.RawMessage `json:"id"`
	}
	if len(p) > 0 && p[0] == '{' && json.Unmarshal(p, &n) == nil && n.Method != "" && n.ID == nil {
		c.events = append(c.events, rpcEvent{Method: n.Method, Seq: n.Params.Seq, Data: n.Params.Data})
		return true
	}
	return false
}

// raw sends msg and returns the next non-notification message.
func (c *rpcClient) raw(msg string) []byte {
	c.t.Helper()
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	for {
		p, err := c.readMsg(30 * time.Second)
		if err != nil {
			c.t.Fatalf("read after %s: %v", msg, err)
		}
		if !c.keepIfEvent(p) {
			return p
		}
	}
}

// call returns the result or the error of method.
func (c *rpcClient) call(method string, params any) (json.RawMessage, *rpcError) {
	c.t.Helper()
	c.nextID++
	req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": c.nextID, "method": method, "params": params})
	var r rpcResponse
	if err := json.Unmarshal(c.raw(string(req)), &r); err != nil {
		c.t.Fatalf("%s: bad response: %v", method, err)
	}
	if r.JSONRPC != "2.0" || string(r.ID) != strconv.Itoa(c.nextID) {
		c.t.Fatalf("%s: response %+v does not match request id %d", method, r, c.nextID)
	}
	return r.Result, r.Error
}

// must calls method and decodes its result into out (when not nil).
func (c *rpcClient) must(method string, params any, out any) {
	c.t.Helper()
	res, rerr := c.call(method, params)
	if rerr != nil {
		c.t.Fatalf("%s(%v): error %d %s %v", method, params, rerr.Code, rerr.Message, rerr.Data)
	}
	if out != nil {
		if err := json.Unmarshal(res, out); err != nil {
			c.t.Fatalf("%s: decoding %s: %v", method, res, err)
		}
	}
}

// waitEvent reads until an event satisfying cond arrives (or one already
// kept does) and returns it.
func (c *rpcClient) waitEvent(what string, timeout time.Duration, cond func(rpcEvent) bool) rpcEvent {
	c.t.Helper()
	seen := 0
	deadline := time.Now().Add(timeout)
	for {
		for ; seen < len(c.events); seen++ {
			if cond(c.events[seen]) {
				return c.events[seen]
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			c.t.Fatalf("timed out waiting for event %s; got %d events", what, len(c.events))
		}
		p, err := c.readMsg(left)
		if err != nil {
			c.t.Fatalf("waiting for event %s: %v", what, err)
		}
		if !c.keepIfEvent(p) {
			c.t.Fatalf("unexpected response while waiting for %s: %s", what, p)
		}
	}
}

func jobState(id, state string) func(rpcEvent) bool {
	return func(e rpcEvent) bool {
		return e.Method == "job.state" && e.Data["id"] == id && e.Data["state"] == state
	}
}

type rpcJob struct {
	ID            string         `json:"id"`
	Service       string         `json:"service"`
	State         string         `json:"state"`
	ExitStatus    *int           `json:"exit_status"`
	Reason        string         `json:"reason"`
	PID           int            `json:"pid"`
	QueuePosition int            `json:"queue_position"`
	Argv          []string       `json:"argv"`
	Progress      map[string]any `json:"progress"`
	LogSize       int64          `json:"log_size"`
}

// jobsConfig writes a services config with job services and their
// scripts, and returns its path.
func jobsConfig(t *testing.T, dir string, sleeperCount int) string {
	t.Helper()
	writeScript(t, dir, "sleeper.sh", `echo "start $2"
trap 'echo "got TERM $2"; kill $pid 2>/dev/null; exit 143' TERM
sleep "$1" &
pid=$!
wait $pid
echo "done $2"
`)
	writeScript(t, dir, "solver.sh", `echo "input $1 $2" >&2
echo " termination time  1.0000E-02"
for t in 1.0000E-03 2.0000E-03 4.0000E-03 6.0000E-03 8.0000E-03 1.0000E-02; do
  echo "      100 t $t dt 1.00E-06 write d3plot file"
  sleep 0.05
done
echo " N o r m a l    t e r m i n a t i o n"
`)
	writeScript(t, dir, "stubborn.sh", `trap 'echo ignoring TERM' TERM
echo ready
while :; do sleep 0.1; done
`)
	cfg := map[string]any{
		"sleeper": map[string]any{"kind": "job", "count": sleeperCount, "cmd": []string{"./sleeper.sh", "${seconds}", "${label}"},
			"options": map[string]any{"params": map[string]any{
				"seconds": map[string]any{"type": "number", "default": 0, "min": 0, "max": 120},
				"label":   map[string]any{"type": "string", "default": "x", "pattern": "^[a-z0-9-]+$"},
			}}},
		"solve": map[string]any{"kind": "job", "count": 2, "cmd": []string{"./solver.sh", "i=${input}", "ncpu=${ncpu}"},
			"options": map[string]any{
				"params": map[string]any{
					"input": map[string]any{"type": "string", "required": true, "pattern": `^[A-Za-z0-9_./-]+\.k$`},
					"ncpu":  map[string]any{"type": "int", "default": 1, "min": 1, "max": 64},
				},
				"progress": []any{
					map[string]any{"regex": `^\s*\d+\s+t\s+(?P<current>[0-9.]+E[+-]\d+)\s+dt`},
					map[string]any{"regex": `termination time\s*=?\s*(?P<total>[0-9.]+E[+-]\d+)`},
				},
			}},
		"stubborn": map[string]any{"kind": "job", "count": 1, "cmd": []string{"./stubborn.sh"}, "options": map[string]any{}},
	}
	return writeConfig(t, dir, cfg)
}

func startJobsGateway(t *testing.T, dir, db string, sleeperCount int, extra ...string) *gateway {
	t.Helper()
	cfg := filepath.Join(dir, "services.json")
	if _, err := os.Stat(cfg); err != nil {
		cfg = jobsConfig(t, dir, sleeperCount)
	}
	return startGateway(t, append([]string{"--remote_session_config", cfg, "--state_db", db, "--stop_grace", "1"}, extra...)...)
}

func TestRPCJobLifecycle(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1)
	c := dialRPC(t, g, "")

	var info map[string]any
	c.must("server.info", nil, &info)
	if info["protocol"] != "jsonrpc-2.0" || info["admin"] != true {
		t.Fatalf("server.info: %v", info)
	}
	var svcs struct {
		Services []struct {
			Name, Kind string
			Count      int
		}
	}
	c.must("services.list", map[string]any{}, &svcs)
	kinds := map[string]string{}
	for _, s := range svcs.Services {
		kinds[s.Name] = s.Kind
	}
	if kinds["solve"] != "job" || kinds["sleeper"] != "job" {
		t.Fatalf("services.list: %+v", svcs)
	}
	c.must("events.subscribe", map[string]any{"topics": []string{"job.state", "job.progress", "logs.append"}}, nil)

	var j rpcJob
	c.must("jobs.submit", map[string]any{"service": "solve", "params": map[string]any{"input": "model/main.k", "ncpu": 4}}, &j)
	if (j.State != "queued" && j.State != "running") || len(j.Argv) != 3 || j.Argv[1] != "i=model/main.k" || j.Argv[2] != "ncpu=4" {
		t.Fatalf("submitted: %+v", j)
	}
	c.waitEvent("succeeded", 20*time.Second, jobState(j.ID, "succeeded"))

	// Progress: percent rises to 100 with an ETA on the way.
	var pcts []float64
	sawETA := false
	var logBytes int64
	var logData strings.Builder
	for _, e := range c.events {
		switch {
		case e.Method == "job.progress" && e.Data["id"] == j.ID:
			pcts = append(pcts, e.Data["percent"].(float64))
			if _, ok := e.Data["eta_seconds"]; ok {
				sawETA = true
			}
		case e.Method == "logs.append" && e.Data["id"] == j.ID:
			if int64(e.Data["offset"].(float64)) != logBytes {
				t.Fatalf("logs.append offset %v, want %d", e.Data["offset"], logBytes)
			}
			logBytes += int64(e.Data["length"].(float64))
			logData.WriteString(e.Data["data"].(string))
		}
	}
	if len(pcts) == 0 || pcts[len(pcts)-1] != 100 || !sort.Float64sAreSorted(pcts) || !sawETA {
		t.Fatalf("progress percents %v (eta seen %v)", pcts, sawETA)
	}
	var got rpcJob
	c.must("jobs.get", map[string]any{"id": j.ID}, &got)
	if got.State != "succeeded" || got.ExitStatus == nil || *got.ExitStatus != 0 || got.Progress["percent"].(float64) != 100 {
		t.Fatalf("jobs.get: %+v", got)
	}
	if got.LogSize != logBytes || !strings.Contains(logData.String(), "N o r m a l") || !strings.Contains(logData.String(), "input i=model/main.k ncpu=4") {
		t.Fatalf("log size %d, appended %d: %q", got.LogSize, logBytes, logData.String())
	}
	// logs.read in small pieces gives back the same bytes.
	var whole strings.Builder
	off := int64(0)
	for i := 0; i < 1000; i++ {
		var ch struct {
			Data       string `json:"data"`
			NextOffset int64  `json:"next_offset"`
			Complete   bool   `json:"complete"`
		}
		c.must("logs.read", map[string]any{"id": j.ID, "offset": off, "limit": 37}, &ch)
		whole.WriteString(ch.Data)
		if ch.NextOffset-off > 37 {
			t.Fatalf("logs.read returned %d bytes for limit 37", ch.NextOffset-off)
		}
		off = ch.NextOffset
		if ch.Complete {
			break
		}
	}
	if whole.String() != logData.String() {
		t.Fatalf("logs.read %q\nlogs.append %q", whole.String(), logData.String())
	}
	var list struct{ Jobs []rpcJob }
	c.must("jobs.list", map[string]any{"state": []string{"succeeded"}, "limit": 10}, &list)
	if len(list.Jobs) != 1 || list.Jobs[0].ID != j.ID {
		t.Fatalf("jobs.list: %+v", list)
	}
	c.must("jobs.remove", map[string]any{"id": j.ID}, nil)
	if _, e := c.call("jobs.get", map[string]any{"id": j.ID}); e == nil || e.Code != -32001 {
		t.Fatalf("jobs.get after remove: %+v", e)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.db.jobs", j.ID+".log")); !os.IsNotExist(err) {
		t.Fatalf("log file left after remove: %v", err)
	}

	// After events.unsubscribe nothing more is pushed.
	var un map[string]bool
	c.must("events.unsubscribe", nil, &un)
	if !un["unsubscribed"] {
		t.Fatalf("events.unsubscribe: %v", un)
	}
	n := len(c.events)
	var j2 rpcJob
	c.must("jobs.submit", map[string]any{"service": "sleeper"}, &j2)
	waitFor(t, "second job done", 10*time.Second, func() bool {
		var got rpcJob
		c.must("jobs.get", map[string]any{"id": j2.ID}, &got)
		return got.State == "succeeded"
	})
	c.must("server.info", nil, nil)
	if len(c.events) != n {
		t.Fatalf("events after unsubscribe: %+v", c.events[n:])
	}
}

func TestRPCErrorsAndBatches(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1)
	c := dialRPC(t, g, "")
	code := func(p []byte) int {
		var r rpcResponse
		if err := json.Unmarshal(p, &r); err != nil || r.Error == nil {
			t.Fatalf("want an error response, got %s", p)
		}
		if r.Error.Code <= -32000 && r.Error.Code >= -32099 && r.Error.Data["reason"] == nil {
			t.Fatalf("server error without data.reason: %s", p)
		}
		return r.Error.Code
	}
	for _, tc := range []struct {
		msg  string
		want int
	}{
		{`{"jsonrpc": "2.0", "method": "server.info", "id": 1`, -32700},
		{`[]`, -32600},
		{`{"jsonrpc": "1.0", "method": "server.info", "id": 1}`, -32600},
		{`{"jsonrpc": "2.0", "id": 1}`, -32600},
		{`{"jsonrpc": "2.0", "method": "server.info", "id": {"a": 1}}`, -32600},
		{`"hello"`, -32600},
		{`{"jsonrpc": "2.0", "method": "no.such", "id": 2}`, -32601},
		{`{"jsonrpc": "2.0", "method": "jobs.get", "params": ["job-1"], "id": 3}`, -32602},
		{`{"jsonrpc": "2.0", "method": "jobs.get", "params": {"nope": 1}, "id": 4}`, -32602},
		{`{"jsonrpc": "2.0", "method": "jobs.submit", "params": {"service": "solve", "params": {"input": "a b; rm -rf /"}}, "id": 5}`, -32602},
		{`{"jsonrpc": "2.0", "method": "jobs.submit", "params": {"service": "solve", "params": {"input": "a.k", "ncpu": 1000}}, "id": 6}`, -32602},
		{`{"jsonrpc": "2.0", "method": "jobs.submit", "params": {"service": "solve", "params": {"input": "a.k", "extra": 1}}, "id": 7}`, -32602},
		{`{"jsonrpc": "2.0", "method": "jobs.submit", "params": {"service": "nope"}, "id": 8}`, -32001},
		{`{"jsonrpc": "2.0", "method": "jobs.get", "params": {"id": "job-999"}, "id": 9}`, -32001},
		{`{"jsonrpc": "2.0", "method": "queue.move", "params": {"id": "job-999", "position": 1}, "id": 10}`, -32001},
		{`{"jsonrpc": "2.0", "method": "events.subscribe", "params": {"topics": ["nope"]}, "id": 11}`, -32602},
		{`{"jsonrpc": "2.0", "method": "reservations.create", "params": {"service": "x"}, "id": 12}`, -32001},
		{`{"jsonrpc": "2.0", "method": "reservations.create", "params": {"service": "x", "wait": 1000}, "id": 13}`, -32602},
		{`{"jsonrpc": "2.0", "method": "reservations.release", "params": {"token": "nope"}, "id": 14}`, -32001},
	} {
		if got := code(c.raw(tc.msg)); got != tc.want {
			t.Errorf("%s: code %d, want %d", tc.msg, got, tc.want)
		}
	}
	// A running job cannot be removed; a finished one can.
	var j rpcJob
	c.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 30}}, &j)
	waitFor(t, "job running", 10*time.Second, func() bool {
		var got rpcJob
		c.must("jobs.get", map[string]any{"id": j.ID}, &got)
		return got.State == "running"
	})
	if _, e := c.call("jobs.remove", map[string]any{"id": j.ID}); e == nil || e.Code != -32003 || e.Data["reason"] != "not_finished" {
		t.Fatalf("remove running job: %+v", e)
	}
	var stopped rpcJob
	c.must("jobs.stop", map[string]any{"id": j.ID}, &stopped)
	if stopped.State != "stopped" {
		t.Fatalf("after jobs.stop: %+v", stopped)
	}

	// Batches: responses for the calls with an id, none for notifications.
	p := c.raw(`[{"jsonrpc": "2.0", "method": "server.info", "id": "a"},
		{"jsonrpc": "2.0", "method": "server.info"},
		{"jsonrpc": "2.0", "method": "nope", "id": "b"},
		42,
		{"jsonrpc": "2.0", "method": "jobs.get", "params": {"id": "` + j.ID + `"}, "id": "c"}]`)
	var batch []rpcResponse
	if err := json.Unmarshal(p, &batch); err != nil {
		t.Fatalf("batch response %s: %v", p, err)
	}
	byID := map[string]rpcResponse{}
	for _, r := range batch {
		byID[string(r.ID)] = r
	}
	if len(batch) != 4 || byID[`"a"`].Error != nil || byID[`"b"`].Error.Code != -32601 || byID[`null`].Error.Code != -32600 || byID[`"c"`].Error != nil {
		t.Fatalf("batch: %s", p)
	}
}

// TestRPCNotificationIgnored: a notification gets no reply at all.
func TestRPCNotificationIgnored(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1)
	c := dialRPC(t, g, "")
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(`{"jsonrpc": "2.0", "method": "server.info"}`)); err != nil {
		t.Fatal(err)
	}
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(`[{"jsonrpc": "2.0", "method": "server.info"}]`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.readMsg(500 * time.Millisecond); err == nil {
		t.Fatal("a notification was answered")
	}
}

func TestRPCAuthAndOrigin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1, "--security_token", "s3cret")
	if _, code, _ := dialWS(t, "ws://"+g.httpAddr+"/v1/rpc", nil); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d", code)
	}
	if _, code, _ := dialWS(t, "ws://"+g.httpAddr+"/v1/rpc?security_token=wrong", nil); code != http.StatusUnauthorized {
		t.Fatalf("wrong token: %d", code)
	}
	if _, code, _ := dialWS(t, "ws://"+g.httpAddr+"/v1/rpc?security_token=s3cret", http.Header{"Origin": {"http://evil.example"}}); code != http.StatusForbidden {
		t.Fatalf("foreign origin: %d", code)
	}
	ws, code, _ := dialWS(t, "ws://"+g.httpAddr+"/v1/rpc", http.Header{"Authorization": {"Bearer s3cret"}})
	if code != 101 {
		t.Fatalf("bearer: %d", code)
	}
	ws.Close()
	c := dialRPC(t, g, "?security_token=s3cret")
	c.must("server.info", nil, nil)
}

// TestRPCQueueOrderConcurrent: with count 1, jobs submitted at once from
// many connections queue in submission order, queue.move reorders them,
// and they start in the queue's order as the slot frees.
func TestRPCQueueOrderConcurrent(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1)
	c := dialRPC(t, g, "")
	c.must("events.subscribe", map[string]any{"topics": []string{"job.state", "queue.changed"}}, nil)
	var blocker rpcJob
	c.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 60, "label": "blocker"}}, &blocker)
	c.waitEvent("blocker running", 10*time.Second, jobState(blocker.ID, "running"))

	const n = 8
	var wg sync.WaitGroup
	ids := make([]string, n)
	// The clients connect here; only the submits race (a goroutine must
	// not call t.Fatal, so it speaks the protocol itself and reports with
	// t.Errorf).
	ccs := make([]*rpcClient, n)
	for i := range ccs {
		ccs[i] = dialRPC(t, g, "")
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			cc := ccs[i]
			req, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": "jobs.submit",
				"params": map[string]any{"service": "sleeper", "params": map[string]any{"label": fmt.Sprintf("q%d", i)}}})
			if err := cc.ws.WriteMessage(websocket.TextMessage, req); err != nil {
				t.Errorf("submit %d: %v", i, err)
				return
			}
			for {
				p, err := cc.readMsg(30 * time.Second)
				if err != nil {
					t.Errorf("submit %d: %v", i, err)
					return
				}
				if cc.keepIfEvent(p) {
					continue
				}
				var r rpcResponse
				var j rpcJob
				if err := json.Unmarshal(p, &r); err != nil || r.Error != nil || json.Unmarshal(r.Result, &j) != nil {
					t.Errorf("submit %d: %s (%v)", i, p, err)
					return
				}
				ids[i] = j.ID
				return
			}
		}(i)
	}
	wg.Wait()
	num := func(id string) int { n, _ := strconv.Atoi(strings.TrimPrefix(id, "job-")); return n }
	var q struct {
		Queue []rpcJob
	}
	c.must("queue.list", nil, &q)
	if len(q.Queue) != n {
		t.Fatalf("queue: %+v", q)
	}
	for i, j := range q.Queue {
		if j.QueuePosition != i+1 || (i > 0 && num(j.ID) <= num(q.Queue[i-1].ID)) {
			t.Fatalf("queue not in submission order: %+v", q.Queue)
		}
	}
	// Move the last to the front and the first to the end.
	last, first := q.Queue[n-1].ID, q.Queue[0].ID
	c.must("queue.move", map[string]any{"id": last, "position": 1}, nil)
	c.must("queue.move", map[string]any{"id": first, "position": 1000}, &q)
	want := []string{last}
	for _, j := range q.Queue[1 : n-1] {
		want = append(want, j.ID)
	}
	want = append(want, first)
	var order []string
	for _, j := range q.Queue {
		order = append(order, j.ID)
	}
	if strings.Join(order, ",") != strings.Join(want, ",") {
		t.Fatalf("after moves: %v, want %v", order, want)
	}
	c.must("jobs.stop", map[string]any{"id": blocker.ID}, nil)
	c.waitEvent("last job succeeded", 30*time.Second, jobState(first, "succeeded"))
	var started []string
	for _, e := range c.events {
		if e.Method == "job.state" && e.Data["state"] == "running" && e.Data["id"] != blocker.ID {
			started = append(started, e.Data["id"].(string))
		}
	}
	if strings.Join(started, ",") != strings.Join(want, ",") {
		t.Fatalf("started in order %v, want %v", started, want)
	}
}

// TestRPCEventsReplaySince: a client that reconnects with since gets
// exactly what it missed, then live events, without gaps or duplicates.
func TestRPCEventsReplaySince(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 2)
	c := dialRPC(t, g, "")
	c.must("events.subscribe", map[string]any{"since": 0}, nil)
	var j1 rpcJob
	c.must("jobs.submit", map[string]any{"service": "solve", "params": map[string]any{"input": "a.k"}}, &j1)
	c.waitEvent("first job done", 20*time.Second, jobState(j1.ID, "succeeded"))
	// Stop reading halfway through what we have seen.
	seen := c.events[:len(c.events)/2]
	lastSeen := seen[len(seen)-1].Seq
	c.ws.Close()

	var j2 rpcJob
	c2 := dialRPC(t, g, "")
	c2.must("jobs.submit", map[string]any{"service": "solve", "params": map[string]any{"input": "b.k"}}, &j2)
	c2.ws.Close()

	c3 := dialRPC(t, g, "")
	c3.must("events.subscribe", map[string]any{"since": lastSeen, "topics": []string{"*"}}, nil)
	c3.waitEvent("second job done", 20*time.Second, jobState(j2.ID, "succeeded"))
	all := append(append([]rpcEvent{}, seen...), c3.events...)
	for i, e := range all {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d (%s): gap or duplicate", i, e.Seq, e.Method)
		}
	}
	// The replay holds the events of both jobs in order.
	sawJ1Done, sawJ2Queued := false, false
	for _, e := range c3.events {
		if jobState(j1.ID, "succeeded")(e) {
			sawJ1Done = true
		}
		if jobState(j2.ID, "queued")(e) {
			if !sawJ1Done {
				t.Fatal("job 2 queued before job 1 finished in the replay")
			}
			sawJ2Queued = true
		}
	}
	if !sawJ1Done || !sawJ2Queued {
		t.Fatalf("replay misses events: j1 done %v, j2 queued %v", sawJ1Done, sawJ2Queued)
	}
}

// TestJobsSIGKILLRestart: the gateway dies by SIGKILL with a running and
// two queued jobs; after a restart on the same --state_db the running one
// is interrupted (and its process gone), the queued ones run in order,
// and the history and logs are intact.
func TestJobsSIGKILLRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db := filepath.Join(dir, "state.db")
	g := startJobsGateway(t, dir, db, 1)
	c := dialRPC(t, g, "")
	var a, b, d rpcJob
	c.must("events.subscribe", map[string]any{"topics": []string{"job.state", "logs.append"}}, nil)
	c.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 60, "label": "a"}}, &a)
	c.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 0.3, "label": "b"}}, &b)
	c.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 0, "label": "d"}}, &d)
	c.waitEvent("a running", 10*time.Second, jobState(a.ID, "running"))
	c.waitEvent("a output", 10*time.Second, func(e rpcEvent) bool { return e.Method == "logs.append" && e.Data["id"] == a.ID })
	var ga rpcJob
	c.must("jobs.get", map[string]any{"id": a.ID}, &ga)
	var logBefore struct{ Data string }
	c.must("logs.read", map[string]any{"id": a.ID, "offset": 0}, &logBefore)
	if !strings.Contains(logBefore.Data, "start a") {
		t.Fatalf("log before: %q", logBefore.Data)
	}

	_ = g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.exited
	waitFor(t, "job a's process group to die with the gateway", 15*time.Second, func() bool {
		// Zombies do not count: PID 1 of a container may never reap the
		// supervisor once the gateway, its parent, is gone.
		return !proc.GroupAlive(ga.PID)
	})

	g2 := startJobsGateway(t, dir, db, 1)
	c2 := dialRPC(t, g2, "")
	var got rpcJob
	c2.must("jobs.get", map[string]any{"id": a.ID}, &got)
	if got.State != "interrupted" {
		t.Fatalf("job a after restart: %+v", got)
	}
	var logAfter struct{ Data string }
	c2.must("logs.read", map[string]any{"id": a.ID, "offset": 0}, &logAfter)
	if logAfter.Data != logBefore.Data {
		t.Fatalf("log changed across the restart: %q then %q", logBefore.Data, logAfter.Data)
	}
	// b and d were queued, in that order; they run in that order.
	waitFor(t, "queued jobs to run", 20*time.Second, func() bool {
		var gd rpcJob
		c2.must("jobs.get", map[string]any{"id": d.ID}, &gd)
		return gd.State == "succeeded"
	})
	var gb, gd rpcJob
	c2.must("jobs.get", map[string]any{"id": b.ID}, &gb)
	c2.must("jobs.get", map[string]any{"id": d.ID}, &gd)
	if gb.State != "succeeded" {
		t.Fatalf("job b: %+v", gb)
	}
	// History: replay from 0 shows b starting before d.
	c2.must("events.subscribe", map[string]any{"since": 0, "topics": []string{"job.state"}}, nil)
	c2.waitEvent("d succeeded (replayed)", 10*time.Second, jobState(d.ID, "succeeded"))
	order := []string{}
	for _, e := range c2.events {
		if e.Data["state"] == "running" {
			order = append(order, e.Data["id"].(string))
		}
	}
	if strings.Join(order, ",") != strings.Join([]string{a.ID, b.ID, d.ID}, ",") {
		t.Fatalf("run order %v", order)
	}
	var list struct{ Jobs []rpcJob }
	c2.must("jobs.list", map[string]any{}, &list)
	if len(list.Jobs) != 3 {
		t.Fatalf("history after restart: %+v", list.Jobs)
	}
}

// TestJobsWatchdog: a job whose processes are killed behind the gateway's
// back is marked failed, and the slot is freed.
func TestJobsWatchdog(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1)
	c := dialRPC(t, g, "")
	c.must("events.subscribe", map[string]any{"topics": []string{"job.state"}}, nil)
	var a, b rpcJob
	c.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 60}}, &a)
	c.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 0}}, &b)
	c.waitEvent("a running", 10*time.Second, jobState(a.ID, "running"))
	var ga rpcJob
	c.must("jobs.get", map[string]any{"id": a.ID}, &ga)
	if err := syscall.Kill(-ga.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	e := c.waitEvent("a failed", 10*time.Second, jobState(a.ID, "failed"))
	if !strings.Contains(fmt.Sprint(e.Data["reason"]), "vanished") {
		t.Fatalf("reason: %v", e.Data)
	}
	c.waitEvent("b ran in the freed slot", 10*time.Second, jobState(b.ID, "succeeded"))
}

// TestJobsStopEscalates: a job that ignores SIGTERM is SIGKILLed after
// the grace period, whole group included.
func TestJobsStopEscalates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1)
	c := dialRPC(t, g, "")
	c.must("events.subscribe", map[string]any{"topics": []string{"logs.append"}}, nil)
	var j rpcJob
	c.must("jobs.submit", map[string]any{"service": "stubborn"}, &j)
	c.waitEvent("ready", 10*time.Second, func(e rpcEvent) bool {
		return e.Method == "logs.append" && strings.Contains(fmt.Sprint(e.Data["data"]), "ready")
	})
	var gj rpcJob
	c.must("jobs.get", map[string]any{"id": j.ID}, &gj)
	start := time.Now()
	var st rpcJob
	c.must("jobs.stop", map[string]any{"id": j.ID}, &st)
	if st.State != "stopped" || time.Since(start) > 15*time.Second {
		t.Fatalf("stop: %+v after %s", st, time.Since(start))
	}
	if proc.GroupAlive(gj.PID) {
		t.Fatalf("process group %d survived jobs.stop", gj.PID)
	}
}

// TestRPCUsersSeeTheirOwnJobs: with --users, a user sees and acts on their
// own jobs and events only; administrators see all; only they reorder the
// queue.
func TestRPCUsersSeeTheirOwnJobs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	usersPath := filepath.Join(dir, "users.json")
	writeUsers(t, usersPath, map[string]any{
		"alice": map[string]any{"api_keys": []string{"alice-key-0123456789abcdef"}},
		"bob":   map[string]any{"api_keys": []string{"bob-key-0123456789abcdef"}},
		"carol": map[string]any{"api_keys": []string{"carol-key-0123456789abcdef"}, "groups": []string{"admin"}},
	})
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1, "--users", usersPath)
	if _, code, _ := dialWS(t, "ws://"+g.httpAddr+"/v1/rpc", nil); code != http.StatusUnauthorized {
		t.Fatalf("anonymous with --users: %d", code)
	}
	alice := dialRPC(t, g, "", "Authorization", "Bearer alice-key-0123456789abcdef")
	bob := dialRPC(t, g, "", "Authorization", "Bearer bob-key-0123456789abcdef")
	carol := dialRPC(t, g, "", "Authorization", "Bearer carol-key-0123456789abcdef")
	bob.must("events.subscribe", map[string]any{"topics": []string{"job.state"}}, nil)
	carol.must("events.subscribe", map[string]any{"topics": []string{"job.state"}}, nil)

	var a, a2 rpcJob
	alice.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 60}}, &a)
	alice.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 0}}, &a2)
	carol.waitEvent("admin sees alice's job", 10*time.Second, jobState(a.ID, "running"))
	if _, e := bob.call("jobs.get", map[string]any{"id": a.ID}); e == nil || e.Code != -32001 {
		t.Fatalf("bob reads alice's job: %+v", e)
	}
	if _, e := bob.call("jobs.stop", map[string]any{"id": a.ID}); e == nil || e.Code != -32001 {
		t.Fatalf("bob stops alice's job: %+v", e)
	}
	if _, e := bob.call("logs.read", map[string]any{"id": a.ID}); e == nil || e.Code != -32001 {
		t.Fatalf("bob reads alice's log: %+v", e)
	}
	var list struct{ Jobs []rpcJob }
	bob.must("jobs.list", nil, &list)
	if len(list.Jobs) != 0 {
		t.Fatalf("bob lists %+v", list.Jobs)
	}
	if _, e := alice.call("queue.move", map[string]any{"id": a2.ID, "position": 1}); e == nil || e.Code != -32002 {
		t.Fatalf("alice moves the queue: %+v", e)
	}
	carol.must("queue.move", map[string]any{"id": a2.ID, "position": 1}, nil)
	var st rpcJob
	alice.must("jobs.stop", map[string]any{"id": a.ID}, &st)
	if st.State != "stopped" || st.Reason != "stopped by alice" {
		t.Fatalf("alice stops her job: %+v", st)
	}
	carol.waitEvent("a2 done", 10*time.Second, jobState(a2.ID, "succeeded"))
	// The positive control: bob's own job's events do reach him (after
	// alice's, which he would have been sent first).
	var b rpcJob
	bob.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 0}}, &b)
	bob.waitEvent("bob's own job done", 30*time.Second, jobState(b.ID, "succeeded"))
	for _, e := range bob.events {
		if e.Data["id"] != b.ID {
			t.Fatalf("bob got an event that is not about his job: %+v", e)
		}
	}
}

// TestRPCWithoutJobServices: a gateway whose config has no jobs still
// serves /v1/rpc (state in memory, no file in the working directory).
func TestRPCWithoutJobServices(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeScript(t, dir, "svc.sh", "exit 1\n")
	cfg := writeConfig(t, dir, map[string]any{"Desk": map[string]any{"script": "svc.sh", "count": 1, "options": map[string]any{}}})
	g := startGateway(t, "--remote_session_config", cfg)
	c := dialRPC(t, g, "")
	var svcs struct{ Services []map[string]any }
	c.must("services.list", nil, &svcs)
	if len(svcs.Services) != 1 || svcs.Services[0]["kind"] != "service" {
		t.Fatalf("services.list: %v", svcs)
	}
	if _, e := c.call("jobs.submit", map[string]any{"service": "Desk"}); e == nil || e.Code != -32001 {
		t.Fatalf("submitting a websocket service as a job: %+v", e)
	}
	c.must("events.subscribe", map[string]any{"since": 0}, nil)
	if _, err := os.Stat("wsgateway-state.db"); err == nil {
		t.Fatal("a state database was created in the working directory")
	}
}

func TestRPCReservationsAndSessions(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil, "--timeout", "2")
	c := dialRPC(t, g, "")
	c.must("events.subscribe", map[string]any{"topics": []string{"session.state", "reservation.expired", "queue.changed"}}, nil)
	var res struct {
		Token, Service, Path string
		Index                int
	}
	c.must("reservations.create", map[string]any{"service": "Echo Service", "options": map[string]string{"geometry": "800x600"}}, &res)
	if !uuidV4.MatchString(res.Token) || res.Service != "Echo Service" || res.Path != "websockify?token="+res.Token {
		t.Fatalf("reservations.create: %+v", res)
	}
	// The slot is held: a second one waits, then fails.
	if _, rerr := c.call("reservations.create", map[string]any{"service": "Echo Service", "wait": 0.3}); rerr == nil || rerr.Code != -32005 {
		t.Fatalf("full service: %+v", rerr)
	}
	// While it waited, its place in the queue was reported.
	c.waitEvent("the waiting reservation's position", 10*time.Second, func(e rpcEvent) bool {
		return e.Method == "queue.changed" && e.Data["kind"] == "reservations" && e.Data["position"] == float64(1)
	})
	ws, h := connectToken(t, g, res.Token)
	if h.Options["geometry"] != "800x600" {
		t.Fatalf("options did not reach the service: %v", h.Options)
	}
	c.waitEvent("session running", 10*time.Second, func(e rpcEvent) bool {
		return e.Method == "session.state" && e.Data["state"] == "running" && e.Data["token_prefix"] == res.Token[:8]
	})
	var list struct {
		Sessions []struct {
			Token, State string
			PID          int
		}
	}
	c.must("sessions.list", map[string]any{}, &list)
	if len(list.Sessions) != 1 || list.Sessions[0].Token != res.Token || list.Sessions[0].State != "running" {
		t.Fatalf("sessions.list: %+v", list)
	}
	var stopped map[string]any
	c.must("sessions.stop", map[string]any{"id": res.Token}, &stopped)
	if stopped["released"] != true {
		t.Fatalf("sessions.stop: %v", stopped)
	}
	if _, ce, err := readUntilClose(ws, 10*time.Second); err != nil || ce.Code != 1000 {
		t.Fatalf("websocket after sessions.stop: %v %v", ce, err)
	}
	c.waitEvent("session stopped", 10*time.Second, func(e rpcEvent) bool {
		return e.Method == "session.state" && e.Data["state"] == "ended"
	})
	if alive(h.PID) {
		t.Fatal("service still running after sessions.stop")
	}
	// An unused reservation expires, and subscribers hear of it.
	var r2 struct{ Token string }
	c.must("reservations.create", map[string]any{"service": "Echo Service"}, &r2)
	c.waitEvent("reservation expired", 15*time.Second, func(e rpcEvent) bool {
		return e.Method == "reservation.expired" && e.Data["token_prefix"] == r2.Token[:8]
	})
}
