package proc

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SuperviseArg is the hidden first argument that turns the gateway's own
// binary into a service supervisor (see Supervise).
const SuperviseArg = "__wsgw_supervise"

// Supervisor starts service scripts under a small supervisor process: the
// gateway's own binary run with SuperviseArg. The supervisor leads the
// service's process group, adopts and reaps its orphans (so none is left a
// zombie), and takes the whole group down when asked to stop or when the
// gateway dies, even by SIGKILL: it holds the read end of a pipe whose
// only write end is in the gateway, and end-of-file on it means the
// gateway is gone.
type Supervisor struct {
	exe      string
	lifeline *os.File // read end, passed to every supervisor as fd 3
	keep     *os.File // write end, held by the gateway until it exits
}

// NewSupervisor prepares supervision with exe (normally os.Executable()),
// which must call Supervise when its first argument is SuperviseArg.
func NewSupervisor(exe string) (*Supervisor, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("supervisor lifeline: %w", err)
	}
	return &Supervisor{exe: exe, lifeline: r, keep: w}, nil
}

// Close drops the lifeline: every supervisor then stops its service.
func (s *Supervisor) Close() error {
	if s == nil {
		return nil
	}
	s.lifeline.Close()
	return s.keep.Close()
}

// command returns a command that runs argv (no shell; a bare name is
// looked up in PATH) under supervision, with grace between SIGTERM and
// SIGKILL. The lifeline becomes its fd 3 and status, when not nil, its
// fd 4: the supervisor writes the program's exit status there the moment
// the program exits.
func (s *Supervisor) command(argv []string, grace time.Duration, status *os.File) *exec.Cmd {
	cmd := exec.Command(s.exe, append([]string{SuperviseArg, strconv.FormatInt(grace.Milliseconds(), 10)}, argv...)...)
	cmd.ExtraFiles = []*os.File{s.lifeline}
	if status != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, status)
	}
	return cmd
}

// Supervise is the supervisor's main: args are the grace period in
// milliseconds, then the program and its arguments. fd 3 is the lifeline;
// the program's exit status is written to fd 4, when open, as soon as it
// is known. It returns the exit status: the program's, or 128+signal.
func Supervise(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "wsgateway supervisor: want GRACE_MS PROGRAM [ARG...]")
		return 2
	}
	graceMS, err := strconv.Atoi(args[0])
	if err != nil || graceMS < 0 {
		fmt.Fprintln(os.Stderr, "wsgateway supervisor: bad grace", args[0])
		return 2
	}
	grace := time.Duration(graceMS) * time.Millisecond
	// Orphans of the service come to us, and we reap them.
	const prSetChildSubreaper = 36
	if _, _, e := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0); e != 0 {
		fmt.Fprintln(os.Stderr, "wsgateway supervisor: cannot become a subreaper:", e)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	chld := make(chan os.Signal, 16)
	signal.Notify(chld, syscall.SIGCHLD)

	gone := make(chan struct{})
	// The program must not inherit the lifeline or the status pipe.
	syscall.CloseOnExec(3)
	syscall.CloseOnExec(4)
	lifeline := os.NewFile(3, "lifeline")
	var statusOut *os.File
	if _, _, e := syscall.Syscall(syscall.SYS_FCNTL, 4, syscall.F_GETFD, 0); e == 0 {
		statusOut = os.NewFile(4, "status")
	}
	report := func(code int) {
		if statusOut != nil {
			fmt.Fprintf(statusOut, "%d\n", code)
			statusOut.Close()
			statusOut = nil
		}
	}
	go func() {
		var b [1]byte
		for {
			if _, err := lifeline.Read(b[:]); err != nil {
				close(gone)
				return
			}
		}
	}()

	prog := args[1]
	if !strings.Contains(prog, "/") {
		p, err := exec.LookPath(prog)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cannot run %s: %v\n", prog, err)
			return 127
		}
		prog = p
	}
	proc, err := os.StartProcess(prog, args[1:], &os.ProcAttr{
		Env:   os.Environ(),
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot run %s: %v\n", prog, err)
		return 127
	}
	child := proc.Pid
	status := -1
	// reap collects every exited child; it reports the script's status.
	reap := func() {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				return
			}
			if pid == child {
				status = exitCode(ws)
				report(status)
			}
		}
	}
	for {
		select {
		case <-chld:
			reap()
			if status >= 0 {
				if status != 0 {
					// The service failed: take down what it left behind.
					stopGroup(grace)
				}
				// Status 0 after a ready line means the service was handed
				// on (detached); what remains is the gateway's to stop.
				return status
			}
		case <-sigs:
			stopGroup(grace)
			reap()
			if status >= 0 {
				return status
			}
			return 128 + int(syscall.SIGTERM)
		case <-gone:
			stopGroup(grace)
			return 128 + int(syscall.SIGTERM)
		}
	}
}

func exitCode(ws syscall.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return 1
}

// stopGroup sends SIGTERM to the supervisor's process group (the
// supervisor itself handles it), reaps what exits within grace, then
// SIGKILLs every other member and reaps them.
func stopGroup(grace time.Duration) {
	pg := syscall.Getpgrp()
	_ = syscall.Kill(-pg, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for {
		reapAll()
		if len(groupMembers(pg)) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, pid := range groupMembers(pg) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline = time.Now().Add(5 * time.Second)
	for len(groupMembers(pg)) > 0 && time.Now().Before(deadline) {
		reapAll()
		time.Sleep(10 * time.Millisecond)
	}
	reapAll()
}

func reapAll() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
