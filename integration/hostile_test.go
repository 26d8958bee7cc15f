package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// The hostile-input battery: what a client on the network, a web page in
// someone's browser, or a careless config can throw at the real binary.
// Nothing may crash, nothing may leave its directory or reach a shell,
// every refusal is a status with a reason, and afterwards the gateway
// still serves a normal session.

// hbRaw sends exactly req to addr and reads one response: Go's client
// would clean the path, re-encode it, or refuse the bytes we want to send.
func hbRaw(t *testing.T, addr, req string) (int, http.Header, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("writing %q: %v", req, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to %q: %v", hbShort(req), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, resp.Header, string(body)
}

func hbGet(t *testing.T, addr, rawPath string, hdr ...string) (int, http.Header, string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", rawPath, addr)
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	b.WriteString("\r\n")
	return hbRaw(t, addr, b.String())
}

func hbShort(s string) string {
	if len(s) > 160 {
		return s[:160] + "…"
	}
	return s
}

// hbSecret is in the files the traversal tries to reach.
const hbSecret = "TOPSECRET-9f3c2e1a"

// hbTree builds a directory tree with a secret outside every served
// directory, and symlinks from inside each one to it.
//
//	root/outside/secret.txt        the secret
//	root/www/                      --http_directory
//	root/novnc/core/rfb.js         --novnc_directory
//	root/content/                  launcher content
//	root/uploads/                  launcher upload_dir
//
// Each served directory has index.html, link-file -> ../outside/secret.txt
// and link-dir -> ../outside.
func hbTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "outside"), 0o755))
	must(os.WriteFile(filepath.Join(root, "outside", "secret.txt"), []byte(hbSecret+"\n"), 0o644))
	for _, d := range []string{"www", "novnc", "content", "uploads"} {
		must(os.MkdirAll(filepath.Join(root, d, "sub"), 0o755))
		must(os.WriteFile(filepath.Join(root, d, "index.html"), []byte("<p>"+d+"</p>"), 0o644))
		must(os.Symlink("../outside/secret.txt", filepath.Join(root, d, "link-file")))
		must(os.Symlink("../outside", filepath.Join(root, d, "link-dir")))
		must(os.Symlink(filepath.Join(root, "outside"), filepath.Join(root, d, "sub", "abs-link")))
	}
	must(os.MkdirAll(filepath.Join(root, "novnc", "core"), 0o755))
	must(os.WriteFile(filepath.Join(root, "novnc", "core", "rfb.js"), []byte("// rfb"), 0o644))
	return root
}

