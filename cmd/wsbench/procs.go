package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process started in its own process group, so that it
// and everything it forks can be measured and killed together.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
	once    sync.Once
}

// procs is every child started, for the final clean-up.
var procs struct {
	mu   sync.Mutex
	list []*proc
}

// startProc runs argv with stdout and stderr going to logPath, with env
// added to wsbench's environment.
func startProc(name, logPath string, env []string, argv ...string) (*proc, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	// Its own process group (for kill(-pgid) and for summing the memory
	// of websockify's forked children), and killed if we die.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	procs.mu.Lock()
	procs.list = append(procs.list, p)
	procs.mu.Unlock()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail is the end of the process's log, for error messages.
func (p *proc) logTail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop sends SIGTERM to the whole process group, waits up to grace, then
// SIGKILLs the group. It is safe to call more than once.
func (p *proc) stop(grace time.Duration) {
	p.once.Do(func() {
		pg := p.pid()
		_ = syscall.Kill(-pg, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(grace):
		}
		// The leader may be gone while forked children of the group live on.
		_ = syscall.Kill(-pg, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
		}
		// Wait (bounded) for the rest of the group to disappear.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if s := groupStats(pg, false); s.procs == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// stopAll stops every child still running (the final clean-up).
func stopAll() {
	procs.mu.Lock()
	list := append([]*proc(nil), procs.list...)
	procs.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(2 * time.Second) }()
	}
	wg.Wait()
}

// memStats is the memory and CPU of a process group.
type memStats struct {
	procs  int
	rssKiB int64 // sum of VmRSS (shared pages counted once per process)
	pssKiB int64 // sum of Pss (shared pages divided among the sharers)
	ticks  int64 // utime+stime of the live processes, in clock ticks
}

// groupStats sums CPU time and, with mem, VmRSS and Pss over the live
// processes whose process group is pgid.
func groupStats(pgid int, mem bool) memStats {
	var s memStats
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return s
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pg, ticks, alive := statOf(pid)
		if pg != pgid || pg == 0 {
			continue
		}
		s.ticks += ticks
		if !alive {
			continue
		}
		s.procs++
		if mem {
			s.rssKiB += statusKiB(pid, "VmRSS:")
			s.pssKiB += rollupKiB(pid, "Pss:")
		}
	}
	return s
}

// statOf reads the process group and the CPU time from /proc/pid/stat:
// utime+stime, plus cutime+cstime (children it has reaped, such as
// websockify's per-connection processes that have ended). ok is false
// for a zombie, whose time still counts.
func statOf(pid int) (pgid int, ticks int64, ok bool) {
	return statFields(pid, []int{11, 12, 13, 14})
}

// statFields is statOf summing the given fields (0 is field 3, state).
func statFields(pid int, fields []int) (pgid int, ticks int64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); pgrp is field 5; utime, stime, cutime
	// and cstime are fields 14 to 17.
	if len(f) < 15 {
		return 0, 0, false
	}
	pg, _ := strconv.Atoi(f[2])
	for _, j := range fields {
		v, _ := strconv.ParseInt(f[j], 10, 64)
		ticks += v
	}
	return pg, ticks, f[0] != "Z"
}

func statusKiB(pid int, key string) int64 {
	return kibField(fmt.Sprintf("/proc/%d/status", pid), key)
}

func rollupKiB(pid int, key string) int64 {
	return kibField(fmt.Sprintf("/proc/%d/smaps_rollup", pid), key)
}

func kibField(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, key) {
			fs := strings.Fields(line[len(key):])
			if len(fs) > 0 {
				n, _ := strconv.ParseInt(fs[0], 10, 64)
				return n
			}
		}
	}
	return 0
}

// memAvailableKiB and memTotalKiB read /proc/meminfo.
func memAvailableKiB() int64 { return kibField("/proc/meminfo", "MemAvailable:") }
func memTotalKiB() int64     { return kibField("/proc/meminfo", "MemTotal:") }

// selfTicks is this process's own CPU time in clock ticks (not that of
// the children it has reaped).
func selfTicks() int64 {
	_, t, _ := statFields(os.Getpid(), []int{11, 12})
	return t
}

// systemBusyTicks is the busy CPU time of the whole machine (all cores)
// from /proc/stat: user, nice, system and steal, less the kernel's
// softirq threads. Interrupt and softirq time (the columns, and the
// ksoftirqd threads) is left out: on loopback it is mostly the benchmark's
// own TCP traffic, which no process is charged for.
func systemBusyTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for _, i := range []int{1, 2, 3, 8} {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		busy += v
	}
	for _, pid := range softirqThreads() {
		_, t, _ := statFields(pid, []int{11, 12})
		busy -= t
	}
	return busy
}

var softirqPids struct {
	once sync.Once
	pids []int
}

// softirqThreads are the pids of the ksoftirqd/N kernel threads.
func softirqThreads() []int {
	softirqPids.once.Do(func() {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
			if err == nil && strings.HasPrefix(string(b), "ksoftirqd/") {
				softirqPids.pids = append(softirqPids.pids, pid)
			}
		}
	})
	return softirqPids.pids
}

// backgroundCPU is the CPU the machine spends, over d, on anything but
// wsbench (which is idle meanwhile), in cores.
func backgroundCPU(d time.Duration) float64 {
	t0, s0, at := systemBusyTicks(), selfTicks(), time.Now()
	time.Sleep(d)
	sec := time.Since(at).Seconds()
	return max(0, float64(systemBusyTicks()-t0-(selfTicks()-s0))/clockTick/sec)
}

// loadAvg is the first field of /proc/loadavg.
func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// clockTick is USER_HZ, 100 on every Linux we run on.
const clockTick = 100

// freePort asks the kernel for a free port on 127.0.0.1. Another process
// could take it before the child binds it; the start is then retried.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening polls addr until it accepts a TCP connection, the process
// exits, or the timeout passes.
func waitListening(ctx context.Context, p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited during start-up: %v\n%s", p.name, p.err, p.logTail(10))
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s is not listening on %s after %s:\n%s", p.name, addr, timeout, p.logTail(10))
}

// writeCert writes a self-signed ECDSA P-256 certificate for 127.0.0.1
// and localhost, and its key, into dir.
func writeCert(dir string) (certFile, keyFile string, pemCert []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", nil, err
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return "", "", nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "wsbench"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", nil, err
	}
	pemCert = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pemCert, 0o600); err != nil {
		return "", "", nil, err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return "", "", nil, err
	}
	return certFile, keyFile, pemCert, nil
}

// raiseNoFile raises RLIMIT_NOFILE to the hard limit and returns it.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return rl.Cur, err
		}
	}
	return rl.Cur, nil
}

// output runs a command and returns its trimmed output ("" on failure).
func output(dir string, argv ...string) string {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	b, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

var errStopped = errors.New("interrupted")
