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
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
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
	// SessionDir is the private working and log directory; it is created.
	SessionDir string
	// StartTimeout bounds the wait for the ready line and the first dial.
	StartTimeout time.Duration
	// StopGrace is how long SIGTERM is given before SIGKILL, and how long
	// a detached service's "stop" may run.
	StopGrace time.Duration
	// ExtraEnv is added to the allow-listed environment (KEY=VALUE).
	ExtraEnv []string
	// Supervisor, when set, runs the script under a supervisor process
	// that reaps its orphans and stops the group if the gateway dies.
	Supervisor *Supervisor
}

// Endpoint is where a started service listens.
type Endpoint struct {
	Network string `json:"network"` // "tcp" or "unix"
	Address string `json:"address"`
}

// ReadyLine is what a script prints once its service listens.
type ReadyLine struct {
	Hostname string `json:"hostname,omitempty"`
	Port     int    `json:"port,omitempty"`
	Unix     string `json:"unix,omitempty"`
}

// ParseReadyLine decodes and checks a ready line.
func ParseReadyLine(line []byte) (Endpoint, error) {
	var rl ReadyLine
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&rl); err != nil {
		return Endpoint{}, fmt.Errorf("ready line is not a JSON object: %w", err)
	}
	if rl.Unix != "" {
		if !filepath.IsAbs(rl.Unix) {
			return Endpoint{}, fmt.Errorf("ready line: \"unix\" must be an absolute socket path, got %q", rl.Unix)
		}
		return Endpoint{Network: "unix", Address: rl.Unix}, nil
	}
	if rl.Port < 1 || rl.Port > 65535 {
		return Endpoint{}, fmt.Errorf("ready line: \"port\" must be 1..65535, got %d", rl.Port)
	}
	host := rl.Hostname
	if host == "" {
		host = "127.0.0.1"
	}
	return Endpoint{Network: "tcp", Address: net.JoinHostPort(host, strconv.Itoa(rl.Port))}, nil
}

// envAllow lists the gateway's environment variables a script inherits.
var envAllow = []string{"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL"}

// Instance is a started service.
type Instance struct {
	spec     Spec
	log      zerolog.Logger
	cmd      *exec.Cmd
	pgid     int
	endpoint Endpoint
	ready    []byte
	logFile  *os.File
	env      []string
	started  time.Time
	readyAt  time.Time

	exited  chan struct{} // closed when the start process has been reaped
	exitErr error         // valid after exited

	// With a supervisor: closed when it reports the script's exit, which
	// comes before the supervisor itself exits.
	scriptDone   chan struct{}
	scriptStatus int

	stopOnce sync.Once
	stopErr  error
}

