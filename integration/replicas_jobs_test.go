package integration

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
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

	// The call a replica makes for that log, made from outside.
	attackReplicaCall(t, rj, ids[len(ids)-1])

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

// attackReplicaCall makes, as a client that is not a replica, the call
// a replica makes to read job id's log on the replica running it
// (GET /replica/v1/call on its replica listener, docs/replicas.md): with
// no signature, signed with another secret, with a signature for another
// call or job, and a right signature replayed, each is refused with 401.
// The signature is computed here from the documented scheme (HMAC-SHA256
// under the replicas' secret of "wsgw-replica-v1", the sender, the time,
// a nonce, the job id and "call <kind>?<arguments>", each ended by a
// zero byte); a right one is answered (the positive control). Neither
// public port serves the route.
func attackReplicaCall(t *testing.T, rj *replicaJobs, id string) {
	t.Helper()
	_, rep := rj.get(t, 0, id)
	g := rj.gws[index(rep)]
	var addr string
	for _, l := range g.logLines() {
		if l["message"] == "listening for the other replicas" {
			addr = fmt.Sprint(l["address"])
		}
	}
	if addr == "" {
		t.Fatalf("replica %s did not log its replica listener", rep)
	}
	sign := func(secret, from, tok, mode string) string {
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		var nb [8]byte
		_, _ = rand.Read(nb[:])
		nonce := hex.EncodeToString(nb[:])
		m := hmac.New(sha256.New, []byte(secret))
		for _, f := range []string{"wsgw-replica-v1", from, ts, nonce, tok, mode} {
			m.Write([]byte(f))
			m.Write([]byte{0})
		}
		return strings.Join([]string{"v1", from, ts, nonce, hex.EncodeToString(m.Sum(nil))}, " ")
	}
	call := func(host, kind, job, args, auth string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, "http://"+host+"/replica/v1/call?kind="+kind+"&id="+job+"&"+args, nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("X-Wsgw-Replica-Auth", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", req.URL, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The arguments are signed as url.Values encodes them: sorted by key.
	const args = "offset=0&limit=65536"
	mode := "call jobs.log?limit=65536&offset=0"
	good := sign(replicaSecret, "B", id, mode)
	for _, c := range []struct{ what, kind, job, args, auth string }{
		{"no signature", "jobs.log", id, args, ""},
		{"another secret", "jobs.log", id, args, sign("not-the-secret", "B", id, mode)},
		{"a log read's signature for a removal", "jobs.remove", id, "", good},
		{"a signature for another job", "jobs.log", "job-1", args, good},
		{"other arguments", "jobs.log", id, "offset=0&limit=99999999", good},
	} {
		if code, body := call(addr, c.kind, c.job, c.args, c.auth); code != http.StatusUnauthorized {
			t.Fatalf("replica call with %s: %d %s, want 401", c.what, code, body)
		}
	}
	code, body := call(addr, "jobs.log", id, args, good)
	if code != http.StatusOK || !strings.Contains(body, "done "+id) {
		t.Fatalf("replica call signed with the replicas' secret: %d %s, want 200 and the log", code, body)
	}
	if code, body := call(addr, "jobs.log", id, args, good); code != http.StatusUnauthorized {
		t.Fatalf("the same signed call replayed: %d %s, want 401", code, body)
	}
	for _, host := range []string{g.httpAddr, g.wsAddr} {
		if code, body := call(host, "jobs.log", id, args, sign(replicaSecret, "B", id, mode)); code == http.StatusOK {
			t.Fatalf("a public port (%s) served a replica call: %s", host, body)
		}
	}
}
