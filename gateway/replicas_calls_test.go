package gateway

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/rs/zerolog"

	"wsgateway/internal/httperr"
	"wsgateway/session"
)

// addrShared answers ReplicaAddress from a map (ErrReplicaGone for a
// replica not in it).
type addrShared struct {
	session.Shared
	addrs map[string]string
}

func (a *addrShared) ReplicaAddress(_ context.Context, id string) (string, error) {
	addr, ok := a.addrs[id]
	if !ok {
		return "", session.ErrReplicaGone
	}
	return addr, nil
}

// TestReplicaCalls: a call signed by one replica is answered by another
// with its result or its refusal's status; a call whose arguments,
// secret or nonce are not the signed ones is refused (401); calls to a
// gone replica or one without a replica address fail as such.
func TestReplicaCalls(t *testing.T) {
	secret := []byte("0123456789abcdef")
	callee := &Server{replicaAuth: newReplicaAuth(secret), log: zerolog.Nop()}
	type answer struct {
		ID     string `json:"id"`
		Offset string `json:"offset"`
		Kinds  int    `json:"kinds"`
	}
	calls := map[string]ReplicaCall{
		"jobs.log": func(_ context.Context, id string, a url.Values) (any, error) {
			// kind and id are not among the arguments.
			return answer{ID: id, Offset: a.Get("offset"), Kinds: len(a["kind"]) + len(a["id"])}, nil
		},
		"jobs.remove": func(context.Context, string, url.Values) (any, error) {
			return nil, httperr.Errorf(http.StatusConflict, "job-1 is running; stop it first")
		},
		"jobs.stop": func(context.Context, string, url.Values) (any, error) { return nil, errors.New("boom") },
	}
	ts := httptest.NewServer(callee.ReplicaCallHandler(calls))
	defer ts.Close()
	addr := ts.Listener.Addr().String()
	sh := &addrShared{addrs: map[string]string{"B": addr, "N": ""}}
	caller := &Server{cfg: Config{Shared: sh, ReplicaID: "A"}, replicaAuth: newReplicaAuth(secret), log: zerolog.Nop()}
	ctx := context.Background()

	var got answer
	if err := caller.CallReplica(ctx, "B", "jobs.log", "job-7", url.Values{"offset": {"12"}}, &got); err != nil ||
		got != (answer{ID: "job-7", Offset: "12"}) {
		t.Fatalf("call: %+v %v", got, err)
	}
	tests := []struct {
		name, replica, kind string
		status              int
		is                  error
	}{
		{"refusal with its status", "B", "jobs.remove", http.StatusConflict, nil},
		{"failure", "B", "jobs.stop", http.StatusInternalServerError, nil},
		{"unknown kind", "B", "jobs.nope", http.StatusNotFound, nil},
		{"gone replica", "Z", "jobs.log", 0, session.ErrReplicaGone},
		{"no replica address", "N", "jobs.log", 0, ErrNoReplicaLink},
	}
	for _, tt := range tests {
		err := caller.CallReplica(ctx, tt.replica, tt.kind, "job-1", nil, nil)
		var he *httperr.Error
		switch {
		case tt.is != nil && !errors.Is(err, tt.is):
			t.Errorf("%s: %v, want %v", tt.name, err, tt.is)
		case tt.is == nil && (!errors.As(err, &he) || he.Status != tt.status):
			t.Errorf("%s: %v, want status %d", tt.name, err, tt.status)
		}
	}
	var he *httperr.Error
	if err := caller.CallReplica(ctx, "B", "jobs.remove", "job-1", nil, nil); !errors.As(err, &he) || he.Msg != "job-1 is running; stop it first" {
		t.Fatalf("the refusal's message: %v", err)
	}
	unsigned := &Server{cfg: Config{Shared: sh, ReplicaID: "A"}, log: zerolog.Nop()}
	if err := unsigned.CallReplica(ctx, "B", "jobs.log", "job-1", nil, nil); !errors.Is(err, ErrNoReplicaLink) {
		t.Fatalf("a caller without the secret: %v", err)
	}

	// Requests made by hand: the signed arguments, id and kind only, once.
	send := func(header string, q url.Values) int {
		req, _ := http.NewRequest(http.MethodGet, ts.URL+replicaCallPath+"?"+q.Encode(), nil)
		req.Header.Set(replicaAuthHeader, header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	args := url.Values{"offset": {"0"}}
	sign := func(a *replicaAuth, id, kind string) string {
		h, err := a.sign("A", id, callMode(kind, args))
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	query := func(id, kind, offset string) url.Values {
		return url.Values{"id": {id}, "kind": {kind}, "offset": {offset}}
	}
	other := newReplicaAuth([]byte("0123456789abcdeX"))
	good := sign(caller.replicaAuth, "job-1", "jobs.log")
	refusals := []struct {
		name   string
		header string
		q      url.Values
		status int
	}{
		{"other offset", sign(caller.replicaAuth, "job-1", "jobs.log"), query("job-1", "jobs.log", "5"), http.StatusUnauthorized},
		{"other job", sign(caller.replicaAuth, "job-1", "jobs.log"), query("job-2", "jobs.log", "0"), http.StatusUnauthorized},
		{"other kind", sign(caller.replicaAuth, "job-1", "jobs.log"), query("job-1", "jobs.stop", "0"), http.StatusUnauthorized},
		{"other secret", sign(other, "job-1", "jobs.log"), query("job-1", "jobs.log", "0"), http.StatusUnauthorized},
		{"unsigned", "", query("job-1", "jobs.log", "0"), http.StatusUnauthorized},
		{"good", good, query("job-1", "jobs.log", "0"), http.StatusOK},
		{"replayed", good, query("job-1", "jobs.log", "0"), http.StatusUnauthorized},
	}
	for _, tt := range refusals {
		if got := send(tt.header, tt.q); got != tt.status {
			t.Errorf("%s: %d, want %d", tt.name, got, tt.status)
		}
	}
	// A replica without the secret serves no calls.
	ts2 := httptest.NewServer((&Server{log: zerolog.Nop()}).ReplicaCallHandler(calls))
	defer ts2.Close()
	sh.addrs["S"] = ts2.Listener.Addr().String()
	if err := caller.CallReplica(ctx, "S", "jobs.log", "job-1", nil, nil); !errors.As(err, &he) || he.Status != http.StatusNotFound {
		t.Fatalf("a callee without the secret: %v", err)
	}
}
