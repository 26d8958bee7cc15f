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

// The limits the users file, cookies, proxies and passwords state, each
// at its boundary.

func TestUsersFileSizeLimit(t *testing.T) {
	for _, c := range []struct {
		size int
		ok   bool
	}{{MaxUsersFileBytes, true}, {MaxUsersFileBytes + 1, false}} {
		body := `{"users": {"alice": {}}}`
		data := body + strings.Repeat(" ", c.size-len(body))
		p := filepath.Join(t.TempDir(), "users.json")
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadUsers(p)
		if (err == nil) != c.ok {
			t.Errorf("a users file of %d bytes: %v", c.size, err)
		}
	}
}

func TestUserNameAndKeyLengths(t *testing.T) {
	for _, c := range []struct {
		name, key string
		ok        bool
	}{
		{strings.Repeat("a", 128), "", true},
		{strings.Repeat("a", 129), "", false},
		{"", "", false},
		{"a:b", "", false},
		{"bob", strings.Repeat("k", 16), true},
		{"bob", strings.Repeat("k", 15), false},
	} {
		usr := map[string]any{}
		if c.key != "" {
			usr["api_keys"] = []string{c.key}
		}
		_, err := LoadUsers(writeFile(t, map[string]any{"users": map[string]any{c.name: usr}}))
		if (err == nil) != c.ok {
			t.Errorf("name of %d, key of %d: %v", len(c.name), len(c.key), err)
		}
	}
}

func TestChanged(t *testing.T) {
	p := writeFile(t, map[string]any{"users": map[string]any{"alice": map[string]any{}}})
	u, err := LoadUsers(p)
	if err != nil {
		t.Fatal(err)
	}
	if u.Changed() {
		t.Fatal("changed right after loading")
	}
	st, _ := os.Stat(p)
	b, _ := json.Marshal(map[string]any{"users": map[string]any{"alice": map[string]any{}, "bob": map[string]any{}}})
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	if !u.Changed() {
		t.Fatal("a change of size with the same time is not a change")
	}
	if err := u.Reload(); err != nil || u.Count() != 2 || u.Changed() {
		t.Fatalf("reload: %v, %d users", err, u.Count())
	}
	b2, _ := json.Marshal(map[string]any{"users": map[string]any{"carol": map[string]any{}, "bob": map[string]any{}}})
	if len(b2) != len(b) {
		t.Fatal("test set-up: the same size is needed")
	}
	if err := os.WriteFile(p, b2, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, st.ModTime().Add(time.Hour), st.ModTime().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !u.Changed() {
		t.Fatal("a change of time with the same size is not a change")
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if u.Changed() {
		t.Fatal("a missing file counts as a change (the previous users must stay)")
	}
}

func TestCookieBoundaries(t *testing.T) {
	u, err := LoadUsers(writeFile(t, map[string]any{"users": map[string]any{"alice": map[string]any{}}}))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_900_000_000, 500)
	u.now = func() time.Time { return at }
	c := u.SessionCookie("alice", 0) // expires this very second
	if _, err := u.CheckCookie(c); err != nil {
		t.Fatalf("a cookie in its last second: %v", err)
	}
	at = at.Add(time.Second)
	if _, err := u.CheckCookie(c); err == nil {
		t.Fatal("a cookie a second after its expiry")
	}
	c = u.SessionCookie("alice", time.Hour)
	u.EndSessions("alice") // at the same instant as the cookie was made
	if _, err := u.CheckCookie(c); err == nil {
		t.Fatal("a cookie made at the logout's instant outlived it")
	}
	at = at.Add(time.Nanosecond)
	if _, err := u.CheckCookie(u.SessionCookie("alice", time.Hour)); err != nil {
		t.Fatalf("a cookie made after the logout: %v", err)
	}
	for _, bad := range []string{"nodot", ".sig", strings.Repeat(".", 5)} {
		if _, err := u.CheckCookie(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestProxyUserNames(t *testing.T) {
	p := Policy{TrustedProxies: mustCIDRs("10.9.0.1")}
	for _, c := range []struct {
		user string
		ok   bool
	}{
		{strings.Repeat("u", 128), true},
		{strings.Repeat("u", 129), false},
		{"a b", true},
		{"a\x1fb", false},
		{"a\x7fb", false},
		{"a~b", true},
		{"  ", false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = "10.9.0.1:5"
		r.Header.Set("X-Forwarded-User", c.user)
		caller, _ := p.Caller(r)
		id := caller.ID
		if (id != nil) != c.ok {
			t.Errorf("X-Forwarded-User %q: %+v", c.user, id)
		}
	}
}

func TestPasswordLengths(t *testing.T) {
	for n, ok := range map[int]bool{7: false, 8: true, 72: true, 73: false} {
		_, err := HashPassword(strings.Repeat("p", n))
		if (err == nil) != ok {
			t.Errorf("a password of %d bytes: %v", n, err)
		}
	}
}

// TestPasswordCacheBound: successes are cached (a second user's success
// keeps the first's) until the cache holds 10,000, when it starts again.
func TestPasswordCacheBound(t *testing.T) {
	h, _ := HashPassword("correct horse")
	u, err := LoadUsers(writeFile(t, map[string]any{"users": map[string]any{
		"alice": map[string]any{"password_bcrypt": h}, "bob": map[string]any{"password_bcrypt": h}}}))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alice", "bob"} {
		if _, err := u.CheckPassword(name, "correct horse"); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(u.cache); n != 2 {
		t.Fatalf("%d cached successes, want 2", n)
	}
	fill := func(n int) {
		clear(u.cache)
		for i := 0; i < n; i++ {
			u.cache[[32]byte{byte(i), byte(i >> 8), 1}] = time.Now().Add(time.Minute)
		}
	}
	fill(10000)
	if _, err := u.CheckPassword("alice", "correct horse"); err != nil || len(u.cache) != 10001 {
		t.Fatalf("at 10,000: %d entries (%v)", len(u.cache), err)
	}
	fill(10001)
	if _, err := u.CheckPassword("bob", "correct horse"); err != nil || len(u.cache) != 1 {
		t.Fatalf("over 10,000: %d entries (%v)", len(u.cache), err)
	}
}
