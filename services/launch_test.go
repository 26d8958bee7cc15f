package services_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/internal/procwatch"
	"wsgateway/proc"
	"wsgateway/services"
)

// helperEnv makes the test binary act as a small service (see helperMain)
// instead of running the tests. Scripts set it on their own command line:
// the launcher passes only an allow-list of the gateway's environment.
const helperEnv = "WSGWTEST_HELPER"

// TestMain also runs the test binary as the supervisor (see
// supervisedSpec), and after the tests proves they left no process behind.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain(os.Args[1:]))
	}
	if len(os.Args) > 1 && os.Args[1] == proc.SuperviseArg {
		os.Exit(proc.Supervise(os.Args[2:]))
	}
	os.Exit(procwatch.Run(m, nil))
}

// helperMain is a tiny echo service. It listens (TCP on 127.0.0.1 or a
// Unix socket), announces itself with a ready line on stdout or in a file,
// and echoes every connection until killed.
func helperMain(args []string) int {
	fs := flag.NewFlagSet("helper", flag.ContinueOnError)
	readyFile := fs.String("ready-file", "", "write the ready line to this file instead of stdout")
	pidFile := fs.String("pid-file", "", "write the helper's pid to this file")
	unixPath := fs.String("unix", "", "listen on this Unix socket")
	port := fs.Int("port", 0, "TCP port (0: any)")
	setsid := fs.Bool("setsid", false, "leave the process group (become a daemon)")
	after := fs.String("after", "", "line to print on stdout after the ready line")
	listenDelay := fs.Duration("listen-delay", 0, "announce -port first and listen only after this delay")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	if *setsid {
		if _, err := syscall.Setsid(); err != nil {
			return fail(err)
		}
	}
	if *pidFile != "" {
		if err := writeAtomic(*pidFile, strconv.Itoa(os.Getpid())); err != nil {
			return fail(err)
		}
	}
	announce := func(v any) error {
		b, _ := json.Marshal(v)
		b = append(b, '\n')
		if *readyFile != "" {
			return writeAtomic(*readyFile, string(b))
		}
		_, err := os.Stdout.Write(b)
		return err
	}
	var ln net.Listener
	var err error
	switch {
	case *unixPath != "":
		if ln, err = net.Listen("unix", *unixPath); err != nil {
			return fail(err)
		}
		err = announce(map[string]any{"unix": *unixPath})
	case *listenDelay > 0:
		if err := announce(map[string]any{"hostname": "127.0.0.1", "port": *port}); err != nil {
			return fail(err)
		}
		time.Sleep(*listenDelay)
		ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*port)))
	default:
		if ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*port))); err != nil {
			return fail(err)
		}
		err = announce(map[string]any{"hostname": "127.0.0.1", "port": ln.Addr().(*net.TCPAddr).Port})
	}
	if err != nil {
		return fail(err)
	}
	if *after != "" {
		fmt.Println(*after)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return fail(err)
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

func writeAtomic(path, data string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// --- test plumbing ---

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// helperCmd is a shell command line that runs the echo helper.
func helperCmd(t *testing.T, args ...string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return "env " + helperEnv + "=1 " + shQuote(exe) + " " + strings.Join(args, " ")
}

// writeScript writes an executable /bin/sh script into a fresh directory.
func writeScript(t *testing.T, body string) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "svc.sh", "#!/bin/sh\n"+body, 0o755)
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).With().Timestamp().Logger()
}

const testOptions = `{"geometry":"800x600","note":"it's \"quoted\" & spaced"}`

func newSpec(t *testing.T, script string) services.Spec {
	t.Helper()
	return services.Spec{
		Service: &services.Service{
			Name:    "Echo Service",
			Script:  script,
			Count:   2,
			Options: map[string]json.RawMessage{"geometry": json.RawMessage(`"800x600"`)},
		},
		Index:        1,
		Token:        "0f1e2d3c-4b5a-4987-8654-3210fedcba98",
		Options:      []byte(testOptions),
		SessionDir:   filepath.Join(t.TempDir(), "session"),
		StartTimeout: 20 * time.Second,
		StopGrace:    2 * time.Second,
	}
}

// start starts spec and stops the instance when the test ends.
func start(t *testing.T, spec services.Spec) *services.Instance {
	t.Helper()
	inst, err := services.Start(context.Background(), spec, testLogger(t))
	if err != nil {
		t.Fatalf("Start: %v\nsession log:\n%s", err, readLog(spec))
	}
	t.Cleanup(func() { stopInst(t, inst) })
	return inst
}

func stopInst(t *testing.T, inst *services.Instance) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return inst.Stop(ctx)
}

func readLog(spec services.Spec) string {
	b, _ := os.ReadFile(filepath.Join(spec.SessionDir, services.LogName))
	return string(b)
}

