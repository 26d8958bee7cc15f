package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func hashPW(t *testing.T, pw string) string {
	t.Helper()
	cmd := exec.Command(gwBin, "hash-password")
	cmd.Stdin = strings.NewReader(pw + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hash-password: %v", err)
	}
	h := strings.TrimSpace(string(out))
	if !strings.HasPrefix(h, "$2a$") {
		t.Fatalf("hash-password printed %q", h)
	}
	return h
}

func writeUsers(t *testing.T, path string, users map[string]any) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"users": users})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func call(t *testing.T, method, url string, body []byte, hdr ...string) (int, map[string]any, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := insecureClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(b, &m)
	return resp.StatusCode, m, resp.Header
}

func basic(user, pw string) []string {
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth(user, pw)
	return []string{"Authorization", req.Header.Get("Authorization")}
}

func TestHashPasswordRefusesShortPasswords(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(gwBin, "hash-password")
	cmd.Stdin = strings.NewReader("short\n")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "shorter than 8") {
		t.Fatalf("short password: %v %q", err, out)
	}
}

func TestUsersGroupsAndOwnership(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	usersPath := filepath.Join(dir, "users.json")
	alicePW := hashPW(t, "alice-password")
	users := map[string]any{
		"alice": map[string]any{"password_bcrypt": alicePW, "groups": []string{"viz"}},
		"bob":   map[string]any{"api_keys": []string{"bob-key-0123456789abcdef"}},
		"carol": map[string]any{"password_bcrypt": hashPW(t, "carol-password"), "groups": []string{"admin"}},
	}
	writeUsers(t, usersPath, users)
	g, _ := svcGateway(t, 3, map[string]any{
		"Viz": map[string]any{"script": "echo.sh", "count": 2, "options": map[string]any{"group": "viz"}},
	}, "--users", usersPath, "--max_user_reservations", "2")
	alice := basic("alice", "alice-password")
	bob := []string{"Authorization", "Bearer bob-key-0123456789abcdef"}
	carol := basic("carol", "carol-password")

	// Anonymous callers and wrong credentials are refused, even from loopback.
	if code, body, _ := call(t, "GET", g.httpURL("/v1/status"), nil); code != 401 || !strings.Contains(body["error"].(string), "log in") {
		t.Fatalf("anonymous status: %d %v", code, body)
	}
	if code, _, _ := call(t, "GET", g.httpURL("/v1/status"), nil, basic("alice", "wrong-password")...); code != 401 {
		t.Fatalf("wrong password: %d", code)
	}
	if code, _, _ := call(t, "GET", g.httpURL("/v1/stop"), nil); code != 401 {
		t.Fatalf("anonymous loopback stop: %d", code)
	}

	// Groups restrict reserve.
	code, body, _ := call(t, "GET", g.httpURL("/v1/reserve/Viz"), nil, alice...)
	if code != 200 {
		t.Fatalf("alice reserves Viz: %d %v", code, body)
	}
	aliceTok := body["token"].(string)
	code, body, _ = call(t, "GET", g.httpURL("/v1/reserve/Viz"), nil, bob...)
	if code != 403 || !strings.Contains(body["error"].(string), `group "viz"`) || !strings.Contains(body["error"].(string), "bob") {
		t.Fatalf("bob reserves Viz: %d %v", code, body)
	}
	code, body, _ = call(t, "GET", g.httpURL("/v1/reserve/Echo%20Service"), nil, bob...)
	if code != 200 {
		t.Fatalf("bob reserves Echo: %d %v", code, body)
	}
	bobTok := body["token"].(string)

	// Users see their own tokens only; admins see all.
	_, st, _ := call(t, "GET", g.httpURL("/v1/status"), nil, alice...)
	if s := fmt.Sprint(st); !strings.Contains(s, aliceTok) || strings.Contains(s, bobTok) || st["user"] != "alice" || st["admin"] != false {
		t.Fatalf("alice's status: %v", st)
	}
	_, st, _ = call(t, "GET", g.httpURL("/v1/status"), nil, carol...)
	if s := fmt.Sprint(st); !strings.Contains(s, aliceTok) || !strings.Contains(s, bobTok) || st["admin"] != true {
		t.Fatalf("carol's status: %v", st)
	}

	// Only the owner or an admin releases.
	if code, body, _ := call(t, "GET", g.httpURL("/v1/release/"+aliceTok), nil, bob...); code != 403 {
		t.Fatalf("bob releases alice's: %d %v", code, body)
	}
	if code, body, _ := call(t, "GET", g.httpURL("/v1/release/"+bobTok), nil, carol...); code != 200 {
		t.Fatalf("carol releases bob's: %d %v", code, body)
	}
	if code, body, _ := call(t, "GET", g.httpURL("/v1/stop"), nil, alice...); code != 403 {
		t.Fatalf("alice stops the gateway: %d %v", code, body)
	}

	// Per-user reservation cap.
	call(t, "GET", g.httpURL("/v1/reserve/Echo%20Service"), nil, alice...)
	if code, body, _ := call(t, "GET", g.httpURL("/v1/reserve/Echo%20Service"), nil, alice...); code != 429 {
		t.Fatalf("alice's third reservation: %d %v", code, body)
	}

	// The dashboard login: an HttpOnly, SameSite=Strict cookie.
	lb, _ := json.Marshal(map[string]string{"user": "alice", "password": "alice-password"})
	code, body, hdr := call(t, "POST", g.httpURL("/v1/login"), lb, "Content-Type", "application/json")
	if code != 200 || body["user"] != "alice" {
		t.Fatalf("login: %d %v", code, body)
	}
	sc := hdr.Get("Set-Cookie")
	if !strings.Contains(sc, "wsgw_session=") || !strings.Contains(sc, "HttpOnly") || !strings.Contains(sc, "SameSite=Strict") {
		t.Fatalf("cookie %q", sc)
	}
	cookie := strings.SplitN(sc, ";", 2)[0]
	if _, st, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", cookie); st["user"] != "alice" || st["via"] != "cookie" {
		t.Fatalf("whoami with cookie: %v", st)
	}
	if code, _, _ := call(t, "GET", g.httpURL("/v1/whoami"), nil, "Cookie", cookie+"x"); code != 401 {
		t.Fatalf("tampered cookie: %d", code)
	}
	if code, _, _ := call(t, "POST", g.httpURL("/v1/login"), lb, "Origin", "https://evil.example"); code != 403 {
		t.Fatalf("cross-site login: %d", code)
	}
	wrong, _ := json.Marshal(map[string]string{"user": "alice", "password": "nope-nope"})
	if code, _, _ := call(t, "POST", g.httpURL("/v1/login"), wrong); code != 401 {
		t.Fatalf("wrong login: %d", code)
	}

	// A websocket launch of a group-restricted service re-checks the user:
	// remove alice from "viz" and her reservation no longer launches.
	users["alice"] = map[string]any{"password_bcrypt": alicePW, "groups": []string{}}
	writeUsers(t, usersPath, users)
	waitFor(t, "the users file to be reloaded", 10*time.Second, func() bool {
		code, _, _ := call(t, "GET", g.httpURL("/v1/reserve/Viz"), nil, alice...)
		return code == 403
	})
	_, code, wsBody := dialWS(t, g.wsURL("/?token="+aliceTok), nil)
	if code != 403 || !strings.Contains(wsBody["error"].(string), "viz") {
		t.Fatalf("launch after losing the group: %d %v", code, wsBody)
	}
	// SIGHUP reloads too.
	users["alice"] = map[string]any{"password_bcrypt": alicePW, "groups": []string{"viz"}}
	writeUsers(t, usersPath, users)
	g.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "the SIGHUP reload", 10*time.Second, func() bool {
		ws, code, _ := dialWS(t, g.wsURL("/?token="+aliceTok), nil)
		if ws != nil {
			ws.Close()
		}
		return code == 101
	})
}

func TestTrustedProxyHeaders(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	usersPath := filepath.Join(dir, "users.json")
	writeUsers(t, usersPath, map[string]any{})
	g, _ := svcGateway(t, 1, map[string]any{
		"Viz": map[string]any{"script": "echo.sh", "count": 1, "options": map[string]any{"group": "viz"}},
	}, "--users", usersPath, "--trusted_proxy", "127.0.0.1", "--trusted_proxy_user", "root")
	if code, body, _ := call(t, "GET", g.httpURL("/v1/reserve/Viz"), nil, "X-Forwarded-User", "dave", "X-Forwarded-Groups", "ops, viz"); code != 200 {
		t.Fatalf("proxy-asserted member: %d %v", code, body)
	}
	if code, _, _ := call(t, "GET", g.httpURL("/v1/reserve/Viz"), nil, "X-Forwarded-User", "erin", "X-Forwarded-Groups", "ops"); code != 403 {
		t.Fatalf("proxy-asserted non-member: %d", code)
	}
	// Without the header there is no identity.
	if code, _, _ := call(t, "GET", g.httpURL("/v1/status"), nil); code != 401 {
		t.Fatalf("no header: %d", code)
	}
}