// hbTraversals are paths, relative to a served prefix, that try to leave
// it: raw, percent-encoded, double-encoded, with backslashes, NUL,
// overlong UTF-8, absolute forms and symlinks.
func hbTraversals() []string {
	ups := []string{"../", "%2e%2e/", "%2E%2E%2F", "%252e%252e/", "%252e%252e%252f", "..%2f", "..%5c", `..\`,
		".%2e/", "%2e./", "..;/", "%c0%ae%c0%ae/", "....//", "..%00/", "%2e%2e%u2215"}
	var out []string
	for _, up := range ups {
		for _, depth := range []int{1, 2} {
			out = append(out, strings.Repeat(up, depth)+"outside/secret.txt")
		}
		out = append(out, strings.Repeat(up, 10)+"etc/passwd")
	}
	return append(out,
		"link-file", "link-dir/secret.txt", "sub/abs-link/secret.txt", "link-dir/", "sub/abs-link/",
		"/etc/passwd", "%2fetc%2fpasswd", "%2F%2Fetc%2Fpasswd", `\etc\passwd`,
		"index.html%00.txt", "%00", "sub/%2e%2e/%2e%2e/outside/secret.txt",
		"sub/..%2f..%2foutside%2fsecret.txt", "link-file%2f", "link-fil%65")
}

// hbCheckRefusal: a traversal got no secret, and a clear answer: a 4xx
// (JSON from the gateway's handlers, or net/http's own 400 for bytes it
// will not parse), or a redirect to a clean path on the same server.
func hbCheckRefusal(t *testing.T, addr, what string, code int, hdr http.Header, body string) {
	t.Helper()
	if strings.Contains(body, hbSecret) || strings.Contains(body, "root:x:0:0") {
		t.Errorf("%s: %d served a file from outside: %q", what, code, hbShort(body))
		return
	}
	switch {
	case code == http.StatusMovedPermanently || code == http.StatusFound || code == http.StatusPermanentRedirect:
		loc := hdr.Get("Location")
		u, err := url.Parse(loc)
		dotdot := false
		if u != nil {
			for _, seg := range strings.Split(u.Path, "/") {
				dotdot = dotdot || seg == ".."
			}
		}
		if err != nil || (u.Host != "" && u.Host != addr) || dotdot || !strings.HasPrefix(u.Path, "/") || strings.HasPrefix(u.Path, "//") {
			t.Errorf("%s: redirect to %q", what, loc)
			return
		}
		// Follow it once: it must not lead outside either.
		c2, h2, b2 := hbGet(t, addr, u.EscapedPath())
		if strings.Contains(b2, hbSecret) || strings.Contains(b2, "root:x:0:0") {
			t.Errorf("%s: the redirect to %s served a file from outside", what, loc)
		}
		if c2 == http.StatusOK && h2.Get("Content-Type") != "" && !strings.Contains(b2, "<p>") && !strings.Contains(b2, "<html") && !strings.Contains(b2, "<!doctype") {
			t.Errorf("%s: the redirect to %s served %q", what, loc, hbShort(b2))
		}
	case code == http.StatusOK:
		// Only something inside the served directory: one of our index
		// pages or the dashboard (for "%00"-like paths that clean to /).
		if !strings.Contains(body, "<p>") && !strings.Contains(strings.ToLower(body), "<!doctype html") {
			t.Errorf("%s: 200 with %q", what, hbShort(body))
		}
	case code >= 400 && code < 500:
		var m map[string]any
		if json.Unmarshal([]byte(body), &m) == nil {
			if msg, _ := m["error"].(string); msg == "" {
				t.Errorf("%s: %d without a reason: %q", what, code, hbShort(body))
			}
		} else if code != http.StatusBadRequest || !strings.HasPrefix(body, "400 Bad Request") {
			// net/http answers bytes it cannot parse with a plain 400.
			t.Errorf("%s: %d with a non-JSON body %q", what, code, hbShort(body))
		}
	default:
		t.Errorf("%s: status %d (%q)", what, code, hbShort(body))
	}
}

// hbUpload posts one multipart request with a raw Content-Disposition for
// the file part (and a "path" field when path is not nil).
func hbUpload(t *testing.T, base, disposition string, path *string, data string) (int, map[string]any) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if path != nil {
		w, _ := mw.CreateFormField("path")
		io.WriteString(w, *path)
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", disposition)
	w, _ := mw.CreatePart(h)
	io.WriteString(w, data)
	mw.Close()
	resp, err := http.Post(base+"/upload", mw.FormDataContentType(), &buf)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Errorf("upload %q: %d, body is not JSON: %q", disposition, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

// hbSnapshot lists every path under root with its size and link target,
// to prove afterwards that nothing outside uploads/ changed.
func hbSnapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		v := fmt.Sprintf("%v %d", info.Mode(), info.Size())
		if info.Mode()&os.ModeSymlink != 0 {
			l, _ := os.Readlink(p)
			v += " -> " + l
		} else if info.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			v += " " + string(b)
		}
		out[rel] = v
		return nil
	})
	return out
}

// TestHostilePathTraversal throws traversals at every file route: the
// --http_directory, the gateway's pages, noVNC, the launcher's content
// and its /upload, on the exact bytes of the request line.
func TestHostilePathTraversal(t *testing.T) {
	t.Parallel()
	root := hbTree(t)
	e := lchStart(t, false, 1, map[string]any{"configuration": map[string]any{"port": hbPort(t),
		"content": filepath.Join(root, "content"), "upload_dir": filepath.Join(root, "uploads"), "upload_max_size": 100000}},
		"--http_directory", filepath.Join(root, "www"), "--novnc_directory", filepath.Join(root, "novnc"), "--http_port", "0")
	g := e.g
	lch := strings.TrimPrefix(e.base, "http://")
	before := hbSnapshot(t, root)

	// The routes serve what they should.
	for _, c := range []struct{ addr, path, want string }{
		{g.httpAddr, "/", "<p>www</p>"}, {g.httpAddr, "/wsgw/novnc/core/rfb.js", "// rfb"}, {lch, "/", "<p>content</p>"},
	} {
		if code, _, body := hbGet(t, c.addr, c.path); code != 200 || body != c.want {
			t.Fatalf("GET %s: %d %q", c.path, code, body)
		}
	}
	if code, _, body := hbGet(t, g.httpAddr, "/wsgw/"); code != 200 || !strings.Contains(strings.ToLower(body), "<!doctype html") {
		t.Fatalf("GET /wsgw/: %d %q", code, hbShort(body))
	}

	targets := []struct{ name, addr, prefix string }{
		{"http_directory", g.httpAddr, "/"},
		{"pages", g.httpAddr, "/wsgw/"},
		{"novnc", g.httpAddr, "/wsgw/novnc/"},
		{"novnc core", g.httpAddr, "/wsgw/novnc/core/"},
		{"launcher content", lch, "/"},
		{"launcher content sub", lch, "/sub/"},
		{"launcher endpoint", lch, "/paraview/"},
	}
	n := 0
	for _, tg := range targets {
		for _, p := range hbTraversals() {
			path := tg.prefix + p
			code, hdr, body := hbGet(t, tg.addr, path)
			hbCheckRefusal(t, tg.addr, tg.name+" GET "+path, code, hdr, body)
			n++
		}
		// A NUL byte and a raw space on the request line.
		for _, p := range []string{tg.prefix + "\x00", tg.prefix + "a b", tg.prefix + "\x7f/../../outside/secret.txt"} {
			code, hdr, body := hbRaw(t, tg.addr, "GET "+p+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			hbCheckRefusal(t, tg.addr, fmt.Sprintf("%s raw %q", tg.name, p), code, hdr, body)
		}
	}
	t.Logf("%d traversal requests refused", n)

	// Uploads: names and "path" fields that try to leave upload_dir.
	strp := func(s string) *string { return &s }
	for _, c := range []struct {
		disp string
		path *string
	}{
		{`form-data; name="file"; filename="../escape.txt"`, nil},
		{`form-data; name="file"; filename="../../escape.txt"`, nil},
		{`form-data; name="file"; filename="/tmp/escape.txt"`, nil},
		{`form-data; name="file"; filename="..\escape.txt"`, nil},
		{`form-data; name="file"; filename="sub/../../escape.txt"`, nil},
		{`form-data; name="file"; filename=".."`, nil},
		{`form-data; name="file"; filename="."`, nil},
		{`form-data; name="file"; filename=""`, nil},
		{`form-data; name="file"; filename*=UTF-8''..%2F..%2Fescape.txt`, nil},
		{`form-data; name="file"; filename*=UTF-8''%2Ftmp%2Fescape.txt`, nil},
		{`form-data; name="file"; filename="link-file"`, nil},          // a symlink to the secret
		{`form-data; name="file"; filename="link-dir"`, nil},           // a symlink to a directory
		{`form-data; name="file"; filename="x.txt"`, strp("../")},      // path field
		{`form-data; name="file"; filename="x.txt"`, strp("..")},       //
		{`form-data; name="file"; filename="x.txt"`, strp("/tmp")},     //
		{`form-data; name="file"; filename="x.txt"`, strp("link-dir")}, // a symlink out
		{`form-data; name="file"; filename="x.txt"`, strp("sub/abs-link")},
		{`form-data; name="file"; filename="x.txt"`, strp("sub/../..")},
		{`form-data; name="file"; filename="x.txt"`, strp(`..\..`)},
		{`form-data; name="file"; filename="x.txt"`, strp("sub\x00/../..")},
		{`form-data; name="file"; filename="x.txt"`, strp("%2e%2e")}, // a literal name: no such directory
	} {
		code, m := hbUpload(t, e.base, c.disp, c.path, "ESCAPED")
		if code != http.StatusBadRequest || m["error"] == nil {
			t.Errorf("upload %s path %v: %d %v, want 400 with a reason", c.disp, c.path, code, m)
		}
	}
	// Names that only look odd stay inside upload_dir.
	for _, name := range []string{"..%2fodd.txt", "%2e%2e", "...", "a..b", "ünïcode.txt"} {
		code, m := hbUpload(t, e.base, fmt.Sprintf(`form-data; name="file"; filename="%s"`, name), nil, "ok")
		if code != 200 {
			t.Errorf("upload %q: %d %v", name, code, m)
			continue
		}
		if b, err := os.ReadFile(filepath.Join(root, "uploads", name)); err != nil || string(b) != "ok" {
			t.Errorf("upload %q not in upload_dir: %v", name, err)
		}
	}
	// An upload over the limit leaves no partial file behind.
	if code, _ := hbUpload(t, e.base, `form-data; name="file"; filename="big.bin"`, nil, strings.Repeat("x", 200000)); code != http.StatusRequestEntityTooLarge {
		t.Errorf("big upload: %d", code)
	}
	after := hbSnapshot(t, root)
	for p, v := range after {
		if before[p] != v && p != "uploads" && !strings.HasPrefix(p, "uploads"+string(filepath.Separator)) {
			t.Errorf("%s changed or appeared outside upload_dir: %q (was %q)", p, v, before[p])
		}
		if strings.HasPrefix(p, "uploads") && (strings.Contains(v, "ESCAPED") || strings.HasSuffix(p, ".part") || strings.Contains(p, "big.bin")) {
			t.Errorf("upload_dir holds %s: %q", p, v)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("%s disappeared", p)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "outside", "secret.txt")); string(b) != hbSecret+"\n" {
		t.Errorf("the secret was overwritten: %q", b)
	}
	for _, p := range []string{"/tmp/escape.txt", filepath.Join(filepath.Dir(root), "escape.txt")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists", p)
		}
	}
	hbServesBasic(t, g)
}

// hbServesBasic: the gateway still answers its REST API and its pages.
func hbServesBasic(t *testing.T, g *gateway) {
	t.Helper()
	if code, m := getJSON(t, g.httpURL("/v1/status")); code != 200 {
		t.Fatalf("status after the battery: %d %v", code, m)
	}
	select {
	case <-g.exited:
		t.Fatalf("the gateway exited: %v", g.exitErr)
	default:
	}
}

// ---- websocket frames written by hand ----

// hbWS is a websocket client that writes and reads raw frames.
type hbWS struct {
	c  net.Conn
	br *bufio.Reader
}

// hbDialRaw does the websocket handshake by hand and returns the
// connection for raw frames, or the refusal's status and body.
func hbDialRaw(t *testing.T, addr, path string, hdr ...string) (*hbWS, int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	host := addr
	var b strings.Builder
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			host = hdr[i+1]
			continue
		}
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	extra := b.String()
	b.Reset()
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s", path, host, extra)
	b.WriteString("\r\n")
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		t.Fatalf("handshake: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		resp.Body.Close()
		c.Close()
		return nil, resp.StatusCode, string(body)
	}
	_ = c.SetDeadline(time.Time{})
	w := &hbWS{c: c, br: br}
	t.Cleanup(func() { c.Close() })
	return w, 101, ""
}

var hbKey = [4]byte{0x5a, 0x13, 0xc7, 0x81}

// hbFrame builds a client frame; length, when not negative, is written in
// the header instead of len(payload) (with the 64-bit form).
func hbFrame(fin bool, rsv, op byte, masked bool, payload []byte, length int64) []byte {
	b0 := op | rsv
	if fin {
		b0 |= 0x80
	}
	var m byte
	if masked {
		m = 0x80
	}
	var out []byte
	switch n := len(payload); {
	case length >= 0:
		out = []byte{b0, m | 127, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint64(out[2:], uint64(length))
	case n < 126:
		out = []byte{b0, m | byte(n)}
	case n < 1<<16:
		out = []byte{b0, m | 126, byte(n >> 8), byte(n)}
	default:
		out = []byte{b0, m | 127, 0, 0, 0, 0, 0, 0, 0, 0}
		binary.BigEndian.PutUint64(out[2:], uint64(n))
	}
	if !masked {
		return append(out, payload...)
	}
	out = append(out, hbKey[:]...)
	for i, c := range payload {
		out = append(out, c^hbKey[i%4])
	}
	return out
}

func hbData(op byte, p []byte) []byte { return hbFrame(true, 0, op, true, p, -1) }

// readFrame reads one server frame (servers do not mask).
func (w *hbWS) readFrame(timeout time.Duration) (op byte, payload []byte, err error) {
	_ = w.c.SetReadDeadline(time.Now().Add(timeout))
	var h [2]byte
	if _, err := io.ReadFull(w.br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("server frame is masked")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var x [2]byte
		if _, err := io.ReadFull(w.br, x[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(x[:]))
	case 127:
		var x [8]byte
		if _, err := io.ReadFull(w.br, x[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(x[:])
	}
	if n > 16<<20 {
		return 0, nil, fmt.Errorf("server frame of %d bytes", n)
	}
	payload = make([]byte, n)
	if _, err := io.ReadFull(w.br, payload); err != nil {
		return 0, nil, err
	}
	return h[0] & 0x0f, payload, nil
}

// expectClose reads frames until a close frame and returns its code and
// reason; data frames before it are returned too.
func (w *hbWS) expectClose(t *testing.T) (int, string, []byte) {
	t.Helper()
	var data []byte
	for {
		op, p, err := w.readFrame(10 * time.Second)
		if err != nil {
			t.Fatalf("no close frame: %v (after %d data bytes)", err, len(data))
		}
		switch op {
		case 0x8:
			if len(p) < 2 {
				return 1005, "", data
			}
			reason := string(p[2:])
			if !utf8.ValidString(reason) {
				t.Errorf("close reason is not UTF-8: %q", reason)
			}
			return int(binary.BigEndian.Uint16(p)), reason, data
		case 0x1, 0x2, 0x0:
			data = append(data, p...)
		}
	}
}

// hbRecorder is a basic-mode target that records what each connection
// received until it ended.
func hbRecorder(t *testing.T) (string, <-chan []byte) {
	t.Helper()
	got := make(chan []byte, 64)
	addr, _ := tcpServer(t, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Close()
		got <- b
	})
	return addr, got
}

func hbBackendGot(t *testing.T, got <-chan []byte) []byte {
	t.Helper()
	select {
	case b := <-got:
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("the target connection was not closed")
		return nil
	}
}

// TestHostileFrames writes frames by hand after the handshake: every
// frame that breaks RFC 6455 closes with 1002 and a reason, messages
// over --max_message_bytes close with 1009 without being buffered, and
// nothing of a refused frame reaches the target.
func TestHostileFrames(t *testing.T) {
	t.Parallel()
	target, got := hbRecorder(t)
	host, port, _ := net.SplitHostPort(target)
	g := startGateway(t, "--client_hostname", host, "--client_port", port, "--max_message_bytes", "4096")
	addr := strings.TrimPrefix(g.wsURL(""), "ws://")
	hello := []byte("hello")

	cases := []struct {
		name   string
		frames [][]byte
		code   int
		reason string
		target string // what the target must have received
		atMost int    // or, when > 0, at most this many bytes
	}{
		{"declared over the limit, nothing sent", [][]byte{hbFrame(true, 0, 2, true, nil, 5000)}, 1009, "4096", "", 0},
		{"over the limit", [][]byte{hbData(2, make([]byte, 5000))}, 1009, "4096", "", 0},
		{"length 2^63-1", [][]byte{hbFrame(true, 0, 2, true, nil, 1<<63-1)}, 1009, "limit", "", 0},
		{"length 2^32+1", [][]byte{hbFrame(true, 0, 2, true, nil, 1<<32+1)}, 1009, "limit", "", 0},
		{"length with the top bit set", [][]byte{append([]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0}, hbKey[:]...)}, 1002, "top bit", "", 0},
		{"fragmented beyond the limit", hbFragments(60, 100), 1009, "4096", "", 4096},
		{"unmasked", [][]byte{hbFrame(true, 0, 2, false, hello, -1)}, 1002, "not masked", "", 0},
		{"RSV1 (no compression negotiated)", [][]byte{hbFrame(true, 0x40, 2, true, hello, -1)}, 1002, "reserved", "", 0},
		{"RSV2", [][]byte{hbFrame(true, 0x20, 1, true, hello, -1)}, 1002, "reserved", "", 0},
		{"RSV3 on a ping", [][]byte{hbFrame(true, 0x10, 9, true, hello, -1)}, 1002, "reserved", "", 0},
		{"ping over 125 bytes", [][]byte{hbData(9, make([]byte, 126))}, 1002, "125", "", 0},
		{"close over 125 bytes", [][]byte{hbData(8, make([]byte, 200))}, 1002, "125", "", 0},
		{"fragmented ping", [][]byte{hbFrame(false, 0, 9, true, hello, -1)}, 1002, "fragmented control", "", 0},
		{"continuation first", [][]byte{hbData(0, hello)}, 1002, "continuation", "", 0},
		{"data inside a fragmented message", [][]byte{hbFrame(false, 0, 2, true, hello, -1), hbData(1, hello)}, 1002, "inside", "hello", 0},
		{"close with one byte", [][]byte{hbData(8, []byte{3})}, 1002, "", "", 0},
		{"close with a reason that is not UTF-8", [][]byte{hbData(8, []byte{0x03, 0xe8, 0xff, 0xfe})}, 1002, "", "", 0},
		{"data then a bad frame", [][]byte{hbData(2, hello), hbFrame(true, 0, 2, false, []byte("LEAK"), -1)}, 1002, "not masked", "hello", 0},
	}
	for op := byte(3); op <= 0xf; op++ {
		if op >= 8 && op <= 0xa {
			continue
		}
		cases = append(cases, struct {
			name   string
			frames [][]byte
			code   int
			reason string
			target string
			atMost int
		}{fmt.Sprintf("opcode %#x", op), [][]byte{hbData(op, hello)}, 1002, "opcode", "", 0})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, code, body := hbDialRaw(t, addr, "/")
			if w == nil {
				t.Fatalf("refused: %d %s", code, body)
			}
			for _, f := range c.frames {
				if _, err := w.c.Write(f); err != nil {
					break // the gateway may close before the last frame
				}
			}
			code, reason, _ := w.expectClose(t)
			if code != c.code || !strings.Contains(reason, c.reason) {
				t.Errorf("close %d %q, want %d with %q", code, reason, c.code, c.reason)
			}
			if c.code != 1000 && reason == "" && c.reason != "" {
				t.Errorf("close %d without a reason", code)
			}
			b := hbBackendGot(t, got)
			if c.atMost > 0 {
				if len(b) > c.atMost {
					t.Errorf("the target received %d bytes, more than the limit", len(b))
				}
			} else if string(b) != c.target {
				t.Errorf("the target received %q, want %q", hbShort(string(b)), c.target)
			}
		})
	}

	// Text frames carry bytes: the gateway is a byte tunnel (RFB, wslink
	// msgpack…) and passes text payload through as it is, valid UTF-8 or
	// not; it does not close with 1007.
	t.Run("invalid UTF-8 in text frames passes through", func(t *testing.T) {
		w, code, body := hbDialRaw(t, addr, "/")
		if w == nil {
			t.Fatalf("refused: %d %s", code, body)
		}
		bad := [][]byte{{0xff, 0xfe}, {0xc0, 0xaf}, {0xed, 0xa0, 0x80}, {0xf4, 0x90, 0x80, 0x80}, []byte("ok\x00"), {0xe2, 0x82}}
		var want []byte
		for _, p := range bad {
			want = append(want, p...)
		}
		w.c.Write(hbData(1, bad[0]))
		w.c.Write(hbFrame(false, 0, 1, true, bad[1], -1))
		w.c.Write(hbData(9, []byte("ping")))
		w.c.Write(hbFrame(false, 0, 0, true, bad[2], -1))
		w.c.Write(hbFrame(true, 0, 0, true, bad[3], -1))
		w.c.Write(hbData(1, bad[4]))
		w.c.Write(hbData(1, bad[5])) // a sequence cut at the end of the message
		if op, p, err := w.readFrame(10 * time.Second); err != nil || op != 0xa || string(p) != "ping" {
			t.Fatalf("pong: %x %q %v", op, p, err)
		}
		w.c.Write(hbData(8, []byte{0x03, 0xe8}))
		if code, _, _ := w.expectClose(t); code != 1000 {
			t.Errorf("close echo %d, want 1000", code)
		}
		if b := hbBackendGot(t, got); !bytes.Equal(b, want) {
			t.Errorf("the target received %x, want %x", b, want)
		}
	})

	// After all that, a normal client is served.
	ws, code, body := dialWS(t, g.wsURL("/"), nil)
	if ws == nil {
		t.Fatalf("after the battery: %d %v", code, body)
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte("still here"))
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	readUntilClose(ws, 5*time.Second)
	ws.Close()
	if b := hbBackendGot(t, got); string(b) != "still here" {
		t.Errorf("after the battery the target got %q", b)
	}
	if strings.Contains(g.log.String(), "panic") {
		t.Errorf("the gateway log mentions a panic")
	}
}

// hbFragments is one binary message in n fragments of size bytes.
func hbFragments(n, size int) [][]byte {
	var out [][]byte
	for i := 0; i < n; i++ {
		op := byte(0)
		if i == 0 {
			op = 2
		}
		out = append(out, hbFrame(i == n-1, 0, op, true, bytes.Repeat([]byte{'f'}, size), -1))
	}
	return out
}

// TestHostileSlowloris: a client that sends its request headers a line a
// second is dropped by the 10 s header timeout on every listener, and
// others are served meanwhile.
func TestHostileSlowloris(t *testing.T) {
	t.Parallel()
	e := lchStart(t, false, 1, map[string]any{"configuration": map[string]any{"port": hbPort(t)}}, "--remote_session_config", hbEchoConfig(t), "--http_port", "0")
	g := e.g
	addrs := map[string]string{"http": g.httpAddr, "websocket": strings.TrimPrefix(g.wsURL(""), "ws://"), "launcher": strings.TrimPrefix(e.base, "http://")}
	type result struct {
		name string
		took time.Duration
		err  error
	}
	results := make(chan result, len(addrs))
	start := time.Now()
	for name, addr := range addrs {
		go func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				results <- result{name, 0, err}
				return
			}
			defer c.Close()
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: "+addr+"\r\n")
			done := make(chan struct{})
			go func() {
				defer close(done)
				// Until the server drops us (or 15 s: a failure).
				c.SetReadDeadline(time.Now().Add(15 * time.Second))
				io.Copy(io.Discard, c)
			}()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-done:
					results <- result{name, time.Since(start), nil}
					return
				case <-tick.C:
					// Keep dribbling a header line; writes fail once dropped.
					fmt.Fprintf(c, "X-Slow-%d: %d\r\n", i, i)
				}
			}
		}()
	}
	// Meanwhile everyone else is served.
	for time.Since(start) < 3*time.Second {
		if code, _ := getJSON(t, g.httpURL("/v1/status")); code != 200 {
			t.Fatalf("status during the slowloris: %d", code)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for range addrs {
		r := <-results
		switch {
		case r.err != nil:
			t.Errorf("%s: %v", r.name, r.err)
		case r.took < 9*time.Second || r.took > 14*time.Second:
			t.Errorf("%s: the slow client was dropped after %s, want about 10 s", r.name, r.took.Round(100*time.Millisecond))
		default:
			t.Logf("%s: slow client dropped after %s", r.name, r.took.Round(100*time.Millisecond))
		}
	}
	hbServesSession(t, g, "Echo Service")
}

// hbPort is a free port for a launcher on a listener of its own.
func hbPort(t *testing.T) int {
	t.Helper()
	var p int
	fmt.Sscan(freePort(t), &p)
	return p
}

// hbEchoConfig writes a services config with "Echo Service" (testsvc).
func hbEchoConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeScript(t, dir, "echo.sh", fmt.Sprintf("case \"$1\" in\nstart) exec %s serve --grandchild \"$WSGW_SESSION_DIR/grandchild.pid\" ;;\nesac\n", svcBin))
	return writeConfig(t, dir, map[string]any{"Echo Service": map[string]any{"script": "echo.sh", "count": 4, "options": map[string]any{}}})
}

// hbServesSession reserves, connects, round-trips and closes a session:
// the gateway still serves normally.
func hbServesSession(t *testing.T, g *gateway, service string, hdr ...string) {
	t.Helper()
	u := g.httpURL("/v1/reserve/" + url.PathEscape(service))
	code, r := getJSON(t, u, hdr...)
	if code != 200 {
		t.Fatalf("reserve after the battery: %d %v", code, r)
	}
	tok := r["token"].(string)
	ws, _ := connectToken(t, g, tok)
	roundTrip(t, ws, 64<<10)
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	ws.Close()
	waitFor(t, "the session's slot to be free", 20*time.Second, func() bool {
		_, m := getJSON(t, g.httpURL("/v1/status"), hdr...)
		for _, s := range m["sessions"].([]any) {
			if strings.HasPrefix(tok, s.(map[string]any)["token_prefix"].(string)) {
				return false
			}
		}
		return true
	})
}

// TestHostileOptionInjection: reservation options with shell syntax,
// quotes, newlines, NUL, long values and keys with '=' reach the script
// only inside WSGW_OPTIONS, byte for byte, never as arguments or
// variables, and no shell ever runs them.
func TestHostileOptionInjection(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pwned := filepath.Join(dir, "pwned")
	os.Mkdir(pwned, 0o755)
	writeScript(t, dir, "inject.sh", fmt.Sprintf(`case "$1" in
start)
	printf '%%s' "$WSGW_OPTIONS" > "$WSGW_SESSION_DIR/options.json"
	env -0 > "$WSGW_SESSION_DIR/env.bin"
	printf '%%s\n' "$#" "$@" > "$WSGW_SESSION_DIR/argv.txt"
	exec %s serve ;;
esac
`, svcBin))
	p := func(n int) string { return filepath.Join(pwned, fmt.Sprint(n)) }
	opts := map[string]string{
		"a":                         "$(touch " + p(1) + ")",
		"b":                         "`touch " + p(2) + "`",
		"c":                         "; touch " + p(3),
		"d":                         "x\ntouch " + p(4) + "\n",
		"e":                         "' ; touch " + p(5) + " ; '",
		"f":                         `" ; touch ` + p(6) + ` ; "`,
		"g":                         "| touch " + p(7),
		"h":                         "&& touch " + p(8) + " &",
		"i":                         "$IFS${PATH}$$\\\r\n\t",
		"j":                         "\x00touch " + p(9),
		"k":                         strings.Repeat("L", 4096),
		"ünï":                       "çödé ✓",
		"k=v":                       "key with an equals sign",
		"LD_PRELOAD":                filepath.Join(dir, "evil.so"),
		"BASH_ENV":                  p(10),
		"ENV":                       p(11),
		"PATH":                      dir,
		"WSGW_TOKEN":                "forged",
		"WSGW_SESSION_DIR":          "/",
		"$(touch pwned12)":          "key is a command",
		"--flag; touch pwned13":     "key is an option",
		"geometry":                  "800x600\"; touch " + p(14),
		strings.Repeat("K", 64):     "longest key",
		"<script>alert(1)</script>": "</script>",
	}
	// The service offers every one of them to clients, as any text: what
	// is tested here is that a value is data, whatever it holds.
	anyText := map[string]any{"x": "(?s).*", "v": "(?s).*"}
	for k := range opts {
		anyText[k] = "(?s).*"
	}
	cfg := writeConfig(t, dir, map[string]any{"Inject": map[string]any{"script": "inject.sh", "count": 4,
		"options": map[string]any{"geometry": "1024x768"}, "client_options": anyText}})
	g := startGateway(t, "--remote_session_config", cfg)
	q := url.Values{}
	for k, v := range opts {
		q.Set(k, v)
	}
	code, r := getJSON(t, g.httpURL("/v1/reserve/Inject?"+q.Encode()))
	if code != 200 {
		t.Fatalf("reserve: %d %v", code, r)
	}
	tok := r["token"].(string)
	ws, h := connectToken(t, g, tok)
	defer ws.Close()

	b, err := os.ReadFile(filepath.Join(h.SessionDir, "options.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]string
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("WSGW_OPTIONS is not a JSON object of strings: %v: %q", err, hbShort(string(b)))
	}
	for k, v := range opts {
		if got[k] != v {
			t.Errorf("option %q reached the script as %q, want %q", hbShort(k), hbShort(got[k]), hbShort(v))
		}
	}
	if len(got) != len(opts) {
		t.Errorf("WSGW_OPTIONS has %d keys, want %d", len(got), len(opts))
	}
	argv, _ := os.ReadFile(filepath.Join(h.SessionDir, "argv.txt"))
	if string(argv) != "1\nstart\n" {
		t.Errorf("the script's arguments: %q, want only \"start\"", argv)
	}
	envb, _ := os.ReadFile(filepath.Join(h.SessionDir, "env.bin"))
	env := map[string]string{}
	for _, kv := range bytes.Split(envb, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	allowed := map[string]bool{"PATH": true, "HOME": true, "USER": true, "LOGNAME": true, "LANG": true, "LC_ALL": true, "LC_CTYPE": true,
		"TZ": true, "TMPDIR": true, "SHELL": true, "WSGW_SERVICE": true, "WSGW_INDEX": true, "WSGW_TOKEN": true, "WSGW_OPTIONS": true,
		"WSGW_SESSION_DIR": true, "PWD": true, "OLDPWD": true, "SHLVL": true, "_": true}
	var names []string
	for k := range env {
		names = append(names, k)
		if !allowed[k] {
			t.Errorf("the script's environment has %s=%q", k, hbShort(env[k]))
		}
	}
	sort.Strings(names)
	if env["WSGW_TOKEN"] != tok || env["WSGW_SESSION_DIR"] != h.SessionDir || env["PATH"] == dir {
		t.Errorf("an option overrode the environment: %v", names)
	}
	if env["WSGW_OPTIONS"] != string(b) {
		t.Errorf("WSGW_OPTIONS in the environment differs from what the script wrote")
	}
	ents, _ := os.ReadDir(pwned)
	sess, _ := os.ReadDir(h.SessionDir) // relative touches run in the session directory
	for _, e := range append(ents, sess...) {
		if e.Name() != "options.json" && e.Name() != "env.bin" && e.Name() != "argv.txt" && e.Name() != "session.log" {
			t.Errorf("an option was run by a shell: %s exists", e.Name())
		}
	}

	// Refusals: each a 400 with a reason, none a crash.
	long := url.Values{"v": {strings.Repeat("x", 4097)}}
	longKey := url.Values{strings.Repeat("K", 65): {"v"}}
	many := url.Values{}
	for i := 0; i < 1000; i++ {
		many.Set(fmt.Sprintf("k%d", i), "v")
	}
	for name, q := range map[string]string{"4097-byte value": long.Encode(), "65-byte key": longKey.Encode(), "1000 options": many.Encode()} {
		code, m := getJSON(t, g.httpURL("/v1/reserve/Inject?"+q))
		if code != http.StatusBadRequest || m["error"] == nil {
			t.Errorf("%s: %d %v, want 400 with a reason", name, code, m)
		}
	}
	// 10000 options: the query alone is over 64 KiB, refused before any
	// handler runs.
	huge := strings.Repeat("k=v&", 20000)
	if code, _, body := hbGet(t, g.httpAddr, "/v1/reserve/Inject?"+huge); code != http.StatusRequestHeaderFieldsTooLarge && code != http.StatusBadRequest {
		t.Errorf("a 80 KB query: %d %q", code, hbShort(body))
	}

	// Header injection: CR LF in an option, a service name or a launcher
	// application never becomes a response header.
	code, hdr, body := hbGet(t, g.httpAddr, "/v1/reserve/Inject?x=a%0d%0aSet-Cookie:%20pwned=1%0d%0a")
	if hdr.Get("Set-Cookie") != "" || code != 200 || !strings.Contains(body, `\r\nSet-Cookie`) {
		t.Errorf("CR LF in an option: %d %v %q", code, hdr, hbShort(body))
	}
	code, hdr, body = hbGet(t, g.httpAddr, "/v1/reserve/In%0d%0aSet-Cookie:%20pwned=1")
	if hdr.Get("Set-Cookie") != "" || code != 404 {
		t.Errorf("CR LF in a service name: %d %v %q", code, hdr, hbShort(body))
	}
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	hbServesSession(t, g, "Inject")
}

// TestHostileLauncherInjection: a launcher client's values reach the
// application as single arguments (no shell), header injection goes
// nowhere, and bodies too big, too deep, truncated or not an object are
// refused with a status and a reason.
func TestHostileLauncherInjection(t *testing.T) {
	t.Parallel()
	e := lchStart(t, true, 2, nil)
	pwned := t.TempDir()
	file := "$(touch " + filepath.Join(pwned, "1") + "); `touch " + filepath.Join(pwned, "2") + "` ; touch " + filepath.Join(pwned, "3")
	user := "a\nb\"c'd e\\f | touch " + filepath.Join(pwned, "4")
	body, _ := json.Marshal(map[string]any{"application": "echo-args", "file": file, "user": user})
	s := e.launch(string(body))
	id := s["id"].(string)
	var args []string
	waitFor(t, "the application's arguments in its log", 10*time.Second, func() bool {
		log := e.sessionLog(id)
		i := strings.Index(log, "wslinksrv args ")
		if i < 0 {
			return false
		}
		line, _, _ := strings.Cut(log[i+len("wslinksrv args "):], "\n")
		return json.Unmarshal([]byte(line), &args) == nil
	})
	var sawFile, sawUser bool
	for _, a := range args {
		sawFile = sawFile || a == file
		sawUser = sawUser || a == user
	}
	if !sawFile || !sawUser {
		t.Errorf("client values did not reach the application as single arguments: %q", args)
	}
	if ents, _ := os.ReadDir(pwned); len(ents) > 0 {
		t.Errorf("a client value was run by a shell: %v", ents)
	}
	e.do("DELETE", "/paraview/"+id, "")

	addr := strings.TrimPrefix(e.base, "http://")
	post := func(hdrs, body string) (int, http.Header, string) {
		return hbRaw(t, addr, "POST /paraview/ HTTP/1.1\r\nHost: "+addr+"\r\nConnection: close\r\n"+hdrs+
			fmt.Sprintf("Content-Length: %d\r\n\r\n", len(body))+body)
	}
	for name, c := range map[string]struct {
		body string
		code int
	}{
		"truncated":          {`{"application": "wslink"`, 400},
		"array":              {`[{"application": "wslink"}]`, 400},
		"string":             {`"wslink"`, 400},
		"number":             {`42`, 400},
		"null":               {`null`, 400},
		"empty":              {``, 400},
		"two objects":        {`{"application": "wslink"} {}`, 400},
		"application number": {`{"application": 5}`, 400},
		"deeply nested":      {`{"application": "wslink", "x": ` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`, 400},
		"deep object":        {strings.Repeat(`{"a":`, 50000) + "1" + strings.Repeat("}", 50000), 400},
		"not UTF-8":          {"{\"application\": \"\xff\xfe\"}", 404},
		"huge number":        {`{"application": "nope", "n": 1e999999}`, 404},
		"CR LF application":  {`{"application": "x\r\nSet-Cookie: pwned=1"}`, 404},
	} {
		code, hdr, b := post("", c.body)
		var m map[string]any
		if code != c.code || json.Unmarshal([]byte(b), &m) != nil || m["error"] == nil || hdr.Get("Set-Cookie") != "" {
			t.Errorf("%s: %d %v %q, want %d with a JSON reason", name, code, hdr, hbShort(b), c.code)
		}
	}

	// Many megabytes, announced or chunked: 413 without reading them all.
	for _, chunked := range []bool{false, true} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(20 * time.Second))
		total := 64 << 20
		hdr := fmt.Sprintf("Content-Length: %d\r\n", total)
		if chunked {
			hdr = "Transfer-Encoding: chunked\r\n"
		}
		io.WriteString(c, "POST /paraview/ HTTP/1.1\r\nHost: "+addr+"\r\n"+hdr+"\r\n")
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			chunk := bytes.Repeat([]byte(" "), 64<<10)
			for sent := 0; sent < total; sent += len(chunk) {
				var err error
				if chunked {
					_, err = fmt.Fprintf(c, "%x\r\n%s\r\n", len(chunk), chunk)
				} else {
					_, err = c.Write(chunk)
				}
				if err != nil {
					return
				}
			}
		}()
		start := time.Now()
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("64 MB body (chunked %v): no answer: %v", chunked, err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(b), "larger than") {
			t.Errorf("64 MB body (chunked %v): %d %q", chunked, resp.StatusCode, b)
		}
		t.Logf("64 MB body (chunked %v) refused after %s", chunked, time.Since(start).Round(time.Millisecond))
		c.Close()
		wg.Wait()
	}
	// The launcher still launches.
	s = e.launch(`{"application": "wslink"}`)
	e.do("DELETE", "/paraview/"+s["id"].(string), "")
}