// waitFor polls cond until it holds or the bound runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func waitLogContains(t *testing.T, spec services.Spec, s string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(15 * time.Second)
	for {
		last = readLog(spec)
		if strings.Contains(last, s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("session log never contained %q; it holds:\n%s", s, last)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readPidFile(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, "pid file "+filepath.Base(path), func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	return pid
}

// procStat returns the state letter and process group of pid, or ok=false
// when there is no such process.
func procStat(pid int) (state string, pgrp int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 3 {
		return "", 0, false
	}
	pgrp, _ = strconv.Atoi(f[2])
	return f[0], pgrp, true
}

// alive reports whether pid is a process with a thread that is not a
// zombie. The main thread of a multithreaded process (such as the test
// helper) can be a zombie while other threads, which still hold its
// sockets, are exiting.
func alive(pid int) bool {
	st, _, ok := procStat(pid)
	if !ok {
		return false
	}
	if st != "Z" && st != "X" {
		return true
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		if f := strings.Fields(string(b[i+1:])); len(f) > 0 && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

// liveGroupMembers lists the non-zombie processes in process group pgid.
func liveGroupMembers(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, g, ok := procStat(pid); ok && g == pgid && alive(pid) {
			out = append(out, pid)
		}
	}
	return out
}

func waitDead(t *testing.T, what string, pid int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%s (pid %d) to die", what, pid), func() bool { return !alive(pid) })
}

func waitGroupDead(t *testing.T, pgid int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("process group %d to die", pgid), func() bool { return len(liveGroupMembers(pgid)) == 0 })
}

// killOnCleanup makes sure a process the test may leave behind dies.
func killOnCleanup(t *testing.T, pidFile string) {
	t.Cleanup(func() {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 && alive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

func echoRoundTrip(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func dialEcho(t *testing.T, inst *services.Instance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := inst.Dial(ctx)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	echoRoundTrip(t, c, "hello, service\n\x00\xff binary too")
}

// readEnv parses an `env` dump.
func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

// closedPort returns a loopback TCP port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return p
}

// --- tests ---

func TestParseReadyLine(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		want    services.Endpoint
		wantErr string
	}{
		{"tcp", `{"hostname": "127.0.0.1", "port": 5901}`, services.Endpoint{Network: "tcp", Address: "127.0.0.1:5901"}, ""},
		{"tcp host name", `{"hostname": "viz-node-3", "port": 65535}`, services.Endpoint{Network: "tcp", Address: "viz-node-3:65535"}, ""},
		{"tcp ipv6", `{"hostname": "::1", "port": 1}`, services.Endpoint{Network: "tcp", Address: "[::1]:1"}, ""},
		{"tcp default host", `{"port": 8080}`, services.Endpoint{Network: "tcp", Address: "127.0.0.1:8080"}, ""},
		{"unix", `{"unix": "/run/wsgw/s1/vnc.sock"}`, services.Endpoint{Network: "unix", Address: "/run/wsgw/s1/vnc.sock"}, ""},
		{"unix wins over port", `{"unix": "/tmp/x.sock", "hostname": "h", "port": 1}`, services.Endpoint{Network: "unix", Address: "/tmp/x.sock"}, ""},
		{"extra keys ignored", `{"hostname": "127.0.0.1", "port": 5901, "display": ":1", "pid": 42, "nested": {"a": [1]}}`, services.Endpoint{Network: "tcp", Address: "127.0.0.1:5901"}, ""},
		{"surrounding space", " \t{\"port\": 7}\n", services.Endpoint{Network: "tcp", Address: "127.0.0.1:7"}, ""},
		{"port zero", `{"hostname": "127.0.0.1", "port": 0}`, services.Endpoint{}, `"port" must be 1..65535, got 0`},
		{"no port", `{"hostname": "127.0.0.1"}`, services.Endpoint{}, `"port" must be 1..65535`},
		{"port negative", `{"port": -5}`, services.Endpoint{}, "got -5"},
		{"port too big", `{"port": 65536}`, services.Endpoint{}, "got 65536"},
		{"port as string", `{"port": "5901"}`, services.Endpoint{}, "not a JSON object"},
		{"port fraction", `{"port": 5901.5}`, services.Endpoint{}, "not a JSON object"},
		{"relative unix", `{"unix": "run/vnc.sock"}`, services.Endpoint{}, `"unix" must be an absolute socket path, got "run/vnc.sock"`},
		{"dot unix", `{"unix": "./vnc.sock"}`, services.Endpoint{}, "absolute"},
		{"not JSON", `listening on 5901`, services.Endpoint{}, "not a JSON object"},
		{"broken JSON", `{"port": 5901`, services.Endpoint{}, "not a JSON object"},
		{"array", `[5901]`, services.Endpoint{}, "not a JSON object"},
		{"empty", ``, services.Endpoint{}, "not a JSON object"},
		{"empty object", `{}`, services.Endpoint{}, `"port" must be`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := services.ParseReadyLine([]byte(tt.line))
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseReadyLine(%q) = %+v, want an error containing %q", tt.line, got, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q does not contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseReadyLine(%q): %v", tt.line, err)
			}
			if got != tt.want {
				t.Fatalf("ParseReadyLine(%q) = %+v, want %+v", tt.line, got, tt.want)
			}
		})
	}
}

func TestStartTCPServiceEnvironmentAndLog(t *testing.T) {
	t.Setenv("WSGWTEST_LEAK", "secret-from-the-gateway")
	script := writeScript(t, `
env > "$WSGW_SESSION_DIR/env.txt"
pwd > "$WSGW_SESSION_DIR/cwd.txt"
echo "preparing the service (stdout, before the ready line)"
echo "a warning on stderr" >&2
exec `+helperCmd(t, "-after", shQuote("serving now (stdout, after the ready line)"))+`
`)
	spec := newSpec(t, script)
	spec.ExtraEnv = []string{"WSGW_EXTRA=from ExtraEnv"}
	inst := start(t, spec)

	ep := inst.Endpoint()
	if ep.Network != "tcp" || !strings.HasPrefix(ep.Address, "127.0.0.1:") {
		t.Fatalf("Endpoint = %+v, want tcp on 127.0.0.1", ep)
	}
	if inst.Detached() {
		t.Errorf("a running script reports Detached")
	}
	if inst.PID() <= 0 || !alive(inst.PID()) {
		t.Errorf("PID %d is not a live process", inst.PID())
	}
	if _, pgrp, _ := procStat(inst.PID()); pgrp != inst.PID() {
		t.Errorf("script runs in process group %d, want its own (%d)", pgrp, inst.PID())
	}
	if want := filepath.Join(spec.SessionDir, services.LogName); inst.LogPath() != want {
		t.Errorf("LogPath = %q, want %q", inst.LogPath(), want)
	}
	if st, err := os.Stat(spec.SessionDir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("session dir: %v, mode %v; want 0700", err, st.Mode())
	}

	dialEcho(t, inst)
	dialEcho(t, inst) // a second connection works too

	env := readEnv(t, filepath.Join(spec.SessionDir, "env.txt"))
	want := map[string]string{
		"WSGW_SERVICE":     "Echo Service",
		"WSGW_INDEX":       "1",
		"WSGW_TOKEN":       spec.Token,
		"WSGW_OPTIONS":     testOptions,
		"WSGW_SESSION_DIR": spec.SessionDir,
		"WSGW_EXTRA":       "from ExtraEnv",
		"PATH":             os.Getenv("PATH"),
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("script saw %s=%q, want %q", k, env[k], v)
		}
	}
	if v, ok := env["WSGWTEST_LEAK"]; ok {
		t.Errorf("a variable outside the allow-list reached the script: WSGWTEST_LEAK=%q", v)
	}
	if v, ok := env[helperEnv]; ok {
		t.Errorf("script saw %s=%q", helperEnv, v)
	}
	cwd, _ := os.ReadFile(filepath.Join(spec.SessionDir, "cwd.txt"))
	if strings.TrimSpace(string(cwd)) != spec.SessionDir {
		t.Errorf("script ran in %q, want the session dir %q", strings.TrimSpace(string(cwd)), spec.SessionDir)
	}

	waitLogContains(t, spec, "serving now (stdout, after the ready line)")
	log := readLog(spec)
	for _, s := range []string{
		"preparing the service (stdout, before the ready line)",
		"a warning on stderr",
		"start Echo Service index 1",
	} {
		if !strings.Contains(log, s) {
			t.Errorf("session log lacks %q:\n%s", s, log)
		}
	}

	pid := inst.PID()
	if err := stopInst(t, inst); err != nil {
		t.Errorf("Stop: %v", err)
	}
	waitDead(t, "script", pid)
	waitGroupDead(t, pid)
	select {
	case <-inst.Exited():
	default:
		t.Errorf("Exited not closed after Stop")
	}
	if inst.ExitErr() == nil {
		t.Errorf("ExitErr = nil for a service stopped by a signal")
	}
	if !strings.Contains(readLog(spec), "stopped (start process:") {
		t.Errorf("session log does not record the stop:\n%s", readLog(spec))
	}
	if c, err := net.DialTimeout("tcp", ep.Address, 2*time.Second); err == nil {
		c.Close()
		t.Errorf("service still listens at %s after Stop", ep.Address)
	}
}

