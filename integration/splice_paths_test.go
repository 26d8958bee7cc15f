package integration

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Every path bytes take through the gateway's splice, through the real
// binary: the zero-copy download (splice(2) on Linux) and the copy path
// it falls back to (WSGATEWAY_SPLICE=off stands for a kernel that
// refuses), over ws and wss (TLS always takes the copy path: no kernel
// TLS), to a TCP target and to a service on a Unix socket. Each is
// byte-exact in both directions, and a service's end arrives as a 1000
// after its last byte.

// pattern is n pseudo-random bytes from seed.
func pattern(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 9))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// echoExact sends size random bytes in messages of random sizes and
// checks that exactly those come back, in order.
func echoExact(t *testing.T, ws *websocket.Conn, size int, seed uint64) {
	t.Helper()
	sent := pattern(size, seed)
	r := rand.New(rand.NewPCG(seed, 3))
	werr := make(chan error, 1)
	go func() {
		for off := 0; off < len(sent); {
			n := min(1+r.IntN(200<<10), len(sent)-off)
			if err := ws.WriteMessage(websocket.BinaryMessage, sent[off:off+n]); err != nil {
				werr <- err
				return
			}
			off += n
		}
		werr <- nil
	}()
	got := make([]byte, 0, size)
	_ = ws.SetReadDeadline(time.Now().Add(90 * time.Second))
	for len(got) < size {
		_, p, err := ws.ReadMessage()
		if err != nil {
			t.Fatalf("after %d of %d bytes: %v", len(got), size, err)
		}
		got = append(got, p...)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent) {
		t.Fatalf("the echo of %d bytes differs", size)
	}
}

// sourceExact reads until the close and checks the bytes and the 1000.
func sourceExact(t *testing.T, ws *websocket.Conn, want []byte) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(90 * time.Second))
	var got []byte
	for {
		_, p, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
				t.Fatalf("after %d of %d bytes: %v, want close 1000", len(got), len(want), err)
			}
			break
		}
		got = append(got, p...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("received %d bytes, want the %d the target sent, byte for byte", len(got), len(want))
	}
}

func TestSplicePathsBasicByteExact(t *testing.T) {
	want := pattern(6<<20+3, 1)
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	for _, c := range []struct {
		name     string
		tls, off bool
	}{
		{name: "ws_splice"},
		{name: "ws_copy", off: true},
		{name: "wss", tls: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.off {
				t.Setenv("WSGATEWAY_SPLICE", "off")
			}
			var extra []string
			if c.tls {
				extra = []string{"--cert", cert, "--key", key}
			}
			source, _ := tcpServer(t, func(conn net.Conn) { conn.Write(want); conn.Close() })
			host, port, _ := net.SplitHostPort(source)
			g := startGateway(t, append([]string{"--client_hostname", host, "--client_port", port}, extra...)...)
			ws, code, body := dialWS(t, g.wsURL("/"), nil)
			if ws == nil {
				t.Fatalf("refused: %d %v", code, body)
			}
			sourceExact(t, ws, want)
			ws.Close()

			g2, _ := basicGateway(t, echo, extra...)
			ws, code, body = dialWS(t, g2.wsURL("/"), nil)
			if ws == nil {
				t.Fatalf("refused: %d %v", code, body)
			}
			defer ws.Close()
			echoExact(t, ws, 4<<20, 2)
		})
	}
}

// unixEchoPython is a service script that serves an echo on a Unix
// socket and prints {"unix": path} as its ready line.
const unixEchoPython = `import json, os, socket, sys, threading
path = sys.argv[1]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
s.listen(8)
print(json.dumps({"unix": path}), flush=True)
def serve(c):
    while True:
        b = c.recv(1 << 16)
        if not b:
            break
        c.sendall(b)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
`

func TestSplicePathsUnixServiceByteExact(t *testing.T) {
	needComponent(t, "python3", "python3")
	for _, off := range []bool{false, true} {
		t.Run(map[bool]string{false: "splice", true: "copy"}[off], func(t *testing.T) {
			if off {
				t.Setenv("WSGATEWAY_SPLICE", "off")
			}
			dir := t.TempDir()
			// A short directory: a Unix socket path has at most 107 bytes.
			sockDir, err := os.MkdirTemp("", "wsgw")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(sockDir) })
			py := filepath.Join(dir, "svc.py")
			if err := os.WriteFile(py, []byte(unixEchoPython), 0o644); err != nil {
				t.Fatal(err)
			}
			writeScript(t, dir, "unix.sh", fmt.Sprintf("case \"$1\" in\nstart) exec python3 %s %s ;;\nstop) exit 0 ;;\nesac\n",
				py, filepath.Join(sockDir, "s.sock")))
			p := writeConfig(t, dir, map[string]any{"Unix": map[string]any{"script": "unix.sh", "count": 1, "options": map[string]any{}}})
			g := startGateway(t, "--remote_session_config", p)
			tok := g.reserve(t, "Unix", "")["token"].(string)
			ws, code, body := dialWS(t, g.wsURL("/?token="+tok), nil)
			if ws == nil {
				t.Fatalf("refused: %d %v", code, body)
			}
			defer ws.Close()
			echoExact(t, ws, 4<<20, 5)
		})
	}
}
