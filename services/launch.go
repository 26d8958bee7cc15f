package services

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/proc"
	"wsgateway/rfb"
)

// Errors a launch can end with; match them with errors.Is.
var (
	ErrStartTimeout = errors.New("service did not print its ready line in time")
	ErrStartFailed  = errors.New("service failed to start")
	ErrDial         = errors.New("cannot connect to the service")
)

// LogName is the name of the per-session log file inside the session
// directory: the script's stderr, and its stdout after the ready line.
const LogName = "session.log"

// maxReadyLine bounds the ready line and any line the script prints before it.
const maxReadyLine = 64 << 10

// Spec says what to launch.
type Spec struct {
	Service *Service
	Index   int
	Token   string
	// Options is the merged options JSON object (WSGW_OPTIONS).
	Options []byte
	// SessionDir is the private working and log directory, inside the
	// session root; it is created (its parent must exist), and refused if
	// something else than a directory of this user's is in its place.
	SessionDir string
	// StartTimeout bounds the wait for the ready line and the first dial.
	StartTimeout time.Duration
	// StopGrace is how long SIGTERM is given before SIGKILL, and how long
	// a detached service's "stop" may run.
	StopGrace time.Duration
	// ExtraEnv is added to the allow-listed environment (KEY=VALUE).
	ExtraEnv []string
	// EnvPolicy is the environment policy (zero: the built-in allowlist).
	EnvPolicy proc.Policy
	// Supervisor, when set, runs the script under a supervisor process
	// that reaps its orphans and stops the group if the gateway dies.
	Supervisor *Supervisor
}

// Endpoint is where a started service listens.
type Endpoint struct {
	Network string `json:"network"` // "tcp" or "unix"
	Address string `json:"address"`
	// VNCPassword, when set, is the VNC server's password: the gateway
	// authenticates to the server with it and offers its client security
	// type None (package rfb). It is never shown.
	VNCPassword string `json:"-"`
}

// ReadyLine is what a script prints once its service listens.
type ReadyLine struct {
	Hostname string `json:"hostname,omitempty"`
	Port     int    `json:"port,omitempty"`
	Unix     string `json:"unix,omitempty"`
	// VNCPassword or VNCPasswordFile (an absolute path to a TigerVNC
	// password file of the gateway's user, mode 0600) make the target a
	// VNC server whose password the gateway keeps.
	VNCPassword     string `json:"vnc_password,omitempty"`
	VNCPasswordFile string `json:"vnc_password_file,omitempty"`
}

// ParseReadyLine decodes and checks a ready line.
func ParseReadyLine(line []byte) (Endpoint, error) {
	var rl ReadyLine
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&rl); err != nil {
		return Endpoint{}, fmt.Errorf("ready line is not a JSON object: %w", err)
	}
	var pw string
	switch {
	case rl.VNCPassword != "" && rl.VNCPasswordFile != "":
		return Endpoint{}, errors.New(`ready line: give "vnc_password" or "vnc_password_file", not both`)
	case rl.VNCPassword != "":
		pw = rl.VNCPassword
	case rl.VNCPasswordFile != "":
		if !filepath.IsAbs(rl.VNCPasswordFile) {
			return Endpoint{}, fmt.Errorf("ready line: \"vnc_password_file\" must be an absolute path, got %q", rl.VNCPasswordFile)
		}
		b, err := rfb.ReadPasswordFile(rl.VNCPasswordFile)
		if err != nil {
			return Endpoint{}, fmt.Errorf("ready line: %w", err)
		}
		pw = string(b)
	}
	if rl.Unix != "" {
		if !filepath.IsAbs(rl.Unix) {
			return Endpoint{}, fmt.Errorf("ready line: \"unix\" must be an absolute socket path, got %q", rl.Unix)
		}
		return Endpoint{Network: "unix", Address: rl.Unix, VNCPassword: pw}, nil
	}
	if rl.Port < 1 || rl.Port > 65535 {
		return Endpoint{}, fmt.Errorf("ready line: \"port\" must be 1..65535, got %d", rl.Port)
	}
	host := rl.Hostname
	if host == "" {
		host = "127.0.0.1"
	}
	return Endpoint{Network: "tcp", Address: net.JoinHostPort(host, strconv.Itoa(rl.Port)), VNCPassword: pw}, nil
}

// Instance is a started service.
type Instance struct {
	spec     Spec
	log      zerolog.Logger
	proc     *proc.Process
	endpoint Endpoint
	ready    []byte
	logFile  *os.File
	env      []string // the script's own variables
	started  time.Time
	readyAt  time.Time

	stopOnce sync.Once
	stopErr  error
}

