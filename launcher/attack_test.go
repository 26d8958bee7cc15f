package launcher

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// Issue 11's findings 7, 9 and 10 against the launcher, as attacks.

// TestCrossSiteRefused: a request from a page of another origin is
// refused with 403 and a JSON reason on every route that changes state or
// shows a session, before anything is read, started or written; the same
// requests from the launcher's own origin, or with no Origin, work.
func TestCrossSiteRefused(t *testing.T) {
	up := filepath.Join(t.TempDir(), "uploads")
	e := newEnv(t, map[string]any{"configuration": map[string]any{"upload_dir": up}})
	id := e.launch("ready", "")["id"].(string)
	ct, body := multipartBody(t, nil, [][2]string{{"planted.html", "<script>x</script>"}})
	cases := []struct {
		method, path, ct string
		body             []byte
	}{
		{"POST", "/paraview/", "text/plain", []byte(`{"application": "ready"}`)},
		{"POST", "/paraview", "application/x-www-form-urlencoded", []byte(`{"application": "ready"}`)},
		{"POST", "/upload", ct, body.Bytes()},
		{"DELETE", "/paraview/" + id, "", nil},
		{"GET", "/paraview/" + id, "", nil},
	}
	for _, foreign := range []string{"http://evil.example", "http://127.0.0.1.evil.example", "null"} {
		for _, c := range cases {
			req, _ := http.NewRequest(c.method, e.srv.URL+c.path, bytes.NewReader(c.body))
			if c.ct != "" {
				req.Header.Set("Content-Type", c.ct)
			}
			req.Header.Set("Origin", foreign)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]string
			err = json.NewDecoder(resp.Body).Decode(&m)
			resp.Body.Close()
			if resp.StatusCode != 403 || err != nil || !strings.Contains(m["error"], "cross-site request refused") {
				t.Errorf("%s %s from %s: %d %v %v", c.method, c.path, foreign, resp.StatusCode, m, err)
			}
		}
	}
	if e.free() != 1 {
		t.Errorf("a cross-site launch took a port: %d free", e.free())
	}
	if e.sessionOf(id) == nil {
		t.Error("a cross-site DELETE stopped the session")
	}
	if ents, _ := os.ReadDir(up); len(ents) != 0 {
		t.Errorf("a cross-site upload wrote %v", ents)
	}
	// The launcher's own origin is not cross-site.
	req, _ := http.NewRequest("POST", e.srv.URL+"/upload", bytes.NewReader(body.Bytes()))
	req.Header.Set("Content-Type", ct)
	req.Header.Set("Origin", e.srv.URL)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("upload from the launcher's own origin: %d", resp.StatusCode)
	}
}

// TestUploadNeverReplaces: an existing name is refused with 409 and kept
// as it was, unless upload_replace allows it; names and paths with
// control characters or invalid UTF-8 are refused with 400.
func TestUploadNeverReplaces(t *testing.T) {
	for _, replace := range []bool{false, true} {
		up := filepath.Join(t.TempDir(), "uploads")
		e := newEnv(t, map[string]any{"configuration": map[string]any{"upload_dir": up, "upload_replace": replace}})
		post := func(fields, files [][2]string) (int, map[string]any) {
			ct, body := multipartBody(t, fields, files)
			resp, err := http.Post(e.srv.URL+"/upload", ct, body)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var m map[string]any
			json.NewDecoder(resp.Body).Decode(&m)
			return resp.StatusCode, m
		}
		if code, m := post(nil, [][2]string{{"index.html", "original"}}); code != 200 {
			t.Fatalf("first upload: %d %v", code, m)
		}
		code, m := post(nil, [][2]string{{"index.html", "planted"}})
		got, _ := os.ReadFile(filepath.Join(up, "index.html"))
		switch {
		case !replace && (code != 409 || string(got) != "original" || !strings.Contains(m["error"].(string), "upload_replace")):
			t.Errorf("replace off: %d %v, file %q", code, m, got)
		case replace && (code != 200 || string(got) != "planted"):
			t.Errorf("replace on: %d %v, file %q", code, m, got)
		}
		for _, name := range []string{"a\rb.txt", "a\nb.txt", "x\x1b[31m.txt", "\x7f.txt", "c1\u009b.txt", "bad\xff.txt", "tab\t.txt"} {
			if code, m := post(nil, [][2]string{{name, "X"}}); code != 400 {
				t.Errorf("file name %q: %d %v", name, code, m)
			}
		}
		os.Mkdir(filepath.Join(up, "sub"), 0o755)
		for _, p := range []string{"sub\x1b[2J", "su\rb", "\u009bsub"} {
			if code, m := post([][2]string{{"path", p}}, [][2]string{{"ok.txt", "X"}}); code != 400 {
				t.Errorf("path %q: %d %v", p, code, m)
			}
		}
		ents, _ := os.ReadDir(up)
		var names []string
		for _, en := range ents {
			names = append(names, en.Name())
		}
		if strings.Join(names, ",") != "index.html,sub" {
			t.Errorf("upload dir holds %q", names)
		}
	}
}

