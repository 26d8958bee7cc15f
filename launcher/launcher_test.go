package launcher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// env is a Launcher served by httptest, with its directories.
type env struct {
	t   *testing.T
	dir string
	cfg *Config
	l   *Launcher
	srv *httptest.Server
}

// newEnv builds a config from conf (merged over a default one), starts a
// Launcher and serves it. Every session is stopped when the test ends.
func newEnv(t *testing.T, conf map[string]any) *env {
	t.Helper()
	dir := t.TempDir()
	c := map[string]any{
		"configuration": map[string]any{
			"host": "127.0.0.1", "port": 0, "endpoint": "paraview",
			"sessionURL": "ws://${host}:${port}/ws", "timeout": 2, "connect_timeout": 120,
			"log_dir": filepath.Join(dir, "logs"), "proxy_file": filepath.Join(dir, "proxy", "proxy.txt"),
		},
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{9301, 9302}}},
		"apps": map[string]any{
			"ready": map[string]any{"cmd": []string{"/bin/sh", "-c", "printf 'wslink: Starting factory'; exec sleep 60"},
				"ready_line": "Starting factory"},
		},
	}
	for k, v := range conf {
		if k == "configuration" {
			for ck, cv := range v.(map[string]any) {
				c["configuration"].(map[string]any)[ck] = cv
			}
			continue
		}
		if k == "apps" {
			for ak, av := range v.(map[string]any) {
				c["apps"].(map[string]any)[ak] = av
			}
			continue
		}
		c[k] = v
	}
	src, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse(src, "test.config")
	if err != nil {
		t.Fatal(err)
	}
	cfg.StopGrace = 2 * time.Second
	l, err := New(cfg, zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(l.Handler())
	e := &env{t: t, dir: dir, cfg: cfg, l: l, srv: srv}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
		srv.Close()
	})
	return e
}

// call does an HTTP request and decodes the JSON answer.
func (e *env) call(method, path string, body string) (int, map[string]any) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		e.t.Fatalf("%s %s: %d, not JSON: %q", method, path, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		e.t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	return resp.StatusCode, m
}

func (e *env) launch(app string, extra string) map[string]any {
	e.t.Helper()
	code, m := e.call("POST", "/paraview/", `{"application": "`+app+`"`+extra+`}`)
	if code != 200 {
		e.t.Fatalf("launch %s: %d %v", app, code, m)
	}
	return m
}

func (e *env) free() int { return e.l.freePorts() }

// pgids are the process groups of the launcher's sessions.
func (e *env) pgids() []int {
	e.l.mu.Lock()
	defer e.l.mu.Unlock()
	var out []int
	for _, s := range e.l.sessions {
		out = append(out, s.proc.pgid)
	}
	return out
}