// Start runs "SCRIPT start" and waits for its ready line. On failure,
// and when ctx ends before the ready line, the whole process group is
// stopped before Start returns (the error then wraps ctx.Err()), and the
// error says what a person can do about it. log carries the session's
// fields (service, index, token); Start adds the process's.
func Start(ctx context.Context, spec Spec, log zerolog.Logger) (*Instance, error) {
	if err := MakeSessionDir(spec.SessionDir); err != nil {
		return nil, fmt.Errorf("%w: creating session directory: %w", ErrStartFailed, err)
	}
	lf, err := os.OpenFile(filepath.Join(spec.SessionDir, LogName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: opening session log: %w", ErrStartFailed, err)
	}
	inst := &Instance{spec: spec, log: log, logFile: lf}
	inst.env = inst.ownEnv()
	// Our own pipe: the exit must not wait for the ready line's reader.
	pr, pw, err := os.Pipe()
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	fmt.Fprintf(lf, "--- %s start %s index %d\n", time.Now().Format(time.RFC3339), spec.Service.Name, spec.Index)
	inst.started = time.Now()
	if err := ctx.Err(); err != nil {
		pr.Close()
		pw.Close()
		lf.Close()
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	p, err := proc.Start(spec.procSpec("start", inst.env, pw, lf))
	pw.Close()
	if err != nil {
		pr.Close()
		lf.Close()
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	inst.proc = p
	log.Info().Int("pid", p.PID()).Msg("service starting")

	readyCh := make(chan readyResult, 1)
	go inst.readStdout(pr, readyCh)

	timer := time.NewTimer(spec.StartTimeout)
	defer timer.Stop()
	var fail error
	select {
	case r := <-readyCh:
		if errors.Is(r.err, errNoLine) {
			// stdout closed without a line: the exit status says more.
			// The wait is still bounded by the start timeout as a whole.
			select {
			case <-p.Exited():
			case <-ctx.Done():
			case <-timer.C:
			}
			fail = inst.exitFailure()
		} else if r.err != nil {
			fail = fmt.Errorf("%w: %w", ErrStartFailed, r.err)
		} else {
			inst.endpoint = r.ep
			inst.ready = r.line
		}
	case <-p.Exited():
		// The script may have printed its line and exited 0 (detached) at
		// the same moment; prefer the line if it is there.
		select {
		case r := <-readyCh:
			if r.err == nil && p.ExitErr() == nil {
				inst.endpoint = r.ep
				inst.ready = r.line
				break
			}
			if r.err != nil && !errors.Is(r.err, errNoLine) {
				fail = fmt.Errorf("%w: %w", ErrStartFailed, r.err)
				break
			}
			fail = inst.exitFailure()
		case <-time.After(time.Second):
			fail = inst.exitFailure()
		}
	case <-timer.C:
		fail = fmt.Errorf("%w: no ready line within %s; see the session log", ErrStartTimeout, spec.StartTimeout)
	case <-ctx.Done():
	}
	if cerr := ctx.Err(); cerr != nil {
		// Cancelled before the line, or with it: either way the caller has
		// gone, so the start is abandoned and nothing is left running.
		switch {
		case fail == nil:
			fail = fmt.Errorf("%w: %w", ErrStartFailed, cerr)
		case !errors.Is(fail, cerr):
			fail = fmt.Errorf("%w (the start was also abandoned: %w)", fail, cerr)
		}
	}
	if fail != nil {
		sctx, cancel := inst.stopContext(context.WithoutCancel(ctx))
		if err := p.Stop(sctx); err != nil {
			log.Error().Err(err).Int("pid", p.PID()).Msg("service process group not stopped")
		}
		cancel()
		fmt.Fprintf(lf, "--- %s start failed: %v\n", time.Now().Format(time.RFC3339), fail)
		lf.Close()
		log.Warn().Err(fail).Int("pid", p.PID()).Str("log", lf.Name()).Msg("service start failed")
		return nil, fail
	}
	inst.readyAt = time.Now()
	log.Info().Int("pid", p.PID()).Str("endpoint", inst.endpoint.Address).
		Int64("took_ms", time.Since(inst.started).Milliseconds()).Msg("service ready")
	return inst, nil
}

// procSpec is how the script runs with verb: in the session directory,
// under the supervisor when there is one, with env as its own variables.
func (s Spec) procSpec(verb string, env []string, stdout, stderr *os.File) proc.Spec {
	return proc.Spec{
		Argv:       []string{s.Service.Script, verb},
		Dir:        s.SessionDir,
		Env:        env,
		Policy:     s.EnvPolicy,
		Stdout:     stdout,
		Stderr:     stderr,
		Supervisor: s.Supervisor,
		Grace:      s.StopGrace,
	}
}

// stopContext bounds a stop that has no deadline of its own: the grace,
// the supervisor's margin, and time for SIGKILL to be delivered.
func (inst *Instance) stopContext(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, inst.spec.grace()+10*time.Second)
}

// grace is the time between SIGTERM and SIGKILL.
func (s Spec) grace() time.Duration {
	if s.StopGrace <= 0 {
		return proc.DefaultGrace
	}
	return s.StopGrace
}

func (inst *Instance) exitFailure() error {
	status := "exited with status 0 without printing a ready line"
	select {
	case <-inst.proc.Exited():
		if err := inst.proc.ExitErr(); err != nil {
			status = err.Error()
		}
	default:
		status = "still running without printing a ready line"
	}
	last := lastLine(inst.logFile.Name())
	if last != "" {
		return fmt.Errorf("%w: %s: %s", ErrStartFailed, status, last)
	}
	return fmt.Errorf("%w: %s", ErrStartFailed, status)
}

var errNoLine = errors.New("stdout closed before a ready line")

type readyResult struct {
	ep   Endpoint
	line []byte
	err  error
}

// readStdout reads lines until the ready line, then copies the rest of
// stdout into the session log.
func (inst *Instance) readStdout(r io.ReadCloser, out chan<- readyResult) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 4096)
	sent := false
	for !sent {
		line, err := readLine(br, maxReadyLine)
		if len(line) > 0 {
			trimmed := bytes.TrimSpace(line)
			if len(trimmed) > 0 && trimmed[0] == '{' {
				ep, perr := ParseReadyLine(trimmed)
				out <- readyResult{ep: ep, line: append([]byte(nil), trimmed...), err: perr}
				sent = true
				continue
			}
			inst.logFile.Write(line)
			if line[len(line)-1] != '\n' {
				inst.logFile.Write([]byte{'\n'})
			}
		}
		if err != nil {
			out <- readyResult{err: errNoLine}
			return
		}
	}
	_, _ = io.Copy(inst.logFile, br)
}