// TestFilesNotWorldReadable: log_dir and the proxy file's directory are
// created 0700, the audit log, the session logs and proxy_file 0600; an
// existing log_dir and audit log of ours with wider modes are fixed, one
// of another user is refused with a message naming it.
func TestFilesNotWorldReadable(t *testing.T) {
	e := newEnv(t, nil)
	id := e.launch("ready", "")["id"].(string)
	logDir := e.cfg.Configuration.LogDir
	for path, want := range map[string]os.FileMode{
		logDir: 0o700, filepath.Dir(e.cfg.Configuration.ProxyFile): 0o700,
		filepath.Join(logDir, "launcherLog.log"): 0o600, filepath.Join(logDir, id+".txt"): 0o600,
		e.cfg.Configuration.ProxyFile: 0o600,
	} {
		st, err := os.Stat(path)
		if err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %04o", path, st.Mode().Perm(), err, want)
		}
	}

	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	os.MkdirAll(open, 0o755)
	os.Chmod(open, 0o755)
	os.WriteFile(filepath.Join(open, "launcherLog.log"), []byte("old\n"), 0o644)
	os.Chmod(filepath.Join(open, "launcherLog.log"), 0o644)
	cfg := testConfig(t, open)
	var logBuf syncBuffer
	l, err := New(cfg, zerolog.New(&logBuf))
	if err != nil {
		t.Fatalf("New with a log_dir of ours at 0755: %v", err)
	}
	l.Close(context.Background())
	for path, want := range map[string]os.FileMode{open: 0o700, filepath.Join(open, "launcherLog.log"): 0o600} {
		if st, _ := os.Stat(path); st.Mode().Perm() != want {
			t.Errorf("%s left %04o, want %04o", path, st.Mode().Perm(), want)
		}
	}
	if !strings.Contains(logBuf.String(), "readable by other users; it is now 0700") {
		t.Errorf("the fix is not logged: %s", logBuf.String())
	}

	if os.Geteuid() != 0 {
		t.Log("not root: the other-owner case needs chown")
		return
	}
	theirs := filepath.Join(dir, "theirs")
	os.Mkdir(theirs, 0o755)
	os.Chmod(theirs, 0o755)
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	_, err = New(testConfig(t, theirs), zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") || !strings.Contains(err.Error(), "configuration.log_dir") {
		t.Errorf("a readable log_dir of another user: %v", err)
	}
	if st, _ := os.Stat(theirs); st.Mode().Perm() != 0o755 {
		t.Errorf("another user's directory changed to %04o", st.Mode().Perm())
	}
}

// testConfig is a minimal config logging to logDir.
func testConfig(t *testing.T, logDir string) *Config {
	t.Helper()
	src, _ := json.Marshal(map[string]any{
		"configuration": map[string]any{"port": 0, "endpoint": "pv", "sessionURL": "ws://x/${id}", "log_dir": logDir},
		"resources":     []any{map[string]any{"host": "127.0.0.1", "port_range": []int{9321, 9321}}},
		"apps":          map[string]any{"a": map[string]any{"cmd": []string{"true"}}},
	})
	cfg, err := Parse(src, "t.config")
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestServerTimeouts: the launcher's own listener has the gateway's
// timeouts, and a trickled header or body is cut by them (here shortened)
// instead of holding the connection open.
func TestServerTimeouts(t *testing.T) {
	e := newEnv(t, nil)
	if want := (serverTimeouts{10 * time.Second, 60 * time.Second, 5 * time.Minute, 2 * time.Minute}); e.l.timeouts != want {
		t.Errorf("timeouts %+v, want the gateway's %+v", e.l.timeouts, want)
	}
	e.l.timeouts = serverTimeouts{readHeader: 300 * time.Millisecond, read: 600 * time.Millisecond, write: time.Minute, idle: time.Minute}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); e.l.Serve(ctx, ln) }()
	defer func() { cancel(); <-served }()

	for _, c := range []struct{ name, head string }{
		{"header", "POST /paraview/ HTTP/1.1\r\nHost: x\r\n"},
		{"body", "POST /paraview/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"application\": \"ready\", \"x\": \""},
	} {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write([]byte(c.head)); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			// One byte every 50 ms: far slower than any client, never idle.
			defer wg.Done()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := conn.Write([]byte("a")); err != nil {
					return
				}
			}
		}()
		start := time.Now()
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err = io.ReadAll(conn)
		took := time.Since(start)
		close(stop)
		conn.Close()
		wg.Wait()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("trickled %s: still open after %s", c.name, took)
		}
	}
	if e.free() != 2 {
		t.Errorf("a trickled launch took a port: %d free", e.free())
	}
}

