package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// fakeVNC is an RFB server offering security None that keeps, per
// connection, the shared flag of ClientInit and every byte the client
// sent after it.
type fakeVNC struct {
	mu    sync.Mutex
	conns []*fakeVNCConn
}

type fakeVNCConn struct {
	mu     sync.Mutex
	shared byte
	after  bytes.Buffer
	closed bool
}

func (c *fakeVNCConn) got() ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.after.Bytes()...), c.closed
}

func (f *fakeVNC) handle(c net.Conn) {
	defer c.Close()
	fc := &fakeVNCConn{}
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	c.Write([]byte("RFB 003.008\n"))
	buf := make([]byte, 12)
	if _, err := io.ReadFull(c, buf); err != nil {
		return
	}
	c.Write([]byte{1, 1})
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return
	}
	c.Write([]byte{0, 0, 0, 0})
	if _, err := io.ReadFull(c, buf[:1]); err != nil {
		return
	}
	fc.shared = buf[0]
	f.mu.Lock()
	f.conns = append(f.conns, fc)
	f.mu.Unlock()
	init := []byte{0, 16, 0, 16, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0}
	init = binary.BigEndian.AppendUint32(init, 4)
	c.Write(append(init, "fake"...))
	p := make([]byte, 4096)
	for {
		n, err := c.Read(p)
		fc.mu.Lock()
		fc.after.Write(p[:n])
		if err != nil {
			fc.closed = true
		}
		fc.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (f *fakeVNC) conn(i int) *fakeVNCConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i < len(f.conns) {
		return f.conns[i]
	}
	return nil
}

// fakeVNCGateway starts a gateway whose service "Fake" is fakeVNC.
func fakeVNCGateway(t *testing.T, opts map[string]any, args ...string) (*gateway, *fakeVNC) {
	t.Helper()
	fv, dir := fakeVNCScript(t)
	p := writeConfig(t, dir, map[string]any{"Fake": map[string]any{"script": "fake.sh", "count": 2, "options": opts}})
	return startGateway(t, append([]string{"--remote_session_config", p}, args...)...), fv
}

// fakeVNCScript starts a fakeVNC and writes, in a new directory it
// returns, the service script fake.sh whose sessions are that server.
func fakeVNCScript(t *testing.T) (*fakeVNC, string) {
	t.Helper()
	fv := &fakeVNC{}
	addr, _ := tcpServer(t, fv.handle)
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	writeScript(t, dir, "fake.sh", fmt.Sprintf(`case "$1" in
start) echo '{"port": %s}'; exec sleep 600 ;;
stop) exit 0 ;;
esac
`, port))
	return fv, dir
}

// rfbClient does the client's side of the handshake on ws (shared flag
// as given) and reads the ServerInit.
func rfbClient(t *testing.T, ws *websocket.Conn, shared byte) {
	t.Helper()
	if b, err := readN(ws, 12, 20*time.Second); err != nil || string(b) != "RFB 003.008\n" {
		t.Fatalf("greeting %q %v", b, err)
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte("RFB 003.008\n"))
	if b, err := readN(ws, 2, 10*time.Second); err != nil || !bytes.Equal(b, []byte{1, 1}) {
		t.Fatalf("security types %v %v", b, err)
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte{1})
	if b, err := readN(ws, 4, 10*time.Second); err != nil || !bytes.Equal(b, []byte{0, 0, 0, 0}) {
		t.Fatalf("security result %v %v", b, err)
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte{shared})
	if b, err := readN(ws, 28, 10*time.Second); err != nil || string(b[24:]) != "fake" {
		t.Fatalf("ServerInit %q %v", b, err)
	}
}

// postJSON sends a request and decodes its JSON answer.
func postJSON(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	var hdr []string
	if body != "" {
		hdr = []string{"Content-Type", "application/json"}
	}
	code, m, _ := call(t, method, url, []byte(body), hdr...)
	return code, m
}