// readLine reads one line of at most limit bytes (a longer line is
// returned in pieces).
func readLine(br *bufio.Reader, limit int) ([]byte, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		buf = append(buf, frag...)
		if err == nil || len(buf) >= limit {
			return buf, nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return buf, err
	}
}

func lastLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := st.Size() - 4096
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	n, _ := f.ReadAt(buf, off)
	lines := strings.Split(strings.TrimSpace(string(buf[:n])), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !strings.HasPrefix(l, "--- ") {
			return l
		}
	}
	return ""
}

// ownEnv is the script's own variables, added by proc to the
// allow-listed environment.
func (inst *Instance) ownEnv() []string {
	s := inst.spec
	env := []string{
		"WSGW_SERVICE=" + s.Service.Name,
		"WSGW_INDEX=" + strconv.Itoa(s.Index),
		"WSGW_TOKEN=" + s.Token,
		"WSGW_OPTIONS=" + string(s.Options),
		"WSGW_SESSION_DIR=" + s.SessionDir,
	}
	return append(env, s.ExtraEnv...)
}

// Endpoint is where the service listens.
func (inst *Instance) Endpoint() Endpoint { return inst.endpoint }

// PID is the process id (and process group id) of the start process.
func (inst *Instance) PID() int { return inst.proc.PID() }

// LogPath is the session log file.
func (inst *Instance) LogPath() string { return inst.logFile.Name() }

// Exited is closed when the start process has ended.
func (inst *Instance) Exited() <-chan struct{} { return inst.proc.Exited() }

// ExitErr is the start process's exit error (nil for status 0); valid
// once Exited is closed.
func (inst *Instance) ExitErr() error { return inst.proc.ExitErr() }

// Detached reports whether the script exited 0 after its ready line,
// handing the service to something else.
func (inst *Instance) Detached() bool {
	select {
	case <-inst.proc.ProgramExited():
		return inst.proc.ProgramStatus() == 0
	default:
	}
	select {
	case <-inst.proc.Exited():
		return inst.proc.ExitErr() == nil
	default:
		return false
	}
}

