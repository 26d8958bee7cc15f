package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/gateway"
	"wsgateway/launcher"
)

func TestParseArgsWSPortAndLogFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := func(string) string { return "" }
	cases := []struct {
		name    string
		args    []string
		wsPort  int
		wantErr string // "" for success
	}{
		{"launcher alone", []string{"--launcher_config", "l.config"}, NoWSPort, ""},
		{"launcher with a ws port", []string{"--launcher_config", "l.config", "8081"}, 8081, ""},
		{"launcher and port 0", []string{"--launcher_config", "l.config", "0"}, 0, ""},
		{"basic mode needs the port", []string{"--launcher_config", "l.config", "--client_hostname", "h", "--client_port", "1"}, 0, "missing ws_server_port"},
		{"services need the port", []string{"--local_session", "desktop", "1"}, 0, "missing ws_server_port"},
		{"log file in an existing directory", []string{"--log_file", filepath.Join(dir, "gw.log"), "--local_session", "desktop", "1", "8081"}, 8081, ""},
		{"log file in the working directory", []string{"--log_file", "gw.log", "--local_session", "desktop", "1", "8081"}, 8081, ""},
		{"log file in a missing directory", []string{"--log_file", filepath.Join(dir, "nope", "gw.log"), "--local_session", "desktop", "1", "8081"}, 0, "does not exist"},
		// Not refused: the log falls back to stderr, saying so.
		{"log file under a file", []string{"--log_file", filepath.Join(file, "gw.log"), "--local_session", "desktop", "1", "8081"}, 8081, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseArgs(c.args, env)
			if c.wantErr != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want a usage error with %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.WSPort != c.wsPort {
				t.Errorf("WSPort %d, want %d", cfg.WSPort, c.wsPort)
			}
		})
	}
}

func TestUsageSaysThePortIsOptionalWithALauncher(t *testing.T) {
	var b strings.Builder
	printUsage(&b)
	text := strings.Join(strings.Fields(b.String()), " ") // help text is wrapped
	for _, want := range []string{"[ws_server_port]", "Optional with --launcher_config", "python -m wslink.launcher launcher.config", "its directory must exist"} {
		if !strings.Contains(text, want) {
			t.Errorf("usage lacks %q", want)
		}
	}
}

func TestListenProblem(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "listen", Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}, "already in use"},
		{&net.OpError{Op: "listen", Err: os.NewSyscallError("bind", syscall.EACCES)}, "permission denied"},
		{&net.OpError{Op: "listen", Err: os.NewSyscallError("bind", syscall.EADDRNOTAVAIL)}, "--bind_address"},
		{errors.New("something else"), "something else"},
	}
	for _, c := range cases {
		if got := listenProblem(c.err); !strings.Contains(got, c.want) {
			t.Errorf("listenProblem(%v) = %q, want %q in it", c.err, got, c.want)
		}
	}
}

func TestOpenListenersNamesTheBusyPort(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port
	cases := []struct {
		name   string
		cfg    Config
		httpOn bool
		want   string
	}{
		{"ws", Config{BindAddress: "127.0.0.1", WSPort: port, HTTPPort: 0}, true, fmt.Sprintf("ws_server_port %d: ", port)},
		{"http", Config{BindAddress: "127.0.0.1", WSPort: 0, HTTPPort: port}, true, fmt.Sprintf("--http_port %d: ", port)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := openListeners(&c.cfg, nil, c.httpOn)
			var ue *usageError
			if !errors.As(err, &ue) || !strings.HasPrefix(err.Error(), c.want) {
				if l != nil {
					l.close()
				}
				t.Fatalf("err %v, want a usage error starting %q", err, c.want)
			}
		})
	}
	// No HTTP port when nothing is served over HTTP, and one port for both
	// when they are equal.
	l, err := openListeners(&Config{BindAddress: "127.0.0.1", WSPort: 0, HTTPPort: port}, nil, false)
	if err != nil || l.ws == nil || l.http != nil || l.launcher != nil {
		t.Fatalf("ws only: %v %+v", err, l)
	}
	l.close()
	l, err = openListeners(&Config{BindAddress: "127.0.0.1", WSPort: NoWSPort, HTTPPort: 0}, nil, false)
	if err != nil || l.ws != nil || l.http != nil || l.launcher != nil {
		t.Fatalf("nothing asked: %v %+v", err, l)
	}
	free := freeTCPPort(t)
	l, err = openListeners(&Config{BindAddress: "127.0.0.1", WSPort: free, HTTPPort: free}, nil, true)
	if err != nil || l.ws != nil || l.http == nil {
		t.Fatalf("one port for both: %v %+v", err, l)
	}
	l.close()
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// fakeListener is a listener with an address only, for plan.
type fakeListener struct{ addr net.TCPAddr }

