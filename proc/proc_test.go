package proc_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"wsgateway/internal/procwatch"
	"wsgateway/proc"
)

// parentEnv makes the test binary act as a gateway (see parentMain).
const parentEnv = "WSGWTEST_PROC_PARENT"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == proc.SuperviseArg {
		os.Exit(proc.Supervise(os.Args[2:]))
	}
	if os.Getenv(parentEnv) != "" {
		os.Exit(parentMain(os.Args[1:]))
	}
	os.Exit(procwatch.Run(m, nil))
}

// parentMain is a stand-in gateway: it runs the shell script args[0]
// under a supervisor, prints the supervisor's pid and waits to be killed.
func parentMain(args []string) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sup, err := proc.NewSupervisor(exe)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	p, err := proc.Start(proc.Spec{Argv: []string{"/bin/sh", "-c", args[0]}, Supervisor: sup, Grace: time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println(p.PID())
	<-p.Exited()
	return 0
}

// --- plumbing ---

func supervisor(t *testing.T) *proc.Supervisor {
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
	return sup
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, "pid file "+filepath.Base(path), func() bool {
		b, err := os.ReadFile(path)
		if err != nil || !bytes.HasSuffix(b, []byte("\n")) {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil && pid > 0
	})
	return pid
}

func start(t *testing.T, spec proc.Spec) *proc.Process {
	t.Helper()
	p, err := proc.Start(spec)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.Stop(ctx)
	})
	return p
}

func waitExited(t *testing.T, p *proc.Process) {
	t.Helper()
	select {
	case <-p.Exited():
	case <-time.After(20 * time.Second):
		t.Fatal("the process did not exit")
	}
}

// envSeen runs env with spec's Env and Policy, under a supervisor or
// not, and returns what it printed.
func envSeen(t *testing.T, spec proc.Spec, supervised bool) string {
	t.Helper()
	out, err := os.Create(filepath.Join(t.TempDir(), "env"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	spec.Argv, spec.Stdout = []string{"env"}, out
	if supervised {
		spec.Supervisor = supervisor(t)
	}
	waitExited(t, start(t, spec))
	b, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// --- tests ---

func TestEnviron(t *testing.T) {
	t.Setenv("PATH", "/opt/x/bin:/usr/bin")
	t.Setenv("LANG", "C.UTF-8")
	t.Setenv("DISPLAY", ":7")
	t.Setenv("LSTC_LICENSE", "network")
	t.Setenv(proc.SecurityTokenVar, "the-gateway-secret")
	t.Setenv("WSGWTEST_RANDOM", "not for children")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "also not")
	t.Setenv("WSGW_SOMETHING", "the gateway's own, not the child's")
	tests := []struct {
		name string
		own  []string
		want map[string]string // "" : absent
	}{
		{"allow-list only", nil, map[string]string{
			"PATH": "/opt/x/bin:/usr/bin", "LANG": "C.UTF-8", "DISPLAY": ":7", "LSTC_LICENSE": "network",
			proc.SecurityTokenVar: "", "WSGWTEST_RANDOM": "", "AWS_SECRET_ACCESS_KEY": "", "WSGW_SOMETHING": "",
		}},
		{"own variables added", []string{"WSGW_TOKEN=abc", "WSGW_OPTIONS={\"a\":\"b=c\"}", "EMPTY="}, map[string]string{
			"WSGW_TOKEN": "abc", "WSGW_OPTIONS": `{"a":"b=c"}`, "PATH": "/opt/x/bin:/usr/bin", "WSGWTEST_RANDOM": "",
		}},
		{"own wins over inherited", []string{"LANG=fr_FR.UTF-8"}, map[string]string{"LANG": "fr_FR.UTF-8"}},
		{"never the security token", []string{proc.SecurityTokenVar + "=smuggled"}, map[string]string{proc.SecurityTokenVar: ""}},
		{"malformed own entries dropped", []string{"NOEQUALS", "=nokey"}, map[string]string{"NOEQUALS": "", "": ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := proc.Environ(tt.own)
			got := map[string]string{}
			seen := map[string]int{}
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					t.Errorf("entry %q has no '='", kv)
				}
				got[k] = v
				seen[k]++
			}
			for k, n := range seen {
				if n > 1 {
					t.Errorf("%s appears %d times", k, n)
				}
			}
			for k, v := range tt.want {
				if g, ok := got[k]; v == "" && ok {
					t.Errorf("%s=%q is in the environment", k, g)
				} else if v != "" && g != v {
					t.Errorf("%s=%q, want %q", k, g, v)
				}
			}
			if _, ok := got["EMPTY"]; tt.name == "own variables added" && !ok {
				t.Errorf("an own variable with an empty value was dropped")
			}
			// Every inherited name is allow-listed or the process's own.
			allowed := map[string]bool{}
			for _, k := range proc.Inherited() {
				allowed[k] = true
			}
			for _, kv := range tt.own {
				k, _, _ := strings.Cut(kv, "=")
				allowed[k] = true
			}
			for k := range got {
				if !allowed[k] {
					t.Errorf("%s is neither allow-listed nor the process's own", k)
				}
			}
		})
	}
}

