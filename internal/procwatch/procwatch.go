// Package procwatch lets a test binary prove that its tests left no
// process behind (Run, from TestMain). The binary makes itself a child subreaper, so every
// process its tests started, even one whose parent has exited, stays its
// descendant; "started by this run" is then exactly "a descendant of this
// process", whatever else runs on the machine. Zombies are reaped, not
// counted (PID 1 of a container may never reap them).
package procwatch

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

// BecomeSubreaper makes orphans of this process's descendants its
// children (prctl PR_SET_CHILD_SUBREAPER). Call it from init.
func BecomeSubreaper() error {
	const prSetChildSubreaper = 36
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		return e
	}
	return nil
}

type proc struct {
	ppid  int
	state string
}

func procs() map[int]proc {
	out := map[int]proc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		// pid (comm) state ppid ...
		if i := bytes.LastIndexByte(b, ')'); err == nil && i >= 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) >= 2 {
				ppid, _ := strconv.Atoi(f[1])
				out[pid] = proc{ppid, f[0]}
			}
		}
	}
	return out
}

func cmdline(pid int) string {
	cl, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return strings.TrimSpace(string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '})))
}

// Strays maps the live descendants of this process, and any other live
// process whose command line also satisfies also (may be nil), to their
// command lines.
func Strays(also func(cmdline string) bool) map[int]string {
	self := os.Getpid()
	ps := procs()
	out := map[int]string{}
	for pid, p := range ps {
		if pid == self || p.state == "Z" || p.state == "X" {
			continue
		}
		desc := false
		for q, n := p.ppid, 0; q > 1 && n < 1000; q, n = ps[q].ppid, n+1 {
			if q == self {
				desc = true
				break
			}
		}
		if cl := cmdline(pid); desc || (also != nil && also(cl)) {
			out[pid] = cl
		}
	}
	return out
}

// Reap collects this process's exited children.
func Reap() {
	for {
		var ws syscall.WaitStatus
		if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
			return
		}
	}
}

// Run runs a test binary's tests and then proves they left no process
// behind; call it from TestMain as os.Exit(procwatch.Run(m, also)). It
// makes the binary a child subreaper first, so that every process the
// tests start stays traceable to this run. After m.Run it checks that it
// can see an orphan of this run, gives the last test's processes 15 s to
// go, reports every one left on stderr (then kills it, so a failed check
// still leaves nothing) and reaps. also (may be nil) selects other
// processes to count, by command line. The result is m.Run's exit code,
// or 1 when the check fails.
func Run(m *testing.M, also func(cmdline string) bool) int {
	subreaperErr := BecomeSubreaper()
	code := m.Run()
	if problems := Verify(subreaperErr, also); len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, "FAIL: no stray processes:", p)
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Verify is the check Run makes after the tests; it returns what is
// wrong, nothing when all is well. subreaperErr is BecomeSubreaper's
// result.
func Verify(subreaperErr error, also func(cmdline string) bool) []string {
	if subreaperErr != nil {
		return []string{fmt.Sprintf("cannot become a child subreaper, so orphans cannot be traced to this run: %v", subreaperErr)}
	}
	out, err := exec.Command("sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		return []string{fmt.Sprintf("cannot start the orphan the check must see: %v", err)}
	}
	orphan, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	if _, ok := Strays(also)[orphan]; !ok {
		_ = syscall.Kill(orphan, syscall.SIGKILL)
		return []string{fmt.Sprintf("the check does not see an orphan of this run (pid %d)", orphan)}
	}
	_ = syscall.Kill(orphan, syscall.SIGKILL)
	var strays map[int]string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		Reap()
		if strays = Strays(also); len(strays) == 0 || time.Now().After(deadline) {
			break
		}
	}
	var problems []string
	for pid, cl := range strays {
		problems = append(problems, fmt.Sprintf("stray process left by the tests: pid %d: %s", pid, cl))
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(100 * time.Millisecond)
	Reap()
	return problems
}