func (f fakeListener) Accept() (net.Conn, error) { return nil, errors.New("fake") }
func (f fakeListener) Close() error              { return nil }
func (f fakeListener) Addr() net.Addr            { return &f.addr }

func fake(port int) net.Listener {
	return fakeListener{net.TCPAddr{IP: net.IPv6unspecified, Port: port}}
}

func TestPlanSaysWhatIsServedAndWhereToStart(t *testing.T) {
	novnc := t.TempDir()
	if err := os.WriteFile(filepath.Join(novnc, "vnc_lite.html"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	plain := t.TempDir()
	lr := &launcherRun{cfg: &launcher.Config{}}
	lr.cfg.Configuration.Host = "localhost"
	lr.cfg.Configuration.Endpoint = "paraview"
	mounted := &launcherRun{cfg: lr.cfg, mounted: true}
	cases := []struct {
		name      string
		cfg       Config
		g         gateway.Config
		lr        *launcherRun
		l         listeners
		whats     []string // substrings, one per served line, in order
		start     string
		urlsFirst string
	}{
		{"basic, websocket port only", Config{}, gateway.Config{ClientAddr: "localhost:5900"}, nil,
			listeners{ws: fake(8081)}, []string{"spliced to localhost:5900 (basic mode)"}, "ws://localhost:8081/", "ws://localhost:8081/"},
		{"basic with noVNC", Config{HTTPDirectory: novnc}, gateway.Config{ClientAddr: "localhost:5900"}, nil,
			listeners{ws: fake(8081), http: fake(8080)}, []string{"basic mode", "the files of " + novnc + ", the REST API"},
			"http://localhost:8080/vnc_lite.html?host=localhost&port=8081", "ws://localhost:8081/"},
		{"basic with other files", Config{HTTPDirectory: plain}, gateway.Config{ClientAddr: "localhost:5900"}, nil,
			listeners{ws: fake(8081), http: fake(8080)}, []string{"basic mode", "the files of"}, "http://localhost:8080/", "ws://localhost:8081/"},
		{"built-in desktops, bound to loopback", Config{BindAddress: "127.0.0.1", LocalSessions: []LocalSession{{"desktop", 2}}}, gateway.Config{}, nil,
			listeners{ws: fake(8081), http: fake(8080)}, []string{"reservation token", "the dashboard and REST API"}, "http://127.0.0.1:8080/", "ws://127.0.0.1:8081/"},
		{"services beside other files", Config{HTTPDirectory: plain, LocalSessions: []LocalSession{{"desktop", 1}}}, gateway.Config{}, nil,
			listeners{ws: fake(8081), http: fake(8080)}, []string{"reservation token", "the files of " + plain + ", the dashboard"}, "http://localhost:8080/wsgw/", "ws://localhost:8081/"},
		{"basic and services", Config{LocalSessions: []LocalSession{{"desktop", 1}}}, gateway.Config{ClientAddr: "h:1"}, nil,
			listeners{ws: fake(8081), http: fake(8080)}, []string{"without one to h:1", "dashboard"}, "http://localhost:8080/", "ws://localhost:8081/"},
		{"one port for everything", Config{LocalSessions: []LocalSession{{"desktop", 1}}}, gateway.Config{}, nil,
			listeners{http: fake(8080)}, []string{"the dashboard and REST API, websockets"}, "http://localhost:8080/", "http://localhost:8080/"},
		{"the launcher alone", Config{}, gateway.Config{}, lr,
			listeners{launcher: fake(8082)}, []string{"ParaViewWeb launcher"}, "http://localhost:8082/paraview", "http://localhost:8082/paraview"},
		{"the launcher on the HTTP port", Config{}, gateway.Config{}, mounted,
			listeners{http: fake(9090)}, []string{"the ParaViewWeb launcher at /paraview"}, "http://localhost:9090/", "http://localhost:9090/"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			served, start := plan(&c.cfg, &c.g, c.lr, &c.l)
			if len(served) != len(c.whats) {
				t.Fatalf("served %v, want %d lines", served, len(c.whats))
			}
			for i, w := range c.whats {
				if !strings.Contains(served[i].what, w) {
					t.Errorf("line %d %q lacks %q", i, served[i].what, w)
				}
			}
			if served[0].url != c.urlsFirst {
				t.Errorf("first url %q, want %q", served[0].url, c.urlsFirst)
			}
			if start != c.start {
				t.Errorf("start %q, want %q", start, c.start)
			}
		})
	}
}

func TestURLHost(t *testing.T) {
	cases := []struct{ bind, want string }{
		{"", "localhost:80"}, {"0.0.0.0", "localhost:80"}, {"::", "localhost:80"}, {"[::]", "localhost:80"},
		{"127.0.0.1", "127.0.0.1:80"}, {"::1", "[::1]:80"}, {"gw.example.org", "gw.example.org:80"},
	}
	for _, c := range cases {
		if got := urlHost(c.bind, fake(80)); got != c.want {
			t.Errorf("urlHost(%q) = %q, want %q", c.bind, got, c.want)
		}
	}
}

func TestAnnounceNoticeOnlyWithALogFile(t *testing.T) {
	for _, logFile := range []string{"", "gw.log"} {
		var log, term strings.Builder
		cfg := &Config{LogFile: logFile}
		announce(newTestLogger(&log), cfg, &gateway.Config{ClientAddr: "h:1"}, nil, &listeners{ws: fake(8081)}, &term)
		if !strings.Contains(log.String(), `"message":"start here"`) || !strings.Contains(log.String(), "ws://localhost:8081/") {
			t.Errorf("log %q", log.String())
		}
		abs, _ := filepath.Abs("gw.log")
		want := ""
		if logFile != "" {
			want = "wsgateway: logging to " + abs + "; start here: ws://localhost:8081/\n"
		}
		if term.String() != want {
			t.Errorf("log_file %q: terminal %q, want %q", logFile, term.String(), want)
		}
	}
}

func newTestLogger(w io.Writer) zerolog.Logger { return zerolog.New(w) }

func TestControlPlaneFlags(t *testing.T) {
	base := []string{"--local_session", "desktop", "1", "8081"}
	tests := []struct {
		args     []string
		perAddr  int
		keep     int
		keepFor  time.Duration
		errMatch string
	}{
		{nil, 32, 1000, 30 * 24 * time.Hour, ""},
		{[]string{"--max_rpc_per_address", "0", "--keep_jobs", "0", "--keep_jobs_days", "0"}, 0, 0, 0, ""},
		{[]string{"--max_rpc_per_address", "5", "--keep_jobs", "7", "--keep_jobs_days", "0.5"}, 5, 7, 12 * time.Hour, ""},
		{[]string{"--max_rpc_per_address", "-1"}, 0, 0, 0, "--max_rpc_per_address"},
		{[]string{"--keep_jobs", "x"}, 0, 0, 0, "--keep_jobs"},
		{[]string{"--keep_jobs_days", "-1"}, 0, 0, 0, "--keep_jobs_days"},
		{[]string{"--keep_jobs_days", "36501"}, 0, 0, 0, "--keep_jobs_days"},
	}
	for _, tc := range tests {
		c, err := parseArgs(append(append([]string{}, tc.args...), base...), func(string) string { return "" })
		if tc.errMatch != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errMatch) {
				t.Errorf("%v: %v, want an error about %s", tc.args, err, tc.errMatch)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.MaxRPCPerAddress != tc.perAddr || c.KeepJobs != tc.keep || c.KeepJobsFor != tc.keepFor {
			t.Errorf("%v: %d %d %s", tc.args, c.MaxRPCPerAddress, c.KeepJobs, c.KeepJobsFor)
		}
	}
	g, err := buildGatewayConfig(&Config{MaxRPCPerAddress: 9})
	if err != nil || g.MaxControlPerAddress != 9 {
		t.Fatalf("gateway config: %v %d", err, g.MaxControlPerAddress)
	}
}

func TestReplicaFlags(t *testing.T) {
	base := []string{"--local_session", "desktop", "1", "8081"}
	tests := []struct {
		args     []string
		id       string
		lease    time.Duration
		errMatch string
	}{
		{nil, "", 0, ""},
		{[]string{"--replica_id", "gw-1", "--replica_lease", "0.3"}, "gw-1", 300 * time.Millisecond, ""},
		{[]string{"--replica_lease", "3600"}, "", time.Hour, ""},
		{[]string{"--replica_id", strings.Repeat("a", 64)}, strings.Repeat("a", 64), 0, ""},
		{[]string{"--replica_id", strings.Repeat("a", 65)}, "", 0, "--replica_id"},
		{[]string{"--replica_id", ""}, "", 0, "--replica_id"},
		{[]string{"--replica_id", "a b"}, "", 0, "--replica_id"},
		{[]string{"--replica_id", "a:b"}, "", 0, "--replica_id"},
		{[]string{"--replica_id", "a*"}, "", 0, "--replica_id"},
		{[]string{"--replica_lease", "0.29"}, "", 0, "--replica_lease"},
		{[]string{"--replica_lease", "3600.1"}, "", 0, "--replica_lease"},
		{[]string{"--replica_lease", "x"}, "", 0, "--replica_lease"},
	}
	for _, tc := range tests {
		c, err := parseArgs(append(append([]string{}, tc.args...), base...), func(string) string { return "" })
		if tc.errMatch != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errMatch) {
				t.Errorf("%v: %v, want an error about %s", tc.args, err, tc.errMatch)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if c.ReplicaID != tc.id || c.ReplicaLease != tc.lease {
			t.Errorf("%v: id %q lease %s", tc.args, c.ReplicaID, c.ReplicaLease)
		}
	}
}
