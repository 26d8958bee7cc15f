// Package storetest is the contract every store.Store passes: the SQLite
// store and the Redis store run the same tests.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"wsgateway/store"
)

// Run runs the contract against stores open returns (a new, empty one
// per call).
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Run("JobsAndQueue", func(t *testing.T) { jobsAndQueue(t, open(t)) })
	t.Run("JobFilters", func(t *testing.T) { jobFilters(t, open(t)) })
	t.Run("EventsSequenceAndPrune", func(t *testing.T) { eventsSequenceAndPrune(t, open(t)) })
	t.Run("EventsEmpty", func(t *testing.T) { eventsEmpty(t, open(t)) })
	t.Run("Reservations", func(t *testing.T) { reservations(t, open(t)) })
	t.Run("JobQueue", func(t *testing.T) { jobQueue(t, open(t)) })
	t.Run("JobQueueMoves", func(t *testing.T) { jobQueueMoves(t, open(t)) })
}

// ids lists the ids of js in order.
func ids(js []store.Job) []string {
	out := []string{}
	for _, j := range js {
		out = append(out, j.ID)
	}
	return out
}

func queued(t *testing.T, s store.Store) []store.Job {
	t.Helper()
	q, err := s.ListJobs(context.Background(), store.JobFilter{States: []string{"queued"}})
	if err != nil {
		t.Fatal(err)
	}
	for i, j := range q {
		if j.QueuePos != int64(i+1) {
			t.Fatalf("queue %v: %s at position %d, want %d", ids(q), j.ID, j.QueuePos, i+1)
		}
	}
	return q
}

func enqueue(t *testing.T, s store.Store, svc string, max int) (store.Job, error) {
	t.Helper()
	return s.EnqueueJob(context.Background(), store.Job{Service: svc, Owner: "ann", Params: `{"a":1}`, Argv: `["x"]`,
		State: "ignored", Replica: "ignored", Created: time.Now().UTC()}, max)
}

