package rpc

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"

	"wsgateway/auth"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"
)

func TestCallCost(t *testing.T) {
	tests := []struct {
		msg  string
		want int
	}{
		{`{"method":"server.info"}`, 1},
		{`{"method":"jobs.get","params":{"id":"job-1"}}`, 1},
		{`{"method":"jobs.list"}`, 101},
		{`{"method":"jobs.list","params":{"limit":0}}`, 101},
		{`{"method":"jobs.list","params":{"limit":1}}`, 2},
		{`{"method":"jobs.list","params":{"limit":1000}}`, 1001},
		{`{"method":"jobs.list","params":{"limit":1001}}`, 101}, // refused when it runs
		{`{"method":"jobs.list","params":{"limit":-5}}`, 101},
		{`{"method":"jobs.list","params":{"limit":"x"}}`, 1},
		{`{"method":"logs.read","params":{"id":"j"}}`, 1025},
		{`{"method":"logs.read","params":{"id":"j","limit":1}}`, 2},
		{`{"method":"logs.read","params":{"id":"j","limit":1024}}`, 2},
		{`{"method":"logs.read","params":{"id":"j","limit":1025}}`, 3},
		{`{"method":"logs.read","params":{"id":"j","limit":2097152}}`, 1025},
		{`{"method":"queue.list"}`, 101},
		{`{"method":"sessions.list"}`, 101},
		{`not json`, 1},
		{`{"method":"jobs.list","params":[1]}`, 1},
	}
	for _, tc := range tests {
		if got := callCost(json.RawMessage(tc.msg)); got != tc.want {
			t.Errorf("callCost(%s) = %d, want %d", tc.msg, got, tc.want)
		}
	}
	if got := messageCost([]byte(`[{"method":"jobs.list"},{"method":"server.info"}]`)); got != 102 {
		t.Errorf("batch cost %d, want 102", got)
	}
	if got := messageCost([]byte(`[`)); got != 1 {
		t.Errorf("broken batch cost %d, want 1", got)
	}
}

// capServer is a Server with a method "big" answering n bytes of text
// and counting its calls.
func capServer(cfg Config, calls *atomic.Int32) *Server {
	s := New(cfg, zerolog.Nop())
	s.methods["big"] = typed(func(_ context.Context, _ *conn, p struct {
		N int `json:"n"`
	}) (any, error) {
		calls.Add(1)
		return strings.Repeat("x", p.N), nil
	})
	return s
}

// answers runs msg on a fresh connection and returns what it queued.
func answers(t *testing.T, s *Server, msg string) [][]byte {
	t.Helper()
	c := newConn(s, nil, auth.Caller{}, "test")
	defer c.cancel()
	c.handleMessage([]byte(msg))
	var out [][]byte
	for len(c.out) > 0 {
		out = append(out, <-c.out)
	}
	return out
}

