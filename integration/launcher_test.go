package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// The ParaViewWeb launcher (--launcher_config) against the real binary,
// with internal/wslinksrv as the launched application and, for the real
// client, the wslink npm package in headless Chromium.

var (
	wslinksrvOnce sync.Once
	wslinksrvBin  string
	wslinksrvErr  error
)

// lchWslinksrv builds internal/wslinksrv next to the gateway binary.
func lchWslinksrv(t *testing.T) string {
	t.Helper()
	wslinksrvOnce.Do(func() {
		wslinksrvBin = filepath.Join(filepath.Dir(gwBin), "wslinksrv")
		cmd := exec.Command("go", append(append([]string{"build"}, buildFlags...), "-o", wslinksrvBin, "./internal/wslinksrv")...)
		cmd.Dir = repoDir
		out, err := cmd.CombinedOutput()
		if err != nil {
			wslinksrvErr = fmt.Errorf("building internal/wslinksrv: %v\n%s", err, out)
		}
	})
	if wslinksrvErr != nil {
		t.Fatal(wslinksrvErr)
	}
	return wslinksrvBin
}

// lchPorts finds n consecutive free ports on 127.0.0.1.
func lchPorts(t *testing.T, n int) (int, int) {
	t.Helper()
	lo, err := quietPorts(n)
	if err != nil {
		t.Fatal(err)
	}
	return lo, lo + n - 1
}

// quietPorts finds n consecutive free ports of 127.0.0.1 and returns the
// first. They lie below Linux's ephemeral range (32768-60999), so that
// no outgoing connection of a test running beside takes one before the
// program the test starts binds it.
func quietPorts(n int) (int, error) {
	for try := 0; try < 100; try++ {
		base := 10000 + rand.IntN(22000)
		ok := true
		for p := base; p < base+n && ok; p++ {
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
			if err != nil {
				ok = false
				continue
			}
			ln.Close()
		}
		if ok {
			return base, nil
		}
	}
	return 0, fmt.Errorf("no %d free consecutive ports below 32768", n)
}

// lchEnv is a gateway running a launcher config.
type lchEnv struct {
	t       *testing.T
	g       *gateway
	dir     string
	base    string // http://127.0.0.1:port of the launcher API
	logDir  string
	proxy   string // proxy_file
	lo, hi  int    // resource ports
	srvPath string // wslinksrv
}

