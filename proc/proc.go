// Package proc is the one way wsgateway starts, watches and stops a
// process: a service script (and its "SCRIPT stop"), a launcher
// application or a batch job.
//
// Every process:
//
//   - runs without a shell in a process group of its own, led by the
//     process started (with a Supervisor, the supervisor: the gateway's own
//     binary run with SuperviseArg, which reaps the program's orphans and
//     takes the whole group down when the gateway dies, even by SIGKILL;
//     without one, the leader gets SIGKILL when the gateway dies);
//   - gets one environment policy, Policy.Environ: only the allow-listed
//     variables of the gateway's environment (PATH, HOME, USER, LOGNAME,
//     SHELL, TMPDIR, TZ, LANG, LC_ALL, LC_CTYPE, DISPLAY, XAUTHORITY,
//     LD_LIBRARY_PATH, LSTC_LICENSE, LSTC_LICENSE_SERVER, and the names
//     and NAME* prefixes the operator adds, ParsePolicy), plus its own
//     variables (WSGW_* for a service or a job), never the gateway's
//     security token;
//   - is stopped one way, Process.Stop: SIGTERM to the whole group, up to
//     the grace period for the group to empty, then SIGKILL to the whole
//     group, all bounded by the caller's context;
//   - is waited for by exactly one goroutine, which reports the exit
//     through Exited, ExitErr and ProgramExited.
package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
	"unsafe"
)

// DefaultGrace is the time between SIGTERM and SIGKILL when a Spec gives
// none.
const DefaultGrace = 5 * time.Second

// supervisorMargin is added to the grace of a supervised group: its
// supervisor escalates to SIGKILL at the grace itself, and reaps.
const supervisorMargin = 2 * time.Second

// pollEvery is how often Stop looks whether the group is empty.
const pollEvery = 20 * time.Millisecond

// Spec says what to start and how.
type Spec struct {
	// Argv is the program and its arguments; a bare name is looked up in
	// PATH.
	Argv []string
	// Dir is the working directory ("" : the gateway's).
	Dir string
	// Env is the process's own variables (KEY=VALUE), added to the
	// allow-listed environment (see Policy.Environ).
	Env []string
	// Policy is the environment policy (the zero Policy: the built-in
	// allowlist alone).
	Policy Policy
	// Stdout and Stderr receive the output (nil: /dev/null). Files, not
	// writers, so that the exit is never held up by a copy.
	Stdout, Stderr *os.File
	// Supervisor, when set, runs Argv under the supervisor.
	Supervisor *Supervisor
	// Grace is the time between SIGTERM and SIGKILL (DefaultGrace when 0).
	Grace time.Duration
	// KillGroupOnExit: once the leader exits, SIGKILL what is left of its
	// group before reporting the exit (a launcher app or a job, whose
	// leftovers would hold its port or its files). Without it, leftovers
	// live on (a service handed to a daemon) until Stop.
	KillGroupOnExit bool
}

// Process is a started process group.
type Process struct {
	pid        int
	grace      time.Duration
	supervised bool

	exited  chan struct{} // closed once the leader has been reaped
	exitErr error         // valid once exited is closed
	state   *os.ProcessState

	progDone   chan struct{} // closed when the program's status is known
	progStatus int           // valid once progDone is closed
}

// Start starts spec.Argv in a new process group. The process runs until
// it exits or is stopped; Start does not wait for it.
func Start(spec Spec) (*Process, error) {
	if len(spec.Argv) == 0 || spec.Argv[0] == "" {
		return nil, errors.New("proc: no program to run")
	}
	grace := spec.Grace
	if grace <= 0 {
		grace = DefaultGrace
	}
	p := &Process{grace: grace, supervised: spec.Supervisor != nil,
		exited: make(chan struct{}), progDone: make(chan struct{})}

	var cmd *exec.Cmd
	var statusR, statusW *os.File
	if p.supervised {
		var err error
		if statusR, statusW, err = os.Pipe(); err != nil {
			return nil, fmt.Errorf("status pipe: %w", err)
		}
		cmd = spec.Supervisor.command(spec.Argv, grace, statusW)
		// The supervisor notices the gateway's death itself and takes the
		// group down; a parent-death signal would kill it first.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	} else {
		cmd = exec.Command(spec.Argv[0], spec.Argv[1:]...)
		// Should the gateway be killed, the leader dies with it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	}
	cmd.Dir = spec.Dir
	cmd.Env = spec.Policy.Environ(spec.Env)
	if spec.Stdout != nil {
		cmd.Stdout = spec.Stdout
	}
	if spec.Stderr != nil {
		cmd.Stderr = spec.Stderr
	}
	err := cmd.Start()
	if statusW != nil {
		statusW.Close()
	}
	if err != nil {
		if statusR != nil {
			statusR.Close()
		}
		return nil, fmt.Errorf("running %s: %w", spec.Argv[0], err)
	}
	p.pid = cmd.Process.Pid
	if statusR != nil {
		go p.readStatus(statusR)
	}
	go p.wait(cmd, spec.KillGroupOnExit)
	return p, nil
}

// wait is the one owner of the leader's Wait.
func (p *Process) wait(cmd *exec.Cmd, killGroup bool) {
	if killGroup {
		// The leader is a zombie until reaped, so its group id cannot be
		// reused yet: kill the group's leftovers, then reap.
		waitExited(p.pid)
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	err := cmd.Wait()
	p.exitErr, p.state = err, cmd.ProcessState
	if !p.supervised {
		p.progStatus = statusCode(cmd.ProcessState)
		close(p.progDone)
	}
	close(p.exited)
}

// waitExited blocks until process pid has exited, without reaping it.
func waitExited(pid int) {
	const pPID = 1
	var info [128]byte // siginfo_t
	for {
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info[0])),
			syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		if e != syscall.EINTR {
			return
		}
	}
}

