package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The launcher API under attack (issue 11, findings 7, 9 and 10), against
// the real binary.

// lchRefusals counts the launcher's refusals with status on path in the
// gateway's log.
func (e *lchEnv) lchRefusals(status int, path string) int {
	n := 0
	for _, l := range e.g.logLines() {
		if l["message"] == "launcher request refused" && l["status"] == float64(status) && l["path"] == path {
			n++
		}
	}
	return n
}

// sessionLogs lists log_dir's session logs (<id>.txt).
func (e *lchEnv) sessionLogs() []string {
	m, _ := filepath.Glob(filepath.Join(e.logDir, "*.txt"))
	return m
}

// TestLauncherAttackCrossSitePage: a real Chromium page on another origin
// POSTs a launch (text/plain, a simple request) and an upload
// (multipart/form-data, simple too) to the launcher: both are refused
// with 403, no process starts and no file is written.
func TestLauncherAttackCrossSitePage(t *testing.T) {
	t.Parallel()
	up := filepath.Join(t.TempDir(), "uploads")
	e := lchStart(t, false, 2, map[string]any{"configuration": map[string]any{"upload_dir": up}})
	launcherURL := e.base // http://127.0.0.1:port
	page := `<!doctype html><title>attacker</title><script>
async function attack() {
  const out = [];
  try { await fetch(` + "`" + launcherURL + `/paraview/` + "`" + `, {method: "POST", mode: "no-cors",
      headers: {"Content-Type": "text/plain"}, body: JSON.stringify({application: "wslink"})}); out.push("launch sent"); }
  catch (e) { out.push("launch: " + e); }
  try { const fd = new FormData(); fd.append("file", new Blob(["<script>alert(1)<\/script>"]), "planted.html");
      await fetch(` + "`" + launcherURL + `/upload` + "`" + `, {method: "POST", mode: "no-cors", body: fd}); out.push("upload sent"); }
  catch (e) { out.push("upload: " + e); }
  window.done = out;
}
attack();
</script>`
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		io.WriteString(w, page)
	}))
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	// Another origin: another host name (and port) for the same machine.
	attacker := "http://localhost:" + fmt.Sprint(ln.Addr().(*net.TCPAddr).Port) + "/"

	b := newBrowser(t)
	p := b.newTab()
	p.navigate(attacker)
	p.waitJS("the attack to run", 30*time.Second, "window.done && window.done.length === 2", "window.done")
	var done []string
	p.mustEval("window.done", &done)
	t.Logf("page: %v", done)
	waitFor(t, "both refusals in the log", 15*time.Second, func() bool {
		return e.lchRefusals(403, "/paraview/") >= 1 && e.lchRefusals(403, "/upload") >= 1
	})
	if logs := e.sessionLogs(); len(logs) != 0 {
		t.Errorf("a cross-site launch started a session: %v", logs)
	}
	if pids := lchProcesses(e.srvPath, e.lo, e.hi); len(pids) != 0 {
		t.Errorf("a cross-site launch started processes %v", pids)
	}
	if ents, _ := os.ReadDir(up); len(ents) != 0 {
		t.Errorf("a cross-site upload wrote %v", ents)
	}
	// The same requests without a browser's Origin still work.
	e.launch(`{"application": "wslink"}`)
}

// TestLauncherAttackCrossSiteEveryRoute: a foreign Origin is refused with
// 403 and a JSON reason on POST, GET and DELETE of a session, /upload and
// /proxy, with the launcher on its own port and on the gateway's.
func TestLauncherAttackCrossSiteEveryRoute(t *testing.T) {
	t.Parallel()
	for _, mounted := range []bool{false, true} {
		t.Run(fmt.Sprintf("mounted=%v", mounted), func(t *testing.T) { lchCrossSiteRoutes(t, mounted) })
	}
}