func (e *env) proxyFile() string {
	b, err := os.ReadFile(e.cfg.Configuration.ProxyFile)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

func waitUntil(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func TestLaunchGetDelete(t *testing.T) {
	e := newEnv(t, nil)
	if e.proxyFile() != "" {
		t.Fatalf("proxy file not empty at start: %q", e.proxyFile())
	}
	start := time.Now()
	m := e.launch("ready", `, "sessionManagerURL": "http://x/paraview/", "node": 1024`)
	// The ready line has no newline: it is still seen (how fast is for
	// the benchmarks; 10 s is ten times a slow machine's launch).
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("launch took %s", took)
	}
	id, _ := m["id"].(string)
	if len(id) != 32 {
		t.Fatalf("id %q", id)
	}
	if m["sessionURL"] != "ws://127.0.0.1:9301/ws" || m["node"] != float64(1024) || m["port"] != float64(9301) ||
		m["host"] != "127.0.0.1" || m["application"] != "ready" || m["sessionManagerURL"] != "http://x/paraview/" {
		t.Errorf("answer %v", m)
	}
	if _, has := m["secret"]; has {
		t.Errorf("secret in the answer although the command does not use it: %v", m)
	}
	if _, has := m["cmd"]; has {
		t.Errorf("cmd in the answer: %v", m)
	}
	if got, want := e.proxyFile(), id+" 127.0.0.1:9301\n"; got != want {
		t.Errorf("proxy file %q, want %q", got, want)
	}
	log, err := os.ReadFile(filepath.Join(e.cfg.Configuration.LogDir, id+".txt"))
	if err != nil || string(log) != "wslink: Starting factory" {
		t.Errorf("session log %q %v", log, err)
	}
	code, g := e.call("GET", "/paraview/"+id, "")
	if code != 200 || g["id"] != id || g["sessionURL"] != m["sessionURL"] {
		t.Errorf("GET: %d %v", code, g)
	}
	m2 := e.launch("ready", "")
	if m2["port"] != float64(9302) {
		t.Errorf("second session port %v", m2["port"])
	}
	code, body := e.call("POST", "/paraview", `{"application": "ready"}`)
	if code != 503 || body["error"] != "All the resources are currently taken" {
		t.Errorf("third launch: %d %v", code, body)
	}
	code, d := e.call("DELETE", "/paraview/"+id, "")
	if code != 200 || d["id"] != id {
		t.Errorf("DELETE: %d %v", code, d)
	}
	// DELETE answers once the session has ended: the port is back.
	if e.free() != 1 {
		t.Errorf("free ports after DELETE: %d", e.free())
	}
	if got := e.proxyFile(); got != m2["id"].(string)+" 127.0.0.1:9302\n" {
		t.Errorf("proxy file after DELETE %q", got)
	}
	for _, method := range []string{"GET", "DELETE"} {
		code, body := e.call(method, "/paraview/"+id, "")
		if code != 404 || body["error"] != "No session with id: "+id {
			t.Errorf("%s after DELETE: %d %v", method, code, body)
		}
	}
	audit, _ := os.ReadFile(filepath.Join(e.cfg.Configuration.LogDir, "launcherLog.log"))
	for _, w := range []string{"session starting", "session ready", "stopping session", "session ended", id} {
		if !bytes.Contains(audit, []byte(w)) {
			t.Errorf("launcherLog.log lacks %q:\n%s", w, audit)
		}
	}
}

func TestLaunchErrors(t *testing.T) {
	e := newEnv(t, map[string]any{
		"configuration": map[string]any{"timeout": 0.5},
		"resources":     []any{map[string]any{"host": "127.0.0.1", "port_range": []int{9401, 9401}}},
		"apps": map[string]any{
			"missing": map[string]any{"cmd": []string{"/nonexistent/program"}},
			"crash":   map[string]any{"cmd": []string{"/bin/sh", "-c", "echo oops >&2; exit 3"}, "ready_line": "never"},
		},
	})
	cases := []struct {
		method, path, body string
		code               int
		err                string
	}{
		{"POST", "/paraview/", `{"secret": "x"}`, 400, "The request is not complete"},
		{"POST", "/paraview/", `not json`, 400, "The request is not complete"},
		{"POST", "/paraview/", `[1]`, 400, "The request is not complete"},
		{"POST", "/paraview/", `{"application": 3}`, 400, "The request is not complete"},
		{"POST", "/paraview/", `{"application": "nope"}`, 404, `Unknown application "nope"`},
		{"POST", "/paraview/", `{"application": "missing"}`, 503, "The process did not properly start"},
		{"POST", "/paraview/", `{"application": "crash"}`, 503, "Session did not start: the process ended (exit status 3)"},
		{"GET", "/paraview/", ``, 405, "use POST"},
		{"PUT", "/paraview/abc", ``, 405, "use GET or DELETE"},
		{"GET", "/paraview/0123", ``, 404, "No session with id: 0123"},
		{"DELETE", "/paraview/0123", ``, 404, "No session with id: 0123"},
		{"GET", "/elsewhere", ``, 404, "not found"},
		{"GET", "/proxy?sessionId=0123", ``, 400, "/proxy forwards websockets"},
		{"POST", "/upload", ``, 404, "not found"},
	}
	for _, c := range cases {
		code, m := e.call(c.method, c.path, c.body)
		msg, _ := m["error"].(string)
		if code != c.code || !strings.HasPrefix(msg, c.err) {
			t.Errorf("%s %s %s: %d %q, want %d %q", c.method, c.path, c.body, code, msg, c.code, c.err)
		}
		// No error leaks the only port.
		if f := e.free(); f != 1 {
			t.Fatalf("after %s %s %s: %d free ports", c.method, c.path, c.body, f)
		}
	}
	e.launch("ready", "")
}

func TestReadyTimeoutStopsGroup(t *testing.T) {
	e := newEnv(t, map[string]any{
		"configuration": map[string]any{"timeout": 0.5},
		"resources":     []any{map[string]any{"host": "127.0.0.1", "port_range": []int{9501, 9501}}},
		"apps": map[string]any{
			// The grandchild ignores SIGTERM; the group kill ends it.
			"slow": map[string]any{"cmd": []string{"/bin/sh", "-c",
				`trap "" TERM; sleep 300 & echo $$$$$$$$ $! > "$0"; echo not the line; wait`, "PIDS"},
				"ready_line": "never printed"},
		},
	})
	// Each substitution pass turns $$ into $: eight make the shell's $$.
	e.cfg.Apps["slow"].Cmd[3] = filepath.Join(e.dir, "pids")
	start := time.Now()
	code, m := e.call("POST", "/paraview", `{"application": "slow"}`)
	if code != 503 || m["error"] != "Session did not start before timeout expired. Check session logs." {
		t.Fatalf("slow: %d %v", code, m)
	}
	if took := time.Since(start); took < 500*time.Millisecond || took > 5*time.Second {
		t.Errorf("answered after %s", took)
	}
	b, err := os.ReadFile(filepath.Join(e.dir, "pids"))
	if err != nil {
		t.Fatal(err)
	}
	var leader, grandchild int
	fmt.Sscan(string(b), &leader, &grandchild)
	if leader == 0 || grandchild == 0 || pidAlive(leader) || pidAlive(grandchild) {
		t.Errorf("process group not stopped: leader %d alive %v, grandchild %d alive %v", leader, pidAlive(leader), grandchild, pidAlive(grandchild))
	}
	if e.free() != 1 {
		t.Errorf("port not returned")
	}
	e.launch("ready", "")
}

func TestProcessExitFreesPort(t *testing.T) {
	mark := filepath.Join(t.TempDir(), "exit-now")
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{9601, 9601}}},
		"apps": map[string]any{
			// It lives until the test has looked at it, then exits by itself.
			"brief": map[string]any{"cmd": []string{"/bin/sh", "-c", "echo ready; while [ ! -e " + mark + " ]; do sleep 0.05; done"}, "ready_line": "ready"},
		},
	})
	m := e.launch("brief", "")
	id := m["id"].(string)
	if e.proxyFile() == "" {
		t.Fatal("proxy file empty while the session lives")
	}
	if err := os.WriteFile(mark, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the port to be free", 5*time.Second, func() bool { return e.free() == 1 })
	if e.proxyFile() != "" {
		t.Errorf("proxy file still lists the session: %q", e.proxyFile())
	}
	if code, _ := e.call("GET", "/paraview/"+id, ""); code != 404 {
		t.Errorf("GET of an ended session: %d", code)
	}
	e.launch("ready", "")
}