// TestHostileConfigs: services and launcher configs that are huge, deep,
// truncated or hostile stop the start with exit status 2 and a message
// naming the file, in bounded time.
func TestHostileConfigs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeScript(t, dir, "s.sh", "exit 0\n")
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	svc := `{"S": {"script": "s.sh", "count": 1, "options": %s}}`
	lch := `{"configuration": {"port": 0, "endpoint": "pv", "sessionURL": "ws://h/${id}", "log_dir": "` + filepath.Join(dir, "logs") + `"},
 "resources": [{"host": "127.0.0.1", "port_range": [40000, 40001]}], "apps": {"a": {"cmd": ["x"]}}, "properties": %s}`
	for _, c := range []struct {
		name, flag, file, want string
	}{
		{"services too big", "--remote_session_config", write("big.json", fmt.Sprintf(svc, `{"x": "`+strings.Repeat("a", 5<<20)+`"}`)), "larger than"},
		{"services deeply nested", "--remote_session_config", write("deep.json", fmt.Sprintf(svc, `{"x": `+strings.Repeat("[", 20000)+strings.Repeat("]", 20000)+`}`)), "deep.json"},
		{"services truncated", "--remote_session_config", write("trunc.json", `{"S": {"script": "s.sh", "count": 1,`), "trunc.json"},
		{"services not an object", "--remote_session_config", write("arr.json", `[1, 2]`), "arr.json"},
		{"services script outside", "--remote_session_config", write("esc.json", `{"S": {"script": "../../../../../../bin/sh\u0000", "count": 1, "options": {}}}`), "esc.json"},
		{"services name with a NUL", "--remote_session_config", write("nul.json", `{"S\u0000": {"script": "s.sh", "count": 1, "options": {}}}`), "nul.json"},
		{"services huge count", "--remote_session_config", write("count.json", `{"S": {"script": "s.sh", "count": 1e18, "options": {}}}`), "count"},
		{"launcher too big", "--launcher_config", write("big.config", fmt.Sprintf(lch, `{"x": "`+strings.Repeat("a", 5<<20)+`"}`)), "larger than"},
		{"launcher deeply nested", "--launcher_config", write("deep.config", fmt.Sprintf(lch, `{"x": `+strings.Repeat("[", 20000)+strings.Repeat("]", 20000)+`}`)), "deep.config"},
		{"launcher truncated", "--launcher_config", write("trunc.config", `{"configuration": {"port": 0,`), "trunc.config"},
		{"launcher unclosed comment", "--launcher_config", write("comment.config", "{} /* no end"), "never closed"},
		{"launcher all ports", "--launcher_config", write("ports.config", strings.Replace(fmt.Sprintf(lch, `{}`), "[40000, 40001]", "[0, 99999]", 1)), "port_range"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, gwBin, "--bind_address", "127.0.0.1", "--http_port", "0", "--session_dir", filepath.Join(dir, "sessions"), c.flag, c.file, "0")
			cmd.Stderr = &stderr
			err := cmd.Run()
			if ctx.Err() != nil {
				t.Fatalf("still running after 30 s: %s", stderr.String())
			}
			code := cmd.ProcessState.ExitCode()
			if code != 2 || !strings.Contains(stderr.String(), c.want) || strings.Contains(stderr.String(), "panic") {
				t.Errorf("exit %d (%v), stderr %q; want 2 and %q", code, err, hbShort(stderr.String()), c.want)
			}
			if len(stderr.String()) > 4096 {
				t.Errorf("a %d-byte error message", len(stderr.String()))
			}
		})
	}
}

