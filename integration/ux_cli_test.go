package integration

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runIn runs the binary in dir with a deadline and returns its exit status,
// stdout and stderr.
func runIn(t *testing.T, dir string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, gwBin, args...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v did not exit within 30s; stderr: %s", args, errb.String())
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	case err != nil:
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

// busyPort holds a port on 127.0.0.1 for the test's life.
func busyPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

// A port in use is the first thing said: exit 2, one line naming the port
// and its option, and nothing set up (no session directory, no built-in
// script, no state database, no log line).
func TestUxPortInUseIsTheFirstThingSaid(t *testing.T) {
	t.Parallel()
	busy := busyPort(t)
	b := strconv.Itoa(busy)
	free := func() string { return freePort(t) }
	dir := t.TempDir()
	lconf := filepath.Join(dir, "launcher.config")
	if err := os.WriteFile(lconf, []byte(`{"configuration": {"host": "127.0.0.1", "port": `+b+`, "endpoint": "paraview",
 "sessionURL": "ws://USE_HOST/proxy?sessionId=${id}&path=ws", "log_dir": "logs"},
 "resources": [{"host": "127.0.0.1", "port_range": [9001, 9003]}], "apps": {"a": {"cmd": ["prog"]}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"ws_server_port, basic mode", []string{"--client_hostname", "127.0.0.1", "--client_port", "5900", b}, "ws_server_port " + b + ": "},
		{"--http_port, built-in desktop", []string{"--local_session", "desktop", "1", "--http_port", b, free()}, "--http_port " + b + ": "},
		{"ws_server_port before --http_port", []string{"--local_session", "desktop", "1", "--http_port", free(), b}, "ws_server_port " + b + ": "},
		{"the launcher's own port", []string{"--launcher_config", lconf}, "configuration.host:port 127.0.0.1:" + b + ": "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wd := t.TempDir()
			sessions := filepath.Join(wd, "s", "sessions")
			args := append([]string{"--bind_address", "127.0.0.1", "--session_dir", sessions}, c.args...)
			code, stdout, stderr := runIn(t, wd, args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "wsgateway: ") || !strings.Contains(lines[0], c.want) || !strings.Contains(lines[0], "already in use") {
				t.Errorf("stderr %q: want one line naming %q and saying the port is in use", stderr, c.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q", stdout)
			}
			if _, err := os.Stat(filepath.Join(wd, "s")); err == nil {
				t.Error("the session directory (or the built-in's script beside it) was created before the port was checked")
			}
			if ents, _ := os.ReadDir(wd); len(ents) != 0 {
				t.Errorf("created in the working directory: %v", ents)
			}
		})
	}
}

// Basic mode's first lines say what is served and the URL to open, and
// nothing is said about jobs or a state database.
func TestUxBasicModeFirstLines(t *testing.T) {
	t.Parallel()
	target, _ := tcpServer(t, func(c net.Conn) {})
	th, tp, _ := net.SplitHostPort(target)
	novnc := t.TempDir()
	if err := os.WriteFile(filepath.Join(novnc, "vnc_lite.html"), []byte("<html></html>"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		args    []string
		http    bool
		openURL func(g *gateway) string
	}{
		{"websocket port only", []string{"--client_hostname", th, "--client_port", tp}, false,
			func(g *gateway) string { return "ws://" + g.wsAddr + "/" }},
		{"with noVNC on the HTTP port", []string{"--http_directory", novnc, "--client_hostname", th, "--client_port", tp}, true,
			func(g *gateway) string {
				_, wp, _ := net.SplitHostPort(g.wsAddr)
				return "http://" + g.httpAddr + "/vnc_lite.html?host=127.0.0.1&port=" + wp
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := startGateway(t, c.args...)
			lines := g.logLines()
			// The first lines: what is served on each port, then where to start.
			var i int
			for i < len(lines) && lines[i]["message"] == "serving" {
				i++
			}
			wantServing := 1
			if c.http {
				wantServing = 2
			}
			if i != wantServing {
				t.Fatalf("first lines %v: want %d serving line(s) first", lines, wantServing)
			}
			if !strings.Contains(lines[0]["serves"].(string), target) || lines[0]["url"] != "ws://"+g.wsAddr+"/" {
				t.Errorf("first line %v: want the websocket port and its target %s", lines[0], target)
			}
			if lines[i]["message"] != "start here" || lines[i]["url"] != c.openURL(g) {
				t.Errorf("line %d %v: want start here with url %s", i, lines[i], c.openURL(g))
			}
			for _, l := range lines {
				s := strings.ToLower(strings.Join(flatten(l), " "))
				if strings.Contains(s, "job") || strings.Contains(s, "state database") || strings.Contains(s, "state_db") {
					t.Errorf("basic mode logged about jobs or a state database: %v", l)
				}
			}
			// The websocket port's answer to a plain request does not
			// speak of tokens, which basic mode does not need.
			code, _, body := hbGet(t, g.wsAddr, "/")
			if code != http.StatusUpgradeRequired || strings.Contains(strings.ToLower(body), "token") || !strings.Contains(body, "websocket") {
				t.Errorf("plain GET on the websocket port: %d %s", code, body)
			}
		})
	}
}

// With reservations, the websocket port's 426 does tell how to pass the
// token.
func TestUxWebsocketPortAnswerMentionsTokensOnlyWithReservations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeConfig(t, dir, map[string]any{"Echo": map[string]any{"script": writeScript(t, dir, "svc.sh", "exit 1\n"), "count": 1, "options": map[string]any{}}})
	g := startGateway(t, "--remote_session_config", cfg)
	code, _, body := hbGet(t, g.wsAddr, "/")
	if code != http.StatusUpgradeRequired || !strings.Contains(body, "token=") {
		t.Errorf("plain GET on the websocket port: %d %s", code, body)
	}
}

func flatten(m map[string]any) []string {
	var out []string
	for k, v := range m {
		if s, ok := v.(string); ok {
			out = append(out, k, s)
		} else {
			out = append(out, k)
		}
	}
	return out
}

// --log_file in a missing directory is refused before anything is created;
// a log file that can be written gets the log, and the terminal one line
// saying where it goes and where to start.
func TestUxLogFile(t *testing.T) {
	t.Parallel()
	t.Run("missing directory", func(t *testing.T) {
		wd := t.TempDir()
		missing := filepath.Join(wd, "no", "such")
		code, _, stderr := runIn(t, wd, "--log_file", filepath.Join(missing, "gw.log"),
			"--client_hostname", "127.0.0.1", "--client_port", "5900", "--bind_address", "127.0.0.1", "0")
		if code != 2 || !strings.Contains(stderr, "--log_file") || !strings.Contains(stderr, filepath.Join(wd, "no")) || !strings.Contains(stderr, "does not exist") {
			t.Errorf("exit %d, stderr %q: want 2 and a message naming --log_file and the missing directory", code, stderr)
		}
		if ents, _ := os.ReadDir(wd); len(ents) != 0 {
			t.Errorf("created: %v", ents)
		}
	})
	t.Run("notice on the terminal", func(t *testing.T) {
		target, _ := tcpServer(t, func(c net.Conn) {})
		th, tp, _ := net.SplitHostPort(target)
		logf := filepath.Join(t.TempDir(), "gw.log")
		g := startGatewayExact(t, "--log_file", logf, "--verbose", "1", "--bind_address", "127.0.0.1",
			"--client_hostname", th, "--client_port", tp, "0")
		// The notice may reach the terminal just after the log file's
		// "listening" line, which startGatewayExact waited for.
		waitFor(t, "the notice on the terminal", 15*time.Second, func() bool { return strings.HasSuffix(g.log.String(), "\n") })
		terminal := strings.TrimRight(g.log.String(), "\n")
		want := "wsgateway: logging to " + logf + "; start here: ws://" + g.wsAddr + "/"
		if terminal != want {
			t.Errorf("terminal got %q, want exactly the one line %q", terminal, want)
		}
		if lines := g.logLines(); len(lines) == 0 || lines[0]["message"] != "serving" {
			t.Errorf("log file lines %v", lines)
		}
	})
}

// make install puts a working wsgateway in $(PREFIX)/bin, and make run's
// banner says the desktops start on demand.
func TestUxMakeInstallAndRunBanner(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not found")
	}
	prefix := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "-s", "install", "PREFIX="+prefix)
	cmd.Dir = repoDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	bin := filepath.Join(prefix, "bin", "wsgateway")
	out, err := exec.CommandContext(ctx, bin, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "wsgateway ") {
		t.Errorf("%s --version: %v %q", bin, err, out)
	}
	cmd = exec.CommandContext(ctx, "make", "-n", "run")
	cmd.Dir = repoDir
	banner, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(banner), "start on demand") || !strings.Contains(string(banner), "when a viewer connects") {
		t.Errorf("make run's banner does not say the desktops start on demand: %v\n%s", err, banner)
	}
	// Its desktops have a terminal and it sets no credentials: it must
	// listen on this machine only unless told otherwise.
	if !strings.Contains(string(banner), "--bind_address 127.0.0.1 ") {
		t.Errorf("make run does not bind to 127.0.0.1:\n%s", banner)
	}
}
