package session

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"wsgateway/reservation"
)

type waitOutcome struct {
	r   reservation.Reservation
	err error
}

// startWaiter queues a ReserveWait of owner for service and returns where
// its outcome arrives; it returns once the waiter is in the queue (the
// queue then holds n waiters).
func startWaiter(t *testing.T, ctx context.Context, m *Manager, service, owner string, perUser, n int) <-chan waitOutcome {
	t.Helper()
	ch := make(chan waitOutcome, 1)
	go func() {
		r, err := m.ReserveWait(ctx, service, owner, perUser, 100, nil)
		ch <- waitOutcome{r, err}
	}()
	eventually(t, fmt.Sprintf("%d waiting for %s", n, service), func() bool { return m.Waiting()[service] == n })
	return ch
}

func outcome(t *testing.T, ch <-chan waitOutcome) waitOutcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(waitLimit):
		t.Fatal("ReserveWait did not return")
		return waitOutcome{}
	}
}

func TestReserveWaitIsFIFO(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"s": 1})
	first := mustReserve(t, m, "s")
	const n = 5
	got := make(chan string, n)
	var wg sync.WaitGroup
	ctx := bg(t)
	for i := 0; i < n; i++ {
		// Start the waiters one after another so their order is known.
		wg.Add(1)
		owner := string(rune('a' + i))
		go func() {
			defer wg.Done()
			r, err := m.ReserveWait(ctx, "s", owner, 0, 100, nil)
			if err != nil {
				t.Error(err)
				return
			}
			got <- r.Owner
			if _, err := m.Release(ctx, r.Token, 0, ""); err != nil { // let the next one in
				t.Error(err)
			}
		}()
		eventually(t, "waiter queued", func() bool { return m.Waiting()["s"] == i+1 })
	}
	_, err := m.Reserve("s", nil)
	wantErr(t, "a new reservation while others wait", err, reservation.ErrNoSlot)
	if !strings.Contains(err.Error(), "waiting") {
		t.Errorf("error %q does not say others are waiting", err)
	}
	if _, err := m.Release(ctx, first.Token, 0, ""); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(got)
	var order string
	for o := range got {
		order += o
	}
	if order != "abcde" {
		t.Fatalf("granted in order %q, want abcde", order)
	}
	if w := m.Waiting(); len(w) != 0 {
		t.Errorf("Waiting = %v after every waiter was served, want empty", w)
	}
}

func TestReserveWaitTakesAFreeSlotAtOnce(t *testing.T) {
	m, _, rec := newManager(t, map[string]int{"s": 1})
	r, err := m.ReserveWait(bg(t), "s", "ann", 0, 0, map[string]string{"k": "v"})
	if err != nil || r.Owner != "ann" || r.Options["k"] != "v" {
		t.Fatalf("ReserveWait with a free slot = %+v, %v", r, err)
	}
	// The reservation is recorded before ReserveWait returns.
	if got := rec.of(r.Token, "save"); fmt.Sprint(got) != "[save reserved]" {
		t.Errorf("recorded %v before returning, want the reservation", got)
	}
	if q := rec.queueEvents(); len(q) != 0 {
		t.Errorf("queue events %v for a reservation that did not wait", q)
	}
	// Errors other than a full service are returned at once.
	_, err = m.ReserveWait(bg(t), "nope", "", 0, 10, nil)
	wantErr(t, "unknown service", err, reservation.ErrUnknownService)
	_, err = m.ReserveWait(bg(t), "s", "ann", 1, 10, nil)
	wantErr(t, "user limit", err, reservation.ErrUserLimit)
	if w := m.Waiting(); len(w) != 0 {
		t.Errorf("Waiting = %v, want empty", w)
	}
}

func TestReserveWaitTimesOutAndQueueBound(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"s": 1})
	mustReserve(t, m, "s")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := m.ReserveWait(ctx, "s", "", 0, 10, nil)
	wantErr(t, "timeout", err, reservation.ErrNoSlot)
	wantErr(t, "timeout", err, context.DeadlineExceeded)
	if m.Waiting()["s"] != 0 {
		t.Fatal("a timed-out waiter stayed in the queue")
	}

	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	ch := startWaiter(t, ctx2, m, "s", "", 0, 1)
	for _, max := range []int{1, 0} {
		_, err = m.ReserveWait(bg(t), "s", "", 0, max, nil)
		wantErr(t, fmt.Sprintf("bound %d", max), err, reservation.ErrQueueFull)
	}
	// A bound of two leaves room for a second.
	ctx3, cancel3 := context.WithCancel(context.Background())
	go func() {
		_, _ = m.ReserveWait(ctx3, "s", "", 0, 2, nil)
	}()
	eventually(t, "second waiter", func() bool { return m.Waiting()["s"] == 2 })
	cancel3()
	eventually(t, "second waiter gone", func() bool { return m.Waiting()["s"] == 1 })
	cancel2()
	o := outcome(t, ch)
	wantErr(t, "cancelled waiter", o.err, context.Canceled)
	if w := m.Waiting(); len(w) != 0 {
		t.Errorf("Waiting = %v, want empty", w)
	}
}