// readStatus reads the supervisor's report of the program's exit status.
func (p *Process) readStatus(r *os.File) {
	defer r.Close()
	var code int
	if _, err := fmt.Fscan(r, &code); err != nil {
		return // the supervisor died without a report; exited covers it
	}
	p.progStatus = code
	close(p.progDone)
}

// statusCode is an exit status as a shell gives it: the exit code, or
// 128 plus the signal that killed the process.
func statusCode(ps *os.ProcessState) int {
	if ps == nil {
		return -1
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

// PID is the leader's process id, which is also the group's id.
func (p *Process) PID() int { return p.pid }

// Supervised reports whether the leader is a supervisor.
func (p *Process) Supervised() bool { return p.supervised }

// Exited is closed once the leader has exited and been reaped.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// ExitErr is the leader's exit error (nil for status 0); valid once
// Exited is closed.
func (p *Process) ExitErr() error { return p.exitErr }

// ProcessState is the leader's; valid once Exited is closed.
func (p *Process) ProcessState() *os.ProcessState { return p.state }

// ProgramExited is closed once the program's own exit status is known:
// under a supervisor when it reports it (the supervisor may stay to clean
// up, and a supervisor killed before it could report never closes it);
// otherwise when the leader has been reaped.
func (p *Process) ProgramExited() <-chan struct{} { return p.progDone }

// ProgramStatus is the program's exit status, the exit code or 128 plus
// the signal that killed it; valid once ProgramExited is closed.
func (p *Process) ProgramStatus() int { return p.progStatus }

// GroupAlive reports whether a member of the process group still runs.
func (p *Process) GroupAlive() bool { return GroupAlive(p.pid) }

// gone reports whether the leader has been reaped and no member of its
// group runs.
func (p *Process) gone() bool {
	select {
	case <-p.exited:
		return !GroupAlive(p.pid)
	default:
		return false
	}
}

// Wait waits for the leader to exit, bounded by ctx, and returns its exit
// error (or ctx's).
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.exited:
		return p.exitErr
	case <-ctx.Done():
		return fmt.Errorf("process %d still running: %w", p.pid, ctx.Err())
	}
}

// Kill sends SIGKILL to the whole group at once, if any of it is left.
func (p *Process) Kill() {
	if !p.gone() {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
}

// Stop ends the whole group: SIGTERM, then up to the grace period (plus a
// margin for a supervisor, which escalates itself) for the leader to be
// reaped and the group to empty, then SIGKILL to the group and a wait for
// the same. When ctx ends first, SIGKILL goes at once and Stop returns an
// error wrapping ctx's. Stop may be called any number of times, from any
// goroutine; it returns nil once nothing of the group runs.
func (p *Process) Stop(ctx context.Context) error {
	if p.gone() {
		return nil
	}
	_ = syscall.Kill(-p.pid, syscall.SIGTERM)
	grace := p.grace
	if p.supervised {
		grace += supervisorMargin
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	if p.await(ctx, timer.C) {
		return nil
	}
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	if ctx.Err() == nil && p.await(ctx, nil) {
		return nil
	}
	if p.gone() {
		return nil
	}
	return fmt.Errorf("process group %d still stopping: %w", p.pid, ctx.Err())
}

// await polls until the group is gone (true), or ctx ends or until fires
// (false).
func (p *Process) await(ctx context.Context, until <-chan time.Time) bool {
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	exited := p.exited
	for {
		if p.gone() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-until:
			return p.gone()
		case <-exited:
			exited = nil // look again now, then at the pace of the ticker
		case <-tick.C:
		}
	}
}
