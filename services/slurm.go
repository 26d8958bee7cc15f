package services

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/proc"
	"wsgateway/rfb"
	slurmscripts "wsgateway/scripts/slurm"
)

// KindSlurm is a services-config entry whose sessions run as Slurm batch
// jobs on cluster nodes.
const KindSlurm = "slurm"

// Files a cluster session keeps in its session directory.
const (
	// SlurmJobFile records the job: id, and the node and port once the
	// job reported them (mode 0600). A gateway restarting reads it.
	SlurmJobFile = "slurm-job.json"
	// SlurmOutputFile is the job's standard output and error: the node
	// script prints its ready line there.
	SlurmOutputFile = "job.out"
	// VNCPasswordFile is the session's VNC password, obfuscated as
	// TigerVNC's password files are (mode 0600); the node script hands it
	// to Xvnc with -PasswordFile.
	VNCPasswordFile = "vnc.passwd"
)

// SlurmOptions are the "slurm" object of a "kind": "slurm" entry.
type SlurmOptions struct {
	// Partition, Account, Time and Constraint become sbatch's
	// --partition, --account, --time and --constraint when set.
	Partition  string `json:"partition,omitempty"`
	Account    string `json:"account,omitempty"`
	Time       string `json:"time,omitempty"`
	Constraint string `json:"constraint,omitempty"`
	// SbatchArgs are more sbatch options, e.g. ["--mem=4G", "--gres=gpu:1"].
	SbatchArgs []string `json:"sbatch_args,omitempty"`
	// NodeScript is the batch script run on the node (a relative path is
	// relative to the config file); empty: the built-in desktop.
	NodeScript string `json:"node_script,omitempty"`
	// PollSeconds is how often squeue is asked about the job (default 1).
	PollSeconds float64 `json:"poll_seconds,omitempty"`
	// StartTimeout is how long a running job has to report its ready line
	// (seconds; default: the gateway's --start_timeout).
	StartTimeout float64 `json:"start_timeout,omitempty"`
}

// The sbatch options the gateway sets itself, which sbatch_args may not.
var reservedSbatch = []string{"--output", "-o", "--error", "-e", "--input", "-i", "--chdir", "-D",
	"--export", "--comment", "--job-name", "-J", "--parsable", "--wrap", "--open-mode", "--export-file", "--wait", "-W"}

