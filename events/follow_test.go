package events

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/internal/redistest"
	"wsgateway/store"
	"wsgateway/store/redisstore"
)

func TestMain(m *testing.M) {
	code := m.Run()
	redistest.StopShared()
	os.Exit(code)
}

// followingHub is a replica's hub on the shared Redis store under prefix.
func followingHub(t *testing.T, url string) *Hub {
	t.Helper()
	st, err := redisstore.Open(context.Background(), url, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHub(context.Background(), st, 100000, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.Follow(ctx, func(ctx context.Context, since int64) ([]store.Event, error) {
		return st.ReadEvents(ctx, since, 1000, time.Second)
	})
	t.Cleanup(func() {
		cancel()
		h.Close()
		st.Close()
	})
	return h
}

// collector records what a subscription receives.
type collector struct {
	mu   sync.Mutex
	evs  []Event
	seen chan struct{}
}

func (c *collector) deliver(e Event) bool {
	c.mu.Lock()
	c.evs = append(c.evs, e)
	c.mu.Unlock()
	select {
	case c.seen <- struct{}{}:
	default:
	}
	return true
}

func (c *collector) waitN(t *testing.T, n int) []Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		c.mu.Lock()
		if len(c.evs) >= n {
			out := append([]Event(nil), c.evs...)
			c.mu.Unlock()
			return out
		}
		c.mu.Unlock()
		select {
		case <-c.seen:
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("got %d events, want %d", len(c.evs), n)
		}
	}
}

// TestReplicasShareOneSequence: events published on three replicas at
// once reach every replica's subscribers, each the whole sequence once,
// in order; a subscriber joining later with since gets the rest.
func TestReplicasShareOneSequence(t *testing.T) {
	srv := redistest.Need(t)
	url := srv.URL(0) + "?prefix=" + redistest.Prefix(t)
	hubs := []*Hub{followingHub(t, url), followingHub(t, url), followingHub(t, url)}
	all := func(Event) bool { return true }
	cols := make([]*collector, len(hubs))
	for i, h := range hubs {
		cols[i] = &collector{seen: make(chan struct{}, 1)}
		if _, _, err := h.Subscribe(context.Background(), -1, all, cols[i].deliver); err != nil {
			t.Fatal(err)
		}
	}
	const per = 40
	var wg sync.WaitGroup
	for i, h := range hubs {
		wg.Add(1)
		go func(i int, h *Hub) {
			defer wg.Done()
			for k := 0; k < per; k++ {
				h.Publish("job.state", "", map[string]int{"replica": i, "k": k})
			}
		}(i, h)
	}
	wg.Wait()
	total := per * len(hubs)
	for i, c := range cols {
		evs := c.waitN(t, total)
		if len(evs) != total {
			t.Fatalf("replica %d: %d events, want %d", i, len(evs), total)
		}
		for k, e := range evs {
			if e.Seq != int64(k+1) {
				t.Fatalf("replica %d: event %d has seq %d", i, k, e.Seq)
			}
		}
	}
	for i, h := range hubs {
		if h.Last() != int64(total) {
			t.Fatalf("replica %d: last %d", i, h.Last())
		}
	}
	// Replay from the middle on any replica.
	late := &collector{seen: make(chan struct{}, 1)}
	_, n, err := hubs[2].Subscribe(context.Background(), int64(total-5), all, late.deliver)
	if err != nil || n != 5 {
		t.Fatalf("replayed %d %v", n, err)
	}
	hubs[0].Publish("queue.changed", "", map[string]int{"x": 1})
	evs := late.waitN(t, 6)
	if evs[0].Seq != int64(total-4) || evs[5].Seq != int64(total+1) || evs[5].Topic != "queue.changed" {
		t.Fatalf("late subscriber: first %d, last %d %s", evs[0].Seq, evs[5].Seq, evs[5].Topic)
	}
}
