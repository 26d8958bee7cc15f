package rpc

import (
	"encoding/json"
	"testing"

	"wsgateway/auth"

	"github.com/rs/zerolog"
)

// FuzzDecode feeds arbitrary messages to the JSON-RPC decoder and
// dispatcher: nothing panics, every reply is valid JSON-RPC 2.0, and a
// single request with an id gets exactly one reply.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","method":"server.info","id":1}`,
		`{"jsonrpc":"2.0","method":"jobs.list","params":{"limit":5},"id":"a"}`,
		`[{"jsonrpc":"2.0","method":"server.info","id":1},{"jsonrpc":"2.0","method":"x"}]`,
		`{"jsonrpc":"2.0","method":"events.subscribe","params":{"topics":["job.state"],"since":0},"id":2}`,
		`{"jsonrpc":"1.0","method":"server.info","id":1}`,
		`{"jsonrpc":"2.0","method":"reservations.create","params":[],"id":null}`,
		`[]`, `[1,2]`, `{`, `null`, `"x"`, `{"jsonrpc":"2.0","method":7,"id":{}}`,
	} {
		f.Add([]byte(s))
	}
	s := New(Config{}, zerolog.Nop())
	f.Fuzz(func(t *testing.T, msg []byte) {
		c := newConn(s, nil, auth.Caller{}, "fuzz")
		defer c.cancel()
		c.handleMessage(msg)
		close(c.out)
		n := 0
		for b := range c.out {
			n++
			var one response
			var many []response
			if json.Unmarshal(b, &one) != nil && json.Unmarshal(b, &many) != nil {
				t.Fatalf("reply is not JSON-RPC: %q", b)
			}
			if len(many) == 0 && one.JSONRPC != "2.0" {
				t.Fatalf("reply without jsonrpc 2.0: %q", b)
			}
		}
		var req map[string]json.RawMessage
		if json.Unmarshal(msg, &req) == nil {
			if _, hasID := req["id"]; hasID && n != 1 {
				t.Fatalf("%d replies to one request %q", n, msg)
			}
		}
	})
}