func TestEnvironDefaultPath(t *testing.T) {
	t.Setenv("PATH", "")
	got := proc.Environ(nil)
	n := 0
	for _, kv := range got {
		if strings.HasPrefix(kv, "PATH=") {
			n++
			if kv == "PATH=" {
				t.Errorf("empty PATH passed on")
			}
		}
	}
	if n != 1 {
		t.Errorf("%d PATH entries in %v, want 1", n, got)
	}
}

// TestStartEnvironmentReachesTheProcess: the child sees exactly Environ.
func TestStartEnvironmentReachesTheProcess(t *testing.T) {
	t.Setenv(proc.SecurityTokenVar, "the-gateway-secret")
	t.Setenv("WSGWTEST_RANDOM", "not for children")
	for _, supervised := range []bool{false, true} {
		t.Run(fmt.Sprintf("supervised=%v", supervised), func(t *testing.T) {
			env := envSeen(t, proc.Spec{Env: []string{"WSGW_OWN=yes"}}, supervised)
			for _, bad := range []string{"the-gateway-secret", "WSGWTEST_RANDOM"} {
				if strings.Contains(env, bad) {
					t.Errorf("the process saw %q:\n%s", bad, env)
				}
			}
			if !strings.Contains(env, "WSGW_OWN=yes\n") || !strings.Contains(env, "PATH=") {
				t.Errorf("the process lacks its own variable or PATH:\n%s", env)
			}
		})
	}
}

// TestStartPassesTheOperatorsVariables: with a Policy, the process also
// gets the names and prefixes it passes, and still never the token.
func TestStartPassesTheOperatorsVariables(t *testing.T) {
	t.Setenv(proc.SecurityTokenVar, "the-gateway-secret")
	t.Setenv("WSGWTEST_PV_PLUGIN_PATH", "/opt/pv/plugins")
	t.Setenv("WSGWTEST_PYTHONPATH", "/opt/pv/lib")
	t.Setenv("WSGWTEST_RANDOM", "not for children")
	pol, err := proc.ParsePolicy("WSGWTEST_PYTHONPATH,WSGWTEST_PV_*,WEBSOCKETSERVER_*")
	if err != nil {
		t.Fatal(err)
	}
	for _, supervised := range []bool{false, true} {
		t.Run(fmt.Sprintf("supervised=%v", supervised), func(t *testing.T) {
			env := envSeen(t, proc.Spec{Policy: pol}, supervised)
			for _, want := range []string{"WSGWTEST_PV_PLUGIN_PATH=/opt/pv/plugins\n", "WSGWTEST_PYTHONPATH=/opt/pv/lib\n", "PATH="} {
				if !strings.Contains(env, want) {
					t.Errorf("the process lacks %q:\n%s", want, env)
				}
			}
			for _, bad := range []string{"the-gateway-secret", "WSGWTEST_RANDOM"} {
				if strings.Contains(env, bad) {
					t.Errorf("the process saw %q:\n%s", bad, env)
				}
			}
		})
	}
}

// TestExitStatus: the leader's exit and the program's status, with and
// without a supervisor.
func TestExitStatus(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		status  int
		errText string // "" : ExitErr nil
	}{
		{"success", "exit 0", 0, ""},
		{"failure", "exit 3", 3, "exit status 3"},
		{"killed", "kill -KILL $$", 128 + 9, "killed"},
	}
	for _, tt := range tests {
		for _, supervised := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s supervised=%v", tt.name, supervised), func(t *testing.T) {
				spec := proc.Spec{Argv: []string{"/bin/sh", "-c", tt.script}}
				if supervised {
					spec.Supervisor = supervisor(t)
				}
				p := start(t, spec)
				if p.Supervised() != supervised {
					t.Errorf("Supervised = %v", p.Supervised())
				}
				select {
				case <-p.ProgramExited():
				case <-time.After(20 * time.Second):
					t.Fatal("no program status")
				}
				if got := p.ProgramStatus(); got != tt.status {
					t.Errorf("ProgramStatus = %d, want %d", got, tt.status)
				}
				waitExited(t, p)
				err := p.ExitErr()
				if supervised && tt.status > 128 {
					// The supervisor reports the signal as a status.
					if err == nil || !strings.Contains(err.Error(), strconv.Itoa(tt.status)) {
						t.Errorf("supervisor's ExitErr = %v, want exit status %d", err, tt.status)
					}
				} else if tt.errText == "" && err != nil || tt.errText != "" && (err == nil || !strings.Contains(err.Error(), tt.errText)) {
					t.Errorf("ExitErr = %v, want %q", err, tt.errText)
				}
				if p.ProcessState() == nil {
					t.Errorf("no ProcessState after Exited")
				}
				if err := p.Wait(context.Background()); err != p.ExitErr() {
					t.Errorf("Wait = %v, want %v", err, p.ExitErr())
				}
			})
		}
	}
}

