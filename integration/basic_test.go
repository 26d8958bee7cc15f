package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// echo copies a connection back to itself.
func echo(c net.Conn) { io.Copy(c, c); c.Close() }

func TestSeedBasicCommandLineVerbatim(t *testing.T) {
	t.Parallel()
	// The seed: websocketserver.py --http_directory DIR --http_port 9000
	//   --client_hostname localhost --client_port 5900 --verbose 1 9090
	target, _ := tcpServer(t, echo)
	_, tport, _ := net.SplitHostPort(target)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("<h1>hi</h1>"), 0o644)
	httpPort, wsPort := freePort(t), freePort(t)
	g := startGatewayExact(t, "--http_directory", dir, "--http_port", httpPort, "--client_hostname", "localhost",
		"--client_port", tport, "--verbose", "1", wsPort)
	if !strings.HasSuffix(g.wsAddr, ":"+wsPort) || !strings.HasSuffix(g.httpAddr, ":"+httpPort) {
		t.Fatalf("listening on %s and %s, want ports %s and %s", g.wsAddr, g.httpAddr, wsPort, httpPort)
	}
	ws, code, body := dialWS(t, "ws://127.0.0.1:"+wsPort+"/", nil)
	if ws == nil {
		t.Fatalf("refused: %d %v", code, body)
	}
	defer ws.Close()
	roundTrip(t, ws, 256<<10)
	resp, err := http.Get("http://127.0.0.1:" + httpPort + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "<h1>hi</h1>" {
		t.Fatalf("index.html: %q", b)
	}
}

// roundTrip sends n random bytes in varied message sizes and checks the
// echo is byte-exact.
func roundTrip(t *testing.T, ws *websocket.Conn, n int) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	wrote := make(chan struct{})
	defer func() { <-wrote }()
	go func() {
		defer close(wrote)
		for off, step := 0, 1; off < len(data); step = (step*3 + 7) % 65536 {
			end := off + step%65536 + 1
			if end > len(data) {
				end = len(data)
			}
			if err := ws.WriteMessage(websocket.BinaryMessage, data[off:end]); err != nil {
				return
			}
			off = end
		}
	}()
	got, err := readN(ws, n, 30*time.Second)
	if err != nil {
		t.Fatalf("reading echo: %v after %d bytes", err, len(got))
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo differs from what was sent (%d bytes)", n)
	}
}

// freePort is a port of 127.0.0.1 free now, for a program the test starts
// next: one below the ephemeral range (lchPorts), so that no outgoing
// connection of a test running beside this one takes it meanwhile.
func freePort(t *testing.T) string {
	t.Helper()
	lo, _ := lchPorts(t, 1)
	return strconv.Itoa(lo)
}

// freeAddr is 127.0.0.1:freePort.
func freeAddr(t *testing.T) string {
	t.Helper()
	return "127.0.0.1:" + freePort(t)
}

func basicGateway(t *testing.T, handle func(net.Conn), extra ...string) (*gateway, <-chan net.Conn) {
	t.Helper()
	target, conns := tcpServer(t, handle)
	host, port, _ := net.SplitHostPort(target)
	g := startGateway(t, append([]string{"--client_hostname", host, "--client_port", port}, extra...)...)
	return g, conns
}

func TestBasicSubprotocols(t *testing.T) {
	t.Parallel()
	g, _ := basicGateway(t, echo)
	for _, c := range []struct {
		offer []string
		want  string
	}{
		{nil, ""},
		{[]string{"binary"}, "binary"},
		{[]string{"binary", "base64"}, "binary"},
		{[]string{"base64"}, ""},
	} {
		d := *dialer
		d.Subprotocols = c.offer
		ws, _, err := d.Dial(g.wsURL("/websockify"), nil)
		if err != nil {
			t.Fatalf("offer %v: %v", c.offer, err)
		}
		if ws.Subprotocol() != c.want {
			t.Errorf("offer %v: got subprotocol %q, want %q", c.offer, ws.Subprotocol(), c.want)
		}
		roundTrip(t, ws, 1000)
		ws.Close()
	}
}

func TestBasicAnyPathAndByteExact(t *testing.T) {
	t.Parallel()
	g, _ := basicGateway(t, echo)
	for _, p := range []string{"/", "/websockify", "/some/deep/path?x=1"} {
		ws, code, body := dialWS(t, g.wsURL(p), nil)
		if ws == nil {
			t.Fatalf("%s refused: %d %v", p, code, body)
		}
		roundTrip(t, ws, 3<<20)
		ws.Close()
	}
}

func TestBasicClientCloseClosesTarget(t *testing.T) {
	t.Parallel()
	g, conns := basicGateway(t, func(c net.Conn) {})
	ws, _, _ := dialWS(t, g.wsURL("/"), nil)
	var c net.Conn
	select {
	case c = <-conns:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not connect to the target")
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte("last words"))
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, "bye"), time.Now().Add(time.Second))
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("target did not see EOF: %v", err)
	}
	if string(got) != "last words" {
		t.Fatalf("target got %q", got)
	}
	ws.Close()
}

func TestBasicTargetCloseDeliversQueuedBytesThen1000(t *testing.T) {
	t.Parallel()
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	g, _ := basicGateway(t, func(c net.Conn) {
		c.Write(payload)
		c.Close()
	})
	ws, _, _ := dialWS(t, g.wsURL("/"), nil)
	got, ce, err := readUntilClose(ws, 20*time.Second)
	if err != nil {
		t.Fatalf("no close frame: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("got %d bytes, want the %d the target sent", len(got), len(payload))
	}
	if ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("close code %d (%q), want 1000", ce.Code, ce.Text)
	}
}

