package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// replicaJobs is three replicas (linked: the replica listener and the
// shared secret) whose services config has the job service "work", limited
// to 2 at once across them. Each job appends "start <id>" and "end <id>"
// to the test's trace file around its sleep.
type replicaJobs struct {
	gws   []*gateway
	rpc   []*rpcClient
	trace string
}

func startReplicaJobs(t *testing.T) *replicaJobs {
	t.Helper()
	dir := t.TempDir()
	rj := &replicaJobs{trace: filepath.Join(dir, "trace")}
	prog := writeScript(t, dir, "work.sh", fmt.Sprintf(`echo "start $WSGW_JOB_ID"
echo "start $WSGW_JOB_ID" >> %[1]s
trap 'echo "end $WSGW_JOB_ID" >> %[1]s; echo "term $WSGW_JOB_ID"; exit 143' TERM
sleep "$1" &
wait
echo "end $WSGW_JOB_ID" >> %[1]s
echo "done $WSGW_JOB_ID"
`, rj.trace))
	svcs := map[string]any{"work": map[string]any{"kind": "job", "count": 2, "cmd": []string{prog, "${seconds}"},
		"options": map[string]any{"params": map[string]any{
			"seconds": map[string]any{"type": "number", "default": 0, "min": 0, "max": 60}}}}}
	rj.gws = startLinkedReplicas(t, 3, svcs, "--replica_lease", "1", "--stop_grace", "1")
	for _, g := range rj.gws {
		rj.rpc = append(rj.rpc, dialRPC(t, g, ""))
	}
	return rj
}

func (rj *replicaJobs) submit(t *testing.T, on int, seconds float64) rpcJob {
	t.Helper()
	var j rpcJob
	rj.rpc[on].must("jobs.submit", map[string]any{"service": "work", "params": map[string]any{"seconds": seconds}}, &j)
	return j
}

// get reads a job on replica on, with the replica that runs it.
func (rj *replicaJobs) get(t *testing.T, on int, id string) (rpcJob, string) {
	t.Helper()
	var raw json.RawMessage
	rj.rpc[on].must("jobs.get", map[string]any{"id": id}, &raw)
	var j rpcJob
	var r struct {
		Replica string `json:"replica"`
	}
	_ = json.Unmarshal(raw, &j)
	_ = json.Unmarshal(raw, &r)
	return j, r.Replica
}

// waitJob waits until job id, read on replica on, is in state.
func (rj *replicaJobs) waitJob(t *testing.T, on int, id, state string, timeout time.Duration) (rpcJob, string) {
	t.Helper()
	var j rpcJob
	var rep string
	waitFor(t, fmt.Sprintf("job %s to be %s", id, state), timeout, func() bool {
		j, rep = rj.get(t, on, id)
		return j.State == state
	})
	return j, rep
}

// index is the position of replica "A", "B"… among the gateways.
func index(replica string) int { return int(replica[0] - 'A') }