func TestStartMissingProgram(t *testing.T) {
	if _, err := proc.Start(proc.Spec{}); err == nil {
		t.Errorf("Start with no argv succeeded")
	}
	_, err := proc.Start(proc.Spec{Argv: []string{filepath.Join(t.TempDir(), "missing")}})
	if err == nil || !strings.Contains(err.Error(), "running") {
		t.Errorf("Start of a missing program: %v", err)
	}
}

// TestStopKillsGrandchildren: Stop ends the whole group, a grandchild in
// the background included, with or without a supervisor.
func TestStopKillsGrandchildren(t *testing.T) {
	for _, supervised := range []bool{false, true} {
		t.Run(fmt.Sprintf("supervised=%v", supervised), func(t *testing.T) {
			dir := t.TempDir()
			spec := proc.Spec{Argv: []string{"/bin/sh", "-c", `sleep 1000 & echo $! > gc.pid; echo $$ > sh.pid; wait`},
				Dir: dir, Grace: 5 * time.Second}
			if supervised {
				spec.Supervisor = supervisor(t)
			}
			p := start(t, spec)
			gc := readPid(t, filepath.Join(dir, "gc.pid"))
			sh := readPid(t, filepath.Join(dir, "sh.pid"))
			if !alive(gc) || !p.GroupAlive() {
				t.Fatal("grandchild not running")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			t0 := time.Now()
			if err := p.Stop(ctx); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			// SIGTERM is enough: no wait for the grace.
			if took := time.Since(t0); took >= spec.Grace {
				t.Errorf("Stop took %v; the group obeyed SIGTERM", took)
			}
			for _, pid := range []int{p.PID(), sh, gc} {
				if alive(pid) {
					t.Errorf("pid %d alive after Stop", pid)
				}
			}
			if p.GroupAlive() || proc.GroupAlive(p.PID()) {
				t.Errorf("group alive after Stop")
			}
			select {
			case <-p.Exited():
			default:
				t.Errorf("Exited not closed after Stop")
			}
			if err := p.Stop(ctx); err != nil {
				t.Errorf("second Stop: %v", err)
			}
		})
	}
}

// TestStopEscalatesAfterGrace: a group that ignores SIGTERM gets SIGKILL
// once the grace has passed, not before.
func TestStopEscalatesAfterGrace(t *testing.T) {
	dir := t.TempDir()
	const grace = 500 * time.Millisecond
	p := start(t, proc.Spec{Argv: []string{"/bin/sh", "-c", `trap '' TERM; sleep 1000 & echo $! > gc.pid; while :; do sleep 0.05; done`},
		Dir: dir, Grace: grace})
	gc := readPid(t, filepath.Join(dir, "gc.pid"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	took := time.Since(t0)
	if took < grace || took > 10*grace+10*time.Second {
		t.Errorf("Stop took %v with a grace of %v", took, grace)
	}
	if alive(gc) || alive(p.PID()) {
		t.Errorf("something survived Stop")
	}
	if e := p.ExitErr(); e == nil || !strings.Contains(e.Error(), "killed") {
		t.Errorf("ExitErr = %v, want signal: killed", e)
	}
}

// TestStopBoundedByContext: with a grace far longer than ctx allows, Stop
// kills at ctx's end and returns then.
func TestStopBoundedByContext(t *testing.T) {
	for _, supervised := range []bool{false, true} {
		t.Run(fmt.Sprintf("supervised=%v", supervised), func(t *testing.T) {
			dir := t.TempDir()
			spec := proc.Spec{Argv: []string{"/bin/sh", "-c", `trap '' TERM; sleep 1000 & echo $! > gc.pid; echo $$ > sh.pid; while :; do sleep 0.05; done`},
				Dir: dir, Grace: time.Hour}
			if supervised {
				spec.Supervisor = supervisor(t)
			}
			p := start(t, spec)
			gc := readPid(t, filepath.Join(dir, "gc.pid"))
			sh := readPid(t, filepath.Join(dir, "sh.pid"))
			const bound = time.Second
			ctx, cancel := context.WithTimeout(context.Background(), bound)
			defer cancel()
			t0 := time.Now()
			err := p.Stop(ctx)
			took := time.Since(t0)
			if took < bound/2 || took > bound+10*time.Second {
				t.Errorf("Stop took %v with a context of %v", took, bound)
			}
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Stop = %v, want nil or wrapping the deadline", err)
			}
			for _, pid := range []int{p.PID(), sh, gc} {
				waitFor(t, fmt.Sprintf("pid %d to die", pid), func() bool { return !alive(pid) })
			}
		})
	}
}

// TestStopWithEndedContextKillsTheGroup: Stop with a context that has
// already ended sends SIGKILL to the whole group at once (the grace is an
// hour and everything ignores SIGTERM), also when the leader has already
// exited and been reaped and only its leftovers run.
func TestStopWithEndedContextKillsTheGroup(t *testing.T) {
	tests := []struct {
		name       string
		script     string
		leaderGone bool // wait for the leader to be reaped before Stop
	}{
		{"leader running", `trap '' TERM; sleep 1000 & echo $! > gc.pid; while :; do sleep 0.05; done`, false},
		{"leader reaped, leftover running", `trap '' TERM; sleep 1000 & echo $! > gc.pid`, true},
	}
	for _, tt := range tests {
		for _, supervised := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/supervised=%v", tt.name, supervised), func(t *testing.T) {
				dir := t.TempDir()
				spec := proc.Spec{Argv: []string{"/bin/sh", "-c", tt.script}, Dir: dir, Grace: time.Hour}
				if supervised {
					spec.Supervisor = supervisor(t)
				}
				p := start(t, spec)
				gc := readPid(t, filepath.Join(dir, "gc.pid"))
				if tt.leaderGone {
					waitExited(t, p)
				}
				if !alive(gc) || !p.GroupAlive() {
					t.Fatal("the group is not running before Stop")
				}
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				if err := p.Stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
					t.Errorf("Stop = %v, want nil or wrapping %v", err, context.Canceled)
				}
				waitFor(t, "the group to be killed", func() bool { return !alive(gc) && !p.GroupAlive() })
				waitExited(t, p)
			})
		}
	}
}

