package jobs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/internal/redistest"
	"wsgateway/store"
	"wsgateway/store/redisstore"
)

// replicas is several Managers sharing one job queue in the package's
// redis-server, each with its own store connection, job directory and
// events; Remote calls reach the other Managers directly.
type replicas struct {
	t     *testing.T
	mu    sync.Mutex
	mgrs  map[string]*Manager
	sts   map[string]*redisstore.Store
	pubs  map[string]*memPub
	dead  map[string]bool
	trace string
}

// startReplicas starts Managers named ids with the job service "s" (the
// shell script body, count jobs at a time across them). $TRACE in body
// is a file every job may append to.
func startReplicas(t *testing.T, body string, count int, ids ...string) *replicas {
	t.Helper()
	srv := redistest.Need(t)
	url := srv.URL(0) + "?prefix=" + redistest.Prefix(t)
	dir := t.TempDir()
	rs := &replicas{t: t, mgrs: map[string]*Manager{}, sts: map[string]*redisstore.Store{}, pubs: map[string]*memPub{},
		dead: map[string]bool{}, trace: filepath.Join(dir, "trace")}
	svc := shService(t, dir, strings.ReplaceAll(body, "$TRACE", rs.trace), count)
	rule := &ProgressRule{Regex: `^progress (?P<current>\d+)$`}
	rule.re = regexp.MustCompile(rule.Regex)
	svc.Progress = []*ProgressRule{rule}
	for _, id := range ids {
		st, err := redisstore.Open(context.Background(), url, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		pub := &memPub{}
		m, err := New(context.Background(), Config{Services: []*Service{svc}, Store: st, Events: pub, Dir: filepath.Join(dir, id),
			// The watchdog (which also sweeps lost replicas) is slow enough
			// not to take an exit seen late on a busy machine for a vanished
			// process.
			StopGrace: 500 * time.Millisecond, Watchdog: 250 * time.Millisecond, LogFlush: 20 * time.Millisecond,
			ClaimEvery: 50 * time.Millisecond, Replica: id, LiveReplicas: rs.live, Remote: rs}, zerolog.Nop())
		if err != nil {
			t.Fatal(err)
		}
		rs.mgrs[id], rs.sts[id], rs.pubs[id] = m, st, pub
		m.Start()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = m.Close(ctx)
			st.Close()
		})
	}
	return rs
}

// live is Config.LiveReplicas: every replica not killed.
func (rs *replicas) live(context.Context) (map[string]string, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	out := map[string]string{}
	for id := range rs.mgrs {
		if !rs.dead[id] {
			out[id] = ""
		}
	}
	return out, nil
}

// kill makes replica id dead for the others: its lease is gone and its
// store connection closed (its process-level kill -9 is the integration
// test's).
func (rs *replicas) kill(id string) {
	rs.lapse(id)
	rs.sts[id].Close()
}

// lapse makes replica id's lease run out while it lives on.
func (rs *replicas) lapse(id string) {
	rs.mu.Lock()
	rs.dead[id] = true
	rs.mu.Unlock()
}

func (rs *replicas) to(replica string) (*Manager, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if m := rs.mgrs[replica]; m != nil && !rs.dead[replica] {
		return m, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrReplicaGone, replica)
}

func (rs *replicas) ReadLog(ctx context.Context, replica, id string, offset, limit int64) (LogChunk, error) {
	m, err := rs.to(replica)
	if err != nil {
		return LogChunk{}, err
	}
	return m.ReadLog(ctx, id, offset, limit)
}

func (rs *replicas) Stop(ctx context.Context, replica, id, who string) (Job, error) {
	m, err := rs.to(replica)
	if err != nil {
		return Job{}, err
	}
	return m.Stop(ctx, id, who)
}

func (rs *replicas) Remove(ctx context.Context, replica, id string) error {
	m, err := rs.to(replica)
	if err != nil {
		return err
	}
	return m.Remove(ctx, id)
}

// other returns a replica other than not.
func (rs *replicas) other(not ...string) string {
	ids := []string{}
	for id := range rs.mgrs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		skip := false
		for _, n := range not {
			skip = skip || n == id
		}
		if !skip {
			return id
		}
	}
	rs.t.Fatalf("no replica other than %v", not)
	return ""
}