func TestStartUnixSocketService(t *testing.T) {
	script := writeScript(t, `exec `+helperCmd(t, "-unix", `"$WSGW_SESSION_DIR/echo.sock"`)+"\n")
	spec := newSpec(t, script)
	inst := start(t, spec)
	want := services.Endpoint{Network: "unix", Address: filepath.Join(spec.SessionDir, "echo.sock")}
	if inst.Endpoint() != want {
		t.Fatalf("Endpoint = %+v, want %+v", inst.Endpoint(), want)
	}
	dialEcho(t, inst)
}

func TestDialRetriesUntilTheServiceListens(t *testing.T) {
	port := closedPort(t)
	script := writeScript(t, `exec `+helperCmd(t, "-port", strconv.Itoa(port), "-listen-delay", "300ms")+"\n")
	inst := start(t, newSpec(t, script))
	if want := net.JoinHostPort("127.0.0.1", strconv.Itoa(port)); inst.Endpoint().Address != want {
		t.Fatalf("Endpoint = %+v, want %s", inst.Endpoint(), want)
	}
	dialEcho(t, inst)
}

func TestDialFailsWhenTheServiceExits(t *testing.T) {
	port := closedPort(t)
	script := writeScript(t, fmt.Sprintf(`
echo '{"hostname": "127.0.0.1", "port": %d}'
while [ ! -e "$WSGW_SESSION_DIR/go" ]; do sleep 0.02; done
echo "giving up" >&2
exit 3
`, port))
	spec := newSpec(t, script)
	inst := start(t, spec)
	if err := os.WriteFile(filepath.Join(spec.SessionDir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inst.Exited():
	case <-time.After(15 * time.Second):
		t.Fatal("script did not exit")
	}
	if inst.Detached() {
		t.Errorf("a script that exited 3 reports Detached")
	}
	if inst.ExitErr() == nil || !strings.Contains(inst.ExitErr().Error(), "exit status 3") {
		t.Errorf("ExitErr = %v, want exit status 3", inst.ExitErr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := inst.Dial(ctx)
	if err == nil {
		c.Close()
		t.Fatal("Dial succeeded to a service that exited")
	}
	if !errors.Is(err, services.ErrDial) || !strings.Contains(err.Error(), "exited") {
		t.Errorf("Dial error = %v, want ErrDial saying the service exited", err)
	}
}

func TestDialDetachedServiceThatNeverListensDoesNotSpin(t *testing.T) {
	port := closedPort(t)
	script := writeScript(t, fmt.Sprintf(`echo '{"hostname": "127.0.0.1", "port": %d}'; exit 0`, port))
	spec := newSpec(t, script)
	spec.StartTimeout = time.Second // Dial then retries for its 2 s minimum
	inst := start(t, spec)
	select {
	case <-inst.Exited():
	case <-time.After(15 * time.Second):
		t.Fatal("script did not exit")
	}
	if !inst.Detached() {
		t.Fatalf("script that exited 0 after its line is not Detached (ExitErr %v)", inst.ExitErr())
	}

	cpuBefore := cpuTime(t)
	t0 := time.Now()
	c, err := inst.Dial(context.Background())
	wall := time.Since(t0)
	cpu := cpuTime(t) - cpuBefore
	if err == nil {
		c.Close()
		t.Fatal("Dial succeeded with nothing listening")
	}
	if !errors.Is(err, services.ErrDial) {
		t.Errorf("Dial error = %v, want ErrDial", err)
	}
	if wall > 15*time.Second {
		t.Errorf("Dial took %v", wall)
	}
	// Retrying at a polite pace costs a few milliseconds of CPU; a busy
	// loop costs about the whole wait.
	if cpu > wall/2 {
		t.Errorf("Dial burned %v of CPU in %v of retries: it is busy-looping", cpu, wall)
	}
}

func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestStartFailures(t *testing.T) {
	tests := []struct {
		name    string
		body    string // script body; "" means the script does not exist
		wantErr error
		msg     []string // the error text contains these
		log     []string // the session log contains these
	}{
		{
			name:    "exit 3 with a message on stderr",
			body:    "echo 'about to fail' >&2\necho 'Xvnc not found: install tigervnc-standalone-server' >&2\nexit 3\n",
			wantErr: services.ErrStartFailed,
			msg:     []string{"exit status 3", "Xvnc not found: install tigervnc-standalone-server"},
			log:     []string{"about to fail", "Xvnc not found", "start failed"},
		},
		{
			name:    "exit 0 without a ready line",
			body:    "echo 'some chatter'\nexit 0\n",
			wantErr: services.ErrStartFailed,
			msg:     []string{"status 0 without printing a ready line"},
			log:     []string{"some chatter", "start failed"},
		},
		{
			name:    "exit 1 without output",
			body:    "exit 1\n",
			wantErr: services.ErrStartFailed,
			msg:     []string{"exit status 1"},
		},
		{
			name:    "killed by a signal",
			body:    "kill -KILL $$\n",
			wantErr: services.ErrStartFailed,
			msg:     []string{"signal: killed"},
		},
		{
			name:    "bad ready line",
			body:    "echo '{\"hostname\": \"127.0.0.1\", \"port\": 0}'\nexec sleep 1000\n",
			wantErr: services.ErrStartFailed,
			msg:     []string{`"port" must be 1..65535`},
		},
		{
			name:    "ready line is not JSON",
			body:    "echo '{port: 5901}'\nexec sleep 1000\n",
			wantErr: services.ErrStartFailed,
			msg:     []string{"not a JSON object"},
		},
		{
			name:    "script missing",
			wantErr: services.ErrStartFailed,
			msg:     []string{"running", "no such file"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var script string
			if tt.body == "" {
				script = filepath.Join(t.TempDir(), "missing.sh")
			} else {
				script = writeScript(t, `echo $$ > "$WSGW_SESSION_DIR/script.pid"`+"\n"+tt.body)
			}
			spec := newSpec(t, script)
			inst, err := services.Start(context.Background(), spec, testLogger(t))
			if err == nil {
				stopInst(t, inst)
				t.Fatal("Start succeeded")
			}
			if inst != nil {
				t.Errorf("Start returned an instance with its error")
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if errors.Is(err, services.ErrStartTimeout) {
				t.Errorf("error %v is a timeout", err)
			}
			for _, m := range tt.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
			log := readLog(spec)
			for _, m := range tt.log {
				if !strings.Contains(log, m) {
					t.Errorf("session log lacks %q:\n%s", m, log)
				}
			}
			if tt.body != "" {
				pid := readPidFile(t, filepath.Join(spec.SessionDir, "script.pid"))
				waitDead(t, "script", pid)
				waitGroupDead(t, pid)
			}
		})
	}
}

func TestStartSessionDirUnusable(t *testing.T) {
	file := writeFile(t, t.TempDir(), "not-a-dir", "", 0o600)
	spec := newSpec(t, writeScript(t, "exit 0\n"))
	spec.SessionDir = filepath.Join(file, "session")
	_, err := services.Start(context.Background(), spec, testLogger(t))
	if !errors.Is(err, services.ErrStartFailed) || !strings.Contains(err.Error(), "session directory") {
		t.Errorf("error = %v, want ErrStartFailed about the session directory", err)
	}
}

func TestStartTimeoutKillsGroup(t *testing.T) {
	script := writeScript(t, `
echo $$ > "$WSGW_SESSION_DIR/script.pid"
sleep 1000 &
echo $! > "$WSGW_SESSION_DIR/child.pid"
echo "still warming up" >&2
sleep 1000
`)
	spec := newSpec(t, script)
	spec.StartTimeout = time.Second
	spec.StopGrace = time.Second
	t0 := time.Now()
	inst, err := services.Start(context.Background(), spec, testLogger(t))
	took := time.Since(t0)
	if err == nil {
		stopInst(t, inst)
		t.Fatal("Start succeeded without a ready line")
	}
	if !errors.Is(err, services.ErrStartTimeout) {
		t.Fatalf("error = %v, want ErrStartTimeout", err)
	}
	if took < spec.StartTimeout || took > 20*time.Second {
		t.Errorf("Start gave up after %v with a start timeout of %v", took, spec.StartTimeout)
	}
	pid := readPidFile(t, filepath.Join(spec.SessionDir, "script.pid"))
	child := readPidFile(t, filepath.Join(spec.SessionDir, "child.pid"))
	waitDead(t, "script", pid)
	waitDead(t, "background child", child)
	waitGroupDead(t, pid)
	log := readLog(spec)
	if !strings.Contains(log, "still warming up") || !strings.Contains(log, "start failed") {
		t.Errorf("session log:\n%s", log)
	}
}

func TestDetachedServiceStop(t *testing.T) {
	tests := []struct {
		name   string
		setsid bool // the daemon leaves the script's process group
	}{
		{"daemon in its own session, killed by stop", true},
		{"daemon in the script's group, killed with the group", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"-ready-file", `"$d/line"`, "-pid-file", `"$d/daemon.pid"`}
			kill := ""
			if tt.setsid {
				args = append(args, "-setsid")
				kill = `kill "$(cat "$d/daemon.pid")"`
			}
			script := writeScript(t, `
d="$WSGW_SESSION_DIR"
case "$1" in
start)
	`+helperCmd(t, args...)+` </dev/null >/dev/null 2>>"$d/daemon.log" &
	i=0
	while [ ! -s "$d/line" ]; do
		i=$((i+1))
		if [ $i -gt 600 ]; then echo "daemon did not start" >&2; exit 1; fi
		sleep 0.05
	done
	echo "daemon is up"
	cat "$d/line"
	exit 0
	;;
stop)
	printf '%s' "$WSGW_START_OUTPUT" > "$d/stop-saw"
	env > "$d/stop-env.txt"
	`+kill+`
	echo "stop branch done"
	exit 0
	;;
*)
	echo "usage: $0 start|stop" >&2
	exit 2
	;;
esac
`)
			spec := newSpec(t, script)
			killOnCleanup(t, filepath.Join(spec.SessionDir, "daemon.pid"))
			inst := start(t, spec)
			select {
			case <-inst.Exited():
			case <-time.After(15 * time.Second):
				t.Fatal("start script did not exit")
			}
			if !inst.Detached() {
				t.Fatalf("Detached = false after the script exited (%v)", inst.ExitErr())
			}
			daemon := readPidFile(t, filepath.Join(spec.SessionDir, "daemon.pid"))
			if _, pgrp, _ := procStat(daemon); tt.setsid == (pgrp == inst.PID()) {
				t.Fatalf("daemon process group %d, script group %d, setsid %v", pgrp, inst.PID(), tt.setsid)
			}
			dialEcho(t, inst)

			line, err := os.ReadFile(filepath.Join(spec.SessionDir, "line"))
			if err != nil {
				t.Fatal(err)
			}
			addr := inst.Endpoint().Address

			if err := stopInst(t, inst); err != nil {
				t.Errorf("Stop: %v", err)
			}
			saw, err := os.ReadFile(filepath.Join(spec.SessionDir, "stop-saw"))
			if err != nil {
				t.Fatalf("stop branch did not run: %v\nsession log:\n%s", err, readLog(spec))
			}
			if string(saw) != strings.TrimSpace(string(line)) {
				t.Errorf("WSGW_START_OUTPUT = %q, want the printed line %q", saw, strings.TrimSpace(string(line)))
			}
			env := readEnv(t, filepath.Join(spec.SessionDir, "stop-env.txt"))
			for k, v := range map[string]string{
				"WSGW_SERVICE": "Echo Service", "WSGW_INDEX": "1", "WSGW_TOKEN": spec.Token,
				"WSGW_OPTIONS": testOptions, "WSGW_SESSION_DIR": spec.SessionDir,
			} {
				if env[k] != v {
					t.Errorf("stop saw %s=%q, want %q", k, env[k], v)
				}
			}
			waitDead(t, "daemon", daemon)
			if c, err := net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
				c.Close()
				t.Errorf("something still listens at %s after Stop", addr)
			}
			log := readLog(spec)
			for _, s := range []string{"daemon is up", "stop branch done"} {
				if !strings.Contains(log, s) {
					t.Errorf("session log lacks %q:\n%s", s, log)
				}
			}
		})
	}
}

func TestDetachedStopFailureIsReported(t *testing.T) {
	script := writeScript(t, `
case "$1" in
start) echo '{"port": 9}'; exit 0 ;;
stop) echo "cannot reach the scheduler" >&2; exit 4 ;;
esac
`)
	spec := newSpec(t, script)
	inst := start(t, spec)
	select {
	case <-inst.Exited():
	case <-time.After(15 * time.Second):
		t.Fatal("start script did not exit")
	}
	if !inst.Detached() {
		t.Fatal("not detached")
	}
	err := stopInst(t, inst)
	if err == nil || !strings.Contains(err.Error(), "exit status 4") || !strings.Contains(err.Error(), "Echo Service") {
		t.Errorf("Stop = %v, want the stop script's failure", err)
	}
	if !strings.Contains(readLog(spec), "cannot reach the scheduler") {
		t.Errorf("stop's stderr is not in the session log:\n%s", readLog(spec))
	}
	if err2 := stopInst(t, inst); err2 != err {
		t.Errorf("second Stop = %v, want the first result %v", err2, err)
	}
}

func TestAttachedStopKillsGrandchildren(t *testing.T) {
	script := writeScript(t, `
d="$WSGW_SESSION_DIR"
sleep 1000 &
echo $! > "$d/grandchild.pid"
`+helperCmd(t, "-ready-file", `"$d/line"`, "-pid-file", `"$d/listener.pid"`)+` </dev/null >/dev/null 2>>"$d/listener.log" &
i=0
while [ ! -s "$d/line" ]; do
	i=$((i+1))
	if [ $i -gt 600 ]; then echo "listener did not start" >&2; exit 1; fi
	sleep 0.05
done
cat "$d/line"
wait
`)
	spec := newSpec(t, script)
	killOnCleanup(t, filepath.Join(spec.SessionDir, "grandchild.pid"))
	killOnCleanup(t, filepath.Join(spec.SessionDir, "listener.pid"))
	inst := start(t, spec)
	dialEcho(t, inst)
	pid := inst.PID()
	grandchild := readPidFile(t, filepath.Join(spec.SessionDir, "grandchild.pid"))
	listener := readPidFile(t, filepath.Join(spec.SessionDir, "listener.pid"))
	for _, p := range []int{pid, grandchild, listener} {
		if !alive(p) {
			t.Fatalf("pid %d not running before Stop", p)
		}
	}
	if inst.Detached() {
		t.Fatal("a script that waits reports Detached")
	}

	if err := stopInst(t, inst); err != nil {
		t.Errorf("Stop: %v", err)
	}
	waitDead(t, "script", pid)
	waitDead(t, "grandchild sleep", grandchild)
	waitDead(t, "grandchild listener", listener)
	waitGroupDead(t, pid)
	if c, err := net.DialTimeout("tcp", inst.Endpoint().Address, 2*time.Second); err == nil {
		c.Close()
		t.Errorf("listener still accepts after Stop")
	}
	if _, err := os.Stat(filepath.Join(spec.SessionDir, "stop-saw")); err == nil {
		t.Errorf("an attached service got SCRIPT stop")
	}
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	script := writeScript(t, `
trap '' TERM
sleep 1000 &
echo $! > "$WSGW_SESSION_DIR/child.pid"
echo '{"port": 9}'
sleep 1000
`)
	spec := newSpec(t, script)
	spec.StopGrace = time.Second
	inst := start(t, spec)
	child := readPidFile(t, filepath.Join(spec.SessionDir, "child.pid"))
	pid := inst.PID()

	t0 := time.Now()
	if err := stopInst(t, inst); err != nil {
		t.Errorf("Stop: %v", err)
	}
	took := time.Since(t0)
	// SIGTERM is ignored, so only the SIGKILL after the grace ends it.
	if took < spec.StopGrace || took > 25*time.Second {
		t.Errorf("Stop took %v with a grace of %v", took, spec.StopGrace)
	}
	if e := inst.ExitErr(); e == nil || !strings.Contains(e.Error(), "killed") {
		t.Errorf("ExitErr = %v, want signal: killed", e)
	}
	waitDead(t, "script", pid)
	waitDead(t, "child ignoring SIGTERM", child)
	waitGroupDead(t, pid)
}

func TestStopIsIdempotent(t *testing.T) {
	script := writeScript(t, "exec "+helperCmd(t)+"\n")
	spec := newSpec(t, script)
	inst := start(t, spec)
	pid := inst.PID()

	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = stopInst(t, inst)
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent Stop #%d: %v", i, err)
		}
	}
	if err := stopInst(t, inst); err != nil {
		t.Errorf("Stop after Stop: %v", err)
	}
	waitDead(t, "script", pid)
	if n := strings.Count(readLog(spec), "stopped (start process:"); n != 1 {
		t.Errorf("session log records %d stops, want 1:\n%s", n, readLog(spec))
	}
}

