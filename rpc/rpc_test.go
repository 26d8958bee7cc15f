package rpc

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/events"
	"wsgateway/jobs"
	"wsgateway/store"
)

func newTestServer(t *testing.T, maxMsg int64) string {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "s.db"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	hub, err := events.NewHub(ctx, st, 100, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	m, err := jobs.New(ctx, jobs.Config{Store: st, Events: hub, Dir: t.TempDir()}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{Jobs: m, Hub: hub, MaxMessageBytes: maxMsg}, zerolog.Nop())
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		_ = s.Close(ctx)
		srv.Close()
		_ = m.Close(ctx)
		st.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + Path
}

func TestRPCProtocolEdges(t *testing.T) {
	u := newTestServer(t, 4096)
	ws, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	roundTrip := func(msg string) map[string]any {
		t.Helper()
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, p, err := ws.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(p, &m); err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		return m
	}
	r := roundTrip(`{"jsonrpc":"2.0","method":"jobs.list","params":{"limit":5000},"id":"x"}`)
	if e := r["error"].(map[string]any); e["code"].(float64) != CodeInvalidParams || r["id"] != "x" {
		t.Fatalf("limit: %v", r)
	}
	r = roundTrip(`{"jsonrpc":"2.0","method":"jobs.submit","params":{"service":"none"},"id":1}`)
	if e := r["error"].(map[string]any); e["code"].(float64) != CodeNotFound || e["data"].(map[string]any)["reason"] != "unknown_service" {
		t.Fatalf("unknown service: %v", r)
	}
	r = roundTrip(`{"jsonrpc":"2.0","method":"queue.list","id":null}`)
	if r["result"] == nil || r["id"] != nil {
		t.Fatalf("null id: %v", r)
	}
	// Too large a message closes with 1009.
	_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"jsonrpc":"2.0","method":"x","params":{"p":"`+strings.Repeat("a", 5000)+`"},"id":1}`))
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err = ws.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("oversized message: %v", err)
	}
}
