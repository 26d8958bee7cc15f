package rpc

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/auth"
	"wsgateway/events"
	"wsgateway/jobs"
	"wsgateway/store"
)

func TestRPCAccessMirrorsGateway(t *testing.T) {
	req := func(remote, query string, hdr ...string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v1/rpc"+query, nil)
		r.RemoteAddr = remote
		r.Host = "127.0.0.1:9090"
		for i := 0; i+1 < len(hdr); i += 2 {
			r.Header.Set(hdr[i], hdr[i+1])
		}
		return r
	}
	open := Access{}
	if id, _ := open.Caller(req("127.0.0.1:5", "")); id == nil || !id.Admin || id.Via != "loopback" {
		t.Fatalf("loopback without auth: %+v", id)
	}
	rebound := req("127.0.0.1:5", "")
	rebound.Host = "rebind.evil.example:9090"
	if id, _ := open.Caller(rebound); id != nil {
		t.Fatalf("loopback under a DNS name (rebinding) is an administrator: %+v", id)
	}
	if id, _ := open.Caller(req("10.0.0.1:5", "")); id != nil {
		t.Fatalf("remote without auth: %+v", id)
	}
	tok := Access{Policy: auth.Policy{SecurityToken: "t"}}
	if id, _ := tok.Caller(req("127.0.0.1:5", "")); id != nil {
		t.Fatalf("loopback with a token configured is anonymous: %+v", id)
	}
	if id, _ := tok.Caller(req("10.0.0.1:5", "?security_token=t")); id == nil || !id.Admin {
		t.Fatalf("token in query: %+v", id)
	}
	if id, _ := tok.Caller(req("10.0.0.1:5", "", "Authorization", "Bearer t")); id == nil || !id.Admin {
		t.Fatalf("bearer: %+v", id)
	}
	if id, _ := tok.Caller(req("10.0.0.1:5", "?security_token=x")); id != nil {
		t.Fatalf("wrong token: %+v", id)
	}
	o := Access{AllowedOrigins: []string{"https://app.example"}}
	for origin, want := range map[string]bool{"": true, "http://gw.example:1": true, "https://app.example": true, "https://evil.example": false} {
		r := req("10.0.0.1:5", "")
		r.Host = "gw.example:9090"
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		if got := o.OriginAllowed(r); got != want {
			t.Errorf("origin %q: %v", origin, got)
		}
	}
}

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