// hbClientFrom makes HTTP and websocket clients that stand for a client
// at ip. Every process on this machine is one client to the gateway (its
// limits key local peers by user), so the tests play a reverse proxy in
// front of several clients: the gateway must be started with
// proxyArgs(), and each request says its client in X-Forwarded-For. The
// connections come from testProxyAddr, so that the test's other requests
// (from 127.0.0.1) are not the proxy's.
func hbClientFrom(ip string) (*http.Client, *websocket.Dialer) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(testProxyAddr)}, Timeout: 10 * time.Second}
	wd := &websocket.Dialer{HandshakeTimeout: 10 * time.Second, NetDialContext: d.DialContext}
	dialerClient.Store(wd, ip)
	return &http.Client{Timeout: 30 * time.Second, Transport: forwardedFor{ip, &http.Transport{DialContext: d.DialContext}}}, wd
}

// dialerClient maps the websocket dialers hbClientFrom made to their
// client's address (hbDialFrom adds it as X-Forwarded-For).
var dialerClient sync.Map

// forwardedFor adds the client's address to each request, as a proxy.
type forwardedFor struct {
	ip   string
	next http.RoundTripper
}

func (f forwardedFor) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Forwarded-For", f.ip)
	return f.next.RoundTrip(r)
}

// testProxyAddr is where hbClientFrom's connections come from.
const testProxyAddr = "127.0.0.254"