// TestReplicasJobQueue: 20 jobs submitted round-robin on three replicas
// for a service limited to 2 at once: each runs exactly once and never
// more than 2 at once across them; every job's log is read from a
// replica that did not run it; a job is stopped from another replica;
// kill -9 of a replica running a job has that job interrupted once,
// while the queued jobs run on the others.
func TestReplicasJobQueue(t *testing.T) {
	t.Parallel()
	rj := startReplicaJobs(t)
	var ids []string
	for i := 0; i < 20; i++ {
		ids = append(ids, rj.submit(t, i%3, 0.3).ID)
	}
	seen := map[string]bool{}
	for i, id := range ids {
		if seen[id] {
			t.Fatalf("job id %s handed out twice: %v", id, ids)
		}
		seen[id] = true
		j, rep := rj.waitJob(t, (i+1)%3, id, "succeeded", 60*time.Second)
		if rep == "" || j.ExitStatus == nil || *j.ExitStatus != 0 {
			t.Fatalf("job %s: %+v on %q", id, j, rep)
		}
		other := (index(rep) + 1) % 3
		var c struct {
			Data     string `json:"data"`
			Complete bool   `json:"complete"`
		}
		rj.rpc[other].must("logs.read", map[string]any{"id": id}, &c)
		if c.Data != fmt.Sprintf("start %s\ndone %s\n", id, id) || !c.Complete {
			t.Fatalf("the log of %s (run on %s) read on %s: %+v", id, rep, rj.gws[other].httpAddr, c)
		}
	}
	b, err := os.ReadFile(rj.trace)
	if err != nil {
		t.Fatal(err)
	}
	starts, running, most := map[string]int{}, 0, 0
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		what, id, _ := strings.Cut(l, " ")
		if what == "start" {
			starts[id]++
			running++
		} else {
			running--
		}
		most = max(most, running)
	}
	for _, id := range ids {
		if starts[id] != 1 {
			t.Fatalf("job %s started %d times", id, starts[id])
		}
	}
	if most > 2 {
		t.Fatalf("%d jobs ran at once across the replicas; the service's limit is 2", most)
	}
	// Every replica lists every job with its replica.
	var list struct {
		Jobs []map[string]any `json:"jobs"`
	}
	rj.rpc[2].must("jobs.list", map[string]any{"limit": 100}, &list)
	if len(list.Jobs) != 20 {
		t.Fatalf("jobs.list on C: %d jobs", len(list.Jobs))
	}
	for _, j := range list.Jobs {
		if r, _ := j["replica"].(string); r < "A" || r > "C" {
			t.Fatalf("jobs.list on C: %v", j)
		}
	}

	// A stop from a replica that does not run the job.
	long := rj.submit(t, 0, 30).ID
	_, owner := rj.waitJob(t, 0, long, "running", 20*time.Second)
	other := (index(owner) + 1) % 3
	third := (index(owner) + 2) % 3
	var stopped rpcJob
	rj.rpc[other].must("jobs.stop", map[string]any{"id": long}, &stopped)
	if stopped.State != "stopped" || !strings.HasPrefix(stopped.Reason, "stopped by") {
		t.Fatalf("stop on another replica: %+v", stopped)
	}
	rj.rpc[third].must("events.subscribe", map[string]any{"topics": []string{"job.state"}, "since": 0}, nil)
	rj.rpc[third].waitEvent("the stop on the third replica", 20*time.Second, jobState(long, "stopped"))

	// kill -9 of a replica running a job. Two long jobs hold both places,
	// so the three jobs queued next (one on each replica, the doomed one
	// too) wait in Redis until the kill frees the doomed replica's.
	victim := rj.submit(t, 1, 30).ID
	_, dead := rj.waitJob(t, 1, victim, "running", 20*time.Second)
	second := rj.submit(t, 2, 30).ID
	_, secondOn := rj.waitJob(t, 2, second, "running", 20*time.Second)
	doomed := map[string]int{victim: 0}
	if secondOn == dead {
		doomed[second] = 0
	}
	var pids []int
	for id := range doomed {
		j, _ := rj.get(t, index(dead), id)
		pids = append(pids, j.PID)
	}
	var queued []string
	for i := 0; i < 3; i++ {
		j := rj.submit(t, i, 0.2)
		if j.State != "queued" {
			t.Fatalf("a job submitted with both places taken: %+v", j)
		}
		queued = append(queued, j.ID)
	}
	survivor := (index(dead) + 1) % 3
	rj.rpc[survivor].must("events.subscribe", map[string]any{"topics": []string{"job.state"}}, nil)
	g := rj.gws[index(dead)]
	if err := g.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-g.exited
	for id := range doomed {
		j, _ := rj.waitJob(t, survivor, id, "interrupted", 30*time.Second)
		if !strings.Contains(j.Reason, "replica "+dead+" ") || !strings.Contains(j.Reason, "lost") {
			t.Fatalf("reason %q", j.Reason)
		}
	}
	for _, id := range queued {
		if _, rep := rj.waitJob(t, survivor, id, "succeeded", 30*time.Second); rep == dead {
			t.Fatalf("queued job %s ran on the dead replica %s", id, dead)
		}
	}
	// Once: one event each, one replica's log line each.
	for id := range doomed {
		rj.rpc[survivor].waitEvent("the interruption of "+id, 10*time.Second, jobState(id, "interrupted"))
	}
	for _, e := range rj.rpc[survivor].events {
		if id, _ := e.Data["id"].(string); e.Method == "job.state" && e.Data["state"] == "interrupted" {
			if _, ok := doomed[id]; !ok {
				t.Fatalf("job %s interrupted too", id)
			}
			doomed[id]++
		}
	}
	for i, g := range rj.gws {
		if i == index(dead) {
			continue
		}
		for _, l := range g.logLines() {
			if id, _ := l["job"].(string); strings.HasPrefix(fmt.Sprint(l["message"]), "job interrupted: the replica running it") {
				doomed[id] += 10
			}
		}
	}
	for id, n := range doomed {
		if n != 11 {
			t.Fatalf("job %s: %d interrupted events and %d replicas marking it, want 1 and 1", id, n%10, n/10)
		}
	}
	// The killed replica's job processes are the test's to end.
	for _, pid := range pids {
		if pid > 0 {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	if secondOn != dead {
		rj.rpc[survivor].must("jobs.stop", map[string]any{"id": second}, nil)
	}
}