func TestShareViewOnlyHostileClient(t *testing.T) {
	t.Parallel()
	g, fv := fakeVNCGateway(t, map[string]any{})
	tok := g.reserve(t, "Fake", "")["token"].(string)
	// Before the session runs there is nothing to share.
	if code, m := postJSON(t, "POST", g.httpURL("/v1/share/"+tok), `{"mode":"view"}`); code != 409 {
		t.Fatalf("share before start: %d %v", code, m)
	}
	owner, _, err := dialer.Dial(g.wsURL("/websockify?token="+tok), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	rfbClient(t, owner, 1)
	for _, bad := range []string{`{"mode":"admin"}`, `{"mode":"view","expires_in":-1}`, `{"mode":"view","expires_in":1e9}`, `{"mode":`} {
		if code, m := postJSON(t, "POST", g.httpURL("/v1/share/"+tok), bad); code != 400 {
			t.Errorf("share %s: %d %v, want 400", bad, code, m)
		}
	}
	if code, _ := postJSON(t, "POST", g.httpURL("/v1/share/not-a-token"), `{}`); code != 404 {
		t.Errorf("share of an unknown session (administrator): %d, want 404", code)
	}
	code, sh := postJSON(t, "POST", g.httpURL("/v1/share/"+tok), `{"mode":"view"}`)
	if code != 200 || sh["mode"] != "view" || !strings.HasPrefix(sh["url"].(string), "/wsgw/viewer.html#share=") {
		t.Fatalf("share: %d %v", code, sh)
	}
	st := sh["share"].(string)
	if len(st) < 20 || st == tok {
		t.Fatalf("share token %q", st)
	}
	// A share token is not the session's token: it does not release, and
	// a guessed one is refused.
	if code, _ := getJSON(t, g.httpURL("/v1/release/"+st)); code != 404 && code != 403 {
		t.Errorf("release with a share token: %d", code)
	}
	if _, code, _ := dialWS(t, g.wsURL("/websockify?share=x"+st[1:]), nil); code != 403 {
		t.Errorf("a guessed share: %d, want 403", code)
	}

	ws, _, err := dialer.Dial(g.wsURL("/websockify?share="+st), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	// An exclusive ClientInit would disconnect the owner: it is made shared.
	rfbClient(t, ws, 0)
	key := []byte{4, 1, 0, 0, 0, 0, 0, 'x'}
	ptr := []byte{5, 1, 0, 10, 0, 10}
	cut := append([]byte{6, 0, 0, 0, 0, 0, 0, 11}, "touch /tmp/"...)
	qemu := []byte{255, 0, 0, 1, 0, 0, 0, 'x', 0, 0, 0, 0x2d}
	size := append([]byte{251, 0, 8, 0, 8, 0, 1, 0}, make([]byte, 16)...)
	xvp := []byte{252, 0, 1, 2}
	fbur := []byte{3, 0, 0, 0, 0, 0, 0, 16, 0, 16}
	// Input split across frames and mixed with requests for pixels.
	stream := bytes.Join([][]byte{key, ptr, fbur, cut, qemu, size, xvp, key, fbur}, nil)
	for len(stream) > 0 {
		k := min(5, len(stream))
		if err := ws.WriteMessage(websocket.BinaryMessage, stream[:k]); err != nil {
			t.Fatal(err)
		}
		stream = stream[k:]
	}
	var viewer *fakeVNCConn
	waitFor(t, "the share's connection to reach the desktop", 10*time.Second, func() bool {
		viewer = fv.conn(1)
		if viewer == nil {
			return false
		}
		b, _ := viewer.got()
		return len(b) >= 2*len(fbur)
	})
	if viewer.shared != 1 {
		t.Errorf("the share's ClientInit reached the desktop as exclusive (%d)", viewer.shared)
	}
	// Presence: the owner and one viewer.
	code, pres := getJSON(t, g.httpURL("/v1/viewers"), "X-Wsgw-Share", st)
	if vs, _ := pres["viewers"].([]any); code != 200 || len(vs) != 2 || vs[1].(map[string]any)["mode"] != "view" {
		t.Errorf("presence: %d %v", code, pres)
	}
	// A message type the gateway does not know ends the viewer, with a
	// reason, before it reaches the desktop.
	ws.WriteMessage(websocket.BinaryMessage, append([]byte{7}, "whatever"...))
	_, ce, _ := readUntilClose(ws, 10*time.Second)
	if ce == nil || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "type 7") {
		t.Fatalf("close after an unknown message: %v", ce)
	}
	waitFor(t, "the share's desktop connection to close", 10*time.Second, func() bool { _, c := viewer.got(); return c })
	got, _ := viewer.got()
	if !bytes.Equal(got, append(append([]byte(nil), fbur...), fbur...)) {
		t.Errorf("the desktop received %q from a view share, want only the two update requests", got)
	}
	// The owner is untouched and still types.
	owner.WriteMessage(websocket.BinaryMessage, key)
	waitFor(t, "the owner's key", 10*time.Second, func() bool { b, _ := fv.conn(0).got(); return bytes.Equal(b, key) })
}

func TestShareControlRevokeAndEnd(t *testing.T) {
	t.Parallel()
	g, fv := fakeVNCGateway(t, map[string]any{})
	tok := g.reserve(t, "Fake", "")["token"].(string)
	owner, _, err := dialer.Dial(g.wsURL("/websockify?token="+tok), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer owner.Close()
	rfbClient(t, owner, 1)

	// A control share passes input.
	code, sh := postJSON(t, "POST", g.httpURL("/v1/share/"+tok+"?mode=control"), "")
	if code != 200 || sh["mode"] != "control" {
		t.Fatalf("control share: %d %v", code, sh)
	}
	ctl, _, err := dialer.Dial(g.wsURL("/websockify?share="+sh["share"].(string)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ctl.Close()
	rfbClient(t, ctl, 0)
	key := []byte{4, 1, 0, 0, 0, 0, 0, 'y'}
	ctl.WriteMessage(websocket.BinaryMessage, key)
	waitFor(t, "the control share's key", 10*time.Second, func() bool {
		c := fv.conn(1)
		if c == nil {
			return false
		}
		b, _ := c.got()
		return bytes.Equal(b, key)
	})

	// The owner lists the shares with their viewers, and revokes: the
	// viewer is closed at once and the link no longer opens.
	code, list := getJSON(t, g.httpURL("/v1/share/"+tok))
	shares, _ := list["shares"].([]any)
	if code != 200 || len(shares) != 1 || len(shares[0].(map[string]any)["viewers"].([]any)) != 1 {
		t.Fatalf("list: %d %v", code, list)
	}
	start := time.Now()
	if code, m := postJSON(t, "DELETE", g.httpURL("/v1/share/"+tok+"/"+sh["share"].(string)), ""); code != 200 {
		t.Fatalf("revoke: %d %v", code, m)
	}
	_, ce, _ := readUntilClose(ctl, 10*time.Second)
	if ce == nil || ce.Code != websocket.ClosePolicyViolation || !strings.Contains(ce.Text, "revoked") {
		t.Fatalf("close after revoke: %v", ce)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("revocation took %v", d)
	}
	if _, code, _ := dialWS(t, g.wsURL("/websockify?share="+sh["share"].(string)), nil); code != 403 {
		t.Errorf("a revoked share opened: %d", code)
	}
	if code, _ := postJSON(t, "DELETE", g.httpURL("/v1/share/"+tok+"/"+sh["share"].(string)), ""); code != 404 {
		t.Errorf("revoking twice: %d, want 404", code)
	}

	// The same over /v1/rpc.
	ws, _, err := dialer.Dial("ws://"+g.httpAddr+"/v1/rpc", nil)
	if err != nil {
		t.Fatal(err)
	}
	rc := &rpcClient{t: t, ws: ws}
	defer ws.Close()
	var made struct {
		Share string `json:"share"`
		Mode  string `json:"mode"`
	}
	rc.must("shares.create", map[string]any{"token": tok, "mode": "control", "expires_in": 60}, &made)
	var listed struct {
		Shares []struct {
			Share string `json:"share"`
		} `json:"shares"`
	}
	rc.must("shares.list", map[string]any{"token": tok}, &listed)
	if made.Mode != "control" || len(listed.Shares) != 1 || listed.Shares[0].Share != made.Share {
		t.Fatalf("rpc shares: %+v %+v", made, listed)
	}
	if _, e := rc.call("shares.create", map[string]any{"token": tok, "mode": "root"}); e == nil {
		t.Errorf("rpc shares.create with a bad mode succeeded")
	}
	rc.must("shares.revoke", map[string]any{"token": tok, "share": made.Share}, nil)
	if _, e := rc.call("shares.revoke", map[string]any{"token": tok, "share": made.Share}); e == nil {
		t.Errorf("rpc: revoking twice succeeded")
	}

	// Shares end with the session.
	code, sh2 := postJSON(t, "POST", g.httpURL("/v1/share/"+tok), "")
	if code != 200 || sh2["mode"] != "view" {
		t.Fatalf("default share: %d %v", code, sh2)
	}
	v, _, err := dialer.Dial(g.wsURL("/websockify?share="+sh2["share"].(string)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	rfbClient(t, v, 1)
	if code, m := getJSON(t, g.httpURL("/v1/release/"+tok)); code != 200 {
		t.Fatalf("release: %d %v", code, m)
	}
	_, ce, _ = readUntilClose(v, 10*time.Second)
	if ce == nil || !strings.Contains(ce.Text, "ended") {
		t.Fatalf("close when the session ended: %v", ce)
	}
	if _, code, _ := dialWS(t, g.wsURL("/websockify?share="+sh2["share"].(string)), nil); code != 403 {
		t.Errorf("a share of an ended session opened: %d", code)
	}
}

func TestShareRequiresOwner(t *testing.T) {
	t.Parallel()
	g, _ := fakeVNCGateway(t, map[string]any{}, "--security_token", "s3cret-token-for-tests")
	auth := "Authorization"
	bearer := "Bearer s3cret-token-for-tests"
	code, m := getJSON(t, g.httpURL("/v1/reserve/Fake"), auth, bearer)
	if code != 200 {
		t.Fatalf("reserve: %d %v", code, m)
	}
	tok := m["token"].(string)
	for _, c := range []struct{ method, path string }{
		{"POST", "/v1/share/" + tok},
		{"GET", "/v1/share/" + tok},
		{"DELETE", "/v1/share/" + tok + "/x"},
	} {
		if code, m, _ := call(t, c.method, g.httpURL(c.path), nil); code != 401 {
			t.Errorf("%s %s without credentials: %d %v", c.method, c.path, code, m)
		}
	}
	if code, m, _ := call(t, "GET", g.httpURL("/v1/viewers"), nil, "X-Wsgw-Share", "guess"); code != 403 {
		t.Errorf("presence with a guessed share: %d %v", code, m)
	}
	if code, m, _ := call(t, "GET", g.httpURL("/v1/viewers"), nil); code != 400 {
		t.Errorf("presence without a token: %d %v", code, m)
	}
}

// recordingsOf lists the recordings the caller sees.
func recordingsOf(t *testing.T, g *gateway, hdr ...string) []map[string]any {
	t.Helper()
	code, m := getJSON(t, g.httpURL("/v1/recordings"), hdr...)
	if code != 200 {
		t.Fatalf("/v1/recordings: %d %v", code, m)
	}
	var out []map[string]any
	for _, r := range m["recordings"].([]any) {
		out = append(out, r.(map[string]any))
	}
	return out
}

func TestRecordingLimitsAndAccess(t *testing.T) {
	t.Parallel()
	bearer := []string{"Authorization", "Bearer s3cret-token-for-tests"}
	g, _ := fakeVNCGateway(t, map[string]any{"record": true, "record_max_mb": 0.0002, "record_keep_days": 0.00005},
		"--security_token", "s3cret-token-for-tests")
	code, m := getJSON(t, g.httpURL("/v1/reserve/Fake"), bearer...)
	if code != 200 {
		t.Fatalf("reserve: %d %v", code, m)
	}
	tok := m["token"].(string)
	ws, _, err := dialer.Dial(g.wsURL("/websockify?token="+tok), nil)
	if err != nil {
		t.Fatal(err)
	}
	rfbClient(t, ws, 1)
	var recs []map[string]any
	waitFor(t, "the recording to be listed", 10*time.Second, func() bool {
		recs = recordingsOf(t, g, bearer...)
		return len(recs) == 1
	})
	id := recs[0]["id"].(string)
	if recs[0]["service"] != "Fake" || recs[0]["end"] != nil {
		t.Errorf("recording while running: %v", recs[0])
	}
	ws.Close()
	waitFor(t, "the recording to end", 10*time.Second, func() bool {
		recs = recordingsOf(t, g, bearer...)
		return len(recs) == 1 && recs[0]["end"] != nil
	})
	// 0.0002 MiB is 209 bytes: the greeting and security types fit, the
	// ServerInit does not; the file is still complete.
	if recs[0]["truncated"] != true || recs[0]["size"].(float64) > 209 {
		t.Errorf("size limit: %v", recs[0])
	}
	if code, _, _ := call(t, "GET", g.httpURL("/v1/recordings/"+id), nil, bearer...); code != 200 {
		t.Fatalf("GET recording: %d", code)
	}
	req, _ := http.NewRequest("GET", g.httpURL("/v1/recordings/"+id), nil)
	req.Header.Set(bearer[0], bearer[1])
	resp, err := insecureClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(string(data), "var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n'{") ||
		!strings.Contains(string(data), `RFB 003.008\x0a`) || !strings.HasSuffix(string(data), "'EOF'];\n") {
		t.Errorf("recording file:\n%s", data)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("served as %q", ct)
	}
	files, _ := filepath.Glob(filepath.Join(g.dir, "sessions", "*", "recording-*"))
	if len(files) != 2 {
		t.Fatalf("recording files: %v", files)
	}
	for _, f := range files {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v %v", f, st.Mode(), err)
		}
	}
	// Only credentials see recordings; names outside the pattern are
	// not files.
	for _, p := range []string{"/v1/recordings", "/v1/recordings/" + id} {
		if code, _, _ := call(t, "GET", g.httpURL(p), nil); code != 401 {
			t.Errorf("%s without credentials: %d", p, code)
		}
	}
	for _, p := range []string{"/v1/recordings/..%2F..%2Fetc/passwd", "/v1/recordings/" + strings.Split(id, "/")[0] + "/session.log",
		"/v1/recordings/.%2E/recording-1"} {
		if code, _, _ := call(t, "GET", g.httpURL(p), nil, bearer...); code != 404 {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	// record_keep_days of 0.00005 is 4.3 s: then it is deleted.
	waitFor(t, "the old recording to be deleted", 30*time.Second, func() bool {
		return len(recordingsOf(t, g, bearer...)) == 0
	})
	if files, _ := filepath.Glob(filepath.Join(g.dir, "sessions", "*", "recording-*")); len(files) != 0 {
		t.Errorf("files left: %v", files)
	}
}