// supervise makes spec run under a supervisor: this test binary, which
// TestMain turns into one.
func supervise(t *testing.T, spec services.Spec) services.Spec {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	sup, err := proc.NewSupervisor(exe)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sup.Close() })
	spec.Supervisor = sup
	return spec
}

// TestStartCancelledBeforeLateReadyLine: a context cancelled while the
// script has not printed its (late) ready line stops the whole group
// before Start returns, with or without a supervisor.
func TestStartCancelledBeforeLateReadyLine(t *testing.T) {
	for _, supervised := range []bool{false, true} {
		t.Run(fmt.Sprintf("supervised=%v", supervised), func(t *testing.T) {
			script := writeScript(t, `
d="$WSGW_SESSION_DIR"
sleep 1000 &
echo $! > "$d/child.pid"
echo $$ > "$d/script.pid"
while [ ! -e "$d/go" ]; do sleep 0.02; done
echo '{"port": 9}'
exec sleep 1000
`)
			spec := newSpec(t, script)
			spec.StartTimeout = time.Minute
			spec.StopGrace = 2 * time.Second
			if supervised {
				spec = supervise(t, spec)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type result struct {
				inst *services.Instance
				err  error
			}
			done := make(chan result, 1)
			go func() {
				inst, err := services.Start(ctx, spec, zerolog.Nop())
				done <- result{inst, err}
			}()
			pid := readPidFile(t, filepath.Join(spec.SessionDir, "script.pid"))
			child := readPidFile(t, filepath.Join(spec.SessionDir, "child.pid"))
			_, pgid, _ := procStat(pid)
			if !alive(pid) || !alive(child) || len(liveGroupMembers(pgid)) == 0 {
				t.Fatalf("script or child not running before the cancel")
			}
			cancel()
			var r result
			select {
			case r = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Start did not return after its context was cancelled")
			}
			// Too late for the line: the start is over either way.
			_ = os.WriteFile(filepath.Join(spec.SessionDir, "go"), nil, 0o600)
			if r.err == nil {
				stopInst(t, r.inst)
				t.Fatal("Start succeeded after its context was cancelled")
			}
			if !errors.Is(r.err, context.Canceled) || !errors.Is(r.err, services.ErrStartFailed) {
				t.Errorf("error = %v, want ErrStartFailed wrapping context.Canceled", r.err)
			}
			// Nothing is left running the moment Start returns.
			if m := liveGroupMembers(pgid); len(m) > 0 {
				t.Errorf("process group %d still has %v when Start returned", pgid, m)
			}
			for _, p := range []int{pid, child} {
				if alive(p) {
					t.Errorf("pid %d alive when Start returned", p)
				}
			}
		})
	}
}

// TestStartCancelRacesReadyLine cancels at every moment of a start whose
// line comes at once: Start either succeeds (and Stop ends the service)
// or fails with the cancellation and leaves nothing running.
func TestStartCancelRacesReadyLine(t *testing.T) {
	script := writeScript(t, `echo $$ > "$WSGW_SESSION_DIR/script.pid"
echo '{"port": 9}'
exec sleep 1000
`)
	var won, lost int
	for i := 0; i < 30; i++ {
		spec := newSpec(t, script)
		spec.StopGrace = 2 * time.Second
		ctx, cancel := context.WithCancel(context.Background())
		go func(d time.Duration) {
			time.Sleep(d)
			cancel()
		}(time.Duration(i) * time.Millisecond)
		inst, err := services.Start(ctx, spec, zerolog.Nop())
		cancel()
		if err == nil {
			won++
			if err := stopInst(t, inst); err != nil {
				t.Errorf("Stop: %v", err)
			}
			if m := liveGroupMembers(inst.PID()); len(m) > 0 {
				t.Errorf("run %d: group %d has %v after Stop", i, inst.PID(), m)
			}
			continue
		}
		lost++
		if !errors.Is(err, context.Canceled) {
			t.Errorf("run %d: error = %v, want context.Canceled", i, err)
		}
		if b, rerr := os.ReadFile(filepath.Join(spec.SessionDir, "script.pid")); rerr == nil {
			if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
				if m := liveGroupMembers(pid); len(m) > 0 {
					t.Errorf("run %d: group %d has %v when Start returned", i, pid, m)
				}
			}
		}
	}
	t.Logf("%d starts won the race, %d were cancelled", won, lost)
}