// proxyArgs makes the test process, from testProxyAddr, a trusted proxy
// of the gateway, so that hbClientFrom's clients are told apart by
// X-Forwarded-For.
func proxyArgs() []string {
	return []string{"--trusted_proxy", testProxyAddr, "--trusted_proxy_user", strconv.Itoa(os.Getuid())}
}

func hbDo(t *testing.T, c *http.Client, method, u string, hdr ...string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, u, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: %d, body is not JSON: %q", method, u, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

func hbDialFrom(t *testing.T, d *websocket.Dialer, u string, hdr http.Header) (*websocket.Conn, int, string) {
	t.Helper()
	if ip, ok := dialerClient.Load(d); ok {
		hdr = hdr.Clone()
		if hdr == nil {
			hdr = http.Header{}
		}
		hdr.Set("X-Forwarded-For", ip.(string))
	}
	ws, resp, err := d.Dial(u, hdr)
	if err == nil {
		return ws, 101, ""
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return nil, resp.StatusCode, string(b)
}

// TestHostileTokenGuessing: unknown reservation tokens and wrong security
// tokens are refused (403, 401) and then limited (429) per address, while
// other addresses are served; long and odd tokens are refused the same
// way; and no log line, even at --verbose 3, holds a whole token.
func TestHostileTokenGuessing(t *testing.T) {
	t.Parallel()
	const secTok = "Sec-0123456789abcdef-0123456789abcdef"
	g := startGatewayExact(t, append(proxyArgs(), "--verbose", "3", "--bind_address", "127.0.0.1", "--http_port", "0",
		"--remote_session_config", hbEchoConfig(t), "--auth_fail_limit", "5", "--security_token", secTok, "0")...)
	auth := []string{"Authorization", "Bearer " + secTok}
	_, guesserWS := hbClientFrom("127.0.0.2")
	restHTTP, _ := hbClientFrom("127.0.0.3")
	userHTTP, userWS := hbClientFrom("127.0.0.4")

	var tokens []string
	reserve := func(c *http.Client) string {
		code, r := hbDo(t, c, "GET", g.httpURL("/v1/reserve/Echo%20Service"), auth...)
		if code != 200 {
			t.Fatalf("reserve: %d %v", code, r)
		}
		tok := r["token"].(string)
		tokens = append(tokens, tok)
		return tok
	}
	real := reserve(userHTTP)

	// Guessing reservation tokens on the websocket: 403 five times, then
	// 429, even for a token that exists.
	flip := map[byte]byte{'0': '1'}[real[35]]
	if flip == 0 {
		flip = '0'
	}
	for i, guess := range []string{
		real[:35] + string(flip), "X" + real[1:], "00000000-0000-4000-8000-000000000000",
		strings.Repeat("a", 129), "tok%00en",
	} {
		_, code, body := hbDialFrom(t, guesserWS, g.wsURL("/websockify?token="+url.QueryEscape(guess)), nil)
		if code != http.StatusForbidden || !strings.Contains(body, "error") {
			t.Fatalf("guess %d: %d %s", i, code, body)
		}
	}
	if _, code, body := hbDialFrom(t, guesserWS, g.wsURL("/?token="+real), nil); code != http.StatusTooManyRequests || !strings.Contains(body, "wait a minute") {
		t.Fatalf("after five wrong tokens, the real one from the same address: %d %s", code, body)
	}
	// A 10 KB token, from an address that has guessed nothing (so the
	// token itself is judged, not the address's failures): 403, no crash,
	// no echo of it.
	_, longWS := hbClientFrom("127.0.0.6")
	long := strings.Repeat("t", 10000)
	if _, code, body := hbDialFrom(t, longWS, g.wsURL("/?token="+long), nil); code != http.StatusForbidden || strings.Contains(body, long[:200]) {
		t.Fatalf("10 KB token: %d %s, want 403 without the token", code, hbShort(body))
	}

	// Guessing the security token on the REST API: 401 five times, then 429.
	for i := 0; i < 5; i++ {
		code, m := hbDo(t, restHTTP, "GET", g.httpURL("/v1/status"), "Authorization", fmt.Sprintf("Bearer %s%d", secTok[:20], i))
		if code != http.StatusUnauthorized {
			t.Fatalf("wrong security token %d: %d %v", i, code, m)
		}
	}
	if code, m := hbDo(t, restHTTP, "GET", g.httpURL("/v1/status"), auth...); code != http.StatusTooManyRequests {
		t.Fatalf("the right security token after five wrong ones: %d %v", code, m)
	}
	if code, m := hbDo(t, restHTTP, "GET", g.httpURL("/v1/status?security_token="+url.QueryEscape(secTok))); code != http.StatusTooManyRequests {
		t.Fatalf("the right security token in the query after five wrong ones: %d %v", code, m)
	}

	// Another address is not affected: its session works.
	ws, code, body := hbDialFrom(t, userWS, g.wsURL("/websockify?token="+real), nil)
	if ws == nil {
		t.Fatalf("the real user is refused: %d %s", code, body)
	}
	if _, _, err := readLine(ws, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, ws, 32<<10)

	// Tokens in every place a client can put one.
	other := reserve(userHTTP)
	hbDo(t, userHTTP, "GET", g.httpURL("/v1/check_token"), "X-Wsgw-Token", other)
	if code, m := hbDo(t, userHTTP, "GET", g.httpURL("/v1/release/"+other)); code != http.StatusUnauthorized {
		t.Errorf("release without credentials: %d %v, want 401", code, m)
	}
	if code, m := hbDo(t, userHTTP, "GET", g.httpURL("/v1/release/"+other), "Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"); code != http.StatusUnauthorized {
		t.Errorf("cross-site release without a credential: %d %v, want 401", code, m)
	}
	if _, code, body := hbDialFrom(t, userWS, g.wsURL("/websockify?token="+real), nil); code != http.StatusConflict {
		t.Errorf("a second websocket on a busy token: %d %s, want 409", code, hbShort(body))
	}
	if _, code, body := hbDialFrom(t, userWS, g.wsURL("/websockify?token="+other), http.Header{"Origin": {"http://evil.example"}}); code != http.StatusForbidden {
		t.Errorf("cross-site websocket: %d %s, want 403", code, hbShort(body))
	}
	if code, m := hbDo(t, userHTTP, "GET", g.httpURL("/v1/release/"+other), auth...); code != http.StatusOK {
		t.Errorf("release with the security token: %d %v, want 200", code, m)
	}
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	ws.Close()
	waitFor(t, "tunnel closed in the log", 10*time.Second, func() bool { return strings.Contains(g.log.String(), "tunnel closed") })

	logs := g.log.String()
	if strings.Contains(logs, secTok) {
		t.Errorf("the security token is in the log")
	}
	if !strings.Contains(logs, real[:8]) {
		t.Errorf("the log does not even have the token prefix")
	}
	t.Run("no whole reservation token in the log", func(t *testing.T) {
		var leaks []string
		for _, tok := range tokens {
			for _, line := range strings.Split(logs, "\n") {
				if strings.Contains(line, tok) {
					leaks = append(leaks, hbShort(line))
				}
			}
		}
		if len(leaks) == 0 {
			return
		}
		for _, l := range leaks {
			t.Logf("a whole reservation token in a log line: %s", l)
		}
		t.Errorf("%d log lines hold a whole reservation token", len(leaks))
	})
	t.Run("check_token guesses are limited", func(t *testing.T) {
		c, _ := hbClientFrom("127.0.0.5")
		for i := 0; i < 10; i++ {
			code, m := hbDo(t, c, "GET", g.httpURL("/v1/check_token"), append(auth, "X-Wsgw-Token", fmt.Sprintf("00000000-0000-4000-8000-%012d", i))...)
			if code == http.StatusTooManyRequests {
				return
			}
			if code != http.StatusForbidden {
				t.Fatalf("check_token guess %d: %d %v", i, code, m)
			}
		}
		t.Errorf("10 unknown tokens on /v1/check_token with --auth_fail_limit 5, never a 429")
	})
}

// TestHostileCrossSite: browser pages from other sites cannot open a
// websocket (ws port, HTTP port, /proxy) or use the admin REST calls,
// whatever form their Origin takes.
func TestHostileCrossSite(t *testing.T) {
	t.Parallel()
	e := lchStart(t, true, 1, nil, "--remote_session_config", hbEchoConfig(t))
	g := e.g
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	s := e.launch(`{"application": "wslink"}`)
	id := s["id"].(string)
	wsAddr := strings.TrimPrefix(g.wsURL(""), "ws://")
	bad := []string{"http://evil.example", "null", "http://127.0.0.1.evil.example", "http://evil.example/127.0.0.1",
		"http://127.0.0.1@evil.example", "file://", "http://127.0.0.2", "http://localhost", "https://[::1]", "x", "http://evil.example:" + strings.Split(g.httpAddr, ":")[1]}
	for _, o := range bad {
		for _, c := range []struct{ name, addr, path string }{
			{"ws port", wsAddr, "/websockify?token=" + tok},
			{"http port", g.httpAddr, "/websockify?token=" + tok},
			{"proxy", g.httpAddr, "/proxy?sessionId=" + id + "&path=ws"},
			{"rpc", g.httpAddr, "/v1/rpc"},
		} {
			w, code, body := hbDialRaw(t, c.addr, c.path, "Origin", o)
			if w != nil || code != http.StatusForbidden || !strings.Contains(body, "Origin") {
				t.Errorf("%s with Origin %q: %d %q", c.name, o, code, hbShort(body))
			}
			if w != nil {
				w.c.Close()
			}
		}
		// The admin calls refuse it too, even from loopback.
		for _, p := range []string{"/v1/stop", "/v1/release/" + tok, "/debug/pprof/"} {
			code, _, body := hbGet(t, g.httpAddr, p, "Origin", o)
			if code != http.StatusForbidden {
				t.Errorf("%s with Origin %q: %d %q", p, o, code, hbShort(body))
			}
		}
		_, m := getJSON(t, g.httpURL("/v1/status"), "Origin", o)
		if strings.Contains(fmt.Sprint(m), tok) || m["admin"] == true {
			t.Errorf("status with Origin %q shows tokens or admin", o)
		}
	}
	for _, p := range []string{"/v1/stop", "/v1/release/" + tok} {
		if code, _, _ := hbGet(t, g.httpAddr, p, "Sec-Fetch-Site", "cross-site"); code != http.StatusForbidden {
			t.Errorf("%s with Sec-Fetch-Site: cross-site: %d", p, code)
		}
	}
	// The gateway's own pages (any port of its host) are allowed.
	own := "http://127.0.0.1:" + strings.Split(g.httpAddr, ":")[1]
	ws, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), http.Header{"Origin": {own}})
	if ws == nil {
		t.Fatalf("own Origin refused: %d %v", code, body)
	}
	ws.Close()
	pws := e.dial(id, "ws")
	pws.Close()
	e.do("DELETE", "/paraview/"+id, "")
	hbServesSession(t, g, "Echo Service")
}

