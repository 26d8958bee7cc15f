// Package storetest is the contract every store.Store passes: the SQLite
// store and the Redis store run the same tests.
package storetest

import (
	"context"
	"errors"
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
