package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/internal/procwatch"
	"wsgateway/internal/redistest"
)

// buildFlags are passed to go build; under -race the binaries are built
// with the race detector too.
var buildFlags []string

var (
	gwBin   string // the wsgateway binary under test
	svcBin  string // internal/testsvc
	repoDir string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "wsgw-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_, file, _, _ := runtime.Caller(0)
	repoDir = filepath.Dir(filepath.Dir(file))
	gwBin = filepath.Join(dir, "wsgateway")
	svcBin = filepath.Join(dir, "testsvc")
	for _, b := range [][2]string{{gwBin, "./cmd/wsgateway"}, {svcBin, "./internal/testsvc"}} {
		cmd := exec.Command("go", append(append([]string{"build"}, buildFlags...), "-o", b[0], b[1])...)
		cmd.Dir = repoDir
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", b[1], err)
			os.Exit(1)
		}
	}
	// Everything the tests start (gateways, the desktops' shells,
	// Chromium, curl, nginx) gets a home of its own: the machine user's
	// dotfiles are not part of the test (a ~/.bashrc that runs a tool
	// taking a lock, killed with a desktop, would leave the next
	// desktop's shell waiting on it).
	// The go command keeps its build and module caches under $HOME by
	// default: pinned here, the builds the tests run later (the wslink
	// server, make install) use the warm caches instead of downloading
	// and compiling every module again.
	if out, err := exec.Command("go", "env", "GOCACHE", "GOMODCACHE", "GOPATH").Output(); err == nil {
		vals := strings.Split(strings.TrimSpace(string(out)), "\n")
		for i, k := range []string{"GOCACHE", "GOMODCACHE", "GOPATH"} {
			if i < len(vals) && vals[i] != "" && os.Getenv(k) == "" {
				os.Setenv(k, vals[i])
			}
		}
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Setenv("HOME", home)
	// A binary built with -race sleeps a second when it exits (so that
	// late race reports get out); every gateway, supervisor and test
	// service these tests stop would pay it. Races are still reported
	// (the gateway's log is checked for them) and fail the test.
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	// After the tests: none left a process behind (the gateway, its
	// supervisors, scripts and their children, Xvnc, Chromium, ...), nor
	// anything running this run's binaries wherever its parent is.
	subreaperErr := procwatch.BecomeSubreaper()
	code := m.Run()
	redistest.StopShared() // the package's one redis-server (replicas_test.go)
	if problems := procwatch.Verify(subreaperErr, func(cmdline string) bool { return strings.Contains(cmdline, dir) }); len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "FAIL: no stray processes:", p)
		}
		if code == 0 {
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// needComponent skips when a real component is missing, except under CI
// where a missing component is a failure.
func needComponent(t *testing.T, bin, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found (Debian package %s); CI must install it", bin, pkg)
		}
		t.Skipf("%s not found (Debian package %s)", bin, pkg)
	}
}

// syncBuf is a goroutine-safe buffer for a child's stderr.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// gateway is a running wsgateway process.
type gateway struct {
	t        *testing.T
	cmd      *exec.Cmd
	log      *syncBuf
	wsAddr   string
	httpAddr string
	tls      bool
	exited   chan struct{}
	exitErr  error
	dir      string
	logFile  string // --log_file, when given
}

// startGateway runs the binary with args (ports are appended: the HTTP
// port and the positional ws port are 0, and the real ones are read from
// the "listening" log lines).
func startGateway(t *testing.T, args ...string) *gateway {
	t.Helper()
	full := append([]string{"--verbose", "2", "--bind_address", "127.0.0.1"}, args...)
	if !hasFlag(args, "--http_port") {
		full = append(full, "--http_port", "0")
	}
	return startGatewayExact(t, append(full, "0")...)
}