func lchCrossSiteRoutes(t *testing.T, mounted bool) {
	{
		up := filepath.Join(t.TempDir(), "uploads")
		e := lchStart(t, mounted, 2, map[string]any{"configuration": map[string]any{"upload_dir": up}})
		id := e.launch(`{"application": "wslink"}`)["id"].(string)
		for _, c := range []struct{ method, path, ct, body string }{
			{"POST", "/paraview/", "text/plain", `{"application": "wslink"}`},
			{"GET", "/paraview/" + id, "", ""},
			{"DELETE", "/paraview/" + id, "", ""},
			{"POST", "/upload", "multipart/form-data; boundary=x", "--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.html\"\r\n\r\nX\r\n--x--\r\n"},
			{"GET", "/proxy?sessionId=" + id + "&path=ws", "", ""},
		} {
			req, _ := http.NewRequest(c.method, e.base+c.path, strings.NewReader(c.body))
			if c.ct != "" {
				req.Header.Set("Content-Type", c.ct)
			}
			if strings.HasPrefix(c.path, "/proxy") {
				req.Header.Set("Connection", "Upgrade")
				req.Header.Set("Upgrade", "websocket")
				req.Header.Set("Sec-WebSocket-Version", "13")
				req.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
			}
			req.Header.Set("Origin", "http://evil.example")
			resp, err := insecureClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]any
			err = json.NewDecoder(resp.Body).Decode(&m)
			resp.Body.Close()
			if msg, _ := m["error"].(string); resp.StatusCode != 403 || err != nil || !strings.Contains(msg, "cross-site request refused") {
				t.Errorf("mounted %v: %s %s from another origin: %d %v %v", mounted, c.method, c.path, resp.StatusCode, m, err)
			}
		}
		if logs := e.sessionLogs(); len(logs) != 1 {
			t.Errorf("mounted %v: session logs %v, want the one launched", mounted, logs)
		}
		if code, _ := e.do("GET", "/paraview/"+id, ""); code != 200 {
			t.Errorf("mounted %v: the session did not survive the cross-site DELETE: %d", mounted, code)
		}
		if ents, _ := os.ReadDir(up); len(ents) != 0 {
			t.Errorf("mounted %v: a cross-site upload wrote %v", mounted, ents)
		}
	}
}

// TestLauncherAttackPoolReclaimed: anonymous POSTs that never connect
// cannot hold the ports for good: each session is stopped after
// connect_timeout and the next launch gets its port.
func TestLauncherAttackPoolReclaimed(t *testing.T) {
	t.Parallel()
	e := lchStart(t, false, 1, map[string]any{"configuration": map[string]any{"connect_timeout": 1}})
	first := e.launch(`{"application": "wslink"}`)
	if code, m := e.do("POST", "/paraview/", `{"application": "wslink"}`); code != 503 {
		t.Fatalf("second launch with the one port held: %d %v", code, m)
	}
	var second map[string]any
	waitFor(t, "a launch to get the reclaimed port", 30*time.Second, func() bool {
		code, m := e.do("POST", "/paraview/", `{"application": "wslink"}`)
		second = m
		return code == 200
	})
	if second["port"] != first["port"] || second["id"] == first["id"] {
		t.Errorf("first %v, second %v", first, second)
	}
	if code, _ := e.do("GET", "/paraview/"+first["id"].(string), ""); code != 404 {
		t.Errorf("the unconnected session still answers: %d", code)
	}
	b, _ := os.ReadFile(filepath.Join(e.logDir, "launcherLog.log"))
	if !bytes.Contains(b, []byte("not connected within connect_timeout")) {
		t.Errorf("launcherLog.log does not say why:\n%s", b)
	}
	// A connected session is kept past connect_timeout: its websocket
	// still echoes after a later unconnected session has expired.
}

// TestLauncherAttackPropertyLeak is finding 9: a client value naming a
// property is data, in argv and in the answer.
func TestLauncherAttackPropertyLeak(t *testing.T) {
	t.Parallel()
	e := lchStart(t, false, 1, map[string]any{
		"properties":  map[string]any{"srv": lchWslinksrv(t), "licenseKey": "LICENSE-SECRET-99"},
		"sessionData": map[string]any{"who": "${user}"},
	})
	m := e.launch(`{"application": "echo-args", "user": "${licenseKey}", "file": "$licenseKey"}`)
	id := m["id"].(string)
	ans, _ := json.Marshal(m)
	_, g := e.do("GET", "/paraview/"+id, "")
	again, _ := json.Marshal(g)
	args := e.sessionLog(id)
	for what, s := range map[string]string{"answer": string(ans), "GET": string(again), "argv": args} {
		if strings.Contains(s, "LICENSE-SECRET-99") {
			t.Errorf("the property's value is in the %s: %s", what, s)
		}
	}
	if m["who"] != "${licenseKey}" || !strings.Contains(args, "${licenseKey}") {
		t.Errorf("the client's value was not passed as sent: who %v, argv %q", m["who"], args)
	}
}

