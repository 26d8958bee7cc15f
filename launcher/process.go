package launcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"wsgateway/proc"
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

// process is one launched application: the leader of its own process
// group, started by package proc. When the leader exits, what is left of
// its group is killed (it would hold the port), then exited is closed.
type process struct {
	p      *proc.Process
	pgid   int
	exited <-chan struct{}
}

// startProcess runs argv (no shell) in a new process group, with proc's
// environment and stdout and stderr appended to logFile.
func startProcess(argv []string, logFile *os.File, sup *services.Supervisor, grace time.Duration, env proc.Policy) (*process, error) {
	if grace <= 0 {
		grace = DefaultStopGrace
	}
	p, err := proc.Start(proc.Spec{
		Argv:            argv,
		Stdout:          logFile,
		Stderr:          logFile,
		Supervisor:      sup,
		Grace:           grace,
		KillGroupOnExit: true,
		Policy:          env,
	})
	if err != nil {
		return nil, err
	}
	return &process{p: p, pgid: p.PID(), exited: p.Exited()}, nil
}

// status describes how the process ended.
func (p *process) status() string {
	select {
	case <-p.exited:
	default:
		return "running"
	}
	if err := p.p.ExitErr(); err != nil {
		return err.Error()
	}
	return "exit status 0"
}

// Stop ends the process group: SIGTERM, the grace, SIGKILL, bounded by
// ctx (see proc.Process.Stop). With Exited and Detached it is the
// session.Process the session owns.
func (p *process) Stop(ctx context.Context) error {
	return p.p.Stop(ctx)
}

// Exited is closed once the process group's leader has exited.
func (p *process) Exited() <-chan struct{} { return p.exited }

// Detached is false: an application is never handed to a daemon.
func (p *process) Detached() bool { return false }

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
			// A process that exits ends its session, and that ends ctx:
			// the exit is the news.
			select {
			case <-exited:
				return ErrExited
			default:
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}
