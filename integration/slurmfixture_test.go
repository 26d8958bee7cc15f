package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// slurmCluster is a one-node Slurm cluster on this machine (slurmctld and
// slurmd as children of the test process, auth/none, state and spool in a
// temporary directory), shared by the package's Slurm tests: the first
// user starts it, the last one stops it.
type slurmCluster struct {
	dir       string
	conf      string
	partition string
	node      string
	ctld, d   *exec.Cmd
	exited    [2]chan struct{}
	log       *syncBuf
}

var slurmShared struct {
	mu    sync.Mutex
	c     *slurmCluster
	users int
	err   error
}

// useSlurm returns the shared cluster, starting it for the first user;
// SLURM_CONF names it in this process's environment (so the gateways the
// test starts reach it) until the last user is done.
func useSlurm(t *testing.T) *slurmCluster {
	t.Helper()
	for _, bin := range []string{"slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat(filepath.Join("/usr/sbin", bin)); err == nil {
				continue
			}
			pkg := map[string]string{"slurmctld": "slurmctld", "slurmd": "slurmd"}[bin]
			if pkg == "" {
				pkg = "slurm-client"
			}
			needComponent(t, bin, pkg)
		}
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the one-node Slurm cluster runs its daemons as root; CI must run the tests as root")
		}
		t.Skip("the one-node Slurm cluster runs its daemons as root")
	}
	slurmShared.mu.Lock()
	defer slurmShared.mu.Unlock()
	if slurmShared.c == nil {
		c, err := startSlurm()
		if err != nil {
			t.Fatalf("starting a one-node Slurm cluster: %v", err)
		}
		slurmShared.c = c
		os.Setenv("SLURM_CONF", c.conf)
	}
	slurmShared.users++
	c := slurmShared.c
	t.Cleanup(func() {
		slurmShared.mu.Lock()
		defer slurmShared.mu.Unlock()
		slurmShared.users--
		if slurmShared.users == 0 {
			if err := c.stop(); err != nil {
				t.Errorf("stopping the Slurm cluster: %v", err)
			}
			os.Unsetenv("SLURM_CONF")
			slurmShared.c = nil
		}
	})
	return c
}

func slurmFreePort() (int, error) { return quietPorts(1) }

func slurmBin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return filepath.Join("/usr/sbin", name)
}

func startSlurm() (*slurmCluster, error) {
	start := time.Now()
	dir, err := os.MkdirTemp("", "wsgw-slurm-")
	if err != nil {
		return nil, err
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, err
	}
	host, _, _ = strings.Cut(host, ".")
	p1, err := slurmFreePort()
	if err != nil {
		return nil, err
	}
	p2, err := slurmFreePort()
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"state", "spool"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	c := &slurmCluster{dir: dir, conf: filepath.Join(dir, "slurm.conf"), partition: "debug", node: host, log: &syncBuf{}}
	conf := fmt.Sprintf(`ClusterName=wsgwtest
SlurmctldHost=%[1]s(127.0.0.1)
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmctldPort=%[2]d
SlurmdPort=%[3]d
StateSaveLocation=%[4]s/state
SlurmdSpoolDir=%[4]s/spool
SlurmctldPidFile=%[4]s/slurmctld.pid
SlurmdPidFile=%[4]s/slurmd.pid
SlurmUser=root
SlurmdUser=root
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=30
KillWait=2
InactiveLimit=0
NodeName=%[1]s NodeAddr=127.0.0.1 CPUs=%[5]d State=UNKNOWN
PartitionName=debug Nodes=%[1]s Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=%[1]s MaxTime=1 State=UP
`, host, p1, p2, dir, runtime.NumCPU())
	if err := os.WriteFile(c.conf, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	env := append(os.Environ(), "SLURM_CONF="+c.conf)
	c.ctld = exec.Command(slurmBin("slurmctld"), "-D", "-f", c.conf)
	c.d = exec.Command(slurmBin("slurmd"), "-D", "-f", c.conf)
	for i, cmd := range []*exec.Cmd{c.ctld, c.d} {
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = c.log, c.log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			c.stop()
			return nil, err
		}
		c.exited[i] = make(chan struct{})
		go func(cmd *exec.Cmd, ch chan struct{}) { cmd.Wait(); close(ch) }(cmd, c.exited[i])
	}
	// Ready: the node is idle, and a first job has run (the first job
	// after a start waits for the scheduler; later ones start at once).
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := c.cmd("sinfo", "-h", "-o", "%T").Output()
		if strings.TrimSpace(string(out)) == "idle" {
			break
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("the node did not become idle within 30 s (sinfo: %q):\n%s", out, c.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, err := c.cmd("sbatch", "--parsable", "--output=/dev/null", "--wrap", "true").CombinedOutput()
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("warm-up job: %v: %s", err, out)
	}
	id := strings.TrimSpace(string(out))
	for c.jobActive(id) {
		if time.Now().After(deadline) {
			c.stop()
			return nil, fmt.Errorf("the warm-up job did not finish:\n%s", c.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "one-node Slurm cluster ready in %v\n", time.Since(start).Round(10*time.Millisecond))
	return c, nil
}

// cmd is a Slurm client command against the cluster.
func (c *slurmCluster) cmd(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(slurmBin(name), args...)
	cmd.Env = append(os.Environ(), "SLURM_CONF="+c.conf)
	return cmd
}

// jobState is squeue's state of a job ("" when Slurm has forgotten it).
func (c *slurmCluster) jobState(id string) string {
	out, _ := c.cmd("squeue", "-h", "-t", "all", "-j", id, "-o", "%T").Output()
	return strings.TrimSpace(string(out))
}

// jobActive reports a job squeue lists by default (pending, running,
// completing).
func (c *slurmCluster) jobActive(id string) bool {
	out, _ := c.cmd("squeue", "-h", "-j", id, "-o", "%T").Output()
	return strings.TrimSpace(string(out)) != ""
}

// queue lists the active jobs: id, state, comment.
func (c *slurmCluster) queue() []string {
	out, _ := c.cmd("squeue", "-h", "-o", "%i %T %k").Output()
	s := strings.TrimSpace(string(out))
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// cancelAll cancels every job and waits until none is active.
func (c *slurmCluster) cancelAll() error {
	_ = c.cmd("scancel", "--user=root").Run()
	deadline := time.Now().Add(30 * time.Second)
	for len(c.queue()) > 0 {
		if time.Now().After(deadline) {
			return fmt.Errorf("jobs still active: %v", c.queue())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func (c *slurmCluster) stop() error {
	var err error
	if c.ctld != nil && c.ctld.Process != nil {
		err = c.cancelAll()
	}
	for i, cmd := range []*exec.Cmd{c.d, c.ctld} {
		if cmd == nil || cmd.Process == nil {
			continue
		}
		ch := c.exited[1-i]
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-ch:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-ch
		}
		// Whatever the daemon left in its group (a step daemon) goes too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	os.RemoveAll(c.dir)
	return err
}