func TestReserveWaitCancelRaceKeepsSlotsConsistent(t *testing.T) {
	m, _, _ := newManager(t, map[string]int{"s": 2})
	bgc := bg(t)
	for round := 0; round < 200; round++ {
		a := mustReserve(t, m, "s")
		b := mustReserve(t, m, "s")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan reservation.Reservation, 1)
		go func() {
			r, err := m.ReserveWait(ctx, "s", "", 0, 10, nil)
			if err == nil {
				done <- r
			} else {
				done <- reservation.Reservation{}
			}
		}()
		eventually(t, "waiter queued", func() bool { return m.Waiting()["s"] == 1 })
		go cancel()
		if _, err := m.Release(bgc, a.Token, 0, ""); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if r.Token != "" {
			if _, err := m.Release(bgc, r.Token, 0, ""); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := m.Release(bgc, b.Token, 0, ""); err != nil {
			t.Fatal(err)
		}
		svcs, res := m.Snapshot()
		if svcs[0].Free != 2 || len(res) != 0 {
			t.Fatalf("round %d: free %d, %d sessions left", round, svcs[0].Free, len(res))
		}
	}
}

// TestQueueChangedOncePerChange: every change of a wait queue (a waiter
// joins, is served, gives up) is told as exactly one queue.changed event
// carrying the owners in order, however many waiters there are.
func TestQueueChangedOncePerChange(t *testing.T) {
	m, _, rec := newManager(t, map[string]int{"s": 1, "other": 1})
	first := mustReserve(t, m, "s")
	mustReserve(t, m, "other")
	ctx := bg(t)
	cctx, cancelB := context.WithCancel(ctx)
	defer cancelB()

	a := startWaiter(t, ctx, m, "s", "a", 0, 1)
	b := startWaiter(t, cctx, m, "s", "b", 0, 2)
	c := startWaiter(t, ctx, m, "s", "c", 0, 3)
	if w := m.Waiting(); fmt.Sprint(w) != "map[s:3]" {
		t.Errorf("Waiting = %v, want only s:3", w)
	}
	m.Sync()
	want := []string{"s:1:[a]", "s:2:[a b]", "s:3:[a b c]"}
	if got := rec.queueEvents(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("queue events %v, want %v", got, want)
	}
	for _, e := range rec.entries() {
		if e.kind == "queue.changed" && (e.owner != "" || e.data["kind"] != "reservations") {
			t.Errorf("queue.changed event %+v: want no owner, kind reservations", e)
		}
	}

	// A slot frees: the first waiter gets it, one event.
	if _, err := m.Release(ctx, first.Token, 0, ""); err != nil {
		t.Fatal(err)
	}
	oa := outcome(t, a)
	if oa.err != nil || oa.r.Owner != "a" || oa.r.Index != first.Index {
		t.Fatalf("first waiter got %+v, %v", oa.r, oa.err)
	}
	want = append(want, "s:2:[b c]")
	m.Sync()
	if got := rec.queueEvents(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after a grant: queue events %v, want %v", got, want)
	}

	// A waiter gives up: one event.
	cancelB()
	ob := outcome(t, b)
	wantErr(t, "waiter that gave up", ob.err, reservation.ErrNoSlot)
	want = append(want, "s:1:[c]")
	m.Sync()
	if got := rec.queueEvents(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after giving up: queue events %v, want %v", got, want)
	}

	if _, err := m.Release(ctx, oa.r.Token, 0, ""); err != nil {
		t.Fatal(err)
	}
	oc := outcome(t, c)
	if oc.err != nil || oc.r.Owner != "c" {
		t.Fatalf("last waiter got %+v, %v", oc.r, oc.err)
	}
	want = append(want, "s:0:[]")
	m.Sync()
	if got := rec.queueEvents(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("at the end: queue events %v, want %v", got, want)
	}
	// The granted reservation was recorded before ReserveWait returned.
	if got := rec.of(oc.r.Token, "save"); len(got) == 0 {
		t.Errorf("the granted reservation was not recorded")
	}
}