// TestHostileDNSRebinding: a page on another site whose name is made to
// resolve to the gateway's address sends its own Host and a matching
// Origin; it must not be taken for the gateway's own page, nor for a
// loopback administrator.
func TestHostileDNSRebinding(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	evil := "rebind.evil.example:" + strings.Split(g.httpAddr, ":")[1]
	code, _, body := hbRaw(t, g.httpAddr, "GET /v1/status HTTP/1.1\r\nHost: "+evil+"\r\nOrigin: http://"+evil+
		"\r\nSec-Fetch-Site: same-origin\r\nConnection: close\r\n\r\n")
	leaks := code == 200 && strings.Contains(body, tok)
	wsEvil := "rebind.evil.example:" + strings.Split(g.wsAddr, ":")[1]
	w, wcode, _ := hbDialRaw(t, g.wsAddr, "/?token="+tok, "Host", wsEvil, "Origin", "http://"+wsEvil)
	if w != nil {
		w.c.Close()
	}
	if !leaks && w == nil {
		return
	}
	if leaks {
		t.Errorf("GET /v1/status with Host %s: %d, the tokens are shown to the rebinding page", evil, code)
	}
	if w != nil {
		t.Errorf("a websocket from Origin http://%s with Host %s was accepted (%d)", wsEvil, wsEvil, wcode)
	}
}