// Start runs "SCRIPT start" and waits for its ready line. On failure the
// process group is stopped before Start returns, and the error says what a
// person can do about it.
func Start(ctx context.Context, spec Spec, log zerolog.Logger) (*Instance, error) {
	if err := os.MkdirAll(spec.SessionDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: creating session directory: %w", ErrStartFailed, err)
	}
	lf, err := os.OpenFile(filepath.Join(spec.SessionDir, LogName), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: opening session log: %w", ErrStartFailed, err)
	}
	inst := &Instance{spec: spec, log: log, logFile: lf, exited: make(chan struct{})}
	inst.env = inst.environ()

	var statusR, statusW *os.File
	if spec.Supervisor != nil {
		if statusR, statusW, err = os.Pipe(); err != nil {
			lf.Close()
			return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
		}
		inst.scriptDone = make(chan struct{})
	}
	cmd := spec.command("start", statusW)
	cmd.Dir = spec.SessionDir
	cmd.Env = inst.env
	cmd.Stderr = lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Our own pipe, not StdoutPipe: Wait must not close the read end while
	// the ready line is still in flight.
	pr, pw, err := os.Pipe()
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	cmd.Stdout = pw
	fmt.Fprintf(lf, "--- %s start %s index %d\n", time.Now().Format(time.RFC3339), spec.Service.Name, spec.Index)
	inst.started = time.Now()
	err = cmd.Start()
	pw.Close()
	if statusW != nil {
		statusW.Close()
		if err == nil {
			go inst.watchStatus(statusR)
		} else {
			statusR.Close()
		}
	}
	if err != nil {
		pr.Close()
		lf.Close()
		return nil, fmt.Errorf("%w: running %s: %w", ErrStartFailed, spec.Service.Script, err)
	}
	inst.cmd = cmd
	inst.pgid = cmd.Process.Pid
	log.Info().Int("pid", inst.pgid).Int("index", spec.Index).Msg("service starting")

	readyCh := make(chan readyResult, 1)
	go inst.readStdout(pr, readyCh)
	go func() {
		inst.exitErr = cmd.Wait()
		close(inst.exited)
	}()

	timer := time.NewTimer(spec.StartTimeout)
	defer timer.Stop()
	var fail error
	select {
	case r := <-readyCh:
		if errors.Is(r.err, errNoLine) {
			// stdout closed without a line: the exit status says more.
			select {
			case <-inst.exited:
			case <-time.After(spec.StartTimeout):
			}
			fail = inst.exitFailure()
		} else if r.err != nil {
			fail = fmt.Errorf("%w: %w", ErrStartFailed, r.err)
		} else {
			inst.endpoint = r.ep
			inst.ready = r.line
		}
	case <-inst.exited:
		// The script may have printed its line and exited 0 (detached) at
		// the same moment; prefer the line if it is there.
		select {
		case r := <-readyCh:
			if r.err == nil && inst.exitErr == nil {
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
		fail = fmt.Errorf("%w: %w", ErrStartFailed, ctx.Err())
	}
	if fail != nil {
		inst.killGroup(spec.StopGrace)
		fmt.Fprintf(lf, "--- %s start failed: %v\n", time.Now().Format(time.RFC3339), fail)
		lf.Close()
		log.Warn().Err(fail).Int("pid", inst.pgid).Int("index", spec.Index).Str("log", lf.Name()).Msg("service start failed")
		return nil, fail
	}
	inst.readyAt = time.Now()
	log.Info().Int("pid", inst.pgid).Int("index", spec.Index).Str("endpoint", inst.endpoint.Address).
		Int64("took_ms", time.Since(inst.started).Milliseconds()).Msg("service ready")
	return inst, nil
}

// command builds the command that runs the script with verb, under the
// supervisor when there is one (status then receives the script's exit
// status report).
func (s Spec) command(verb string, status *os.File) *exec.Cmd {
	if s.Supervisor == nil {
		return exec.Command(s.Service.Script, verb)
	}
	exe, args, files := s.Supervisor.command(s.Service.Script, verb, s.StopGrace, status)
	cmd := exec.Command(exe, args...)
	cmd.ExtraFiles = files
	return cmd
}

// watchStatus reads the supervisor's report of the script's exit status.
func (inst *Instance) watchStatus(r *os.File) {
	defer r.Close()
	var code int
	if _, err := fmt.Fscan(r, &code); err != nil {
		return // the supervisor died without a report; exited covers it
	}
	inst.scriptStatus = code
	close(inst.scriptDone)
}

func (inst *Instance) exitFailure() error {
	status := "exited with status 0 without printing a ready line"
	if inst.exitErr != nil {
		status = inst.exitErr.Error()
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

func (inst *Instance) environ() []string {
	var env []string
	for _, k := range envAllow {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	if os.Getenv("PATH") == "" {
		env = append(env, "PATH=/usr/local/bin:/usr/bin:/bin")
	}
	s := inst.spec
	env = append(env,
		"WSGW_SERVICE="+s.Service.Name,
		"WSGW_INDEX="+strconv.Itoa(s.Index),
		"WSGW_TOKEN="+s.Token,
		"WSGW_OPTIONS="+string(s.Options),
		"WSGW_SESSION_DIR="+s.SessionDir,
	)
	env = append(env, s.ExtraEnv...)
	return env
}

// Endpoint is where the service listens.
func (inst *Instance) Endpoint() Endpoint { return inst.endpoint }

// PID is the process id (and process group id) of the start process.
func (inst *Instance) PID() int { return inst.pgid }

// LogPath is the session log file.
func (inst *Instance) LogPath() string { return inst.logFile.Name() }

// Exited is closed when the start process has ended.
func (inst *Instance) Exited() <-chan struct{} { return inst.exited }

// ExitErr is the start process's exit error (nil for status 0); valid
// once Exited is closed.
func (inst *Instance) ExitErr() error { return inst.exitErr }

// Detached reports whether the script exited 0 after its ready line,
// handing the service to something else.
func (inst *Instance) Detached() bool {
	if inst.scriptDone != nil {
		select {
		case <-inst.scriptDone:
			return inst.scriptStatus == 0
		default:
		}
	}
	select {
	case <-inst.exited:
		return inst.exitErr == nil
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
	exited := inst.exited
	for {
		c, err := d.DialContext(ctx, inst.endpoint.Network, inst.endpoint.Address)
		if err == nil {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
			}
			return c, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w at %s: %w", ErrDial, inst.endpoint.Address, last)
		case <-exited:
			if inst.exitErr != nil {
				return nil, fmt.Errorf("%w at %s: the service exited (%v)", ErrDial, inst.endpoint.Address, inst.exitErr)
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
	// A script that hands its service on exits right after its ready
	// line; on a session stopped that early, give it a moment to do so
	// before deciding it is attached.
	if settle := time.Until(inst.readyAt.Add(500 * time.Millisecond)); settle > 0 {
		select {
		case <-inst.exited:
		case <-inst.scriptDone: // nil without a supervisor
		case <-time.After(settle):
		}
	}
	var err error
	if inst.Detached() {
		err = inst.runStop(ctx)
	}
	inst.killGroup(inst.spec.StopGrace)
	status := "0"
	if inst.exitErr != nil {
		status = inst.exitErr.Error()
	}
	fmt.Fprintf(inst.logFile, "--- %s stopped (start process: %s)\n", time.Now().Format(time.RFC3339), status)
	inst.log.Info().Int("pid", inst.pgid).Int("index", inst.spec.Index).Str("exit", status).
		Bool("detached", inst.Detached()).Msg("service stopped")
	return err
}

func (inst *Instance) runStop(ctx context.Context) error {
	grace := inst.spec.StopGrace
	if grace <= 0 {
		grace = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, 2*grace)
	defer cancel()
	cmd := inst.spec.command("stop", nil)
	cmd.Dir = inst.spec.SessionDir
	cmd.Env = append(append([]string(nil), inst.env...), "WSGW_START_OUTPUT="+string(inst.ready))
	cmd.Stdout = inst.logFile
	cmd.Stderr = inst.logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	fmt.Fprintf(inst.logFile, "--- %s stop\n", time.Now().Format(time.RFC3339))
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("running %s stop: %w", inst.spec.Service.Script, err)
	}
	pg := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-pg, syscall.SIGKILL)
		err = <-done
		err = fmt.Errorf("%s stop did not finish in %s: %w", inst.spec.Service.Script, 2*grace, err)
	}
	_ = syscall.Kill(-pg, syscall.SIGKILL)
	if err != nil {
		inst.log.Warn().Err(err).Int("index", inst.spec.Index).Msg("service stop script failed")
		return fmt.Errorf("stopping %s: %w", inst.spec.Service.Name, err)
	}
	return nil
}

// killGroup sends SIGTERM to the process group, waits up to grace for it
// to empty, then sends SIGKILL, and waits for the start process to be
// reaped.
func (inst *Instance) killGroup(grace time.Duration) {
	if grace <= 0 {
		grace = 5 * time.Second
	}
	pg := inst.pgid
	if inst.spec.Supervisor != nil {
		// The supervisor escalates at grace itself; give it time to.
		grace += 3 * time.Second
	}
	if syscall.Kill(-pg, syscall.SIGTERM) == nil {
		deadline := time.Now().Add(grace)
		for time.Now().Before(deadline) && GroupAlive(pg) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	_ = syscall.Kill(-pg, syscall.SIGKILL)
	select {
	case <-inst.exited:
	case <-time.After(grace + 5*time.Second):
		inst.log.Error().Int("pid", pg).Msg("service start process not reaped after SIGKILL")
	}
}

// GroupAlive reports whether process group pgid has a member that is
// not a zombie (kill(2) still counts zombies, which a service's group may
// hold until they are reaped).
func GroupAlive(pgid int) bool {
	if err := syscall.Kill(-pgid, 0); err != nil {
		return false
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, state, ok := procGroup(pid); ok && g == pgid && state != "Z" && state != "X" {
			return true
		}
	}
	return false
}

// CrashReason waits up to wait for the service's start process to end
// and, if it ended in failure, says how ("" when it still runs or ended
// with status 0). The gateway asks when a service's connection ends, to
// tell a crash from a clean end.
func (inst *Instance) CrashReason(wait time.Duration) string {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-inst.scriptDone: // nil without a supervisor: never ready
		switch code := inst.scriptStatus; {
		case code == 0:
			return ""
		case code > 128:
			return fmt.Sprintf("service exited: killed by signal %d (%s)", code-128, syscall.Signal(code-128))
		default:
			return fmt.Sprintf("service exited with status %d", code)
		}
	case <-inst.exited:
		if inst.exitErr != nil {
			return "service exited: " + inst.exitErr.Error()
		}
		return ""
	case <-timer.C:
		return ""
	}
}