func TestAnswerAndBatchCaps(t *testing.T) {
	var calls atomic.Int32
	s := capServer(Config{MaxAnswerBytes: 1500, MaxBatchCost: 150}, &calls)
	big := func(id, n int) string {
		return `{"jsonrpc":"2.0","id":` + itoa(id) + `,"method":"big","params":{"n":` + itoa(n) + `}}`
	}
	type want struct {
		ok     bool
		reason string
	}
	tests := []struct {
		name  string
		msg   string
		want  []want
		calls int32
	}{
		{"small answer", big(1, 100), []want{{ok: true}}, 1},
		{"answer just under", big(1, 1450), []want{{ok: true}}, 1},
		{"answer over the cap", big(1, 1470), []want{{reason: "answer_too_large"}}, 1},
		{"batch within", "[" + big(1, 500) + "," + big(2, 500) + "]", []want{{ok: true}, {ok: true}}, 2},
		{"batch over: the rest is not run", "[" + big(1, 400) + "," + big(2, 400) + "," + big(3, 400) + "," + big(4, 10) + "]",
			[]want{{ok: true}, {ok: true}, {reason: "answer_too_large"}, {reason: "answer_too_large"}}, 3},
		{"batch too costly: nothing runs", "[" + big(1, 1) + `,{"jsonrpc":"2.0","id":2,"method":"jobs.list","params":{"limit":149}}]`,
			[]want{{reason: "batch_too_costly"}}, 0},
		{"batch at the cost cap runs", "[" + big(1, 1) + `,{"jsonrpc":"2.0","id":2,"method":"jobs.list","params":{"limit":148}}]`,
			[]want{{ok: true}, {reason: "no_jobs"}}, 1},
	}
	for _, tc := range tests {
		calls.Store(0)
		out := answers(t, s, tc.msg)
		if len(out) != 1 {
			t.Fatalf("%s: %d messages", tc.name, len(out))
		}
		if int64(len(out[0])) > s.cfg.MaxAnswerBytes {
			t.Errorf("%s: answer of %d bytes", tc.name, len(out[0]))
		}
		var rs []response
		if err := json.Unmarshal(out[0], &rs); err != nil {
			var r response
			if err := json.Unmarshal(out[0], &r); err != nil {
				t.Fatalf("%s: %s", tc.name, out[0])
			}
			rs = []response{r}
		}
		if len(rs) != len(tc.want) {
			t.Fatalf("%s: %d answers, want %d: %s", tc.name, len(rs), len(tc.want), out[0])
		}
		for i, w := range tc.want {
			r := rs[i]
			if w.ok != (r.Error == nil) || (!w.ok && r.Error.Data["reason"] != w.reason) {
				t.Errorf("%s: answer %d: %+v, want %+v", tc.name, i, r.Error, w)
				continue
			}
			if !w.ok && w.reason == "answer_too_large" && r.Error.Code != CodeLimit {
				t.Errorf("%s: answer %d: code %d", tc.name, i, r.Error.Code)
			}
			if len(tc.want) > 1 && string(r.ID) != itoa(i+1) {
				t.Errorf("%s: answer %d has id %s", tc.name, i, r.ID)
			}
		}
		if got := calls.Load(); got != tc.calls {
			t.Errorf("%s: %d calls ran, want %d", tc.name, got, tc.calls)
		}
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func TestQueuedOutputDropsClient(t *testing.T) {
	s := New(Config{MaxQueuedBytes: 1000, MaxTotalQueuedBytes: 1500, OutQueue: 3}, zerolog.Nop())
	dropped := func(c *conn) bool { return c.ctx.Err() != nil && c.closeCode == websocket.ClosePolicyViolation }
	b := func(n int) []byte { return make([]byte, n) }

	a := newConn(s, nil, auth.Caller{}, "a")
	a.send(b(600))
	a.send(b(400)) // exactly at the cap
	if dropped(a) || a.queued.Load() != 1000 {
		t.Fatalf("at the cap: dropped %v, queued %d", dropped(a), a.queued.Load())
	}
	a.send(b(1))
	if !dropped(a) || a.queued.Load() != 1000 || !strings.Contains(a.closeText, "too slow") {
		t.Fatalf("over the cap: dropped %v (%q), queued %d", dropped(a), a.closeText, a.queued.Load())
	}
	a.discard()
	if a.queued.Load() != 0 || s.queued.Load() != 0 {
		t.Fatalf("after discard: %d, %d", a.queued.Load(), s.queued.Load())
	}

	// Every connection together: one with nothing queued still gets its
	// answer; one with output waiting is dropped past the total.
	c1, c2 := newConn(s, nil, auth.Caller{}, "c1"), newConn(s, nil, auth.Caller{}, "c2")
	c1.send(b(900))
	c2.send(b(900)) // total 1800 > 1500, but c2 had nothing waiting
	if dropped(c1) || dropped(c2) {
		t.Fatal("first answers dropped")
	}
	c2.send(b(10))
	if !dropped(c2) || dropped(c1) {
		t.Fatalf("past the total: c1 %v c2 %v", dropped(c1), dropped(c2))
	}
	c1.done(len(<-c1.out)) // written
	c2.discard()
	if s.queued.Load() != 0 {
		t.Fatalf("total after all is written: %d", s.queued.Load())
	}

	// Too many messages unread: dropped too, answers and events alike.
	for _, f := range []func(*conn, []byte){(*conn).send, func(c *conn, b []byte) { c.trySend(b) }} {
		m := newConn(s, nil, auth.Caller{}, "m")
		for i := 0; i < 3; i++ {
			f(m, b(1))
		}
		if dropped(m) {
			t.Fatal("dropped at OutQueue messages")
		}
		f(m, b(1))
		if !dropped(m) || m.queued.Load() != 3 {
			t.Fatalf("one message over OutQueue: dropped %v, queued %d", dropped(m), m.queued.Load())
		}
		m.discard()
	}
}
