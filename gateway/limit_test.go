package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/services"
)

func TestAuthenticateCountsFailures(t *testing.T) {
	s := newTestServer(t, Config{SecurityToken: "tok", AuthFailLimit: 3})
	req := func(remote, query string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/v1/rpc"+query, nil)
		r.RemoteAddr = remote
		return r
	}
	steps := []struct {
		name   string
		remote string
		query  string
		status int // 0: accepted
	}{
		{"right token", "10.0.0.1:1", "?security_token=tok", 0},
		{"wrong 1", "10.0.0.1:1", "?security_token=x", http.StatusUnauthorized},
		{"no credentials do not count", "10.0.0.1:1", "", http.StatusUnauthorized},
		{"wrong 2", "10.0.0.1:2", "?security_token=x", http.StatusUnauthorized},
		{"wrong 3", "10.0.0.1:3", "?security_token=x", http.StatusUnauthorized},
		{"right token, limit reached", "10.0.0.1:4", "?security_token=tok", http.StatusTooManyRequests},
		{"another address", "10.0.0.2:1", "?security_token=tok", 0},
	}
	for _, st := range steps {
		c, err := s.Authenticate(req(st.remote, st.query))
		if st.status == 0 {
			if err != nil || !c.Admin() {
				t.Fatalf("%s: %v %+v", st.name, err, c.ID)
			}
			continue
		}
		if got := httperr.Status(err); got != st.status {
			t.Fatalf("%s: status %d (%v), want %d", st.name, got, err, st.status)
		}
		if st.status == http.StatusTooManyRequests && !errors.Is(err, ErrAuthFailures) {
			t.Fatalf("%s: %v is not ErrAuthFailures", st.name, err)
		}
	}
	// A wrong bearer value counts too.
	s2 := newTestServer(t, Config{SecurityToken: "tok", AuthFailLimit: 1})
	bad := req("10.0.0.3:1", "")
	bad.Header.Set("Authorization", "Bearer wrong")
	if _, err := s2.Authenticate(bad); httperr.Status(err) != http.StatusUnauthorized {
		t.Fatalf("wrong bearer: %v", err)
	}
	if _, err := s2.Authenticate(req("10.0.0.3:1", "?security_token=tok")); httperr.Status(err) != http.StatusTooManyRequests {
		t.Fatalf("after one wrong password with a limit of 1: %v", err)
	}
}

func TestAdmitControl(t *testing.T) {
	s := newTestServer(t, Config{MaxTunnels: 3, MaxControlPerAddress: 2})
	var releases []func()
	admit := func(remote string, want int, sentinel error) {
		t.Helper()
		rel, err := s.AdmitControl(remote)
		if want == 0 {
			if err != nil {
				t.Fatalf("%s: %v", remote, err)
			}
			releases = append(releases, rel)
			return
		}
		if httperr.Status(err) != want || !errors.Is(err, sentinel) {
			t.Fatalf("%s: %v, want %d", remote, err, want)
		}
	}
	admit("10.0.0.1:1", 0, nil)
	admit("10.0.0.1:2", 0, nil)
	admit("10.0.0.1:3", http.StatusTooManyRequests, ErrAddressLimit)
	admit("[2001:db8::1]:1", 0, nil)
	// The same /64: the same address for the cap; and the gateway is full.
	admit("[2001:db8::2]:1", http.StatusServiceUnavailable, ErrCapacity)
	if n := s.active.Load(); n != 3 {
		t.Fatalf("active %d after refusals, want 3", n)
	}
	releases[0]()
	releases[0]() // twice is once
	if n := s.active.Load(); n != 2 {
		t.Fatalf("active %d after a release, want 2", n)
	}
	admit("10.0.0.1:4", 0, nil)
	for _, r := range releases {
		r()
	}
	if n := s.active.Load(); n != 0 || len(s.addr.conns) != 0 {
		t.Fatalf("after every release: active %d, addresses %v", n, s.addr.conns)
	}
}

func TestAllowSubmitRate(t *testing.T) {
	s := newTestServer(t, Config{RateLimit: 2})
	now := time.Unix(1000, 0)
	s.addr.submit.now = func() time.Time { return now }
	for i := 0; i < 4; i++ { // the burst: twice the rate
		if err := s.AllowSubmit("10.0.0.1:1"); err != nil {
			t.Fatalf("submission %d: %v", i+1, err)
		}
	}
	if err := s.AllowSubmit("10.0.0.1:2"); httperr.Status(err) != http.StatusTooManyRequests || !errors.Is(err, ErrRateLimited) {
		t.Fatalf("fifth: %v", err)
	}
	if err := s.AllowSubmit("10.0.0.2:1"); err != nil {
		t.Fatalf("another address: %v", err)
	}
	now = now.Add(500 * time.Millisecond) // one token back
	if err := s.AllowSubmit("10.0.0.1:1"); err != nil {
		t.Fatalf("after refill: %v", err)
	}
	if err := s.AllowSubmit("10.0.0.1:1"); err == nil {
		t.Fatal("a second after one refilled token")
	}
	off := newTestServer(t, Config{})
	for i := 0; i < 100; i++ {
		if err := off.AllowSubmit("10.0.0.1:1"); err != nil {
			t.Fatalf("no --rate_limit: %v", err)
		}
	}
}