func TestSubstitutionFieldsSanitize(t *testing.T) {
	e := newEnv(t, map[string]any{
		"configuration": map[string]any{
			"sessionURL": "ws://USE_HOST/proxy?sessionId=${id}&path=ws",
			"fields":     []string{"file", "updir", "port"},
			"sanitize": map[string]any{
				"file": map[string]any{"type": "inList", "list": []string{"a.vtk", "b.vtk"}, "default": "a.vtk"},
				"size": map[string]any{"type": "regexp", "regexp": "[0-9]+x[0-9]+$", "default": "800x600"},
			},
		},
		"properties":  map[string]any{"python_exec": "/usr/bin/pvpython", "data": "/srv/data", "n": 2},
		"sessionData": map[string]any{"updir": "/Home/${application}", "hidden": "x"},
		"apps": map[string]any{
			"args": map[string]any{"cmd": []string{"/bin/sh", "-c", `for a in "$@"; do echo "ARG $a"; done; echo READY; exec sleep 60`, "sh",
				"${host}", "$port", "${id}", "${secret}", "${application}", "${sessionURL}", "$python_exec", "${data}/${file}",
				"${size}", "$$literal", "${unknown}", "$n", "${user}"},
				"ready_line": "READY"},
		},
	})
	m := e.launch("args", `, "file": "../../etc/passwd", "size": "1024x768", "python_exec": "/bin/evil", "user": "seb", "secret": "s3cr3t"`)
	id := m["id"].(string)
	b, _ := os.ReadFile(filepath.Join(e.cfg.Configuration.LogDir, id+".txt"))
	var args []string
	for _, line := range strings.Split(string(b), "\n") {
		if a, ok := strings.CutPrefix(line, "ARG "); ok {
			args = append(args, a)
		}
	}
	want := []string{"127.0.0.1", "9301", id, "s3cr3t", "args", "ws://USE_HOST/proxy?sessionId=" + id + "&path=ws",
		"/usr/bin/pvpython", "/srv/data/a.vtk", "1024x768", "$literal", "${unknown}", "2", "seb"}
	if strings.Join(args, "|") != strings.Join(want, "|") {
		t.Errorf("argv\n got %q\nwant %q", args, want)
	}
	// fields keeps file, updir, port, plus id, sessionURL and the
	// client's secret; the sanitized file is answered.
	wantKeys := "file id port secret sessionURL updir"
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	if strings.Join(keys, " ") != wantKeys {
		t.Errorf("answer keys %v, want %s", keys, wantKeys)
	}
	if m["file"] != "a.vtk" || m["updir"] != "/Home/args" || m["secret"] != "s3cr3t" {
		t.Errorf("answer %v", m)
	}
	m = e.launch("args", `, "size": "big"`)
	b, _ = os.ReadFile(filepath.Join(e.cfg.Configuration.LogDir, m["id"].(string)+".txt"))
	if !strings.Contains(string(b), "ARG 800x600\n") {
		t.Errorf("regexp sanitize: %s", b)
	}
	// A generated secret used by the command is answered, and is at least
	// 16 alphanumerics.
	sec, _ := m["secret"].(string)
	if len(sec) < 16 || strings.Trim(sec, secretAlphabet) != "" || !strings.Contains(string(b), "ARG "+sec+"\n") {
		t.Errorf("generated secret %q", sec)
	}
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func TestProxyFileAtomic(t *testing.T) {
	e := newEnv(t, map[string]any{
		"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{9701, 9705}}},
	})
	stop := make(chan struct{})
	bad := make(chan string, 1)
	go func() {
		for {
			select {
			case <-stop:
				close(bad)
				return
			default:
			}
			b, err := os.ReadFile(e.cfg.Configuration.ProxyFile)
			if err != nil {
				bad <- err.Error()
				return
			}
			for _, line := range strings.SplitAfter(string(b), "\n") {
				if line == "" {
					continue
				}
				f := strings.Fields(line)
				if !strings.HasSuffix(line, "\n") || len(f) != 2 || len(f[0]) != 32 || !strings.HasPrefix(f[1], "127.0.0.1:97") {
					bad <- fmt.Sprintf("partial or malformed proxy file: %q", b)
					return
				}
			}
		}
	}()
	var ids []string
	for i := 0; i < 5; i++ {
		ids = append(ids, e.launch("ready", "")["id"].(string))
	}
	lines := strings.Split(strings.TrimSpace(e.proxyFile()), "\n")
	if len(lines) != 5 {
		t.Errorf("proxy file %q", e.proxyFile())
	}
	for i, id := range ids {
		if lines[i] != id+" 127.0.0.1:"+strconv.Itoa(9701+i) {
			t.Errorf("line %d %q", i, lines[i])
		}
	}
	ino := func() uint64 {
		st, _ := os.Stat(e.cfg.Configuration.ProxyFile)
		return st.Sys().(*syscall.Stat_t).Ino
	}
	// Held open, the old file keeps its inode, which a later file cannot reuse.
	old, err := os.Open(e.cfg.Configuration.ProxyFile)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	before := ino()
	for _, id := range ids {
		e.call("DELETE", "/paraview/"+id, "")
	}
	close(stop)
	if msg := <-bad; msg != "" {
		t.Error(msg)
	}
	if ino() == before {
		t.Error("proxy file rewritten in place, not replaced")
	}
	if e.proxyFile() != "" {
		t.Errorf("proxy file after all DELETEs: %q", e.proxyFile())
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(e.cfg.Configuration.ProxyFile), ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestCloseStopsSessions(t *testing.T) {
	e := newEnv(t, nil)
	e.launch("ready", "")
	pids := e.pgids()
	if len(pids) != 1 {
		t.Fatalf("%d sessions, want 1", len(pids))
	}
	pid := pids[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if pidAlive(pid) {
		t.Errorf("session process %d alive after Close", pid)
	}
	if e.proxyFile() != "" {
		t.Errorf("proxy file after Close: %q", e.proxyFile())
	}
	code, m := e.call("POST", "/paraview/", `{"application": "ready"}`)
	if code != 503 {
		t.Errorf("launch after Close: %d %v", code, m)
	}
}

func TestContent(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("<p>root</p>"), 0o644)
	os.Mkdir(filepath.Join(dir, "app"), 0o755)
	os.WriteFile(filepath.Join(dir, "app", "main.js"), []byte("ok()"), 0o644)
	os.Mkdir(filepath.Join(dir, "nolist"), 0o755)
	outside := filepath.Join(t.TempDir(), "outside.txt")
	os.WriteFile(outside, []byte("TOPSECRET"), 0o644)
	os.Symlink(outside, filepath.Join(dir, "link.txt"))
	e := newEnv(t, map[string]any{"configuration": map[string]any{"content": dir}})
	get := func(p string) (int, string) {
		req, _ := http.NewRequest("GET", e.srv.URL+p, nil)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		path string
		code int
		body string
	}{
		{"/", 200, "<p>root</p>"},
		{"/index.html", 200, "<p>root</p>"},
		{"/app/main.js", 200, "ok()"},
		{"/app", 301, ""},
		{"/app/", 404, ""},
		{"/nolist/", 404, ""},
		{"/link.txt", 404, ""},
		{"/../" + filepath.Base(outside), 404, ""},
		{"/%2e%2e/%2e%2e/etc/passwd", 404, ""},
	} {
		code, body := get(c.path)
		if code != c.code || (c.body != "" && body != c.body) || strings.Contains(body, "TOPSECRET") {
			t.Errorf("GET %s: %d %q, want %d %q", c.path, code, body, c.code, c.body)
		}
	}
	// The endpoint still wins over content.
	if code, _ := e.call("GET", "/paraview/x", ""); code != 404 {
		t.Errorf("endpoint: %d", code)
	}
}

func multipartBody(t *testing.T, fields [][2]string, files [][2]string) (string, *bytes.Buffer) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, f := range fields {
		mw.WriteField(f[0], f[1])
	}
	for _, f := range files {
		// CreateFormFile would escape quotes only; the name is sent as is.
		h := make(map[string][]string)
		h["Content-Disposition"] = []string{fmt.Sprintf(`form-data; name="file"; filename="%s"`, f[0])}
		h["Content-Type"] = []string{"application/octet-stream"}
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write([]byte(f[1]))
	}
	mw.Close()
	return mw.FormDataContentType(), &buf
}

func TestUpload(t *testing.T) {
	up := filepath.Join(t.TempDir(), "uploads")
	e := newEnv(t, map[string]any{"configuration": map[string]any{"upload_dir": up, "upload_max_size": 4096}})
	os.Mkdir(filepath.Join(up, "sub"), 0o755)
	post := func(ct string, body io.Reader) (int, map[string]any) {
		resp, err := http.Post(e.srv.URL+"/upload", ct, body)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	ct, body := multipartBody(t, nil, [][2]string{{"a.vtk", "AAAA"}, {"b.txt", "BB"}})
	code, m := post(ct, body)
	if code != 200 {
		t.Fatalf("upload: %d %v", code, m)
	}
	if b, _ := os.ReadFile(filepath.Join(up, "a.vtk")); string(b) != "AAAA" {
		t.Errorf("a.vtk %q", b)
	}
	ct, body = multipartBody(t, [][2]string{{"path", "sub"}}, [][2]string{{"c.vtk", "C"}})
	if code, m := post(ct, body); code != 200 || m["files"].([]any)[0].(map[string]any)["path"] != "sub/c.vtk" {
		t.Errorf("upload into sub: %d %v", code, m)
	}
	for _, name := range []string{"../escape.txt", "/etc/escape.txt", "sub/../../escape.txt", `..\escape.txt`, "..", ""} {
		ct, body := multipartBody(t, nil, [][2]string{{name, "X"}})
		if code, m := post(ct, body); code != 400 {
			t.Errorf("file name %q: %d %v", name, code, m)
		}
	}
	for _, p := range []string{"../", "/tmp", "sub/../..", "missing"} {
		ct, body := multipartBody(t, [][2]string{{"path", p}}, [][2]string{{"x.txt", "X"}})
		if code, m := post(ct, body); code != 400 {
			t.Errorf("path %q: %d %v", p, code, m)
		}
	}
	ct, body = multipartBody(t, nil, [][2]string{{"big.bin", strings.Repeat("x", 8192)}})
	if code, m := post(ct, body); code != 413 {
		t.Errorf("big upload: %d %v", code, m)
	}
	// Without a Content-Length the limit still holds.
	ct, body = multipartBody(t, nil, [][2]string{{"big2.bin", strings.Repeat("x", 8192)}})
	req, _ := http.NewRequest("POST", e.srv.URL+"/upload", io.MultiReader(body))
	req.Header.Set("Content-Type", ct)
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("chunked big upload: %d", resp.StatusCode)
	}
	if code, _ := post("text/plain", strings.NewReader("x")); code != 400 {
		t.Errorf("not multipart: %d", code)
	}
	ents, _ := os.ReadDir(up)
	var names []string
	for _, en := range ents {
		names = append(names, en.Name())
	}
	if strings.Join(names, ",") != "a.vtk,b.txt,sub" {
		t.Errorf("upload dir holds %v", names)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(up), "escape.txt")); err == nil {
		t.Error("a file escaped the upload directory")
	}
}

func TestWaitReady(t *testing.T) {
	p := filepath.Join(t.TempDir(), "log.txt")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	never := make(chan struct{})
	// The ready line arrives in pieces, the last without a newline: ready
	// only once the last piece is written, never on the first.
	lastWritten := make(chan struct{})
	firstWritten := make(chan struct{})
	go func() {
		f.WriteString(strings.Repeat("noise\n", 10000) + "wslink: Starting fa")
		close(firstWritten)
		time.Sleep(100 * time.Millisecond)
		close(lastWritten)
		f.WriteString("ctory")
	}()
	<-firstWritten
	if err := waitReady(context.Background(), p, "Starting factory", never, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lastWritten:
	default:
		t.Error("ready before the ready line's last piece was written")
	}
	if err := waitReady(context.Background(), p, "absent", never, 200*time.Millisecond); err != ErrNotReady {
		t.Errorf("timeout: %v", err)
	}
	exited := make(chan struct{})
	close(exited)
	if err := waitReady(context.Background(), p, "absent", exited, 5*time.Second); err != ErrExited {
		t.Errorf("exited: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := waitReady(ctx, p, "absent", never, 5*time.Second); err != context.Canceled {
		t.Errorf("canceled: %v", err)
	}
	if err := waitReady(ctx, p, "", never, time.Second); err != nil {
		t.Errorf("no ready line: %v", err)
	}
}