var slurmWord = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.,:|&*()\[\]!=+-]*$`)

// checkSlurm checks a slurm object and makes its node script absolute.
func checkSlurm(o *SlurmOptions, dir string) (string, error) {
	for _, f := range []struct{ key, v string }{{"partition", o.Partition}, {"account", o.Account}, {"time", o.Time}, {"constraint", o.Constraint}} {
		if f.v != "" && (len(f.v) > 256 || !slurmWord.MatchString(f.v)) {
			return f.key, fmt.Errorf("%q is not a Slurm %s (letters, digits and _.,:|&*()[]!=+-, not starting with '-')", f.v, f.key)
		}
	}
	for _, a := range o.SbatchArgs {
		if !strings.HasPrefix(a, "-") || strings.ContainsAny(a, "\x00\n\r") {
			return "sbatch_args", fmt.Errorf("%q is not an sbatch option: each item is one option such as \"--mem=4G\"", a)
		}
		name, _, _ := strings.Cut(a, "=")
		for _, r := range reservedSbatch {
			if name == r || (len(r) == 2 && strings.HasPrefix(a, r) && !strings.HasPrefix(a, "--")) {
				return "sbatch_args", fmt.Errorf("%q is set by the gateway (it needs the job's output, directory, environment, name and comment); remove it", a)
			}
		}
	}
	if o.PollSeconds < 0 || o.PollSeconds > 60 {
		return "poll_seconds", fmt.Errorf("must be between 0 (the default, 1 s) and 60, got %v", o.PollSeconds)
	}
	if o.StartTimeout < 0 {
		return "start_timeout", fmt.Errorf("must not be negative")
	}
	if o.NodeScript != "" {
		p := o.NodeScript
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return "node_script", fmt.Errorf("cannot read %s: %w", p, err)
		}
		if !bytes.HasPrefix(data, []byte("#!")) {
			return "node_script", fmt.Errorf("%s must start with #! (sbatch runs it as a batch script)", p)
		}
		o.NodeScript = p
	}
	return "", nil
}

// nodeScript is the batch script's text.
func (o *SlurmOptions) nodeScript() ([]byte, error) {
	if o.NodeScript == "" {
		return slurmscripts.NodeDesktop, nil
	}
	data, err := os.ReadFile(o.NodeScript)
	if err != nil {
		return nil, fmt.Errorf("reading the node script: %w", err)
	}
	return data, nil
}

func (o *SlurmOptions) poll() time.Duration {
	if o.PollSeconds <= 0 {
		return time.Second
	}
	return time.Duration(o.PollSeconds * float64(time.Second))
}

// ClusterTag names the gateway's jobs in Slurm (their --comment): jobs
// carrying it that the gateway does not know of are cancelled at start-up.
// It is derived from the session root, one per gateway.
func ClusterTag(sessionRoot string) string {
	abs, err := filepath.Abs(sessionRoot)
	if err != nil {
		abs = sessionRoot
	}
	sum := sha256.Sum256([]byte(abs))
	return "wsgw:" + hex.EncodeToString(sum[:6])
}

// JobStatus is what Slurm says of a job.
type JobStatus struct {
	// State is Slurm's job state (PENDING, RUNNING, COMPLETED, …); ""
	// when Slurm no longer knows the job.
	State string
	// Reason is Slurm's reason for the state (Priority, Resources, …).
	Reason string
	// Node is where it runs.
	Node string
	// Position is its place among the pending jobs of its partition
	// (1 is next), 0 when not pending.
	Position int
}

// Pending reasons after which a job will never start by itself.
var hopeless = map[string]bool{
	"BadConstraints": true, "PartitionConfig": true, "PartitionNodeLimit": true, "PartitionTimeLimit": true,
	"PartitionDown": false, "InvalidAccount": true, "InvalidQOS": true, "ReqNodeNotAvail": false,
	"DependencyNeverSatisfied": true, "JobHeldAdmin": false, "QOSJobLimit": false, "AccountNotAllowed": true,
	"QOSNotAllowed": true, "PartitionInactive": false, "NodeDown": false,
}

// active reports a state in which the job holds or waits for resources.
func active(state string) bool {
	switch state {
	case "PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD":
		return true
	}
	return false
}

// running reports a state in which the job's program runs.
func running(state string) bool { return state == "RUNNING" || state == "CONFIGURING" }

// endReason says in words why a job that was running ended.
func endReason(id string, st JobStatus, stopping bool) string {
	what, ok := map[string]string{
		"CANCELLED":     "was cancelled outside the gateway (scancel)",
		"TIMEOUT":       "reached its time limit",
		"NODE_FAIL":     "lost its node (node failure)",
		"FAILED":        "failed: the program on the node exited with an error",
		"COMPLETED":     "completed: the program on the node exited",
		"PREEMPTED":     "was preempted by another job",
		"OUT_OF_MEMORY": "ran out of memory",
		"BOOT_FAIL":     "could not boot its node",
		"DEADLINE":      "reached its deadline",
		"COMPLETING":    "is ending",
		"":              "is gone: Slurm no longer knows it",
	}[st.State]
	if !ok {
		what = "is " + st.State
	}
	if stopping {
		what = "was cancelled by the gateway"
	}
	s := fmt.Sprintf("job %s %s", id, what)
	if st.Reason != "" && st.Reason != "None" {
		s += " (Slurm: " + st.Reason + ")"
	}
	return s
}

// slurmRecord is the content of SlurmJobFile.
type slurmRecord struct {
	JobID    string `json:"job_id"`
	Hostname string `json:"hostname,omitempty"`
	Port     int    `json:"port,omitempty"`
}

// SlurmJob is a session's Slurm batch job: it is the session's Process
// once the job runs and has reported where its VNC server listens.
type SlurmJob struct {
	spec     Spec
	opts     *SlurmOptions
	log      zerolog.Logger
	id       string
	password []byte
	endpoint Endpoint
	env      []string

	mu       sync.Mutex
	exitErr  error
	stopping bool
	exited   chan struct{}
	wake     chan struct{}
	stopOnce sync.Once
	stopErr  error
	cancel   context.CancelFunc // ends the watcher
	watching chan struct{}      // closed when the watcher returns
}

// crashWait bounds how long CrashReason waits for an ending job's final
// state.
const crashWait = 15 * time.Second

// ErrJobEnded: a running cluster job ended (ExitErr).
var ErrJobEnded = errors.New("cluster job ended")

// newPassword returns 8 random letters and digits: VNC authentication
// uses 8 bytes of a password, and TigerVNC stops at a zero byte.
func newPassword() ([]byte, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, rfb.MaxPasswordLen)
	for i := range out {
		n, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		if err != nil {
			return nil, fmt.Errorf("making a VNC password: %w", err)
		}
		out[i] = alphabet[n.Int64()]
	}
	return out, nil
}

// slurmEnv is the environment of the gateway's Slurm commands and, through
// sbatch --export=ALL, of the job: the allow-listed environment, the
// session's own variables, and SLURM_CONF when the gateway has it.
func (s Spec) slurmEnv() []string {
	return slurmEnv(s.EnvPolicy, append([]string{
		"WSGW_SERVICE=" + s.Service.Name,
		"WSGW_INDEX=" + strconv.Itoa(s.Index),
		"WSGW_OPTIONS=" + string(s.Options),
		"WSGW_SESSION_DIR=" + s.SessionDir,
		"WSGW_VNC_PASSWORD_FILE=" + filepath.Join(s.SessionDir, VNCPasswordFile),
	}, s.ExtraEnv...))
}

// slurmEnv is pol's environment with own and, when the gateway has it,
// SLURM_CONF: the Slurm commands must reach the cluster the gateway's
// environment names.
func slurmEnv(pol proc.Policy, own []string) []string {
	if v, ok := os.LookupEnv("SLURM_CONF"); ok {
		own = append([]string{"SLURM_CONF=" + v}, own...)
	}
	return pol.Environ(own)
}

// runSlurm runs a Slurm command and returns its stdout; the error holds
// its stderr.
func runSlurm(ctx context.Context, env []string, stdin []byte, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		// Slurm's last line says it best ("Batch job submission failed:
		// Invalid partition name specified").
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		msg := strings.TrimSpace(lines[len(lines)-1])
		msg = strings.TrimPrefix(msg, name+": error: ")
		msg = strings.TrimPrefix(msg, "Batch job submission failed: ")
		if msg == "" {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return nil, fmt.Errorf("%s: %s (%w)", name, msg, err)
	}
	return stdout.Bytes(), nil
}

// SubmitSlurm submits a session's job with sbatch: it makes the session
// directory, the VNC password file in it, and the job record. The job's
// output goes to SlurmOutputFile in the session directory, which the
// node must share with the gateway (see docs/cluster.md).
func SubmitSlurm(ctx context.Context, spec Spec, tag string, log zerolog.Logger) (*SlurmJob, error) {
	o := spec.Service.Slurm
	if o == nil {
		return nil, fmt.Errorf("%w: service %q is not a Slurm service", ErrStartFailed, spec.Service.Name)
	}
	if err := MakeSessionDir(spec.SessionDir); err != nil {
		return nil, fmt.Errorf("%w: creating session directory: %w", ErrStartFailed, err)
	}
	script, err := o.nodeScript()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	pw, err := newPassword()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	pwFile := filepath.Join(spec.SessionDir, VNCPasswordFile)
	_ = os.Remove(pwFile)
	if err := rfb.WritePasswordFile(pwFile, pw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	out := filepath.Join(spec.SessionDir, SlurmOutputFile)
	_ = os.Remove(out)
	args := []string{"--parsable", "--job-name=wsgw-" + safeJobName(spec.Service.Name) + "-" + strconv.Itoa(spec.Index),
		"--comment=" + tag, "--chdir=" + spec.SessionDir, "--output=" + out, "--export=ALL"}
	for _, f := range []struct{ flag, v string }{{"--partition", o.Partition}, {"--account", o.Account}, {"--time", o.Time}, {"--constraint", o.Constraint}} {
		if f.v != "" {
			args = append(args, f.flag+"="+f.v)
		}
	}
	args = append(args, o.SbatchArgs...)
	j := &SlurmJob{spec: spec, opts: o, log: log, password: pw, env: spec.slurmEnv(),
		exited: make(chan struct{}), wake: make(chan struct{}, 1), watching: make(chan struct{})}
	stdout, err := runSlurm(ctx, j.env, script, "sbatch", args...)
	if err != nil {
		log.Warn().Err(err).Msg("sbatch failed")
		return nil, fmt.Errorf("%w: Slurm refused the job: %w", ErrStartFailed, err)
	}
	id, _, _ := strings.Cut(strings.TrimSpace(string(stdout)), ";")
	if _, err := strconv.ParseUint(id, 10, 64); err != nil {
		return nil, fmt.Errorf("%w: sbatch printed %q, not a job id", ErrStartFailed, stdout)
	}
	j.id = id
	if err := j.saveRecord(); err != nil {
		j.cancelBounded(ctx)
		return nil, fmt.Errorf("%w: %w", ErrStartFailed, err)
	}
	log.Info().Str("job", id).Str("partition", o.Partition).Msg("cluster job submitted")
	return j, nil
}

func safeJobName(s string) string {
	s = regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(s, "_")
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}

// ID is the Slurm job id.
func (j *SlurmJob) ID() string { return j.id }

func (j *SlurmJob) saveRecord() error {
	rec := slurmRecord{JobID: j.id}
	if j.endpoint.Address != "" {
		h, p, _ := net.SplitHostPort(j.endpoint.Address)
		rec.Hostname = h
		rec.Port, _ = strconv.Atoi(p)
	}
	data, _ := json.Marshal(rec)
	path := filepath.Join(j.spec.SessionDir, SlurmJobFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("recording the cluster job: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("recording the cluster job: %w", err)
	}
	return nil
}

// Status asks squeue about the job.
func (j *SlurmJob) Status(ctx context.Context) (JobStatus, error) {
	return queryJob(ctx, j.env, j.id, j.opts.Partition)
}

func queryJob(ctx context.Context, env []string, id, partition string) (JobStatus, error) {
	out, err := runSlurm(ctx, env, nil, "squeue", "-h", "-t", "all", "-j", id, "-o", "%T|%r|%N")
	if err != nil {
		if strings.Contains(err.Error(), "Invalid job id") {
			return JobStatus{}, nil
		}
		return JobStatus{}, err
	}
	line := strings.TrimSpace(string(out))
	if line == "" {
		return JobStatus{}, nil
	}
	line, _, _ = strings.Cut(line, "\n")
	f := strings.SplitN(line, "|", 3)
	for len(f) < 3 {
		f = append(f, "")
	}
	st := JobStatus{State: f[0], Reason: f[1], Node: f[2]}
	if st.State == "PENDING" {
		args := []string{"-h", "-t", "PD", "-o", "%i", "--sort=-p,i"}
		if partition != "" {
			args = append(args, "-p", partition)
		}
		if out, err := runSlurm(ctx, env, nil, "squeue", args...); err == nil {
			for i, l := range strings.Fields(string(out)) {
				if l == id {
					st.Position = i + 1
					break
				}
			}
		}
	}
	return st, nil
}

// WaitReady waits until the job runs and its node script has printed its
// ready line, calling progress whenever the job's pending reason or
// position changes. A job that ends, or whose pending reason means it
// can never start, is cancelled and an ErrJobEnded error says why; so is
// one that runs without a ready line for the start timeout. ctx ending
// cancels the job too.
func (j *SlurmJob) WaitReady(ctx context.Context, progress func(JobStatus)) error {
	var last JobStatus
	var runSince time.Time
	timeout := j.spec.StartTimeout
	if j.opts.StartTimeout > 0 {
		timeout = time.Duration(j.opts.StartTimeout * float64(time.Second))
	}
	wait := 50 * time.Millisecond
	fail := func(err error) error {
		j.cancelBounded(ctx)
		return err
	}
	for {
		st, err := j.Status(ctx)
		switch {
		case ctx.Err() != nil:
			return fail(fmt.Errorf("%w: %w", ErrStartFailed, ctx.Err()))
		case err != nil:
			j.log.Warn().Err(err).Str("job", j.id).Msg("squeue failed; trying again")
		case st.State == "PENDING":
			if hopeless[st.Reason] {
				return fail(fmt.Errorf("%w: cluster job %s cannot start: Slurm says %s", ErrStartFailed, j.id, st.Reason))
			}
			if st != last && progress != nil {
				progress(st)
			}
		case running(st.State):
			if runSince.IsZero() {
				runSince = time.Now()
				if st != last && progress != nil {
					progress(st)
				}
			}
			ep, err := j.readyLine()
			if err != nil {
				return fail(fmt.Errorf("%w: cluster job %s: %w", ErrStartFailed, j.id, err))
			}
			if ep != nil {
				j.endpoint = *ep
				if err := j.saveRecord(); err != nil {
					return fail(fmt.Errorf("%w: %w", ErrStartFailed, err))
				}
				j.startWatch()
				j.log.Info().Str("job", j.id).Str("node", st.Node).Str("endpoint", ep.Address).Msg("cluster job ready")
				return nil
			}
			if timeout > 0 && time.Since(runSince) > timeout {
				return fail(fmt.Errorf("%w: cluster job %s runs on %s but printed no ready line within %s; see %s",
					ErrStartTimeout, j.id, st.Node, timeout, filepath.Join(j.spec.SessionDir, SlurmOutputFile)))
			}
		case active(st.State):
			// Suspended, requeued, completing: wait.
		default:
			msg := fmt.Sprintf("cluster job %s ended before it was ready: %s", j.id, orGone(st.State))
			if st.Reason != "" && st.Reason != "None" {
				msg += " (Slurm: " + st.Reason + ")"
			}
			if l := lastLine(filepath.Join(j.spec.SessionDir, SlurmOutputFile)); l != "" {
				msg += ": " + l
			}
			return fail(fmt.Errorf("%w: %s", ErrStartFailed, msg))
		}
		if st.State != "" {
			last = st
		}
		// Poll fast while the job starts, then at the configured pace.
		d := j.opts.poll()
		if running(st.State) || wait < d {
			d = min(wait, d)
			wait *= 2
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

func orGone(state string) string {
	if state == "" {
		return "Slurm no longer knows it"
	}
	return state
}

// readyLine reads the job's output for its ready line (nil, nil while
// there is none yet).
func (j *SlurmJob) readyLine() (*Endpoint, error) {
	f, err := os.Open(filepath.Join(j.spec.SessionDir, SlurmOutputFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(io.LimitReader(f, 1<<20), 4096)
	for {
		line, err := readLine(br, maxReadyLine)
		t := bytes.TrimSpace(line)
		if len(t) > 0 && t[0] == '{' && bytes.HasSuffix(line, []byte("\n")) {
			ep, perr := ParseReadyLine(t)
			if perr != nil {
				return nil, perr
			}
			if ep.Network != "tcp" {
				return nil, fmt.Errorf("a cluster job's ready line names a TCP hostname and port, not %s", ep.Network)
			}
			return &ep, nil
		}
		if err != nil {
			return nil, nil
		}
	}
}

// startWatch starts the goroutine that notices the job's end.
func (j *SlurmJob) startWatch() {
	ctx, cancel := context.WithCancel(context.Background())
	j.cancel = cancel
	go j.watch(ctx)
}

func (j *SlurmJob) watch(ctx context.Context) {
	defer close(j.watching)
	every := j.opts.poll()
	for {
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-j.wake:
			t.Stop()
		}
		st, err := j.Status(ctx)
		if err != nil {
			if ctx.Err() == nil {
				j.log.Warn().Err(err).Str("job", j.id).Msg("squeue failed")
			}
			continue
		}
		if st.State == "COMPLETING" {
			// The job is ending; its final state (CANCELLED, TIMEOUT, …)
			// says why, once its processes are gone.
			every = 100 * time.Millisecond
			continue
		}
		if !running(st.State) && st.State != "SUSPENDED" {
			j.mu.Lock()
			stopping := j.stopping
			j.mu.Unlock()
			j.setExited(fmt.Errorf("%w: %s", ErrJobEnded, endReason(j.id, st, stopping)))
			if !stopping {
				j.log.Warn().Str("job", j.id).Str("state", st.State).Str("reason", st.Reason).Msg("cluster job ended by itself")
			}
			return
		}
	}
}

func (j *SlurmJob) setExited(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	select {
	case <-j.exited:
		return
	default:
	}
	j.exitErr = err
	close(j.exited)
}

// Endpoint is where the job's VNC server listens.
func (j *SlurmJob) Endpoint() Endpoint { return j.endpoint }

// Exited is closed when the job has ended.
func (j *SlurmJob) Exited() <-chan struct{} { return j.exited }

// ExitErr says how the job ended; valid once Exited is closed.
func (j *SlurmJob) ExitErr() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.exitErr
}

// Detached is false: a cluster session is kept for reconnections.
func (j *SlurmJob) Detached() bool { return false }

// OutlivesGateway: a cluster job runs on its node whatever happens to
// the gateway; with a state database, a gateway that stops leaves it
// running for the next one (session.Outliving).
func (j *SlurmJob) OutlivesGateway() bool { return true }

// CrashReason asks Slurm at once whether the job has ended and says how
// ("" while it runs). A job whose connection ended is given at least
// crashWait to reach its final state, since Slurm shows an ending job as
// COMPLETING until its processes are gone.
func (j *SlurmJob) CrashReason(wait time.Duration) string {
	select {
	case j.wake <- struct{}{}:
	default:
	}
	t := time.NewTimer(max(wait, crashWait))
	defer t.Stop()
	select {
	case <-j.exited:
		if err := j.ExitErr(); err != nil {
			return err.Error()
		}
	case <-t.C:
	}
	return ""
}

// Dial connects to the job's VNC server and authenticates with the
// session's password; the connection it returns presents the server to
// the client as one that needs no password.
func (j *SlurmJob) Dial(ctx context.Context) (net.Conn, error) {
	return dialVNC(ctx, j.endpoint, j.password, 20*time.Second, j.exited)
}

// dialVNC dials ep, retrying until timeout or ctx ends (or gone closes),
// then authenticates with password and wraps the connection.
func dialVNC(ctx context.Context, ep Endpoint, password []byte, timeout time.Duration, gone <-chan struct{}) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	wait := 10 * time.Millisecond
	for {
		c, err := d.DialContext(ctx, ep.Network, ep.Address)
		if err == nil {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
			}
			if password == nil {
				return c, nil
			}
			if err := rfb.Authenticate(ctx, c, password); err != nil {
				c.Close()
				return nil, fmt.Errorf("%w at %s: %w", ErrDial, ep.Address, err)
			}
			return rfb.NewNoneConn(c), nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w at %s: %w", ErrDial, ep.Address, err)
		case <-gone:
			return nil, fmt.Errorf("%w at %s: the service has ended", ErrDial, ep.Address)
		case <-time.After(wait):
		}
		if wait < 200*time.Millisecond {
			wait *= 2
		}
	}
}

// Stop cancels the job and waits, bounded by ctx, until Slurm has let it
// go; the job record is removed so a restarted gateway does not resume
// it. Stop is idempotent.
func (j *SlurmJob) Stop(ctx context.Context) error {
	j.stopOnce.Do(func() {
		j.mu.Lock()
		j.stopping = true
		j.mu.Unlock()
		j.stopErr = j.cancelJob(ctx)
		if j.cancel != nil {
			j.cancel()
			<-j.watching
		}
		j.setExited(fmt.Errorf("%w: %s", ErrJobEnded, endReason(j.id, JobStatus{State: "CANCELLED"}, true)))
		j.log.Info().Str("job", j.id).Int("index", j.spec.Index).Msg("cluster job cancelled")
	})
	return j.stopErr
}

// cancelBounded cancels the job when a start failed (ctx may have ended
// already): scancel, then the wait for Slurm to list the job as ended
// bounded by the stop grace (at least a second), so that a controller
// which keeps listing it cannot hold the failed start forever.
func (j *SlurmJob) cancelBounded(ctx context.Context) {
	bound := j.spec.StopGrace
	if bound < time.Second {
		bound = time.Second
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	if err := j.cancelJob(cctx); err != nil {
		j.log.Warn().Err(err).Str("job", j.id).Msg("cluster job cancelled after a failed start, not yet ended")
	}
}

// cancelJob runs scancel and waits until squeue no longer lists the job
// as active, and forgets the record.
func (j *SlurmJob) cancelJob(ctx context.Context) error {
	_ = os.Remove(filepath.Join(j.spec.SessionDir, SlurmJobFile))
	return cancelAndWait(ctx, j.env, j.id, j.opts.poll())
}

func cancelAndWait(ctx context.Context, env []string, id string, poll time.Duration) error {
	if _, err := runSlurm(ctx, env, nil, "scancel", id); err != nil && !strings.Contains(err.Error(), "Invalid job id") {
		return fmt.Errorf("cancelling cluster job %s: %w", id, err)
	}
	wait := 20 * time.Millisecond
	for {
		st, err := queryJob(ctx, env, id, "")
		if err == nil && !active(st.State) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster job %s is still ending: %w", id, ctx.Err())
		case <-time.After(wait):
		}
		if wait < poll {
			wait *= 2
		}
	}
}

// ResumeSlurm takes back a session's job after a gateway restart, from
// the record in its session directory: when the job still runs and had
// reported its node and port, the job is returned (with its watcher
// started); otherwise the job, if Slurm still has it, is cancelled and
// the error says why it could not be resumed.
func ResumeSlurm(ctx context.Context, spec Spec, log zerolog.Logger) (*SlurmJob, error) {
	o := spec.Service.Slurm
	if o == nil {
		return nil, fmt.Errorf("service %q is not a Slurm service", spec.Service.Name)
	}
	if err := ownDir(spec.SessionDir); err != nil {
		return nil, fmt.Errorf("session directory: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(spec.SessionDir, SlurmJobFile))
	if err != nil {
		return nil, fmt.Errorf("no cluster job recorded: %w", err)
	}
	var rec slurmRecord
	if err := json.Unmarshal(data, &rec); err != nil || rec.JobID == "" {
		return nil, fmt.Errorf("cluster job record %s is damaged", filepath.Join(spec.SessionDir, SlurmJobFile))
	}
	j := &SlurmJob{spec: spec, opts: o, log: log, id: rec.JobID, env: spec.slurmEnv(),
		exited: make(chan struct{}), wake: make(chan struct{}, 1), watching: make(chan struct{})}
	pw, perr := rfb.ReadPasswordFile(filepath.Join(spec.SessionDir, VNCPasswordFile))
	st, err := j.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("asking Slurm about job %s: %w", rec.JobID, err)
	}
	if !running(st.State) || rec.Port == 0 || perr != nil {
		why := "it is " + orGone(st.State)
		switch {
		case perr != nil:
			why = perr.Error()
		case running(st.State):
			why = "it had not reported its node and port"
		}
		_ = j.cancelJob(ctx)
		return nil, fmt.Errorf("cluster job %s not resumed: %s", rec.JobID, why)
	}
	j.password = pw
	j.endpoint = Endpoint{Network: "tcp", Address: net.JoinHostPort(rec.Hostname, strconv.Itoa(rec.Port))}
	j.startWatch()
	log.Info().Str("job", j.id).Str("endpoint", j.endpoint.Address).Msg("cluster job resumed after a restart")
	return j, nil
}

// CancelForgotten cancels the jobs in Slurm's queue that carry tag (the
// gateway's) but are not in keep: jobs of sessions a previous gateway
// lost. It returns the ids cancelled.
func CancelForgotten(ctx context.Context, tag string, keep map[string]bool, pol proc.Policy) ([]string, error) {
	env := slurmEnv(pol, nil)
	out, err := runSlurm(ctx, env, nil, "squeue", "-h", "--me", "-o", "%i|%k")
	if err != nil {
		return nil, fmt.Errorf("listing cluster jobs: %w", err)
	}
	var gone []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		id, comment, ok := strings.Cut(strings.TrimSpace(l), "|")
		if !ok || comment != tag || keep[id] {
			continue
		}
		if err := cancelAndWait(ctx, env, id, time.Second); err != nil {
			return gone, err
		}
		gone = append(gone, id)
	}
	return gone, nil
}