func TestReserveFromLimits(t *testing.T) {
	svc := &services.Service{Name: "S", Count: 1}
	s := newTestServer(t, Config{Services: []*services.Service{svc}, RateLimit: 1000})
	ctx := context.Background()
	if _, err := s.ReserveFrom(ctx, auth.Caller{Client: "10.0.0.1"}, "S", nil, 0); err != nil {
		t.Fatal(err)
	}
	// The slot is held: waiters from one address stop at the cap.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, MaxWaitersPerAddress)
	for i := 0; i < MaxWaitersPerAddress; i++ {
		go func() {
			_, err := s.ReserveFrom(wctx, auth.Caller{Client: "10.0.0.2"}, "S", nil, time.Minute)
			errs <- err
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for s.sessions.Waiting()["S"] < MaxWaitersPerAddress {
		if time.Now().After(deadline) {
			t.Fatalf("waiting %v", s.sessions.Waiting())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := s.ReserveFrom(ctx, auth.Caller{Client: "10.0.0.2"}, "S", nil, time.Minute); httperr.Status(err) != http.StatusTooManyRequests || !errors.Is(err, ErrAddressLimit) {
		t.Fatalf("waiter %d from one address: %v", MaxWaitersPerAddress+1, err)
	}
	// Without wait the per-address bound does not apply; another address
	// may wait.
	if _, err := s.ReserveFrom(ctx, auth.Caller{Client: "10.0.0.2"}, "S", nil, 0); httperr.Status(err) != http.StatusServiceUnavailable {
		t.Fatalf("no wait: %v", err)
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if _, err := s.ReserveFrom(short, auth.Caller{Client: "10.0.0.3"}, "S", nil, time.Minute); httperr.Status(err) != http.StatusServiceUnavailable {
		t.Fatalf("another address's waiter: %v", err)
	}
	cancel()
	for i := 0; i < MaxWaitersPerAddress; i++ {
		<-errs
	}
	if len(s.addr.waiting) != 0 {
		t.Fatalf("waiting counts left: %v", s.addr.waiting)
	}
	// Options are bounded as on REST.
	many := map[string]string{}
	for i := 0; i <= maxOptions; i++ {
		many[string(rune('a'+i%26))+string(rune('a'+i/26))] = "v"
	}
	if _, err := s.ReserveFrom(ctx, auth.Caller{Client: "10.0.0.4"}, "S", many, 0); httperr.Status(err) != http.StatusBadRequest {
		t.Fatalf("too many options: %v", err)
	}
	// And the rate.
	slow := newTestServer(t, Config{Services: []*services.Service{{Name: "S", Count: 1}}, RateLimit: 1})
	slow.reserveLimit.now = func() time.Time { return time.Unix(1000, 0) }
	var last error
	for i := 0; i < 3; i++ {
		_, last = slow.ReserveFrom(ctx, auth.Caller{Client: "10.0.0.5"}, "nope", nil, 0)
	}
	if !errors.Is(last, ErrRateLimited) {
		t.Fatalf("third reservation with a rate of 1 (burst 2): %v", last)
	}
}

// TestAuthenticateOverTheLimitChecksNoPassword: a client over the
// failed-authentication limit is refused before its password is checked,
// so it cannot make the gateway spend a bcrypt check per request. The
// user's hash has the highest cost bcrypt allows (2^31 rounds: minutes
// of CPU), so a check that ran would not return within the deadline.
func TestAuthenticateOverTheLimitChecksNoPassword(t *testing.T) {
	cheap, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	dear := strings.Replace(string(cheap), fmt.Sprintf("$%02d$", bcrypt.MinCost), "$31$", 1)
	file := filepath.Join(t.TempDir(), "users.json")
	body, _ := json.Marshal(map[string]any{"users": map[string]any{"alice": map[string]any{"password_bcrypt": dear}}})
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	users, err := auth.LoadUsers(file)
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(t, Config{Users: users, AuthFailLimit: 1})
	wrongKey := httptest.NewRequest(http.MethodGet, "/v1/whoami", nil)
	wrongKey.RemoteAddr = "10.0.0.9:1"
	wrongKey.Header.Set("Authorization", "Bearer not-a-key-of-anyone")
	if _, err := s.Authenticate(wrongKey); httperr.Status(err) != http.StatusUnauthorized {
		t.Fatalf("a wrong API key: %v, want 401", err)
	}
	password := httptest.NewRequest(http.MethodGet, "/v1/whoami", nil)
	password.RemoteAddr = "10.0.0.9:2"
	password.SetBasicAuth("alice", "pw")
	done := make(chan error, 1)
	go func() {
		_, err := s.Authenticate(password)
		done <- err
	}()
	select {
	case err := <-done:
		if httperr.Status(err) != http.StatusTooManyRequests || !errors.Is(err, ErrAuthFailures) {
			t.Fatalf("a password over the limit: %v, want 429", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a client over the limit had its password checked (bcrypt ran)")
	}
}