// jobQueue: numbering, the queue's limit, claims within the services'
// limits in queue order, saves by the claiming replica only, ends that
// free a place, a dead replica's jobs interrupted once.
func jobQueue(t *testing.T, s store.Store) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	for i, svc := range []string{"x", "y", "x", "x"} {
		j, err := enqueue(t, s, svc, 4)
		want := fmt.Sprintf("job-%d", i+1)
		if err != nil || j.ID != want || j.Num != int64(i+1) || j.State != "queued" || j.Replica != "" || j.QueuePos != int64(i+1) || j.Params != `{"a":1}` {
			t.Fatalf("enqueue %d: %+v %v", i, j, err)
		}
	}
	if _, err := enqueue(t, s, "x", 4); !errors.Is(err, store.ErrQueueFull) {
		t.Fatalf("a fifth job in a queue of 4: %v", err)
	}
	if q := queued(t, s); fmt.Sprint(ids(q)) != "[job-1 job-2 job-3 job-4]" {
		t.Fatalf("queue %v", ids(q))
	}
	// x may run one at a time; y is not this replica's (not in limits).
	j, err := s.ClaimJob(ctx, "r1", map[string]int{"x": 1}, now)
	if err != nil || j.ID != "job-1" || j.State != "starting" || j.Replica != "r1" || !j.Started.Equal(now) || j.QueuePos != 0 {
		t.Fatalf("claim: %+v %v", j, err)
	}
	if got, _ := s.GetJob(ctx, "job-1"); got.State != "starting" || got.Replica != "r1" || got.QueuePos != 0 {
		t.Fatalf("claimed job as stored: %+v", got)
	}
	if j, err := s.ClaimJob(ctx, "r2", map[string]int{"x": 1}, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a second x beyond its limit: %+v %v", j, err)
	}
	if j, err := s.ClaimJob(ctx, "r2", map[string]int{"x": 1, "y": 1}, now); err != nil || j.ID != "job-2" || j.Replica != "r2" {
		t.Fatalf("claim of y past the full x: %+v %v", j, err)
	}
	if q := queued(t, s); fmt.Sprint(ids(q)) != "[job-3 job-4]" {
		t.Fatalf("queue after claims %v", ids(q))
	}
	if reps, err := s.JobReplicas(ctx); err != nil || fmt.Sprint(reps) != "[r1 r2]" {
		t.Fatalf("job replicas %v %v", reps, err)
	}
	// Only the claiming replica saves; an end frees the place, once.
	j1, _ := s.GetJob(ctx, "job-1")
	j1.State, j1.PID = "running", 42
	other := j1
	other.Replica = "r2"
	if ok, err := s.UpdateJob(ctx, other, false); err != nil || ok {
		t.Fatalf("a save by another replica: %v %v", ok, err)
	}
	if ok, err := s.UpdateJob(ctx, j1, false); err != nil || !ok {
		t.Fatalf("a save by the claimer: %v %v", ok, err)
	}
	if got, _ := s.GetJob(ctx, "job-1"); got.State != "running" || got.PID != 42 {
		t.Fatalf("saved %+v", got)
	}
	if _, err := s.ClaimJob(ctx, "r2", map[string]int{"x": 1}, now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("x claimed while job-1 runs: %v", err)
	}
	exit := 0
	j1.State, j1.Exit, j1.Finished = "succeeded", &exit, now
	if ok, err := s.UpdateJob(ctx, j1, true); err != nil || !ok {
		t.Fatalf("the end: %v %v", ok, err)
	}
	j1.State = "running"
	if ok, _ := s.UpdateJob(ctx, j1, false); ok {
		t.Fatal("a finished job saved again as running")
	}
	if got, _ := s.GetJob(ctx, "job-1"); got.State != "succeeded" || got.Exit == nil || *got.Exit != 0 {
		t.Fatalf("finished %+v", got)
	}
	if j, err := s.ClaimJob(ctx, "r1", map[string]int{"x": 1}, now); err != nil || j.ID != "job-3" {
		t.Fatalf("claim after the end: %+v %v", j, err)
	}
	// r2 is lost: its job is interrupted once, and y's place is free.
	got, err := s.InterruptJobsOf(ctx, "r2", "replica r2 was lost", now)
	if err != nil || fmt.Sprint(ids(got)) != "[job-2]" || got[0].State != "interrupted" || got[0].Reason != "replica r2 was lost" || !got[0].Finished.Equal(now) {
		t.Fatalf("interrupt r2: %+v %v", got, err)
	}
	if again, err := s.InterruptJobsOf(ctx, "r2", "again", now); err != nil || len(again) != 0 {
		t.Fatalf("interrupt r2 twice: %+v %v", again, err)
	}
	if j2, _ := s.GetJob(ctx, "job-2"); j2.State != "interrupted" || j2.Reason != "replica r2 was lost" {
		t.Fatalf("job-2 %+v", j2)
	}
	if reps, _ := s.JobReplicas(ctx); fmt.Sprint(reps) != "[r1]" {
		t.Fatalf("job replicas after r2's loss %v", reps)
	}
	if _, err := enqueue(t, s, "y", 0); err != nil {
		t.Fatal(err)
	}
	if j, err := s.ClaimJob(ctx, "r1", map[string]int{"y": 1}, now); err != nil || j.Service != "y" || j.Num != 5 {
		t.Fatalf("y after r2's loss: %+v %v", j, err)
	}
	// A queued job leaves the queue stopped, once.
	st, err := s.DequeueJob(ctx, "job-4", "stopped", "stopped by ann while queued", now)
	if err != nil || st.State != "stopped" || st.Reason != "stopped by ann while queued" || !st.Finished.Equal(now) || st.QueuePos != 0 {
		t.Fatalf("dequeue: %+v %v", st, err)
	}
	if _, err := s.DequeueJob(ctx, "job-4", "stopped", "again", now); !errors.Is(err, store.ErrNotQueued) {
		t.Fatalf("dequeue twice: %v", err)
	}
	if _, err := s.DequeueJob(ctx, "job-3", "stopped", "running", now); !errors.Is(err, store.ErrNotQueued) {
		t.Fatalf("dequeue of a running job: %v", err)
	}
	if q := queued(t, s); len(q) != 0 {
		t.Fatalf("queue at the end %v", ids(q))
	}
	// Job numbers go on after a removal of the newest.
	if err := s.DeleteJob(ctx, "job-5"); err != nil {
		t.Fatal(err)
	}
	if j, err := enqueue(t, s, "y", 0); err != nil || j.Num <= 4 {
		t.Fatalf("a job after a delete: %+v %v", j, err)
	}
}

