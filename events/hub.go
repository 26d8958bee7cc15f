// Package events is the gateway's event hub: every event (a job changing
// state, a log growing, the queue changing) gets a gateway-wide sequence
// number from the store, is kept in a bounded history, and is pushed to
// subscribers. A subscriber that gives the last sequence number it saw
// gets what it missed, then live events, in order, with no gap or
// duplicate.
//
// With several gateway replicas (Follow), the sequence is the shared
// store's: each replica appends its own events there and delivers, in
// sequence order, every event it reads back, its own and the others'.
package events

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/store"
)

// Event is what subscribers receive.
type Event struct {
	Seq   int64           `json:"seq"`
	Topic string          `json:"topic"`
	Time  time.Time       `json:"time"`
	Data  json.RawMessage `json:"data"`
	Owner string          `json:"-"`
}

// Topics are the topics the hub knows.
var Topics = []string{"session.state", "reservation.expired", "job.state", "job.progress", "logs.append", "queue.changed"}

// GapTopic is delivered (with sequence number 0) before a replay that
// cannot start at since because older events were pruned.
const GapTopic = "events.gap"

// Hub sequences, stores and fans out events.
type Hub struct {
	st      store.Store
	log     zerolog.Logger
	keep    int
	mu      sync.Mutex
	subs    map[*Subscription]struct{}
	last    int64
	appends int
	closed  bool
	follow  bool // events are delivered by the follow loop, not Publish
}

// Reader waits, bounded by ctx, for stored events with Seq > since (none
// when its wait runs out without one).
type Reader func(ctx context.Context, since int64) ([]store.Event, error)

// Subscription receives events through its deliver function, which must
// not block; a false return ends the subscription.
type Subscription struct {
	h       *Hub
	filter  func(Event) bool
	deliver func(Event) bool
	done    bool
}

// NewHub returns a hub keeping the newest keep events in st.
func NewHub(ctx context.Context, st store.Store, keep int, log zerolog.Logger) (*Hub, error) {
	if keep <= 0 {
		keep = 10000
	}
	_, last, err := st.EventBounds(ctx)
	if err != nil {
		return nil, err
	}
	return &Hub{st: st, log: log, keep: keep, subs: map[*Subscription]struct{}{}, last: last}, nil
}

// Publish stores an event and delivers it. owner restricts who sees it
// ("" : everyone allowed to see every job). data is encoded as JSON.
func (h *Hub) Publish(topic, owner string, data any) {
	b, err := json.Marshal(data)
	if err != nil {
		h.log.Error().Err(err).Str("topic", topic).Msg("event not encodable; dropped")
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	se, err := h.st.AppendEvent(ctx, topic, owner, b)
	if err != nil {
		h.log.Error().Err(err).Str("topic", topic).Msg("event not stored; dropped")
		return
	}
	h.appends++
	if h.appends%500 == 0 {
		if err := h.st.PruneEvents(ctx, h.keep); err != nil {
			h.log.Warn().Err(err).Msg("pruning event history")
		}
	}
	if h.follow {
		return
	}
	h.last = se.Seq
	h.deliverLocked(Event{Seq: se.Seq, Topic: topic, Time: se.Time, Data: b, Owner: owner})
}

func (h *Hub) deliverLocked(ev Event) {
	for s := range h.subs {
		if s.filter(ev) && !s.deliver(ev) {
			s.done = true
			delete(h.subs, s)
		}
	}
}

// Follow makes the hub deliver what read returns, every replica's events
// in sequence order, instead of what Publish stores; it returns at once
// and follows until ctx ends. A failing read is retried with backoff.
func (h *Hub) Follow(ctx context.Context, read Reader) {
	h.mu.Lock()
	h.follow = true
	h.mu.Unlock()
	go h.followLoop(ctx, read)
}

func (h *Hub) followLoop(ctx context.Context, read Reader) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		evs, err := read(ctx, h.Last())
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.log.Warn().Err(err).Dur("retry_in", backoff).Msg("events of the other replicas not read")
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		h.mu.Lock()
		for _, se := range evs {
			if se.Seq <= h.last {
				continue
			}
			h.last = se.Seq
			if !h.closed {
				h.deliverLocked(Event{Seq: se.Seq, Topic: se.Topic, Time: se.Time, Data: se.Data, Owner: se.Owner})
			}
		}
		h.mu.Unlock()
	}
}

// Last returns the newest sequence number.
func (h *Hub) Last() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// ErrHistoryGone means since is older than the kept history: some events
// are lost to the subscriber.
type ErrHistoryGone struct{ Since, First int64 }

func (e *ErrHistoryGone) Error() string {
	return fmt.Sprintf("events after %d are no longer kept; the oldest kept is %d", e.Since, e.First)
}

// Subscribe registers a subscriber. When since >= 0, events with a larger
// sequence number that are still kept are delivered first (under the
// hub's lock, so no live event can come between or before them). It
// returns the subscription, the number of events replayed, and
// *ErrHistoryGone (with a working subscription) when since is too old.
func (h *Hub) Subscribe(ctx context.Context, since int64, filter func(Event) bool, deliver func(Event) bool) (*Subscription, int, error) {
	s := &Subscription{h: h, filter: filter, deliver: deliver}
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	var gone error
	if since >= 0 && since < h.last {
		first, _, err := h.st.EventBounds(ctx)
		if err != nil {
			return nil, 0, err
		}
		if since+1 < first {
			gone = &ErrHistoryGone{Since: since, First: first}
			// Tell the subscriber first, so it knows to reload.
			d, _ := json.Marshal(map[string]int64{"since": since, "first_seq": first})
			if !deliver(Event{Topic: GapTopic, Time: time.Now().UTC(), Data: d}) {
				return s, 0, fmt.Errorf("subscriber too slow during replay")
			}
		}
		cur := since
		for cur < h.last {
			evs, err := h.st.EventsSince(ctx, cur, 1000)
			if err != nil {
				return nil, 0, err
			}
			if len(evs) == 0 {
				break
			}
			for _, se := range evs {
				cur = se.Seq
				ev := Event{Seq: se.Seq, Topic: se.Topic, Time: se.Time, Data: se.Data, Owner: se.Owner}
				if !filter(ev) {
					continue
				}
				if !deliver(ev) {
					return s, n, fmt.Errorf("subscriber too slow during replay")
				}
				n++
			}
		}
	}
	if h.closed {
		return s, n, fmt.Errorf("event hub closed")
	}
	h.subs[s] = struct{}{}
	return s, n, gone
}

// Close ends the subscription; it is safe to call twice.
func (s *Subscription) Close() {
	if s == nil {
		return
	}
	s.h.mu.Lock()
	delete(s.h.subs, s)
	s.done = true
	s.h.mu.Unlock()
}

// Close stops the hub: further events are dropped.
func (h *Hub) Close() {
	h.mu.Lock()
	h.closed = true
	h.subs = map[*Subscription]struct{}{}
	h.mu.Unlock()
}