// lchStart writes a launcher config (conf merged over the defaults, which
// define the apps "wslink", "slow", "echo-args" and "brief") and runs the
// gateway with it, mounted on --http_port when mounted, else on the
// launcher's own port. Extra gateway arguments follow.
func lchStart(t *testing.T, mounted bool, ports int, conf map[string]any, args ...string) *lchEnv {
	t.Helper()
	srv := lchWslinksrv(t)
	dir := t.TempDir()
	lo, hi := lchPorts(t, ports)
	e := &lchEnv{t: t, dir: dir, logDir: filepath.Join(dir, "logs"), proxy: filepath.Join(dir, "map", "proxy.txt"), lo: lo, hi: hi, srvPath: srv}
	c := map[string]any{
		"configuration": map[string]any{
			"host": "127.0.0.1", "port": 0, "endpoint": "paraview",
			"sessionURL": "ws://USE_HOST/proxy?sessionId=${id}&path=ws",
			"timeout":    10, "log_dir": e.logDir, "proxy_file": e.proxy,
		},
		"resources":  []any{map[string]any{"host": "127.0.0.1", "port_range": []int{lo, hi}}},
		"properties": map[string]any{"srv": srv},
		"apps": map[string]any{
			"wslink":    map[string]any{"cmd": []string{"${srv}", "--port", "${port}", "--authKey", "${secret}"}, "ready_line": "Starting factory"},
			"fixed":     map[string]any{"cmd": []string{"${srv}", "--port", "${port}", "--authKey", "fixed-secret"}, "ready_line": "Starting factory"},
			"slow":      map[string]any{"cmd": []string{"${srv}", "--port", "${port}", "--no-ready", "--grandchild"}, "ready_line": "Starting factory"},
			"echo-args": map[string]any{"cmd": []string{"${srv}", "--args", "--port", "${port}", "${host}", "${id}", "${secret}", "${application}", "${sessionURL}", "${file}", "$$literal", "${unknown}", "${user}", "${srv}"}, "ready_line": "Starting factory"},
		},
	}
	for k, v := range conf {
		if m, ok := v.(map[string]any); ok && (k == "configuration" || k == "apps") {
			for kk, vv := range m {
				c[k].(map[string]any)[kk] = vv
			}
			continue
		}
		c[k] = v
	}
	b, _ := json.MarshalIndent(c, "", "  ")
	// A launcher.config as users write them: with comments.
	src := "# launcher config written by " + t.Name() + "\n" + string(b) + "\n// end\n"
	p := filepath.Join(dir, "launcher.config")
	if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	full := append([]string{"--verbose", "2", "--bind_address", "127.0.0.1", "--stop_grace", "2", "--launcher_config", p}, args...)
	if mounted {
		// configuration.port 0 is --http_port 0: the same (free) port.
		e.g = startGatewayExact(t, append(full, "--http_port", "0", "0")...)
		e.g.httpAddr = lchListener(t, e.g, "http")
		e.base = "http://" + e.g.httpAddr
	} else {
		e.g = startGatewayExact(t, append(full, "0")...)
		e.base = "http://" + lchListener(t, e.g, "launcher")
	}
	t.Cleanup(func() {
		e.g.stop()
		// No launched process outlives the gateway.
		for _, pid := range lchProcesses(srv, lo, hi) {
			t.Errorf("wslinksrv pid %d still running after the gateway stopped", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return e
}

// lchProcesses lists the live processes running srv (the test server,
// or a supervisor running it) with a --port in lo..hi: the processes of
// one test's launcher, while other tests run theirs.
func lchProcesses(srv string, lo, hi int) []int {
	var pids []int
	for _, pid := range processesWithArg(srv) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(b), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if p, err := strconv.Atoi(args[i+1]); args[i] == "--port" && err == nil && p >= lo && p <= hi {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// lchListener waits for the gateway's "listening" line of a listener.
func lchListener(t *testing.T, g *gateway, name string) string {
	t.Helper()
	addr := ""
	waitFor(t, name+" listener", 15*time.Second, func() bool {
		for _, l := range g.logLines() {
			if l["message"] == "listening" && l["listener"] == name {
				addr, _ = l["address"].(string)
			}
		}
		return addr != ""
	})
	return addr
}

// do sends a request with a body and no Content-Type (as the wslink
// client's XMLHttpRequest does) and decodes the JSON answer.
func (e *lchEnv) do(method, path, body string) (int, map[string]any) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.base+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := insecureClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		e.t.Fatalf("%s %s: %d, body is not JSON: %q", method, path, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		e.t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	return resp.StatusCode, m
}

func (e *lchEnv) launch(body string) map[string]any {
	e.t.Helper()
	code, m := e.do("POST", "/paraview/", body)
	if code != 200 {
		e.t.Fatalf("POST %s: %d %v", body, code, m)
	}
	return m
}

func (e *lchEnv) sessionLog(id string) string {
	b, _ := os.ReadFile(filepath.Join(e.logDir, id+".txt"))
	return string(b)
}

func (e *lchEnv) proxyFile() string {
	e.t.Helper()
	b, err := os.ReadFile(e.proxy)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

// listening reports whether something accepts on the port.
func lchListening(port int) bool {
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestLauncherConfigErrorsExit2(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	good := `{"configuration": {"port": 8765, "endpoint": "paraview", "sessionURL": "ws://x/ws", "log_dir": "logs"},
 "resources": [{"host": "localhost", "port_range": [9001, 9003]}],
 "apps": {"a": {"cmd": ["prog"]}}}`
	cases := []struct {
		name, file string
		args       []string
		want       []string
	}{
		{"syntax", write("syntax.config", "{\n  # comment\n  \"configuration\": {,}\n}"), nil, []string{"syntax.config line 3"}},
		{"type", write("type.config", strings.Replace(good, `"port": 8765`, `"port": "8765"`, 1)), nil, []string{"key configuration.port", "line 1"}},
		{"missing key", write("nokey.config", strings.Replace(good, `"endpoint": "paraview", `, ``, 1)), nil, []string{"key configuration.endpoint"}},
		{"ws port", write("wsport.config", good), []string{"8765"}, []string{"ws_server_port"}},
		{"missing file", filepath.Join(dir, "nope.config"), nil, []string{"nope.config"}},
	}
	for _, c := range cases {
		args := append([]string{"--launcher_config", c.file}, c.args...)
		if len(c.args) == 0 {
			args = append(args, "0")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, gwBin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("%s: exit %v, want status 2; stderr %s", c.name, err, stderr.String())
			continue
		}
		for _, w := range append(c.want, "--launcher_config") {
			if !strings.Contains(stderr.String(), w) {
				t.Errorf("%s: stderr %q does not mention %q", c.name, stderr.String(), w)
			}
		}
	}
	// The seed's example config, verbatim, loads: it fails only on its
	// placeholder content directory, before anything is created.
	seed, err := os.ReadFile(filepath.Join(repoDir, "launcher", "testdata", "seed.config"))
	if err != nil {
		t.Fatal(err)
	}
	p := write("seed.config", string(seed))
	var stderr bytes.Buffer
	cmd := exec.Command(gwBin, "--launcher_config", p, "0")
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "key configuration.content: stat /.../www") {
		t.Errorf("seed config: %v %s", err, stderr.String())
	}
}

func TestLauncherRESTStatusCodes(t *testing.T) {
	t.Parallel()
	e := lchStart(t, false, 1, map[string]any{"configuration": map[string]any{"timeout": 1}})
	// Missing and malformed requests: 400, and no port is taken.
	for _, body := range []string{`{}`, `{"secret": "x"}`, `not json`, `{"application": 7}`} {
		code, m := e.do("POST", "/paraview/", body)
		if code != 400 || !strings.HasPrefix(fmt.Sprint(m["error"]), "The request is not complete") {
			t.Errorf("POST %s: %d %v", body, code, m)
		}
	}
	// Unknown application: 404 (the Python launcher answers 500 and leaks
	// the port).
	code, m := e.do("POST", "/paraview", `{"application": "nope"}`)
	if code != 404 || !strings.Contains(fmt.Sprint(m["error"]), `"nope"`) {
		t.Errorf("unknown application: %d %v", code, m)
	}
	// Not ready before the timeout: 503, its process group stopped (the
	// grandchild too), its port returned.
	start := time.Now()
	code, m = e.do("POST", "/paraview/", `{"application": "slow"}`)
	if code != 503 || m["error"] != "Session did not start before timeout expired. Check session logs." {
		t.Fatalf("slow: %d %v", code, m)
	}
	if took := time.Since(start); took < time.Second || took > 8*time.Second {
		t.Errorf("timeout answered after %s", took)
	}
	logs, _ := filepath.Glob(filepath.Join(e.logDir, "*.txt"))
	if len(logs) != 1 {
		t.Fatalf("session logs: %v", logs)
	}
	b, _ := os.ReadFile(logs[0])
	var pid, gc int
	if _, err := fmt.Sscanf(string(b), "wslinksrv pid=%d grandchild=%d", &pid, &gc); err != nil {
		t.Fatalf("session log %q: %v", b, err)
	}
	if alive(pid) || alive(gc) {
		t.Errorf("process group not stopped: pid %d alive %v, grandchild %d alive %v", pid, alive(pid), gc, alive(gc))
	}
	if lchListening(e.lo) {
		t.Errorf("port %d still served after the timeout", e.lo)
	}
	// POST /paraview (no slash) and /paraview/ both launch; the only port
	// is free again.
	s := e.launch(`{"application": "wslink", "sessionManagerURL": "http://x/paraview/", "node": 1024}`)
	id, _ := s["id"].(string)
	if len(id) != 32 || s["port"] != float64(e.lo) || s["node"] != float64(1024) || s["sessionManagerURL"] != "http://x/paraview/" ||
		s["sessionURL"] != "ws://USE_HOST/proxy?sessionId="+id+"&path=ws" {
		t.Errorf("answer %v", s)
	}
	if sec, _ := s["secret"].(string); len(sec) < 16 {
		t.Errorf("secret %q: the command uses ${secret}, so the answer carries a generated one", sec)
	}
	if !lchListening(e.lo) {
		t.Errorf("session not listening on %d", e.lo)
	}
	// No free resource: 503.
	code, m = e.do("POST", "/paraview", `{"application": "wslink"}`)
	if code != 503 || m["error"] != "All the resources are currently taken" {
		t.Errorf("no resource: %d %v", code, m)
	}
	// GET and DELETE by id.
	code, m = e.do("GET", "/paraview/"+id, "")
	if code != 200 || m["id"] != id || m["secret"] != s["secret"] {
		t.Errorf("GET: %d %v", code, m)
	}
	code, m = e.do("DELETE", "/paraview/"+id, "")
	if code != 200 || m["id"] != id {
		t.Errorf("DELETE: %d %v", code, m)
	}
	for _, method := range []string{"GET", "DELETE"} {
		code, m = e.do(method, "/paraview/"+id, "")
		if code != 404 || m["error"] != "No session with id: "+id {
			t.Errorf("%s after DELETE: %d %v", method, code, m)
		}
	}
	// DELETE answered after the process ended: the port is free at once.
	if lchListening(e.lo) {
		t.Error("port still served after DELETE")
	}
	e.launch(`{"application": "wslink"}`)
}

func TestLauncherProcessExitFreesPortAtOnce(t *testing.T) {
	t.Parallel()
	e := lchStart(t, true, 1, nil)
	s := e.launch(`{"application": "wslink"}`)
	id := s["id"].(string)
	if e.proxyFile() != fmt.Sprintf("%s 127.0.0.1:%d\n", id, e.lo) {
		t.Fatalf("proxy file %q", e.proxyFile())
	}
	// A proxied websocket tells the session to exit on its own.
	ws, code, body := dialWS(t, "ws://"+strings.TrimPrefix(e.base, "http://")+"/proxy?sessionId="+id+"&path=echo", nil)
	if ws == nil {
		t.Fatalf("proxy: %d %v", code, body)
	}
	defer ws.Close()
	ws.WriteMessage(websocket.TextMessage, []byte("exit"))
	// The proxied socket closes, and the port is free at once: the next
	// launch gets it with no wait for a later request to notice.
	if _, ce, err := readUntilClose(ws, 10*time.Second); err != nil && ce == nil {
		t.Logf("proxied socket ended with %v", err)
	}
	waitFor(t, "the proxy file to drop the session", 5*time.Second, func() bool { return e.proxyFile() == "" })
	s2 := e.launch(`{"application": "wslink"}`)
	if s2["port"] != float64(e.lo) {
		t.Errorf("second session on port %v", s2["port"])
	}
	if code, _ := e.do("GET", "/paraview/"+id, ""); code != 404 {
		t.Errorf("GET of an exited session: %d", code)
	}
}

func TestLauncherProxyFileSubstitutionSanitizeFields(t *testing.T) {
	t.Parallel()
	e := lchStart(t, true, 3, map[string]any{
		"configuration": map[string]any{
			"fields": []string{"file", "updir", "port"},
			"sanitize": map[string]any{
				"file": map[string]any{"type": "inList", "list": []string{"a.vtk", "b.vtk"}, "default": "a.vtk"},
				"user": map[string]any{"type": "regexp", "regexp": "[a-z]+$", "default": "guest"},
			},
		},
		"sessionData": map[string]any{"updir": "/Home/${application}", "extra": "filtered"},
	})
	s := e.launch(`{"application": "echo-args", "file": "../../etc/passwd", "user": "seb", "srv": "/bin/evil", "secret": "s3cr3t"}`)
	id := s["id"].(string)
	log := e.sessionLog(id)
	i := strings.Index(log, "wslinksrv args ")
	if i < 0 {
		t.Fatalf("session log %q", log)
	}
	var args []string
	json.Unmarshal([]byte(strings.SplitN(log[i+len("wslinksrv args "):], "\n", 2)[0]), &args)
	want := []string{"--args", "--port", strconv.Itoa(e.lo), "127.0.0.1", id, "s3cr3t", "echo-args",
		"ws://USE_HOST/proxy?sessionId=" + id + "&path=ws", "a.vtk", "$literal", "${unknown}", "seb", e.srvPath}
	if strings.Join(args, "|") != strings.Join(want, "|") {
		t.Errorf("command line\n got %q\nwant %q", args, want)
	}
	keys := []string{}
	for k := range s {
		keys = append(keys, k)
	}
	if got := strings.Join(sortedCopy(keys), " "); got != "file id port secret sessionURL updir" {
		t.Errorf("answer keys %q (answer %v)", got, s)
	}
	if s["file"] != "a.vtk" || s["updir"] != "/Home/echo-args" || s["secret"] != "s3cr3t" {
		t.Errorf("answer %v", s)
	}
	s2 := e.launch(`{"application": "echo-args", "user": "Robert'); DROP"}`)
	if log := e.sessionLog(s2["id"].(string)); !strings.Contains(log, `"guest"`) || strings.Contains(log, "DROP") {
		t.Errorf("regexp sanitize: %s", log)
	}
	// The proxy file lists every live session, in launch order, and is
	// replaced (rename), never rewritten in place.
	s3 := e.launch(`{"application": "wslink"}`)
	wantFile := fmt.Sprintf("%s 127.0.0.1:%d\n%s 127.0.0.1:%d\n%s 127.0.0.1:%d\n", id, e.lo, s2["id"], e.lo+1, s3["id"], e.lo+2)
	if got := e.proxyFile(); got != wantFile {
		t.Errorf("proxy file\n%s\nwant\n%s", got, wantFile)
	}
	old, err := os.Open(e.proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if code, _ := e.do("DELETE", "/paraview/"+s2["id"].(string), ""); code != 200 {
		t.Fatal("DELETE failed")
	}
	kept, _ := io.ReadAll(old)
	if string(kept) != wantFile {
		t.Errorf("the old proxy file changed in place: %q", kept)
	}
	wantFile = fmt.Sprintf("%s 127.0.0.1:%d\n%s 127.0.0.1:%d\n", id, e.lo, s3["id"], e.lo+2)
	if got := e.proxyFile(); got != wantFile {
		t.Errorf("proxy file after DELETE\n%s\nwant\n%s", got, wantFile)
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func TestLauncherUploadAndContent(t *testing.T) {
	t.Parallel()
	content := t.TempDir()
	os.WriteFile(filepath.Join(content, "index.html"), []byte("<p>viz</p>"), 0o644)
	os.Mkdir(filepath.Join(content, "empty"), 0o755)
	up := filepath.Join(t.TempDir(), "uploads")
	e := lchStart(t, false, 1, map[string]any{"configuration": map[string]any{
		"content": content, "upload_dir": up, "upload_max_size": 10000}})
	post := func(name, data string) (int, map[string]any) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", fmt.Sprintf(`form-data; name="file"; filename="%s"`, name))
		w, _ := mw.CreatePart(h)
		w.Write([]byte(data))
		mw.Close()
		resp, err := http.Post(e.base+"/upload", mw.FormDataContentType(), &buf)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if code, m := post("data.vtk", "VTK"); code != 200 {
		t.Errorf("upload: %d %v", code, m)
	}
	if b, _ := os.ReadFile(filepath.Join(up, "data.vtk")); string(b) != "VTK" {
		t.Errorf("uploaded %q", b)
	}
	for _, name := range []string{"../escape.vtk", "../../tmp/escape.vtk", "/tmp/escape.vtk", `..\escape.vtk`} {
		if code, m := post(name, "X"); code != 400 {
			t.Errorf("upload %q: %d %v", name, code, m)
		}
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(up), "escape.vtk")); err == nil {
		t.Error("a file escaped the upload directory")
	}
	if code, m := post("big.bin", strings.Repeat("x", 20000)); code != 413 {
		t.Errorf("big upload: %d %v", code, m)
	}
	get := func(p string) (int, string) {
		resp, err := http.Get(e.base + p)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/"); code != 200 || body != "<p>viz</p>" {
		t.Errorf("GET /: %d %q", code, body)
	}
	if code, _ := get("/empty/"); code != 404 {
		t.Errorf("directory listing: %d", code)
	}
	if code, _ := get("/../../etc/passwd"); code != 404 {
		t.Errorf("traversal: %d", code)
	}
}

// lchDial opens a websocket through the launcher's /proxy.
func (e *lchEnv) dial(id, path string) *websocket.Conn {
	e.t.Helper()
	u := "ws://" + strings.TrimPrefix(e.base, "http://") + "/proxy?sessionId=" + id + "&path=" + path
	ws, code, body := dialWS(e.t, u, nil)
	if ws == nil {
		e.t.Fatalf("proxy %s: %d %v", u, code, body)
	}
	e.t.Cleanup(func() { ws.Close() })
	return ws
}

func lchExpect(t *testing.T, ws *websocket.Conn, mt int, want []byte) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, p, err := ws.ReadMessage()
	if err != nil || got != mt || !bytes.Equal(p, want) {
		t.Fatalf("read: type %d %q %v, want type %d %q", got, truncateStr(string(p), 60), err, mt, truncateStr(string(want), 60))
	}
}

func truncateStr(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func lchExpectClose(t *testing.T, ws *websocket.Conn, code int, reason string) {
	t.Helper()
	_, ce, err := readUntilClose(ws, 10*time.Second)
	if ce == nil {
		t.Fatalf("no close frame (want %d %q): %v", code, reason, err)
	}
	if ce.Code != code || ce.Text != reason {
		t.Fatalf("close %d %q, want %d %q", ce.Code, ce.Text, code, reason)
	}
}

func TestProxyPassthroughThroughGateway(t *testing.T) {
	t.Parallel()
	e := lchStart(t, true, 1, nil)
	id := e.launch(`{"application": "wslink"}`)["id"].(string)

	ws := e.dial(id, "echo")
	big := bytes.Repeat([]byte{0, 0xff, 1, 0xfe}, 1<<18)
	for _, m := range []struct {
		mt int
		p  []byte
	}{{websocket.TextMessage, []byte("héllo")}, {websocket.BinaryMessage, []byte{0, 1, 2, 3, 255}}, {websocket.BinaryMessage, big}} {
		if err := ws.WriteMessage(m.mt, m.p); err != nil {
			t.Fatal(err)
		}
		lchExpect(t, ws, m.mt, m.p)
	}
	// Pings cross the proxy both ways, and so do their pongs.
	pongs := make(chan string, 2)
	ws.SetPongHandler(func(d string) error { pongs <- d; return nil })
	ws.WriteControl(websocket.PingMessage, []byte("from-client"), time.Now().Add(time.Second))
	lchExpect(t, ws, websocket.TextMessage, []byte("got-ping from-client"))
	ws.WriteMessage(websocket.TextMessage, []byte("ping from-session"))
	lchExpect(t, ws, websocket.TextMessage, []byte("pong from-session"))
	select {
	case d := <-pongs:
		if d != "from-client" {
			t.Errorf("pong %q", d)
		}
	default:
		t.Error("the session's pong did not reach the client")
	}
	// The session's close code and reason reach the client.
	ws.WriteMessage(websocket.TextMessage, []byte("close 4001 session bye"))
	lchExpectClose(t, ws, 4001, "session bye")
	// The client's close code and reason reach the session.
	ws = e.dial(id, "echo")
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4002, "client bye"), time.Now().Add(time.Second))
	lchExpectClose(t, ws, 4002, "client bye")
	waitFor(t, "the session to log the client's close", 5*time.Second, func() bool {
		return strings.Contains(e.sessionLog(id), "close 4002 client bye\n")
	})
	// A stopped session closes its proxied sockets with 1001.
	ws = e.dial(id, "echo")
	ws2 := e.dial(id, "echo")
	ws.WriteMessage(websocket.TextMessage, []byte("still here"))
	lchExpect(t, ws, websocket.TextMessage, []byte("still here"))
	if code, m := e.do("DELETE", "/paraview/"+id, ""); code != 200 {
		t.Fatalf("DELETE: %d %v", code, m)
	}
	lchExpectClose(t, ws, websocket.CloseGoingAway, "stopped by DELETE")
	lchExpectClose(t, ws2, websocket.CloseGoingAway, "stopped by DELETE")
	_, code, body := dialWS(t, "ws://"+strings.TrimPrefix(e.base, "http://")+"/proxy?sessionId="+id+"&path=ws", nil)
	if code != 404 {
		t.Errorf("proxy to a stopped session: %d %v", code, body)
	}
}

func TestLauncherShutdownStopsSessions(t *testing.T) {
	t.Parallel()
	e := lchStart(t, false, 2, nil)
	id := e.launch(`{"application": "wslink"}`)["id"].(string)
	ws := e.dial(id, "echo")
	e.g.stop()
	if err := e.g.exitErr; err != nil {
		t.Errorf("gateway exit: %v", err)
	}
	lchExpectClose(t, ws, websocket.CloseGoingAway, "gateway shutting down")
	if lchListening(e.lo) {
		t.Error("session still listening after the gateway stopped")
	}
	if e.proxyFile() != "" {
		t.Errorf("proxy file after shutdown: %q", e.proxyFile())
	}
}

// ---- the real wslink client ----

// lchChromium is the browser client.mjs drives (Debian's chromium).
const lchChromium = "/usr/bin/chromium"

var wslinkNpmOnce sync.Once

// lchWslinkClient makes sure node, Chromium and the npm packages of
// integration/wslink are there (installing the packages with npm ci when
// missing) and returns that directory.
func lchWslinkClient(t *testing.T) string {
	t.Helper()
	needComponent(t, "node", "nodejs")
	needComponent(t, lchChromium, "chromium")
	dir := filepath.Join(repoDir, "integration", "wslink")
	have := func() bool {
		_, err1 := os.Stat(filepath.Join(dir, "node_modules", "wslink", "dist", "wslink.js"))
		_, err2 := os.Stat(filepath.Join(dir, "node_modules", "playwright-core", "package.json"))
		return err1 == nil && err2 == nil
	}
	wslinkNpmOnce.Do(func() {
		if have() {
			return
		}
		if _, err := exec.LookPath("npm"); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Logf("npm ci in %s: %v\n%s", dir, err, out)
		}
	})
	if !have() {
		msg := "the wslink npm package is not installed: run npm ci --prefix integration/wslink"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return dir
}

// lchPage puts the test page and the wslink browser bundle in a content
// directory.
func lchPage(t *testing.T, clientDir string) string {
	t.Helper()
	content := t.TempDir()
	for src, dst := range map[string]string{
		filepath.Join(clientDir, "www", "index.html"):                           "index.html",
		filepath.Join(clientDir, "node_modules", "wslink", "dist", "wslink.js"): "wslink.js",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(content, dst), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return content
}

type wslinkResult struct {
	OK     bool           `json:"ok"`
	Stage  string         `json:"stage"`
	Error  string         `json:"error"`
	Echo   []any          `json:"echo"`
	Info   map[string]any `json:"info"`
	Config map[string]any `json:"config"`
	URL    string         `json:"url"`
	Logs   []string       `json:"logs"`
	Posts  []struct {
		URL         string  `json:"url"`
		ContentType *string `json:"contentType"`
		Body        string  `json:"body"`
	} `json:"posts"`
}

// lchRunClient opens pageURL in headless Chromium through client.mjs.
func lchRunClient(t *testing.T, clientDir, pageURL string) wslinkResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "client.mjs", pageURL, "30000")
	cmd.Dir = clientDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	// Whatever happened, nothing of the browser outlives the test.
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if err != nil {
		t.Fatalf("node client.mjs: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	var r wslinkResult
	if err := json.Unmarshal(bytes.TrimSpace(out), &r); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	return r
}

func TestWslinkRealClientThroughProxy(t *testing.T) {
	t.Parallel()
	clientDir := lchWslinkClient(t)
	content := lchPage(t, clientDir)
	e := lchStart(t, true, 2, map[string]any{"configuration": map[string]any{"content": content}})
	host := strings.TrimPrefix(e.base, "http://")

	r := lchRunClient(t, clientDir, e.base+"/index.html?application=wslink")
	if !r.OK {
		t.Fatalf("wslink client failed at %s: %s\nconsole: %q\nposts: %+v\ngateway log:\n%s", r.Stage, r.Error, r.Logs, r.Posts, tail(e.g.log.String(), 3000))
	}
	id, _ := r.Config["id"].(string)
	secret, _ := r.Config["secret"].(string)
	if len(id) != 32 || len(secret) < 16 {
		t.Errorf("session config %v", r.Config)
	}
	// The client replaced USE_HOST with the page's host, and connected
	// through the gateway's /proxy.
	if want := "ws://" + host + "/proxy?sessionId=" + id + "&path=ws"; r.URL != want || r.Config["sessionURL"] != want {
		t.Errorf("websocket URL %q, config sessionURL %v, want %q", r.URL, r.Config["sessionURL"], want)
	}
	// It POSTed to the default sessionManagerURL, the page's directory +
	// "paraview/".
	if len(r.Posts) != 1 || r.Posts[0].URL != e.base+"/paraview/" || !strings.Contains(r.Posts[0].Body, `"application":"wslink"`) {
		t.Errorf("launcher requests %+v", r.Posts)
	}
	// RPCs after the hello reached the launched process.
	if len(r.Echo) != 2 || r.Echo[0] != "hello" || r.Echo[1] != float64(42) {
		t.Errorf("echo %v", r.Echo)
	}
	if r.Info["port"] != float64(e.lo) {
		t.Errorf("info %v, want the session's port %d", r.Info, e.lo)
	}
	log := e.sessionLog(id)
	if !regexp.MustCompile(`wslinksrv: authenticated c\d+`).MatchString(log) {
		t.Errorf("session log %q", log)
	}
}

func TestWslinkRealClientWrongSecret(t *testing.T) {
	t.Parallel()
	clientDir := lchWslinkClient(t)
	content := lchPage(t, clientDir)
	// The launcher on its own port; "fixed" runs with --authKey
	// fixed-secret, and the page sends its own secret, which the launcher
	// hands back: the hello fails.
	e := lchStart(t, false, 2, map[string]any{"configuration": map[string]any{"content": content}})
	r := lchRunClient(t, clientDir, e.base+"/index.html?application=fixed&secret=wrong-secret")
	if r.OK || r.Stage != "connect" || r.Error != "Authentication failed" {
		t.Fatalf("wrong secret: %+v\ngateway log:\n%s", r, tail(e.g.log.String(), 3000))
	}
	if r.Config["secret"] != "wrong-secret" {
		t.Errorf("config %v", r.Config)
	}
	id, _ := r.Config["id"].(string)
	if log := e.sessionLog(id); !strings.Contains(log, "wslinksrv: authentication failed") {
		t.Errorf("session log %q", log)
	}
	// The launcher's own port serves the page, the API and /proxy: the
	// right secret connects.
	r = lchRunClient(t, clientDir, e.base+"/index.html?application=wslink")
	if !r.OK || r.Info["port"] != float64(e.hi) {
		t.Fatalf("own port: %+v\ngateway log:\n%s", r, tail(e.g.log.String(), 3000))
	}
	// Both ports are taken: the client shows the launcher's error.
	r = lchRunClient(t, clientDir, e.base+"/index.html?application=wslink")
	if r.OK || r.Error != "All the resources are currently taken" {
		t.Errorf("no free port: %+v", r)
	}
}
