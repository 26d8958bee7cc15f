package rpc

import (
	"encoding/json"
	"reflect"
	"testing"

	"wsgateway/auth"
)

// TestQueueView: one queue.changed event for everyone, shown to each
// subscriber as its own position; owners' names only to administrators;
// a job queue's event is never rewritten.
func TestQueueView(t *testing.T) {
	ev := `{"kind":"reservations","service":"S","waiting":3,"queue":["bob","alice","bob"]}`
	jobs := `{"queue":["job-2","job-1"]}`
	tests := []struct {
		name string
		id   *auth.Identity
		in   string
		want map[string]any
	}{
		{"alice sees her place", &auth.Identity{Kind: auth.KindUser, Name: "alice"}, ev,
			map[string]any{"kind": "reservations", "service": "S", "waiting": 3.0, "position": 2.0}},
		{"bob sees his first place", &auth.Identity{Kind: auth.KindUser, Name: "bob"}, ev,
			map[string]any{"kind": "reservations", "service": "S", "waiting": 3.0, "position": 1.0}},
		{"carol does not wait", &auth.Identity{Kind: auth.KindUser, Name: "carol"}, ev,
			map[string]any{"kind": "reservations", "service": "S", "waiting": 3.0}},
		{"an administrator sees the owners", &auth.Identity{Kind: auth.KindUser, Name: "root", Admin: true}, ev,
			map[string]any{"kind": "reservations", "service": "S", "waiting": 3.0, "queue": []any{"bob", "alice", "bob"}}},
		{"a job queue is left alone", &auth.Identity{Kind: auth.KindUser, Name: "carol"}, jobs,
			map[string]any{"queue": []any{"job-2", "job-1"}}},
	}
	for _, tt := range tests {
		c := &conn{id: tt.id, caller: auth.Caller{ID: tt.id}}
		var got map[string]any
		if err := json.Unmarshal(c.queueView(json.RawMessage(tt.in)), &got); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}