// TestGrantSkipsWaiterOverItsLimit: a waiter whose owner reached the
// per-user limit while waiting is told so and the next waiter is served;
// the queue's change (two waiters leave it) is one event.
func TestGrantSkipsWaiterOverItsLimit(t *testing.T) {
	m, _, rec := newManager(t, map[string]int{"s": 1, "other": 1})
	first := mustReserve(t, m, "s")
	ctx := bg(t)
	u := startWaiter(t, ctx, m, "s", "u", 1, 1)
	v := startWaiter(t, ctx, m, "s", "v", 1, 2)
	// Meanwhile u reserves elsewhere and so reaches its limit.
	if _, err := m.ReserveFor("other", "u", 1, nil); err != nil {
		t.Fatal(err)
	}
	m.Sync()
	rec.reset()

	if _, err := m.Release(ctx, first.Token, 0, ""); err != nil {
		t.Fatal(err)
	}
	ou := outcome(t, u)
	wantErr(t, "waiter over its limit", ou.err, reservation.ErrUserLimit)
	ov := outcome(t, v)
	if ov.err != nil || ov.r.Owner != "v" {
		t.Fatalf("next waiter got %+v, %v", ov.r, ov.err)
	}
	m.Sync()
	if got := rec.queueEvents(); fmt.Sprint(got) != "[s:0:[]]" {
		t.Errorf("queue events %v, want one, empty", got)
	}
	if w := m.Waiting(); len(w) != 0 {
		t.Errorf("Waiting = %v, want empty", w)
	}
}

func TestReserveWaitGrantedWhileGivingUp(t *testing.T) {
	// Whether the cancel or the grant wins, the waiter either holds the
	// slot or the slot is free: never both, never neither.
	for round := 0; round < 100; round++ {
		m, _, _ := newManager(t, map[string]int{"s": 1})
		first := mustReserve(t, m, "s")
		ctx, cancel := context.WithCancel(context.Background())
		ch := startWaiter(t, ctx, m, "s", "w", 0, 1)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); cancel() }()
		if _, err := m.Release(bg(t), first.Token, 0, ""); err != nil {
			t.Fatal(err)
		}
		o := outcome(t, ch)
		wg.Wait()
		free := freeSlots(t, m, "s")
		switch {
		case o.err == nil && free == 0:
			if _, err := m.Get(o.r.Token); err != nil {
				t.Fatalf("round %d: granted token unknown: %v", round, err)
			}
		case errors.Is(o.err, reservation.ErrNoSlot) && free == 1:
		default:
			t.Fatalf("round %d: waiter %+v, %v with %d free", round, o.r, o.err, free)
		}
		m.Close()
	}
}

// TestStopAllTellsOnlyQueuesItEmptied: StopAll answers every waiter with
// ErrClosing and tells a queue.changed for each queue it emptied, and none
// for a service whose queue was already empty.
func TestStopAllTellsOnlyQueuesItEmptied(t *testing.T) {
	clk := newFakeClock()
	rec := &recorder{}
	m := New(Config{Counts: map[string]int{"a": 1, "b": 1}, Timeout: testTimeout, Now: clk.Now, Persist: rec, Publish: rec.publish})
	t.Cleanup(m.Close)
	ctx := bg(t)
	ra := mustReserve(t, m, "a")
	mustReserve(t, m, "b")
	// a's waiter is served (its queue is then empty), b's still waits.
	wa := startWaiter(t, ctx, m, "a", "x", 0, 1)
	if _, err := m.Release(ctx, ra.Token, 0, ""); err != nil {
		t.Fatal(err)
	}
	if o := outcome(t, wa); o.err != nil {
		t.Fatalf("a's waiter: %v", o.err)
	}
	wb := startWaiter(t, ctx, m, "b", "y", 0, 1)
	before := len(rec.queueEvents())
	if err := m.StopAll(ctx, 1001, "shutdown"); err != nil {
		t.Fatal(err)
	}
	if o := outcome(t, wb); !errors.Is(o.err, ErrClosing) {
		t.Fatalf("b's waiter after StopAll: %v, want ErrClosing", o.err)
	}
	m.Sync()
	after := rec.queueEvents()[before:]
	if len(after) != 1 || after[0] != "b:0:[]" {
		t.Fatalf("queue events on StopAll: %q, want only b's queue emptied", after)
	}
}