func TestBasicTargetDownIs502(t *testing.T) {
	t.Parallel()
	port := freePort(t) // nothing listens there
	g := startGateway(t, "--client_hostname", "127.0.0.1", "--client_port", port)
	ws, code, body := dialWS(t, g.wsURL("/"), nil)
	if ws != nil {
		t.Fatal("connected to a target that is down")
	}
	if code != http.StatusBadGateway || !strings.Contains(body["error"].(string), "downstream") {
		t.Fatalf("got %d %v", code, body)
	}
}

func TestHTTPPortTakesWebsockets(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g, _ := basicGateway(t, echo, "--http_directory", dir)
	ws, code, body := dialWS(t, "ws://"+g.httpAddr+"/websockify", nil)
	if ws == nil {
		t.Fatalf("refused on the HTTP port: %d %v", code, body)
	}
	roundTrip(t, ws, 100000)
	ws.Close()
	// Its directory has no index.html: / says where the dashboard is.
	code, body = getJSON(t, "http://"+g.httpAddr+"/")
	if msg, _ := body["error"].(string); code != http.StatusNotFound || !strings.Contains(msg, "/wsgw/") {
		t.Fatalf("/ of a directory without index.html: %d %v", code, body)
	}
}

func TestStaticFiles(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := filepath.Join(root, "www")
	os.MkdirAll(filepath.Join(dir, "sub", "empty"), 0o755)
	os.MkdirAll(filepath.Join(dir, "docs"), 0o755)
	files := map[string]string{
		"index.html":      "<html>home</html>",
		"app.js":          "console.log(1)",
		"style.css":       "body{}",
		"data.json":       "{}",
		"img.svg":         "<svg xmlns='http://www.w3.org/2000/svg'/>",
		"docs/index.html": "<html>docs</html>",
		"sub/file.txt":    "plain",
	}
	for n, c := range files {
		os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644)
	}
	os.WriteFile(filepath.Join(root, "secret.txt"), []byte("TOP SECRET"), 0o644)
	os.Symlink(filepath.Join(root, "secret.txt"), filepath.Join(dir, "link.txt"))
	os.Symlink(root, filepath.Join(dir, "uplink"))
	g, _ := basicGateway(t, echo, "--http_directory", dir)

	get := func(p string) (int, string, http.Header) {
		req, _ := http.NewRequest("GET", g.httpURL(""), nil)
		req.URL.RawPath = ""
		req.URL.Opaque = "//" + g.httpAddr + p // send the path exactly as written
		resp, err := insecureClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	for _, c := range []struct{ path, ctype, body string }{
		{"/", "text/html", "<html>home</html>"},
		{"/index.html", "", ""}, // redirects to / (followed)
		{"/app.js", "javascript", "console.log(1)"},
		{"/style.css", "text/css", "body{}"},
		{"/data.json", "application/json", "{}"},
		{"/img.svg", "image/svg+xml", ""},
		{"/docs/", "text/html", "<html>docs</html>"},
	} {
		code, body, h := get(c.path)
		if code != 200 {
			t.Errorf("%s: status %d", c.path, code)
			continue
		}
		if !strings.Contains(h.Get("Content-Type"), c.ctype) {
			t.Errorf("%s: Content-Type %q, want %q", c.path, h.Get("Content-Type"), c.ctype)
		}
		if c.body != "" && body != c.body {
			t.Errorf("%s: body %q", c.path, body)
		}
	}
	for _, p := range []string{
		"/sub/", "/sub/empty/", "/sub", // no listings
		"/../secret.txt", "/%2e%2e/secret.txt", "/%252e%252e/secret.txt", "/..%2fsecret.txt",
		"/sub/..%2f..%2fsecret.txt", "/link.txt", "/uplink/secret.txt", "/nope.html",
		"/..\\secret.txt", "/%2e%2e%5csecret.txt",
	} {
		code, body, _ := get(p)
		if code == 200 || strings.Contains(body, "TOP SECRET") || strings.Contains(body, "file.txt") {
			t.Errorf("%s: status %d body %q", p, code, body)
		}
		if code >= 500 {
			t.Errorf("%s: server error %d", p, code)
		}
	}
}

// writeCert writes a self-signed certificate for 127.0.0.1 and localhost.
func writeCert(t *testing.T, dir string) (string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	cert, keyf := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, keyf
}

func TestTLSOnBothPorts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	www := filepath.Join(dir, "www")
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte("secure"), 0o644)
	g, _ := basicGateway(t, echo, "--cert", cert, "--key", key, "--http_directory", www)
	for _, u := range []string{g.wsURL("/websockify"), "wss://" + g.httpAddr + "/websockify"} {
		ws, code, body := dialWS(t, u, nil)
		if ws == nil {
			t.Fatalf("%s refused: %d %v", u, code, body)
		}
		roundTrip(t, ws, 200000)
		ws.Close()
	}
	resp, err := insecureClient.Get(g.httpURL("/"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.TLS == nil || string(b) != "secure" {
		t.Fatalf("https: TLS=%v body %q", resp.TLS != nil, b)
	}
	// Plain ws on a TLS port is refused.
	if ws, _, err := dialer.Dial("ws://"+g.wsAddr+"/", nil); err == nil {
		ws.Close()
		t.Fatal("plain ws accepted on a TLS port")
	}
}
