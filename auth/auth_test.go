package auth

import (
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, v any) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "users.json")
	b, _ := json.Marshal(v)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUsersFile(t *testing.T) {
	h, err := HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	u, err := LoadUsers(writeFile(t, map[string]any{"users": map[string]any{
		"alice": map[string]any{"password_bcrypt": h, "groups": []string{"viz", "admin"}},
		"bob":   map[string]any{"api_keys": []string{"0123456789abcdef-bob"}},
	}}))
	if err != nil {
		t.Fatal(err)
	}
	id, err := u.CheckPassword("alice", "correct horse")
	if err != nil || !id.Admin || !id.InGroup("viz") || !id.InGroup("anything") {
		t.Fatalf("alice: %+v %v", id, err)
	}
	if _, err := u.CheckPassword("alice", "wrong"); err == nil {
		t.Fatal("wrong password accepted")
	}
	if _, err := u.CheckPassword("nobody", "correct horse"); err == nil {
		t.Fatal("unknown user accepted")
	}
	id, err = u.CheckAPIKey("0123456789abcdef-bob")
	if err != nil || id.Name != "bob" || id.Admin || id.InGroup("viz") {
		t.Fatalf("bob: %+v %v", id, err)
	}
	if _, err := u.CheckAPIKey("0123456789abcdef-bo"); err == nil {
		t.Fatal("a prefix of a key accepted")
	}
	c := u.SessionCookie("alice", time.Hour)
	if id, err := u.CheckCookie(c); err != nil || id.Name != "alice" {
		t.Fatalf("cookie: %v", err)
	}
	for _, bad := range []string{c + "x", "x" + c, strings.Replace(c, ".", "", 1), "", u.SessionCookie("alice", -time.Second), u.SessionCookie("ghost", time.Hour)} {
		if _, err := u.CheckCookie(bad); err == nil {
			t.Errorf("bad cookie %q accepted", bad)
		}
	}
	// Basic auth from a request.
	r := httptest.NewRequest("GET", "/", nil)
	r.SetBasicAuth("alice", "correct horse")
	if id, _, err := u.authenticate(r); err != nil || id.Name != "alice" {
		t.Fatalf("basic: %v", err)
	}
}

func TestUsersFileErrors(t *testing.T) {
	for name, v := range map[string]any{
		"not a hash": map[string]any{"users": map[string]any{"a": map[string]any{"password_bcrypt": "plain"}}},
		"short key":  map[string]any{"users": map[string]any{"a": map[string]any{"api_keys": []string{"short"}}}},
		"shared key": map[string]any{"users": map[string]any{"a": map[string]any{"api_keys": []string{"0123456789abcdef"}}, "b": map[string]any{"api_keys": []string{"0123456789abcdef"}}}},
		"colon name": map[string]any{"users": map[string]any{"a:b": map[string]any{}}},
		"no users":   map[string]any{"people": map[string]any{}},
		"typo":       map[string]any{"users": map[string]any{"a": map[string]any{"group": []string{"x"}}}},
	} {
		if _, err := LoadUsers(writeFile(t, v)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestReloadKeepsOldOnError(t *testing.T) {
	p := writeFile(t, map[string]any{"users": map[string]any{"a": map[string]any{"api_keys": []string{"0123456789abcdef-a"}}}})
	u, err := LoadUsers(p)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("{broken"), 0o600)
	if err := u.Reload(); err == nil {
		t.Fatal("broken file reloaded")
	}
	if _, err := u.CheckAPIKey("0123456789abcdef-a"); err != nil {
		t.Fatal("old users lost after a failed reload")
	}
}

func TestTrustedProxies(t *testing.T) {
	tp, err := ParseCIDRs([]string{"10.0.0.0/8", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		remote string
		want   bool
	}{{"10.1.2.3:5000", true}, {"[::1]:5000", true}, {"192.168.1.1:5000", false}, {"127.0.0.1:5000", false}} {
		r := request(c.remote, "/", "X-Forwarded-User", "dave", "X-Forwarded-Groups", "viz, admin")
		p := Policy{TrustedProxies: tp, ProxyUIDs: []int{33}, PeerUID: uidIs(33, nil)}
		caller, _ := p.Caller(r)
		id := caller.ID
		if (id != nil) != c.want {
			t.Errorf("%s: %+v", c.remote, id)
		}
		if id != nil && (!id.Admin || !id.InGroup("viz")) {
			t.Errorf("%s: groups %+v", c.remote, id)
		}
	}
	if _, err := ParseCIDRs([]string{"not-a-net"}); err == nil {
		t.Error("bad CIDR accepted")
	}
	for cidrs, want := range map[string]bool{"10.0.0.0/8": false, "127.0.0.1": true, "::1": true, "0.0.0.0/0": true, "127.0.0.0/8": true, "192.168.0.0/16": false} {
		tp, _ := ParseCIDRs([]string{cidrs})
		if tp.HasLoopback() != want {
			t.Errorf("HasLoopback(%s) = %v", cidrs, !want)
		}
	}
}

func jsonUsers(users map[string]any) ([]byte, error) {
	return json.Marshal(map[string]any{"users": users})
}