// jobQueueMoves: positions are clamped, unknown and running jobs are not
// queued, and the queue stays numbered 1..n.
func jobQueueMoves(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i := 0; i < 4; i++ {
		if _, err := enqueue(t, s, "x", 0); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		id   string
		pos  int
		want string
	}{
		{"job-4", 1, "[job-4 job-1 job-2 job-3]"},
		{"job-4", 0, "[job-4 job-1 job-2 job-3]"},
		{"job-4", 2, "[job-1 job-4 job-2 job-3]"},
		{"job-1", 4, "[job-4 job-2 job-3 job-1]"},
		{"job-2", 99, "[job-4 job-3 job-1 job-2]"},
		{"job-3", 3, "[job-4 job-1 job-3 job-2]"},
	}
	for _, tt := range tests {
		got, err := s.MoveJob(ctx, tt.id, tt.pos)
		if err != nil || fmt.Sprint(got) != tt.want {
			t.Fatalf("move %s to %d: %v %v, want %s", tt.id, tt.pos, got, err, tt.want)
		}
		if q := queued(t, s); fmt.Sprint(ids(q)) != tt.want {
			t.Fatalf("move %s to %d: stored queue %v", tt.id, tt.pos, ids(q))
		}
	}
	if _, err := s.MoveJob(ctx, "job-9", 1); !errors.Is(err, store.ErrNotQueued) {
		t.Fatalf("move of an unknown job: %v", err)
	}
	if _, err := s.ClaimJob(ctx, "r1", map[string]int{"x": 1}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MoveJob(ctx, "job-4", 2); !errors.Is(err, store.ErrNotQueued) {
		t.Fatalf("move of a claimed job: %v", err)
	}
	if q := queued(t, s); fmt.Sprint(ids(q)) != "[job-1 job-3 job-2]" {
		t.Fatalf("queue after the claim %v", ids(q))
	}
}

func jobsAndQueue(t *testing.T, s store.Store) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	if n, err := s.MaxJobNum(ctx); err != nil || n != 0 {
		t.Fatalf("max num of none %d %v", n, err)
	}
	for i, id := range []string{"a", "b", "c"} {
		if err := s.SaveJob(ctx, store.Job{ID: id, Num: int64(i + 1), Service: "x", State: "queued", QueuePos: int64(i + 1), Created: now}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetQueue(ctx, []string{"c", "a", "b"}); err != nil {
		t.Fatal(err)
	}
	q, err := s.ListJobs(ctx, store.JobFilter{States: []string{"queued"}})
	if err != nil || len(q) != 3 || q[0].ID != "c" || q[1].ID != "a" || q[2].ID != "b" {
		t.Fatalf("queue %+v %v", q, err)
	}
	if q[0].QueuePos != 1 || q[2].QueuePos != 3 {
		t.Fatalf("queue positions %d %d", q[0].QueuePos, q[2].QueuePos)
	}
	exit := 3
	j := q[0]
	j.State, j.Exit, j.Finished, j.Params = "failed", &exit, now, `{"k":"v"}`
	if err := s.SaveJob(ctx, j); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetJob(ctx, "c")
	if err != nil || got.Exit == nil || *got.Exit != 3 || !got.Finished.Equal(now) || !got.Created.Equal(now) || got.Params != `{"k":"v"}` || got.State != "failed" {
		t.Fatalf("get %+v %v", got, err)
	}
	if n, _ := s.MaxJobNum(ctx); n != 3 {
		t.Fatalf("max num %d", n)
	}
	if err := s.DeleteJob(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetJob(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted job: %v", err)
	}
	if err := s.DeleteJob(ctx, "c"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if n, _ := s.MaxJobNum(ctx); n != 2 {
		t.Fatalf("max num after delete %d", n)
	}
}

func jobFilters(t *testing.T, s store.Store) {
	ctx := context.Background()
	ann, bob := "ann", "bob"
	for i, j := range []store.Job{
		{ID: "1", Service: "x", Owner: ann, State: "done"},
		{ID: "2", Service: "y", Owner: bob, State: "running"},
		{ID: "3", Service: "x", Owner: bob, State: "done"},
		{ID: "4", Service: "x", Owner: ann, State: "queued"},
	} {
		j.Num = int64(i + 1)
		j.Created = time.Now().UTC()
		if err := s.SaveJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	ids := func(js []store.Job) string {
		out := ""
		for _, j := range js {
			out += j.ID
		}
		return out
	}
	tests := []struct {
		name string
		f    store.JobFilter
		want string
	}{
		{"all newest first", store.JobFilter{}, "4321"},
		{"state", store.JobFilter{States: []string{"done"}}, "31"},
		{"states", store.JobFilter{States: []string{"done", "running"}}, "321"},
		{"service", store.JobFilter{Service: "x"}, "431"},
		{"owner", store.JobFilter{Owner: &bob}, "32"},
		{"all three", store.JobFilter{States: []string{"done"}, Service: "x", Owner: &ann}, "1"},
		{"limit", store.JobFilter{Limit: 2}, "43"},
		{"limit one", store.JobFilter{Limit: 1}, "4"},
		{"none", store.JobFilter{Service: "z"}, ""},
	}
	for _, tt := range tests {
		got, err := s.ListJobs(ctx, tt.f)
		if err != nil || ids(got) != tt.want {
			t.Errorf("%s: %q %v, want %q", tt.name, ids(got), err, tt.want)
		}
	}
}

func eventsSequenceAndPrune(t *testing.T, s store.Store) {
	ctx := context.Background()
	for i := 1; i <= 20; i++ {
		e, err := s.AppendEvent(ctx, "job.state", "ann", []byte(`{"i":1}`))
		if err != nil || e.Seq != int64(i) {
			t.Fatalf("event %d: seq %d %v", i, e.Seq, err)
		}
	}
	if lo, hi, err := s.EventBounds(ctx); err != nil || lo != 1 || hi != 20 {
		t.Fatalf("bounds %d %d %v", lo, hi, err)
	}
	if err := s.PruneEvents(ctx, 5); err != nil {
		t.Fatal(err)
	}
	lo, hi, err := s.EventBounds(ctx)
	if err != nil || lo != 16 || hi != 20 {
		t.Fatalf("bounds %d %d %v", lo, hi, err)
	}
	evs, err := s.EventsSince(ctx, 17, 10)
	if err != nil || len(evs) != 3 || evs[0].Seq != 18 || evs[2].Seq != 20 {
		t.Fatalf("since 17: %+v %v", evs, err)
	}
	if evs[0].Topic != "job.state" || evs[0].Owner != "ann" || string(evs[0].Data) != `{"i":1}` || evs[0].Time.IsZero() {
		t.Fatalf("event %+v", evs[0])
	}
	if evs, _ := s.EventsSince(ctx, 0, 2); len(evs) != 2 || evs[0].Seq != 16 || evs[1].Seq != 17 {
		t.Fatalf("since 0 limit 2: %+v", evs)
	}
	if evs, _ := s.EventsSince(ctx, 20, 10); len(evs) != 0 {
		t.Fatalf("since the last: %+v", evs)
	}
	// Sequence numbers continue after a prune, never restart.
	if err := s.PruneEvents(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if lo, hi, _ := s.EventBounds(ctx); lo != 20 || hi != 20 {
		t.Fatalf("bounds after prune to none: %d %d", lo, hi)
	}
	e, _ := s.AppendEvent(ctx, "x", "", []byte(`1`))
	if e.Seq != 21 {
		t.Fatalf("seq after prune %d", e.Seq)
	}
}

func eventsEmpty(t *testing.T, s store.Store) {
	ctx := context.Background()
	if lo, hi, err := s.EventBounds(ctx); err != nil || lo != 0 || hi != 0 {
		t.Fatalf("bounds of none %d %d %v", lo, hi, err)
	}
	if evs, err := s.EventsSince(ctx, 0, 0); err != nil || len(evs) != 0 {
		t.Fatalf("events of none %+v %v", evs, err)
	}
}

func reservations(t *testing.T, s store.Store) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	a := store.Reservation{Token: "tok-a", Service: "svc", Index: 2, Owner: "ann", Options: map[string]string{"geometry": "800x600"},
		State: "reserved", Created: now, Expires: now.Add(time.Minute)}
	b := store.Reservation{Token: "tok-b", Service: "svc", Index: 0, State: "running", Created: now.Add(time.Second), Expires: now.Add(2 * time.Minute)}
	for _, r := range []store.Reservation{b, a} {
		if err := s.SaveReservation(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	a.State = "claimed"
	if err := s.SaveReservation(ctx, a); err != nil {
		t.Fatal(err)
	}
	rs, err := s.ListReservations(ctx)
	if err != nil || len(rs) != 2 {
		t.Fatalf("list %+v %v", rs, err)
	}
	got := rs[0]
	if got.Token != "tok-a" || got.Index != 2 || got.Owner != "ann" || got.Options["geometry"] != "800x600" || got.State != "claimed" ||
		!got.Created.Equal(now) || !got.Expires.Equal(a.Expires) || got.Service != "svc" {
		t.Fatalf("first %+v", got)
	}
	if rs[1].Token != "tok-b" || len(rs[1].Options) != 0 {
		t.Fatalf("second %+v", rs[1])
	}
	if err := s.DeleteReservation(ctx, "tok-a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteReservation(ctx, "tok-unknown"); err != nil {
		t.Fatalf("deleting an unknown token: %v", err)
	}
	if rs, _ := s.ListReservations(ctx); len(rs) != 1 || rs[0].Token != "tok-b" {
		t.Fatalf("after delete %+v", rs)
	}
}