// TestLauncherAttackLogInjection is finding 10: CR, LF and escape
// sequences in every client-controlled field never reach the launcher's
// logs raw.
func TestLauncherAttackLogInjection(t *testing.T) {
	t.Parallel()
	up := filepath.Join(t.TempDir(), "uploads")
	logFile := filepath.Join(t.TempDir(), "gw.log")
	e := lchStart(t, false, 2, map[string]any{"configuration": map[string]any{"upload_dir": up,
		"sanitize": map[string]any{"file": map[string]any{"type": "regexp", "regexp": "[a-z.]+$", "default": "can.ex2"}}}},
		"--log_file", logFile)
	const evil = "v\r\n2038-01-01 00:00:00.000 INFO forged\x1b[2J\x1b]0;title\x07"
	js, _ := json.Marshal(evil)
	q := strings.NewReplacer("\r", "%0D", "\n", "%0A", "\x1b", "%1B", "\x07", "%07", " ", "%20").Replace(evil)
	e.do("POST", "/paraview/", `{"application": "echo-args", "file": `+string(js)+`, `+string(js)+`: 1, "srv": `+string(js)+`}`)
	e.do("POST", "/paraview/", `{"application": `+string(js)+`}`)
	e.do("GET", "/paraview/"+q, "")
	e.do("DELETE", "/paraview/"+q, "")
	for _, f := range [][2]string{{"path", evil}, {"filename", evil}, {"filename", "ok\x1b[31m.txt"}} {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		if f[0] == "path" {
			mw.WriteField("path", f[1])
		}
		name := "ok.txt"
		if f[0] == "filename" {
			name = f[1]
		}
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", `form-data; name="file"; filename="`+name+`"`)
		w, _ := mw.CreatePart(h)
		w.Write([]byte("X"))
		mw.Close()
		resp, err := http.Post(e.base+"/upload", mw.FormDataContentType(), &buf)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("upload with %s %q: %d", f[0], f[1], resp.StatusCode)
		}
	}
	audit, _ := os.ReadFile(filepath.Join(e.logDir, "launcherLog.log"))
	if !bytes.Contains(audit, []byte(`\r\n2038-01-01`)) {
		t.Errorf("the sanitized value is not in launcherLog.log, escaped:\n%s", audit)
	}
	waitFor(t, "the gateway's log file", 10*time.Second, func() bool {
		b, _ := os.ReadFile(logFile)
		return bytes.Contains(b, []byte("launcher request refused"))
	})
	gw, _ := os.ReadFile(logFile)
	for name, b := range map[string][]byte{"launcherLog.log": audit, "the gateway's log": gw} {
		if i := bytes.IndexAny(b, "\r\x1b\x07"); i >= 0 {
			t.Errorf("%s has a raw control character at %d: %q", name, i, b[max(0, i-80):min(len(b), i+40)])
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "2038-01-01") {
				t.Errorf("%s: a client value started a line: %q", name, line)
			}
		}
	}
}

// TestLauncherAttackUploadReplaceAndModes: an upload never replaces an
// existing file (409), and log_dir, the session logs and proxy_file are
// the gateway's user's only.
func TestLauncherAttackUploadReplaceAndModes(t *testing.T) {
	t.Parallel()
	up := filepath.Join(t.TempDir(), "uploads")
	os.MkdirAll(up, 0o755)
	os.WriteFile(filepath.Join(up, "index.html"), []byte("original"), 0o644)
	e := lchStart(t, false, 1, map[string]any{"configuration": map[string]any{"upload_dir": up}})
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	w, _ := mw.CreateFormFile("file", "index.html")
	w.Write([]byte("planted"))
	mw.Close()
	resp, err := http.Post(e.base+"/upload", mw.FormDataContentType(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if b, _ := os.ReadFile(filepath.Join(up, "index.html")); resp.StatusCode != 409 || string(b) != "original" {
		t.Errorf("upload over an existing file: %d, file %q", resp.StatusCode, b)
	}
	id := e.launch(`{"application": "wslink"}`)["id"].(string)
	for path, want := range map[string]os.FileMode{e.logDir: 0o700, filepath.Join(e.logDir, id+".txt"): 0o600,
		filepath.Join(e.logDir, "launcherLog.log"): 0o600, e.proxy: 0o600, filepath.Dir(e.proxy): 0o700} {
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != want {
			t.Errorf("%s: %v %v, want %04o", path, st.Mode().Perm(), err, want)
		}
	}
}

// TestLauncherAttackTrickledHeader: a request whose header trickles in is
// cut by the gateway's header timeout (10 s) on the launcher's own port,
// not held open. (The 60 s body bound is checked with shortened timeouts
// in the launcher package's TestServerTimeouts.)
func TestLauncherAttackTrickledHeader(t *testing.T) {
	t.Parallel()
	e := lchStart(t, false, 1, nil)
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("POST /paraview/ HTTP/1.1\r\nHost: x\r\n"))
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := conn.Write([]byte("X")); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, err = io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("a trickled header held the connection for %s", time.Since(start))
	}
	t.Logf("cut after %s", time.Since(start))
}