// startGatewayExact runs the binary with exactly args (plus a private
// --session_dir and --log_file-free JSON logging on stderr).
func startGatewayExact(t *testing.T, args ...string) *gateway {
	t.Helper()
	dir := t.TempDir()
	full := append([]string{"--session_dir", filepath.Join(dir, "sessions")}, args...)
	cmd := exec.Command(gwBin, full...)
	cmd.Env = append(os.Environ(), "WSGW_TEST_LEAK=secret-from-parent")
	g := spawn(t, cmd, dir)
	g.tls = hasFlag(args, "--cert")
	for i, a := range args {
		if a == "--log_file" && i+1 < len(args) {
			g.logFile = args[i+1]
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range g.logLines() {
			if l["message"] == "listening" {
				switch l["listener"] {
				case "websocket":
					g.wsAddr = l["address"].(string)
				case "http":
					g.httpAddr = l["address"].(string)
				}
			}
		}
		if g.wsAddr != "" && (g.httpAddr != "" || !g.wantsHTTP(args)) {
			return g
		}
		select {
		case <-g.exited:
			t.Fatalf("gateway exited early: %v\n%s", g.exitErr, g.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("gateway did not start listening:\n%s", g.log.String())
	return nil
}

// spawn starts cmd (the gateway binary) with its output in the gateway's
// log, and stops it when the test ends, failing the test if the race
// detector fired in it.
func spawn(t *testing.T, cmd *exec.Cmd, dir string) *gateway {
	t.Helper()
	g := &gateway{t: t, cmd: cmd, log: &syncBuf{}, exited: make(chan struct{}), dir: dir}
	cmd.Stdout, cmd.Stderr = g.log, g.log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { g.exitErr = cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		g.stop()
		if strings.Contains(g.log.String(), "WARNING: DATA RACE") {
			t.Errorf("the race detector fired in the gateway")
		}
		if t.Failed() {
			t.Logf("gateway log:\n%s", g.log.String())
		}
	})
	return g
}

func (g *gateway) wantsHTTP(args []string) bool {
	return hasFlag(args, "--http_directory") || hasFlag(args, "--remote_session_config") || hasFlag(args, "--local_session")
}

func hasFlag(args []string, f string) bool {
	for _, a := range args {
		if a == f || strings.HasPrefix(a, f+"=") {
			return true
		}
	}
	return false
}

// stop sends SIGTERM and waits.
func (g *gateway) stop() {
	select {
	case <-g.exited:
		return
	default:
	}
	_ = g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		_ = g.cmd.Process.Kill()
		<-g.exited
		g.t.Errorf("gateway did not stop within 30s of SIGTERM")
	}
}

func (g *gateway) logLines() []map[string]any {
	var out []map[string]any
	text := g.log.String()
	if g.logFile != "" {
		b, _ := os.ReadFile(g.logFile)
		text = string(b)
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

func (g *gateway) httpURL(path string) string {
	s := "http"
	if g.tls {
		s = "https"
	}
	return s + "://" + g.httpAddr + path
}

func (g *gateway) wsURL(path string) string {
	s := "ws"
	if g.tls {
		s = "wss"
	}
	return s + "://" + g.wsAddr + path
}

var insecureClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
}

// getJSON does a GET and decodes the JSON body.
func getJSON(t *testing.T, url string, hdr ...string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := insecureClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("GET %s: status %d, body is not JSON: %q", url, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("GET %s: Content-Type %q", url, ct)
	}
	return resp.StatusCode, m
}

func (g *gateway) reserve(t *testing.T, service string, query string) map[string]any {
	t.Helper()
	u := g.httpURL("/v1/reserve/" + strings.ReplaceAll(service, " ", "%20"))
	if query != "" {
		u += "?" + query
	}
	code, m := getJSON(t, u)
	if code != 200 {
		t.Fatalf("reserve %s: status %d %v", service, code, m)
	}
	return m
}

func (g *gateway) status(t *testing.T) map[string]any {
	t.Helper()
	code, m := getJSON(t, g.httpURL("/v1/status"))
	if code != 200 {
		t.Fatalf("status: %d %v", code, m)
	}
	return m
}

// free returns the free slot count of a service.
func (g *gateway) free(t *testing.T, service string) int {
	t.Helper()
	for _, s := range g.status(t)["services"].([]any) {
		m := s.(map[string]any)
		if m["name"] == service {
			return int(m["free"].(float64))
		}
	}
	t.Fatalf("service %q not in status", service)
	return -1
}

// waitFor polls cond until it is true or the timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", timeout, what)
}

var dialer = &websocket.Dialer{
	HandshakeTimeout: 10 * time.Second,
	TLSClientConfig:  &tls.Config{InsecureSkipVerify: true},
}

// dialWS opens a websocket; on a refused handshake it returns the status
// and JSON body.
func dialWS(t *testing.T, url string, hdr http.Header) (*websocket.Conn, int, map[string]any) {
	t.Helper()
	ws, resp, err := dialer.Dial(url, hdr)
	if err == nil {
		return ws, 101, nil
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if jerr := json.Unmarshal(body, &m); jerr != nil {
		t.Fatalf("dial %s refused with %d and a non-JSON body %q", url, resp.StatusCode, body)
	}
	return nil, resp.StatusCode, m
}

// readUntilClose reads binary data until the close frame and returns the
// data and the close error.
func readUntilClose(ws *websocket.Conn, timeout time.Duration) ([]byte, *websocket.CloseError, error) {
	var buf bytes.Buffer
	_ = ws.SetReadDeadline(time.Now().Add(timeout))
	for {
		_, p, err := ws.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				return buf.Bytes(), ce, nil
			}
			return buf.Bytes(), nil, err
		}
		buf.Write(p)
	}
}

// readN reads exactly n bytes of websocket payload.
func readN(ws *websocket.Conn, n int, timeout time.Duration) ([]byte, error) {
	var buf bytes.Buffer
	_ = ws.SetReadDeadline(time.Now().Add(timeout))
	for buf.Len() < n {
		_, p, err := ws.ReadMessage()
		if err != nil {
			return buf.Bytes(), err
		}
		buf.Write(p)
	}
	return buf.Bytes(), nil
}

// readLine reads websocket payload up to the first newline.
func readLine(ws *websocket.Conn, timeout time.Duration) ([]byte, []byte, error) {
	var buf bytes.Buffer
	_ = ws.SetReadDeadline(time.Now().Add(timeout))
	for {
		if i := bytes.IndexByte(buf.Bytes(), '\n'); i >= 0 {
			b := buf.Bytes()
			return b[:i], b[i+1:], nil
		}
		_, p, err := ws.ReadMessage()
		if err != nil {
			return buf.Bytes(), nil, err
		}
		buf.Write(p)
	}
}

// writeScript writes an executable shell script into dir.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeConfig writes a services config JSON and returns its path.
func writeConfig(t *testing.T, dir string, cfg map[string]any) string {
	t.Helper()
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "services.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z'
}

// echoServer is a TCP server on 127.0.0.1 that echoes, or runs handle.
func tcpServer(t *testing.T, handle func(net.Conn)) (string, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 16)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case conns <- c:
			default:
			}
			go func() {
				<-ctx.Done()
				c.Close()
			}()
			go handle(c)
		}
	}()
	return ln.Addr().String(), conns
}
