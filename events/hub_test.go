package events

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"wsgateway/store"
)

func newHub(t *testing.T, keep int) (*Hub, *store.SQLite) {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(t.TempDir(), "s.db"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h, err := NewHub(context.Background(), st, keep, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return h, st
}

// TestStoreHubReplayThenLiveNoGaps: subscribers joining with since while
// events are published concurrently see every later event exactly once,
// in order.
func TestStoreHubReplayThenLiveNoGaps(t *testing.T) {
	h, _ := newHub(t, 100000)
	for i := 0; i < 50; i++ {
		h.Publish("job.state", "", map[string]int{"i": i})
	}
	const total = 400
	var pubs sync.WaitGroup
	pubs.Add(1)
	go func() {
		defer pubs.Done()
		for i := 0; i < total; i++ {
			h.Publish("logs.append", "", map[string]int{"i": i})
		}
	}()
	type got struct {
		mu   sync.Mutex
		seqs []int64
	}
	subs := make([]*got, 8)
	var wg sync.WaitGroup
	for k := range subs {
		subs[k] = &got{}
		wg.Add(1)
		go func(g *got, since int64) {
			defer wg.Done()
			g.mu.Lock()
			g.seqs = append(g.seqs, since)
			g.mu.Unlock()
			_, _, err := h.Subscribe(context.Background(), since, func(Event) bool { return true }, func(e Event) bool {
				g.mu.Lock()
				g.seqs = append(g.seqs, e.Seq)
				g.mu.Unlock()
				return true
			})
			if err != nil {
				t.Error(err)
			}
		}(subs[k], int64(k*5))
	}
	wg.Wait()
	pubs.Wait()
	last := h.Last()
	if last != 50+total {
		t.Fatalf("last %d", last)
	}
	for k, g := range subs {
		g.mu.Lock()
		for i := 1; i < len(g.seqs); i++ {
			if g.seqs[i] != g.seqs[i-1]+1 {
				t.Fatalf("subscriber %d: %d after %d", k, g.seqs[i], g.seqs[i-1])
			}
		}
		if g.seqs[len(g.seqs)-1] != last {
			t.Fatalf("subscriber %d ends at %d, want %d", k, g.seqs[len(g.seqs)-1], last)
		}
		g.mu.Unlock()
	}
}

// TestStoreHubGapAndFailingSubscriber: a subscriber asking for pruned
// history gets a gap event and ErrHistoryGone; one whose deliver fails
// (an RPC client too slow to keep up says so) is dropped after that
// event, and the hub goes on delivering to the others.
func TestStoreHubGapAndFailingSubscriber(t *testing.T) {
	h, st := newHub(t, 10)
	for i := 0; i < 30; i++ {
		h.Publish("job.state", "", i)
	}
	if err := st.PruneEvents(context.Background(), 10); err != nil {
		t.Fatal(err)
	}
	var topics []string
	_, n, err := h.Subscribe(context.Background(), 3, func(Event) bool { return true }, func(e Event) bool {
		topics = append(topics, e.Topic)
		return true
	})
	var gone *ErrHistoryGone
	if err == nil || !asGone(err, &gone) || gone.First != 21 || n != 10 || topics[0] != GapTopic {
		t.Fatalf("gap: %v n=%d topics=%v", err, n, topics)
	}
	// A subscriber whose deliver fails is dropped, and the hub goes on
	// delivering to the others.
	calls, others := 0, 0
	_, _, err = h.Subscribe(context.Background(), -1, func(Event) bool { return true }, func(Event) bool { calls++; return false })
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = h.Subscribe(context.Background(), -1, func(Event) bool { return true }, func(Event) bool { others++; return true })
	if err != nil {
		t.Fatal(err)
	}
	h.Publish("job.state", "", 1)
	h.Publish("job.state", "", 2)
	if calls != 1 || others != 2 {
		t.Fatalf("dropped subscriber called %d times (want 1), the other %d (want 2)", calls, others)
	}
}

func asGone(err error, g **ErrHistoryGone) bool {
	e, ok := err.(*ErrHistoryGone)
	*g = e
	return ok
}

// TestHubPrunesItsHistory: the hub prunes the stored history itself,
// every 500 events, down to the newest keep; a subscriber can still
// resume from within what is kept, and one from before it gets a gap.
func TestHubPrunesItsHistory(t *testing.T) {
	ctx := context.Background()
	h, st := newHub(t, 10)
	for i := 1; i < 500; i++ {
		h.Publish("job.state", "", i)
	}
	if first, last, err := st.EventBounds(ctx); err != nil || first != 1 || last != 499 {
		t.Fatalf("after 499 events: %d..%d %v, want 1..499 (nothing pruned yet)", first, last, err)
	}
	h.Publish("job.state", "", 500)
	first, last, err := st.EventBounds(ctx)
	if err != nil || last != 500 || first != 491 {
		t.Fatalf("after 500 events: %d..%d %v, want 491..500 (the newest 10)", first, last, err)
	}
	var seqs []int64
	if _, _, err := h.Subscribe(ctx, 495, func(Event) bool { return true }, func(e Event) bool { seqs = append(seqs, e.Seq); return true }); err != nil {
		t.Fatalf("resuming within the kept history: %v", err)
	}
	if len(seqs) != 5 || seqs[0] != 496 || seqs[4] != 500 {
		t.Fatalf("replayed %v, want 496..500", seqs)
	}
	var gone *ErrHistoryGone
	if _, _, err := h.Subscribe(ctx, 100, func(Event) bool { return true }, func(Event) bool { return true }); !asGone(err, &gone) || gone.First != 491 {
		t.Fatalf("resuming from pruned history: %v, want ErrHistoryGone from 491", err)
	}
}
