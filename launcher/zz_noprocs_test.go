package launcher

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestZZNoStrayProcesses runs last (this file's name sorts last) and
// checks that the package's tests left no process behind. The test binary
// is a child subreaper (set in init), so every process these tests
// started, even one whose parent has exited, descends from it; zombies
// are reaped, not counted. See integration/zz_noprocs_test.go.

var npSubreaperErr error

func init() {
	const prSetChildSubreaper = 36
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		npSubreaperErr = e
	}
}

// npStrays lists the live descendants of this process.
func npStrays() map[int]string {
	self := os.Getpid()
	type proc struct {
		ppid  int
		state string
	}
	procs := map[int]proc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if i := bytes.LastIndexByte(b, ')'); err == nil && i >= 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) >= 2 {
				ppid, _ := strconv.Atoi(f[1])
				procs[pid] = proc{ppid, f[0]}
			}
		}
	}
	out := map[int]string{}
	for pid, p := range procs {
		if pid == self || p.state == "Z" || p.state == "X" {
			continue
		}
		for q, n := p.ppid, 0; q > 1 && n < 1000; q, n = procs[q].ppid, n+1 {
			if q == self {
				cl, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
				out[pid] = strings.TrimSpace(string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '})))
				break
			}
		}
	}
	return out
}

func npReap() {
	for {
		var ws syscall.WaitStatus
		if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
			return
		}
	}
}

func TestZZNoStrayProcesses(t *testing.T) {
	if npSubreaperErr != nil {
		t.Fatalf("cannot become a child subreaper: %v", npSubreaperErr)
	}
	out, err := exec.Command("sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	orphan, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	if _, ok := npStrays()[orphan]; !ok {
		t.Fatalf("the check does not see an orphan of this run (pid %d)", orphan)
	}
	syscall.Kill(orphan, syscall.SIGKILL)
	var strays map[int]string
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		npReap()
		if strays = npStrays(); len(strays) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for pid, cmdline := range strays {
		t.Errorf("stray process left by the tests: pid %d: %s", pid, cmdline)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(100 * time.Millisecond)
	npReap()
}
