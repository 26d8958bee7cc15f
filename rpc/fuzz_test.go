package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"sort"
	"testing"

	"github.com/rs/zerolog"

	"wsgateway/auth"
	"wsgateway/events"
	"wsgateway/jobs"
	"wsgateway/store"
)

// FuzzDecode feeds arbitrary messages to the JSON-RPC decoder and
// dispatcher of a server with jobs and events (and no job service, so
// nothing can start), called by an administrator: nothing panics, every
// reply is JSON-RPC 2.0, and the ids of the replies are exactly the ones
// JSON-RPC 2.0 asks for, worked out here from the message with
// encoding/json alone: one reply per request that has an id (its id),
// none for a notification, one with a null id for what is not a request,
// and for a batch the same per call.
//
//	go test -run='^$' -fuzz='^FuzzDecode$' -fuzztime=30s ./rpc
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","method":"server.info","id":1}`,
		`{"jsonrpc":"2.0","method":"jobs.list","params":{"limit":5},"id":"a"}`,
		`[{"jsonrpc":"2.0","method":"server.info","id":1},{"jsonrpc":"2.0","method":"x"}]`,
		`[{"jsonrpc":"2.0","method":"jobs.get","params":{"id":"nope"},"id":"b"},{"jsonrpc":"2.0","method":"queue.list","id":-2.5},3]`,
		`{"jsonrpc":"2.0","method":"events.subscribe","params":{"topics":["job.state"],"since":0},"id":2}`,
		`{"jsonrpc":"1.0","method":"server.info","id":1}`,
		`{"jsonrpc":"2.0","method":"reservations.create","params":[],"id":null}`,
		`{"jsonrpc":"2.0","method":"no.such","id":"z"}`,
		`{"jsonrpc":"2.0","method":"server.info"}`,
		`[]`, `[1,2]`, `{`, `null`, `"x"`, `{"jsonrpc":"2.0","method":7,"id":{}}`, `{"jsonrpc":"2.0","method":"server.info","id":[1]}`,
	} {
		f.Add([]byte(s))
	}
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(f.TempDir(), "s.db"), zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	hub, err := events.NewHub(ctx, st, 100, zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}
	jm, err := jobs.New(ctx, jobs.Config{Store: st, Events: hub, Dir: f.TempDir()}, zerolog.Nop())
	if err != nil {
		f.Fatal(err)
	}
	defer jm.Close(ctx)
	s := New(Config{Jobs: jm, Hub: hub}, zerolog.Nop())
	defer s.Close(ctx)
	admin := auth.Caller{ID: &auth.Identity{Name: "admin", Admin: true, Kind: auth.KindToken, Via: "security_token"}}
	f.Fuzz(func(t *testing.T, msg []byte) {
		c := newConn(s, nil, admin, "fuzz")
		defer c.cancel()
		c.handleMessage(msg)
		var got []string
	drain:
		for {
			select {
			case b := <-c.out:
				var probe map[string]json.RawMessage
				if json.Unmarshal(b, &probe) == nil {
					if _, isNote := probe["method"]; isNote {
						continue // an event pushed to a subscriber, not a reply
					}
				}
				ids, err := replyIDs(b)
				if err != nil {
					t.Fatalf("reply %q: %v", b, err)
				}
				got = append(got, ids...)
			default:
				break drain
			}
		}
		want := expectedIDs(msg)
		sort.Strings(got)
		sort.Strings(want)
		if len(got) != len(want) {
			t.Fatalf("message %q: reply ids %q, want %q", msg, got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("message %q: reply ids %q, want %q", msg, got, want)
			}
		}
	})
}

// replyIDs checks that b is one JSON-RPC 2.0 response or a non-empty
// batch of them (each with a result or an error, not both) and returns
// their ids, compacted.
func replyIDs(b []byte) ([]string, error) {
	var many []json.RawMessage
	if err := json.Unmarshal(b, &many); err == nil {
		if len(many) == 0 {
			return nil, errEmptyBatch
		}
	} else {
		many = []json.RawMessage{b}
	}
	var ids []string
	for _, one := range many {
		var r map[string]json.RawMessage
		if err := json.Unmarshal(one, &r); err != nil {
			return nil, err
		}
		if string(r["jsonrpc"]) != `"2.0"` {
			return nil, errNot20
		}
		_, hasRes := r["result"]
		_, hasErr := r["error"]
		if hasRes == hasErr {
			return nil, errResultXorError
		}
		id, ok := r["id"]
		if !ok {
			return nil, errNoID
		}
		ids = append(ids, compact(id))
	}
	return ids, nil
}

type fuzzErr string

func (e fuzzErr) Error() string { return string(e) }

const (
	errEmptyBatch     fuzzErr = "empty batch reply"
	errNot20          fuzzErr = "no jsonrpc 2.0"
	errResultXorError fuzzErr = "not exactly one of result and error"
	errNoID           fuzzErr = "no id"
)

// expectedIDs is JSON-RPC 2.0 §5 and §6 applied to msg: an invalid JSON
// text, an empty or (over 100 calls) too large batch gets one reply with a
// null id; otherwise each call gets a reply with its id when it has one of
// the allowed types, a null id when it is not a valid request, and none
// when it is a valid notification.
func expectedIDs(msg []byte) []string {
	trimmed := bytes.TrimSpace(msg)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var items []json.RawMessage
		if json.Unmarshal(trimmed, &items) != nil || len(items) == 0 || len(items) > 100 {
			return []string{"null"}
		}
		var ids []string
		for _, it := range items {
			ids = append(ids, callIDs(it)...)
		}
		return ids
	}
	if !json.Valid(trimmed) {
		return []string{"null"}
	}
	return callIDs(trimmed)
}

func callIDs(raw json.RawMessage) []string {
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil || fields == nil {
		return []string{"null"}
	}
	id, hasID := fields["id"]
	if hasID {
		var v any
		_ = json.Unmarshal(id, &v)
		switch v.(type) {
		case string, float64, nil:
		default:
			return []string{"null"} // an object, array or boolean id
		}
	}
	// The version and the method as encoding/json reads them into a
	// struct: it matches member names without regard to case, and so
	// does the server ("JSONRPC" counts as "jsonrpc").
	var req struct {
		JSONRPC string  `json:"jsonrpc"`
		Method  *string `json:"method"`
	}
	okReq := json.Unmarshal(raw, &req) == nil
	okVersion := okReq && req.JSONRPC == "2.0"
	okMethod := okReq && req.Method != nil
	if !hasID {
		if okVersion && okMethod {
			return nil // a notification
		}
		return []string{"null"}
	}
	return []string{compact(id)}
}

// compact is the id as a value: decoded (numbers kept as written) and
// encoded again, so that "\u0026" and "&" are the same id.
func compact(raw json.RawMessage) string {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return string(raw)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return string(raw)
	}
	return string(b)
}