// waitJob waits until job id, as m reads it, satisfies cond.
func waitJob(t *testing.T, m *Manager, id, what string, cond func(Job) bool) Job {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		j, err := m.Get(context.Background(), id)
		if err == nil && cond(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: %+v %v; want %s", id, j, err, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isState(st string) func(Job) bool { return func(j Job) bool { return j.State == st } }

// TestSharedQueueEachJobOnceWithinTheGlobalLimit: 12 jobs submitted
// round-robin on three replicas of a service limited to 2 at once: each
// runs exactly once, on one replica, and never more than 2 run at once
// across the three (the jobs' own trace says so).
func TestSharedQueueEachJobOnceWithinTheGlobalLimit(t *testing.T) {
	rs := startReplicas(t, `echo "start $WSGW_JOB_ID" >> $TRACE
echo "hello $WSGW_JOB_ID"
sleep 0.2
echo "end $WSGW_JOB_ID" >> $TRACE
`, 2, "A", "B", "C")
	names := []string{"A", "B", "C"}
	var ids []string
	for i := 0; i < 12; i++ {
		j, err := rs.mgrs[names[i%3]].Submit(context.Background(), "s", "ann", nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, j.ID)
	}
	if len(map[string]bool{ids[0]: true, ids[1]: true, ids[2]: true}) != 3 {
		t.Fatalf("job ids %v are not unique across replicas", ids)
	}
	ran := map[string]int{}
	for i, id := range ids {
		reader := rs.mgrs[names[(i+1)%3]]
		j := waitJob(t, reader, id, "succeeded", isState(StateSucceeded))
		if j.Replica == "" || rs.mgrs[j.Replica] == nil {
			t.Fatalf("job %s ran on %q", id, j.Replica)
		}
		ran[j.Replica]++
		// The log, read from a replica that may not have run it.
		other := rs.mgrs[rs.other(j.Replica)]
		c, err := other.ReadLog(context.Background(), id, 0, 0)
		if err != nil || c.Data != "hello "+id+"\n" || !c.Complete {
			t.Fatalf("log of %s (run on %s) read elsewhere: %+v %v", id, j.Replica, c, err)
		}
		// Its size, elsewhere: Get asks the replica that ran it; List,
		// which would ask once per job, says it does not know.
		if g, err := other.Get(context.Background(), id); err != nil || g.LogSize == nil || *g.LogSize != int64(len(c.Data)) {
			t.Fatalf("log size of %s got elsewhere: %v (log is %d bytes) %v", id, g.LogSize, len(c.Data), err)
		}
		if g, err := rs.mgrs[j.Replica].Get(context.Background(), id); err != nil || g.LogSize == nil || *g.LogSize != int64(len(c.Data)) {
			t.Fatalf("log size of %s got on its replica: %v %v", id, g.LogSize, err)
		}
		l, err := other.List(context.Background(), Filter{})
		if err != nil {
			t.Fatal(err)
		}
		for _, lj := range l {
			if lj.ID == id && lj.LogSize != nil {
				t.Fatalf("jobs.list elsewhere gives %s's log size as %d without asking", id, *lj.LogSize)
			}
		}
	}
	b, err := os.ReadFile(rs.trace)
	if err != nil {
		t.Fatal(err)
	}
	starts, ends := map[string]int{}, map[string]int{}
	running, most := 0, 0
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		what, id, _ := strings.Cut(l, " ")
		switch what {
		case "start":
			starts[id]++
			running++
		case "end":
			ends[id]++
			running--
		}
		most = max(most, running)
	}
	for _, id := range ids {
		if starts[id] != 1 || ends[id] != 1 {
			t.Fatalf("job %s started %d and ended %d times", id, starts[id], ends[id])
		}
	}
	if most > 2 || most < 1 {
		t.Fatalf("%d jobs ran at once across the replicas, limit 2", most)
	}
	if q := rs.mgrs["A"].Queue(); len(q) != 0 {
		t.Fatalf("queue at the end %+v", q)
	}
	t.Logf("jobs per replica: %v", ran)
}

// TestSharedStopMoveRemoveAcrossReplicas: a job running on one replica
// is stopped, its log read and then removed from another; the queue is
// reordered and a queued job stopped from any replica.
func TestSharedStopMoveRemoveAcrossReplicas(t *testing.T) {
	rs := startReplicas(t, `echo "start $WSGW_JOB_ID"
trap 'echo "term $WSGW_JOB_ID"; exit 143' TERM
sleep 30 &
wait
`, 1, "A", "B")
	ctx := context.Background()
	first, err := rs.mgrs["A"].Submit(ctx, "s", "ann", nil)
	if err != nil {
		t.Fatal(err)
	}
	j1 := waitJob(t, rs.mgrs["B"], first.ID, "running", isState(StateRunning))
	owner, other := j1.Replica, rs.other(j1.Replica)
	j2, _ := rs.mgrs[other].Submit(ctx, "s", "ann", nil)
	j3, _ := rs.mgrs[owner].Submit(ctx, "s", "ann", nil)
	j4, _ := rs.mgrs[other].Submit(ctx, "s", "ann", nil)
	if j2.State != StateQueued || j3.QueuePosition != 2 {
		t.Fatalf("queued jobs %+v %+v", j2, j3)
	}
	q, err := rs.mgrs[other].Move(j4.ID, 1)
	if err != nil || len(q) != 3 || q[0].ID != j4.ID || q[1].ID != j2.ID || q[2].ID != j3.ID || q[0].QueuePosition != 1 {
		t.Fatalf("move on %s: %+v %v", other, q, err)
	}
	if _, err := rs.mgrs[owner].Move(first.ID, 1); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("moving a running job: %v", err)
	}
	if s, err := rs.mgrs[owner].Stop(ctx, j2.ID, "bob"); err != nil || s.State != StateStopped || s.Reason != "stopped by bob while queued" {
		t.Fatalf("stop of a queued job: %+v %v", s, err)
	}
	waitLog := func(m *Manager, id, want string) {
		waitJob(t, m, id, "a log with "+want, func(Job) bool {
			c, err := m.ReadLog(ctx, id, 0, 0)
			return err == nil && strings.Contains(c.Data, want)
		})
	}
	waitLog(rs.mgrs[other], first.ID, "start "+first.ID)
	s, err := rs.mgrs[other].Stop(ctx, first.ID, "bob")
	if err != nil || s.State != StateStopped || s.Reason != "stopped by bob" || s.Replica != owner {
		t.Fatalf("stop on %s of a job running on %s: %+v %v", other, owner, s, err)
	}
	waitLog(rs.mgrs[other], first.ID, "term "+first.ID)
	// The next in the queue (j4, moved first) runs.
	j := waitJob(t, rs.mgrs[owner], j4.ID, "running", isState(StateRunning))
	if got, _ := rs.mgrs[owner].Get(ctx, j3.ID); got.State != StateQueued || got.QueuePosition != 1 {
		t.Fatalf("j3 %+v", got)
	}
	if err := rs.mgrs[rs.other(j.Replica)].Remove(ctx, j4.ID); !errors.Is(err, ErrNotFinished) {
		t.Fatalf("remove of a running job: %v", err)
	}
	logFile := filepath.Join(rs.mgrs[owner].cfg.Dir, first.ID+".log")
	if _, err := os.Stat(logFile); err != nil {
		t.Fatalf("the log on the owner: %v", err)
	}
	if err := rs.mgrs[other].Remove(ctx, first.ID); err != nil {
		t.Fatalf("remove on %s: %v", other, err)
	}
	if _, err := os.Stat(logFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the owner's log after a remove elsewhere: %v", err)
	}
	if _, err := rs.mgrs[owner].Get(ctx, first.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed job: %v", err)
	}
	for _, id := range []string{j4.ID, j3.ID} {
		if _, err := rs.mgrs["A"].Stop(ctx, id, "cleanup"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSharedLostReplicaJobsInterruptedOnce: the replica running a job
// dies: one of the two others marks it interrupted (one event, the
// reason naming the lost replica), the dead one's later end does not
// overwrite it, and the queued job runs on a survivor.
func TestSharedLostReplicaJobsInterruptedOnce(t *testing.T) {
	rs := startReplicas(t, `echo "start $WSGW_JOB_ID"
if [ "$WSGW_JOB_ID" = job-1 ]; then sleep 30 & wait; fi
`, 1, "A", "B", "C")
	ctx := context.Background()
	first, err := rs.mgrs["A"].Submit(ctx, "s", "ann", nil)
	if err != nil || first.ID != "job-1" {
		t.Fatalf("submit %+v %v", first, err)
	}
	j1 := waitJob(t, rs.mgrs["A"], first.ID, "running", isState(StateRunning))
	dead := j1.Replica
	survivor := rs.other(dead)
	next, _ := rs.mgrs[survivor].Submit(ctx, "s", "ann", nil)
	if next.State != StateQueued {
		t.Fatalf("second job %+v", next)
	}
	rs.kill(dead)
	j := waitJob(t, rs.mgrs[survivor], first.ID, "interrupted", isState(StateInterrupted))
	if !strings.Contains(j.Reason, "replica "+dead+" ") || !strings.Contains(j.Reason, "lost") {
		t.Fatalf("reason %q", j.Reason)
	}
	n := waitJob(t, rs.mgrs[survivor], next.ID, "succeeded", isState(StateSucceeded))
	if n.Replica == dead {
		t.Fatalf("the queued job ran on the dead replica %s", dead)
	}
	// The dead replica's own end (its shutdown here) changes nothing.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = rs.mgrs[dead].Close(cctx)
	interrupted := 0
	for id, pub := range rs.pubs {
		if id == dead {
			continue
		}
		for _, st := range pub.states(first.ID) {
			if st == StateInterrupted {
				interrupted++
			}
		}
	}
	if interrupted != 1 {
		t.Fatalf("%d interrupted events from the survivors, want 1", interrupted)
	}
	got, _ := rs.mgrs[survivor].Get(ctx, first.ID)
	if got.Reason != j.Reason || got.State != StateInterrupted {
		t.Fatalf("after the dead replica's end: %+v", got)
	}
	// Its log is on the dead replica's disk: its size is unknown, not 0.
	if got.LogSize != nil {
		t.Fatalf("log size %d of a job whose replica is gone", *got.LogSize)
	}
}

// TestSharedRestartInterruptsOwnJobsOnly: a replica restarting under the
// same id marks its own running jobs interrupted, not the others', and
// leaves the queue alone.
func TestSharedRestartInterruptsOwnJobsOnly(t *testing.T) {
	srv := redistest.Need(t)
	st, err := redisstore.Open(context.Background(), srv.URL(0)+"?prefix="+redistest.Prefix(t), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if _, err := st.EnqueueJob(ctx, store.Job{Service: "s", Created: time.Now()}, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, rep := range []string{"A", "B"} {
		if _, err := st.ClaimJob(ctx, rep, map[string]int{"s": 2}, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	pub := &memPub{}
	dir := t.TempDir()
	m, err := New(ctx, Config{Services: []*Service{shService(t, dir, "exit 0\n", 1)}, Store: st, Events: pub, Dir: dir, Replica: "A"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(ctx)
	tests := []struct{ id, state string }{{"job-1", StateInterrupted}, {"job-2", StateStarting}, {"job-3", StateQueued}}
	for _, tt := range tests {
		j, err := m.Get(ctx, tt.id)
		if err != nil || j.State != tt.state {
			t.Errorf("%s: %+v %v, want %s", tt.id, j, err, tt.state)
		}
	}
	if got := pub.states("job-1"); len(got) != 1 || got[0] != StateInterrupted {
		t.Fatalf("events of job-1 %v", got)
	}
}

// TestSharedLapsedReplicaStopsTheJobTakenFromIt: a replica whose lease
// ran out while it lived on has its job interrupted by another; its next
// save of the job is refused, so it stops the job's process and
// announces nothing more of it.
func TestSharedLapsedReplicaStopsTheJobTakenFromIt(t *testing.T) {
	goFile := filepath.Join(t.TempDir(), "go")
	rs := startReplicas(t, `echo "start $WSGW_JOB_ID"
while [ ! -e `+goFile+` ]; do sleep 0.05; done
echo "progress 1"
sleep 30 &
wait
`, 1, "A", "B")
	ctx := context.Background()
	first, err := rs.mgrs["A"].Submit(ctx, "s", "ann", nil)
	if err != nil {
		t.Fatal(err)
	}
	j := waitJob(t, rs.mgrs["A"], first.ID, "running", isState(StateRunning))
	lapsed, survivor := j.Replica, rs.other(j.Replica)
	m := rs.mgrs[lapsed]
	rs.lapse(lapsed)
	taken := waitJob(t, rs.mgrs[survivor], first.ID, "interrupted", isState(StateInterrupted))
	before := len(rs.pubs[lapsed].states(first.ID))
	if err := os.WriteFile(goFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		m.mu.Lock()
		_, running := m.running[first.ID]
		m.mu.Unlock()
		if !running {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lapsed replica still runs %s", first.ID)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if j.PID <= 0 || m.alive(j.PID) {
		t.Fatalf("the job's process %d is still alive", j.PID)
	}
	if after := rs.pubs[lapsed].states(first.ID); len(after) != before {
		t.Fatalf("the lapsed replica announced %v after the job was taken from it", after[before:])
	}
	got, err := rs.mgrs[survivor].Get(ctx, first.ID)
	if err != nil || got.State != StateInterrupted || got.Reason != taken.Reason {
		t.Fatalf("the record after the lapsed replica's end: %+v %v", got, err)
	}
}

// failingEnds fails the saves of jobs' ends while fail is set.
type failingEnds struct {
	store.Store
	mu     sync.Mutex
	fail   bool
	failed int
}

func (f *failingEnds) UpdateJob(ctx context.Context, j store.Job, final bool) (bool, error) {
	f.mu.Lock()
	if final && f.fail {
		f.failed++
		f.mu.Unlock()
		return false, errors.New("redis away")
	}
	f.mu.Unlock()
	return f.Store.UpdateJob(ctx, j, final)
}

// TestSharedEndSavedWhenTheStoreComesBack: a job's end that could not be
// saved is saved again by the watchdog, which gives its place back: the
// next job starts.
func TestSharedEndSavedWhenTheStoreComesBack(t *testing.T) {
	srv := redistest.Need(t)
	rst, err := redisstore.Open(context.Background(), srv.URL(0)+"?prefix="+redistest.Prefix(t), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer rst.Close()
	st := &failingEnds{Store: rst, fail: true}
	dir := t.TempDir()
	ctx := context.Background()
	m, err := New(ctx, Config{Services: []*Service{shService(t, dir, "echo hi\n", 1)}, Store: st, Events: &memPub{}, Dir: dir,
		Watchdog: 250 * time.Millisecond, ClaimEvery: 50 * time.Millisecond, Replica: "A"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	m.Start()
	defer m.Close(ctx)
	first, _ := m.Submit(ctx, "s", "", nil)
	second, _ := m.Submit(ctx, "s", "", nil)
	waitJob(t, m, first.ID, "ended (as this replica sees it)", isState(StateSucceeded))
	deadline := time.Now().Add(10 * time.Second)
	for {
		st.mu.Lock()
		failed := st.failed
		st.mu.Unlock()
		if failed >= 2 { // the end, and a retry
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the end was not saved again (%d tries)", failed)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if j, _ := rst.GetJob(ctx, second.ID); j.State != StateQueued {
		t.Fatalf("the second job started while the first's place was taken: %+v", j)
	}
	st.mu.Lock()
	st.fail = false
	st.mu.Unlock()
	waitJob(t, m, second.ID, "succeeded", isState(StateSucceeded))
	if j, _ := rst.GetJob(ctx, first.ID); j.State != StateSucceeded {
		t.Fatalf("the first job's end in the store: %+v", j)
	}
}