// TestSupervisedStopEscalatesAndKillsGrandchildren: under the supervisor,
// Stop still ends a group that ignores SIGTERM, grandchildren included,
// and the script's own status is what CrashReason and Detached see.
func TestSupervisedStopEscalatesAndKillsGrandchildren(t *testing.T) {
	script := writeScript(t, `
trap '' TERM
sleep 1000 &
echo $! > "$WSGW_SESSION_DIR/child.pid"
echo $$ > "$WSGW_SESSION_DIR/script.pid"
echo '{"port": 9}'
sleep 1000
`)
	spec := supervise(t, newSpec(t, script))
	spec.StopGrace = time.Second
	inst := start(t, spec)
	child := readPidFile(t, filepath.Join(spec.SessionDir, "child.pid"))
	pid := readPidFile(t, filepath.Join(spec.SessionDir, "script.pid"))
	if pid == inst.PID() {
		t.Fatalf("the instance's pid %d is the script, not its supervisor", pid)
	}
	if _, pgrp, _ := procStat(pid); pgrp != inst.PID() {
		t.Fatalf("script in group %d, want the supervisor's %d", pgrp, inst.PID())
	}
	if inst.Detached() || inst.CrashReason(0) != "" {
		t.Fatalf("a running service: Detached %v, CrashReason %q", inst.Detached(), inst.CrashReason(0))
	}
	t0 := time.Now()
	if err := stopInst(t, inst); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if took := time.Since(t0); took < spec.StopGrace || took > 30*time.Second {
		t.Errorf("Stop took %v with a grace of %v", took, spec.StopGrace)
	}
	for _, p := range []int{inst.PID(), pid, child} {
		if alive(p) {
			t.Errorf("pid %d alive after Stop", p)
		}
	}
	if m := liveGroupMembers(inst.PID()); len(m) > 0 {
		t.Errorf("group %d has %v after Stop", inst.PID(), m)
	}
}

// TestSupervisedCrashReason: the script's own exit status, reported by the
// supervisor, names the crash.
func TestSupervisedCrashReason(t *testing.T) {
	tests := []struct {
		name, exit, want string
		detached         bool
	}{
		{"status 3", "exit 3", "service exited with status 3", false},
		{"killed", "kill -KILL $$", "service exited: killed by signal 9 (killed)", false},
		{"detached", "exit 0", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			script := writeScript(t, `echo '{"port": 9}'
while [ ! -e "$WSGW_SESSION_DIR/go" ]; do sleep 0.02; done
`+tt.exit+"\n")
			spec := supervise(t, newSpec(t, script))
			inst := start(t, spec)
			if got := inst.CrashReason(0); got != "" {
				t.Fatalf("CrashReason of a running service = %q", got)
			}
			if err := os.WriteFile(filepath.Join(spec.SessionDir, "go"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if got := inst.CrashReason(20 * time.Second); got != tt.want {
				t.Errorf("CrashReason = %q, want %q", got, tt.want)
			}
			if got := inst.Detached(); got != tt.detached {
				t.Errorf("Detached = %v, want %v", got, tt.detached)
			}
		})
	}
}