// TestKillGroupOnExit: when the leader exits, what it left in its group is
// killed before Exited closes; without the option it lives on.
func TestKillGroupOnExit(t *testing.T) {
	for _, kill := range []bool{true, false} {
		t.Run(fmt.Sprintf("kill=%v", kill), func(t *testing.T) {
			dir := t.TempDir()
			p := start(t, proc.Spec{Argv: []string{"/bin/sh", "-c", `sleep 1000 & echo $! > gc.pid`}, Dir: dir, KillGroupOnExit: kill})
			gc := readPid(t, filepath.Join(dir, "gc.pid"))
			waitExited(t, p)
			if kill {
				waitFor(t, "the leftover to die", func() bool { return !alive(gc) })
				return
			}
			if !alive(gc) || !p.GroupAlive() {
				t.Fatalf("the leftover died without KillGroupOnExit")
			}
			p.Kill()
			waitFor(t, "the leftover to die after Kill", func() bool { return !alive(gc) })
		})
	}
}

// TestSupervisorStopsGroupWhenParentIsKilled: a gateway killed by SIGKILL
// takes its supervised groups with it: the supervisor, the program and the
// program's background child all go.
func TestSupervisorStopsGroupWhenParentIsKilled(t *testing.T) {
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`cd %q; trap '' TERM; sleep 1000 & echo $! > gc.pid; echo $$ > sh.pid; while :; do sleep 0.05; done`, dir)
	parent := exec.Command(exe, script)
	parent.Env = append(os.Environ(), parentEnv+"=1")
	stdout, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = parent.Process.Kill(); _ = parent.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the supervisor's pid: %v", err)
	}
	sup, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	gc := readPid(t, filepath.Join(dir, "gc.pid"))
	sh := readPid(t, filepath.Join(dir, "sh.pid"))
	for _, pid := range []int{sup, sh, gc} {
		if !alive(pid) {
			t.Fatalf("pid %d not running before the parent is killed", pid)
		}
	}
	if err := parent.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = parent.Wait()
	// The program ignores SIGTERM: the supervisor's grace (1 s), then
	// SIGKILL.
	for _, pid := range []int{sup, sh, gc} {
		waitFor(t, fmt.Sprintf("pid %d to die with its gateway", pid), func() bool { return !alive(pid) })
	}
	if proc.GroupAlive(sup) {
		t.Errorf("the supervised group outlived its gateway")
	}
}
