package launcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"wsgateway/services"
)

// Errors a wait for readiness ends with; match them with errors.Is.
var (
	ErrNotReady = errors.New("session did not start before timeout expired")
	ErrExited   = errors.New("the process exited before it was ready")
)

// readyPoll is how often the session log is searched for the ready line
// (the Python launcher polls once a second).
const readyPoll = 25 * time.Millisecond

// envDrop lists variables of the gateway's own environment that launched
// applications do not inherit.
var envDrop = []string{"WEBSOCKETSERVER_SECURITY_TOKEN"}

// process is one launched application: the leader of its own process
// group. One goroutine owns Wait; when the leader exits, what is left of
// its group is killed, then exited is closed.
type process struct {
	cmd     *exec.Cmd
	pgid    int
	exited  chan struct{}
	exitErr error // valid once exited is closed
}

// startProcess runs argv (no shell) in a new process group with stdout and
// stderr appended to logFile.
func startProcess(argv []string, logFile *os.File, sup *services.Supervisor, grace time.Duration) (*process, error) {
	var cmd *exec.Cmd
	if sup != nil {
		cmd = sup.Command(argv, grace)
	} else {
		cmd = exec.Command(argv[0], argv[1:]...)
	}
	cmd.Env = childEnv()
	cmd.Stdin = nil
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	if sup != nil {
		// The supervisor notices the gateway's death itself and takes the
		// whole group down; a parent-death signal would kill it first.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	} else {
		// Should the gateway itself be killed, the leader dies with it
		// rather than hold its port forever.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, pgid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		p.exitErr = cmd.Wait()
		// The leader is gone: its group's leftovers would hold the port.
		_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
		close(p.exited)
	}()
	return p, nil
}

func childEnv() []string {
	var env []string
outer:
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "WSGW_") {
			continue
		}
		for _, d := range envDrop {
			if k == d {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return env
}

// status describes how the process ended.
func (p *process) status() string {
	select {
	case <-p.exited:
	default:
		return "running"
	}
	if p.exitErr == nil {
		return "exit status 0"
	}
	return p.exitErr.Error()
}

// stop sends SIGTERM to the process group, waits up to grace for the
// leader to exit and the group to empty, then sends SIGKILL to the group
// and waits for the leader to be reaped (bounded).
func (p *process) stop(grace time.Duration) {
	if grace <= 0 {
		grace = DefaultStopGrace
	}
	if syscall.Kill(-p.pgid, syscall.SIGTERM) == nil {
		deadline := time.NewTimer(grace)
		defer deadline.Stop()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
	wait:
		for {
			select {
			case <-deadline.C:
				break wait
			case <-tick.C:
				if processDone(p.exited) && !services.GroupAlive(p.pgid) {
					break wait
				}
			}
		}
	}
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(grace + 10*time.Second):
	}
}

func processDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// waitReady polls the session log at path until it contains readyLine as
// a substring (a partial last line counts), the process exits, the timeout
// passes or ctx ends. An empty readyLine is ready at once.
func waitReady(ctx context.Context, path, readyLine string, exited <-chan struct{}, timeout time.Duration) error {
	if readyLine == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading the session log: %w", err)
	}
	defer f.Close()
	needle := []byte(readyLine)
	keep := len(needle) - 1
	buf := make([]byte, 0, 64<<10)
	chunk := make([]byte, 32<<10)
	// found reads what was appended since the last call.
	found := func() bool {
		for {
			n, err := f.Read(chunk)
			if n > 0 {
				buf = append(buf, chunk[:n]...)
				if bytes.Contains(buf, needle) {
					return true
				}
				if len(buf) > keep {
					buf = append(buf[:0], buf[len(buf)-keep:]...)
				}
			}
			if err != nil || n == 0 {
				return false // io.EOF: nothing more for now
			}
		}
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	for {
		if found() {
			return nil
		}
		select {
		case <-exited:
			if found() {
				// Ready, then gone at once: it is not serving.
				return fmt.Errorf("%w (it printed its ready line and exited)", ErrExited)
			}
			return ErrExited
		case <-timer.C:
			if found() {
				return nil
			}
			return ErrNotReady
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