// Dial connects to the service, retrying until the start timeout (counted
// from the launch) or ctx ends.
func (inst *Instance) Dial(ctx context.Context) (net.Conn, error) {
	deadline := inst.started.Add(inst.spec.StartTimeout)
	if d := time.Until(deadline); d < 2*time.Second {
		deadline = time.Now().Add(2 * time.Second)
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var d net.Dialer
	var last error
	wait := 10 * time.Millisecond
	exited := inst.proc.Exited()
	for {
		c, err := d.DialContext(ctx, inst.endpoint.Network, inst.endpoint.Address)
		if err == nil {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
			}
			if pw := inst.endpoint.VNCPassword; pw != "" {
				// The gateway holds the VNC password: it answers the
				// server's challenge and offers its client None.
				if err := rfb.Authenticate(ctx, c, []byte(pw)); err != nil {
					c.Close()
					return nil, fmt.Errorf("%w at %s: %w", ErrDial, inst.endpoint.Address, err)
				}
				return rfb.NewNoneConn(c), nil
			}
			return c, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w at %s: %w", ErrDial, inst.endpoint.Address, last)
		case <-exited:
			if err := inst.proc.ExitErr(); err != nil {
				return nil, fmt.Errorf("%w at %s: the service exited (%v)", ErrDial, inst.endpoint.Address, err)
			}
			// Exited 0: a detached service. Stop watching the closed
			// channel, or the loop would spin without waiting.
			exited = nil
			continue
		case <-time.After(wait):
		}
		if wait < 200*time.Millisecond {
			wait *= 2
		}
	}
}

// Stop ends the service: a detached service gets "SCRIPT stop", an
// attached one SIGTERM then SIGKILL; either way the start process group is
// killed at the end so no grandchild survives. Stop is idempotent.
func (inst *Instance) Stop(ctx context.Context) error {
	inst.stopOnce.Do(func() {
		inst.stopErr = inst.stop(ctx)
	})
	return inst.stopErr
}

func (inst *Instance) stop(ctx context.Context) error {
	defer inst.logFile.Close()
	p := inst.proc
	// A script that hands its service on exits right after its ready
	// line; on a session stopped that early, give it a moment to do so
	// before deciding it is attached.
	if settle := time.Until(inst.readyAt.Add(500 * time.Millisecond)); settle > 0 {
		t := time.NewTimer(settle)
		select {
		case <-p.Exited():
		case <-p.ProgramExited():
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
	var err error
	detached := inst.Detached()
	if detached {
		err = inst.runStop(ctx)
	}
	if serr := p.Stop(ctx); serr != nil {
		inst.log.Error().Err(serr).Int("pid", p.PID()).Msg("service process group not stopped in time")
		if err == nil {
			err = fmt.Errorf("stopping %s: %w", inst.spec.Service.Name, serr)
		}
	}
	status := "still running"
	select {
	case <-p.Exited():
		status = "0"
		if e := p.ExitErr(); e != nil {
			status = e.Error()
		}
	default:
	}
	fmt.Fprintf(inst.logFile, "--- %s stopped (start process: %s)\n", time.Now().Format(time.RFC3339), status)
	inst.log.Info().Int("pid", p.PID()).Str("exit", status).
		Bool("detached", detached).Msg("service stopped")
	return err
}

// runStop runs "SCRIPT stop" for a detached service, with the start's
// environment plus WSGW_START_OUTPUT, for at most twice the grace; what it
// leaves in its group is killed.
func (inst *Instance) runStop(ctx context.Context) error {
	grace := inst.spec.grace()
	ctx, cancel := context.WithTimeout(ctx, 2*grace)
	defer cancel()
	env := append(append([]string(nil), inst.env...), "WSGW_START_OUTPUT="+string(inst.ready))
	fmt.Fprintf(inst.logFile, "--- %s stop\n", time.Now().Format(time.RFC3339))
	sp, err := proc.Start(inst.spec.procSpec("stop", env, inst.logFile, inst.logFile))
	if err != nil {
		return fmt.Errorf("stopping %s: %w", inst.spec.Service.Name, err)
	}
	err = sp.Wait(ctx)
	if ctx.Err() != nil {
		err = fmt.Errorf("%s stop did not finish in %s: %w", inst.spec.Service.Script, 2*grace, err)
	}
	// Whatever the stop left behind goes, at once.
	sp.Kill()
	kctx, kcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	_ = sp.Wait(kctx)
	kcancel()
	if err != nil {
		inst.log.Warn().Err(err).Msg("service stop script failed")
		return fmt.Errorf("stopping %s: %w", inst.spec.Service.Name, err)
	}
	return nil
}

// CrashReason waits up to wait for the service's start process to end
// and, if it ended in failure, says how ("" when it still runs or ended
// with status 0). The gateway asks when a service's connection ends, to
// tell a crash from a clean end.
func (inst *Instance) CrashReason(wait time.Duration) string {
	p := inst.proc
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-p.ProgramExited():
	case <-p.Exited():
	case <-timer.C:
		return ""
	}
	select {
	case <-p.ProgramExited():
		switch code := p.ProgramStatus(); {
		case code == 0:
			return ""
		case code > 128:
			return fmt.Sprintf("service exited: killed by signal %d (%s)", code-128, syscall.Signal(code-128))
		default:
			return fmt.Sprintf("service exited with status %d", code)
		}
	default:
	}
	if err := p.ExitErr(); err != nil {
		return "service exited: " + err.Error()
	}
	return ""
}
