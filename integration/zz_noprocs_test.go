package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// This file's name sorts last, and go test runs a package's tests in the
// order of its files, so TestZZNoStrayProcesses runs after every other
// integration test and proves that none of them left a process behind.
//
// Which processes are this run's? Every process a test starts (the
// gateway, its supervisors, service scripts and their children, Xvnc,
// openbox, xterm, wslinksrv, node, Chromium and its helpers) descends
// from this test binary, but a process whose parent dies is normally
// adopted by PID 1 and its ancestry is lost. So the test binary makes
// itself a child subreaper at start-up (prctl PR_SET_CHILD_SUBREAPER):
// orphans of this run are adopted by it instead, and "started by this
// run" is exactly "a descendant of this process", whatever else runs on
// the machine (another go test, another developer's gateway).
//
// Zombies do not count: they have exited and hold nothing but a process
// table slot. PID 1 in this container does not reap, so zombies adopted
// by it stay forever; the subreaper makes this run's orphans our
// children, and the test reaps them so the run leaves not even zombies.

var npSubreaperErr error

func init() {
	const prSetChildSubreaper = 36
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		npSubreaperErr = e
	}
}

// npProc is a process from /proc.
type npProc struct {
	pid, ppid int
	state     string
	cmdline   string
}

func npProcs() map[int]npProc {
	out := map[int]npProc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		cl, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out[pid] = npProc{pid: pid, ppid: ppid, state: f[0], cmdline: strings.TrimSpace(string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '})))}
	}
	return out
}

// npStrays lists the live processes that descend from this test binary,
// and any other live process whose command line names this run's binary
// directory.
func npStrays() []npProc {
	self := os.Getpid()
	binDir := filepath.Dir(gwBin)
	procs := npProcs()
	var out []npProc
	for pid, p := range procs {
		if pid == self || p.state == "Z" || p.state == "X" {
			continue
		}
		desc := false
		for q, n := p.ppid, 0; q > 1 && n < 1000; n++ {
			if q == self {
				desc = true
				break
			}
			q = procs[q].ppid
		}
		if desc || strings.Contains(p.cmdline, binDir) {
			out = append(out, p)
		}
	}
	return out
}

// npReap reaps the exited children of this process: orphans of the run
// that the subreaper adopted.
func npReap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}

func npKind(cmdline string) string {
	for _, k := range []string{"__wsgw_supervise", "wsgateway", "testsvc", "wslinksrv", "Xvnc", "openbox", "xterm", "chromium", "chrome", "node", "sleep"} {
		if strings.Contains(cmdline, k) {
			return k
		}
	}
	return "other"
}

func TestZZNoStrayProcesses(t *testing.T) {
	if npSubreaperErr != nil {
		t.Fatalf("cannot become a child subreaper, so orphans cannot be traced to this run: %v", npSubreaperErr)
	}
	// The method sees what it must: an orphan of this run (a background
	// process whose shell has exited) is found, then removed.
	out, err := exec.Command("sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	orphan, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	found := false
	for _, p := range npStrays() {
		found = found || p.pid == orphan
	}
	if !found {
		t.Fatalf("the check does not see an orphan of this run (pid %d)", orphan)
	}
	syscall.Kill(orphan, syscall.SIGKILL)

	// Processes of the last test may still be on their way out.
	var strays []npProc
	deadline := time.Now().Add(15 * time.Second)
	for {
		npReap()
		strays = npStrays()
		if len(strays) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range strays {
		t.Errorf("stray %s process left by the tests: pid %d (parent %d, state %s): %s", npKind(p.cmdline), p.pid, p.ppid, p.state, p.cmdline)
	}
	// Leave nothing behind even when the check fails.
	for _, p := range strays {
		syscall.Kill(p.pid, syscall.SIGKILL)
	}
	time.Sleep(100 * time.Millisecond)
	npReap()
	var zombies []string
	for _, p := range npProcs() {
		if p.ppid == os.Getpid() && p.state == "Z" {
			zombies = append(zombies, fmt.Sprint(p.pid))
		}
	}
	if len(zombies) > 0 {
		t.Logf("zombie children not reaped: %v", zombies)
	}
}