// TestHostileRPC: malformed JSON-RPC on /v1/rpc gets the documented error
// codes, a message over 1 MiB closes with 1009, nothing crashes, and the
// control plane still answers afterwards.
func TestHostileRPC(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 1, nil)
	u := "ws://" + g.httpAddr + "/v1/rpc"
	ws, code, body := dialWS(t, u, nil)
	if ws == nil {
		t.Fatalf("/v1/rpc refused: %d %v", code, body)
	}
	defer ws.Close()
	ask := func(msg string) any {
		t.Helper()
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatalf("write: %v", err)
		}
		ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, b, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("no answer to %q: %v", hbShort(msg), err)
		}
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("answer to %q is not JSON: %q", hbShort(msg), hbShort(string(b)))
		}
		return v
	}
	errCode := func(v any) float64 {
		m, _ := v.(map[string]any)
		e, _ := m["error"].(map[string]any)
		c, _ := e["code"].(float64)
		if msg, _ := e["message"].(string); c != 0 && msg == "" {
			t.Errorf("error %v without a message", e)
		}
		return c
	}
	longID := `"` + strings.Repeat("i", 10000) + `"`
	for _, c := range []struct {
		name, msg string
		code      float64
	}{
		{"not JSON", "not json", -32700},
		{"truncated", `{"jsonrpc": "2.0", "method": "server.info", "id": 1`, -32700},
		{"deeply nested batch", strings.Repeat("[", 100000) + strings.Repeat("]", 100000), -32700},
		{"deeply nested params", `{"jsonrpc": "2.0", "method": "server.info", "id": 1, "params": {"a": ` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}}`, -32700},
		{"empty batch", `[]`, -32600},
		{"batch of 101", "[" + strings.TrimSuffix(strings.Repeat(`{"jsonrpc": "2.0", "method": "server.info", "id": 1},`, 101), ",") + "]", -32600},
		{"wrong version", `{"jsonrpc": "1.0", "method": "server.info", "id": 1}`, -32600},
		{"no method", `{"jsonrpc": "2.0", "id": 1}`, -32600},
		{"object id", `{"jsonrpc": "2.0", "method": "server.info", "id": {"a": 1}}`, -32600},
		{"string", `"server.info"`, -32600},
		{"null", `null`, -32600},
		{"unknown method", `{"jsonrpc": "2.0", "method": "$(touch /tmp/x)", "id": 1}`, -32601},
		{"params not an object", `{"jsonrpc": "2.0", "method": "server.info", "params": [1, 2], "id": 1}`, -32602},
		{"unknown param", `{"jsonrpc": "2.0", "method": "jobs.get", "params": {"id": "j", "extra": 1}, "id": 1}`, -32602},
		{"wrong param type", `{"jsonrpc": "2.0", "method": "jobs.get", "params": {"id": 5}, "id": 1}`, -32602},
		{"long id echoed", `{"jsonrpc": "2.0", "method": "server.info", "id": ` + longID + `}`, 0},
	} {
		v := ask(c.msg)
		got := errCode(v)
		if c.code == 0 {
			if got != 0 || v.(map[string]any)["id"] != strings.Trim(longID, `"`) {
				t.Errorf("%s: %v", c.name, hbShort(fmt.Sprint(v)))
			}
			continue
		}
		if got != c.code {
			t.Errorf("%s: error code %v, want %v (%s)", c.name, got, c.code, hbShort(fmt.Sprint(v)))
		}
	}
	// A batch of bad items answers each one.
	if v, ok := ask(`[1, "x", {"jsonrpc": "2.0", "method": "server.info", "id": 7}]`).([]any); !ok || len(v) != 3 || errCode(v[0]) != -32600 || errCode(v[2]) != 0 {
		t.Errorf("mixed batch: %v", v)
	}
	// Notifications are not answered, whatever they hold.
	ws.WriteMessage(websocket.TextMessage, []byte(`{"jsonrpc": "2.0", "method": "$(touch /tmp/x)"}`))
	if v := ask(`{"jsonrpc": "2.0", "method": "server.info", "id": "after"}`); v.(map[string]any)["id"] != "after" {
		t.Errorf("a notification was answered: %v", v)
	}
	// Over 1 MiB: 1009.
	ws.WriteMessage(websocket.TextMessage, []byte(`{"jsonrpc": "2.0", "method": "server.info", "id": 1, "params": {"x": "`+strings.Repeat("x", 2<<20)+`"}}`))
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err := ws.ReadMessage()
	if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != websocket.CloseMessageTooBig {
		t.Errorf("a 2 MiB message: %v, want a close with 1009", err)
	}
	// Still serving.
	ws2, code, body := dialWS(t, u, nil)
	if ws2 == nil {
		t.Fatalf("/v1/rpc after the battery: %d %v", code, body)
	}
	defer ws2.Close()
	ws = ws2
	if v := ask(`{"jsonrpc": "2.0", "method": "server.info", "id": 1}`); errCode(v) != 0 {
		t.Errorf("server.info after the battery: %v", v)
	}
	hbServesSession(t, g, "Echo Service")
}