// TestClientInputNeverRawInLogs is finding 10: CR, LF and escape
// sequences in every client-controlled field reach neither
// launcherLog.log nor the gateway's log raw.
func TestClientInputNeverRawInLogs(t *testing.T) {
	const evil = "x\r\n2038-01-01 INFO forged line\x1b[31m\u009b2J"
	up := filepath.Join(t.TempDir(), "uploads")
	dir := t.TempDir()
	var logBuf syncBuffer
	src, _ := json.Marshal(map[string]any{
		"configuration": map[string]any{"port": 0, "endpoint": "paraview", "sessionURL": "ws://x/${id}", "timeout": 5,
			"log_dir": filepath.Join(dir, "logs"), "upload_dir": up,
			"sanitize": map[string]any{"file": map[string]any{"type": "regexp", "regexp": "[a-z]+$", "default": "ok"}}},
		"resources":  []any{map[string]any{"host": "127.0.0.1", "port_range": []int{9331, 9332}}},
		"properties": map[string]any{"prop": "v"},
		"apps":       map[string]any{"ready": map[string]any{"cmd": []string{"/bin/sh", "-c", "echo ready; exec sleep 60"}, "ready_line": "ready"}},
	})
	cfg, err := Parse(src, "t.config")
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(cfg, zerolog.New(&logBuf))
	if err != nil {
		t.Fatal(err)
	}
	h := l.Handler()
	defer l.Close(context.Background())
	do := func(method, target, ct string, body io.Reader) int {
		req, err := http.NewRequest(method, "http://127.0.0.1"+target, body)
		if err != nil {
			t.Fatal(err)
		}
		req.RemoteAddr = "127.0.0.1:1234"
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		req.Header.Set("User-Agent", evil)
		w := newRecorder()
		h.ServeHTTP(w, req)
		return w.code
	}
	js, _ := json.Marshal(evil)
	q := strings.NewReplacer("\r", "%0D", "\n", "%0A", "\x1b", "%1B", "\u009b", "%C2%9B", " ", "%20").Replace(evil)
	// Sanitized value, payload key, a property named by the client, an
	// unknown application, a session id, /proxy ids and paths, upload
	// names and paths.
	do("POST", "/paraview/", "", strings.NewReader(`{"application": "ready", "file": `+string(js)+`, `+string(js)+`: 1, "prop": `+string(js)+`}`))
	do("POST", "/paraview/", "", strings.NewReader(`{"application": `+string(js)+`}`))
	do("GET", "/paraview/"+q, "", nil)
	do("DELETE", "/paraview/"+q, "", nil)
	do("GET", "/proxy?sessionId="+q+"&path="+q, "", nil)
	do("GET", "/"+q, "", nil)
	ct, body := multipartBody(t, [][2]string{{"path", evil}}, [][2]string{{"ok.txt", "X"}})
	do("POST", "/upload", ct, body)
	ct, body = multipartBody(t, nil, [][2]string{{evil, "X"}})
	do("POST", "/upload", ct, body)
	ct, body = multipartBody(t, nil, [][2]string{{"ok\x1b.txt", "X"}})
	do("POST", "/upload", ct, body)

	audit, _ := os.ReadFile(filepath.Join(dir, "logs", "launcherLog.log"))
	if !bytes.Contains(audit, []byte("sanitize: value replaced")) {
		t.Fatalf("the sanitize event is not in launcherLog.log:\n%s", audit)
	}
	if !bytes.Contains(audit, []byte(`value="x\r\n2038-01-01 INFO forged line\x1b[31m\u009b2J"`)) {
		t.Errorf("the sanitized value is not in launcherLog.log, escaped:\n%s", audit)
	}
	if bytes.Contains(audit, []byte("\u009b")) {
		t.Errorf("launcherLog.log has a raw C1 CSI:\n%q", audit)
	}
	for name, b := range map[string][]byte{"launcherLog.log": audit, "the gateway's log": []byte(logBuf.String())} {
		if i := bytes.IndexAny(b, "\r\x1b"); i >= 0 {
			t.Errorf("%s has a raw CR or ESC at %d:\n%q", name, i, b)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if strings.HasPrefix(line, "2038-01-01") || strings.HasPrefix(line, "2J") {
				t.Errorf("%s: a client value started a line: %q", name, line)
			}
			if name != "launcherLog.log" && !json.Valid([]byte(line)) {
				t.Errorf("%s: a line that is not one JSON object: %q", name, line)
			}
		}
	}
}

// recorder is a minimal http.ResponseWriter.
type recorder struct {
	h    http.Header
	code int
	body bytes.Buffer
}

func newRecorder() *recorder { return &recorder{h: http.Header{}, code: 200} }

func (r *recorder) Header() http.Header         { return r.h }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }
func (r *recorder) WriteHeader(code int)        { r.code = code }
