// Package reservation holds the gateway's bookkeeping of counted service
// slots: it issues reservation tokens, hands out per-service instance
// indexes, lets one websocket at a time claim a token, and reclaims
// reservations that are left unused.
//
// The package knows nothing about websockets or processes; the gateway asks
// it for a slot, then asks the services package for a running instance.
package reservation

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"
)

// Sentinel errors; match them with errors.Is.
var (
	ErrUnknownService = errors.New("unknown service")
	ErrNoSlot         = errors.New("no free slot")
	ErrUnknownToken   = errors.New("unknown token")
	ErrExpiredToken   = errors.New("reservation expired")
	ErrBusy           = errors.New("token already in use by another websocket")
	ErrEnded          = errors.New("reservation has ended")
)

// State is where a reservation is in its life.
type State string

// The states of a reservation.
const (
	// Reserved: issued, no websocket has used it yet.
	Reserved State = "reserved"
	// Active: a websocket holds the token.
	Active State = "active"
	// Idle: the service is running but no websocket holds the token
	// (only while a reconnect grace period runs).
	Idle State = "idle"
	// Stopping: its service is being stopped; the slot frees when End is
	// called.
	Stopping State = "stopping"
)

// Reservation is one held slot. Values returned by the Manager are copies.
type Reservation struct {
	Token     string            `json:"token"`
	Service   string            `json:"service"`
	Index     int               `json:"index"`
	Options   map[string]string `json:"options,omitempty"`
	State     State             `json:"state"`
	Created   time.Time         `json:"created"`
	Expires   time.Time         `json:"expires"`
	Connects  int               `json:"connects"`
	LastClaim time.Time         `json:"last_claim,omitempty"`
	// Owner is the user who reserved ("" for an anonymous caller).
	Owner string `json:"owner,omitempty"`
}

// TokenPrefix is the part of a token that may appear in logs.
func TokenPrefix(tok string) string {
	if len(tok) > 8 {
		return tok[:8]
	}
	return tok
}

// Config sets up a Manager.
type Config struct {
	// Counts maps each service name to its number of slots.
	Counts map[string]int
	// Timeout reclaims reservations not used within it.
	Timeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ExpiredMemory is how many expired tokens are remembered so that a late
	// client is told "expired" rather than "unknown". Default 4096.
	ExpiredMemory int
	// Persist, when set, records every change, so reservations survive a
	// restart (see Restore).
	Persist Persister
	// OnWaitQueue, when set, is told the owners waiting for a service, in
	// order, whenever that queue changes (called with the lock held: it
	// must not call the Manager).
	OnWaitQueue func(service string, owners []string)
}

// Persister records reservations as they change. It is called with the
// Manager's lock held, in the order of the changes.
type Persister interface {
	SaveReservation(r Reservation)
	DeleteReservation(token string)
}

// Manager owns all reservations. It is safe for concurrent use.
type Manager struct {
	mu       sync.Mutex
	counts   map[string]int
	timeout  time.Duration
	now      func() time.Time
	byToken  map[string]*Reservation
	held     map[string][]bool // service -> index held
	expired  map[string]time.Time
	expOrder []string
	expCap   int
	onExpire func(Reservation)
	waiters  map[string][]*waiter // service -> FIFO of waiting reservations
	persist  Persister
	onWait   func(service string, owners []string)
}

// waiter is a reservation waiting for a slot.
type waiter struct {
	owner   string
	perUser int
	opts    map[string]string
	ch      chan waitResult // buffered 1; written once, under mu
}

type waitResult struct {
	r   Reservation
	err error
}

// New returns a Manager for the given services.
func New(cfg Config) *Manager {
	m := &Manager{
		counts:  map[string]int{},
		timeout: cfg.Timeout,
		now:     cfg.Now,
		byToken: map[string]*Reservation{},
		held:    map[string][]bool{},
		expired: map[string]time.Time{},
		expCap:  cfg.ExpiredMemory,
		waiters: map[string][]*waiter{},
		persist: cfg.Persist,
		onWait:  cfg.OnWaitQueue,
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.expCap <= 0 {
		m.expCap = 4096
	}
	for name, n := range cfg.Counts {
		m.counts[name] = n
		m.held[name] = make([]bool, n)
	}
	return m
}

// OnExpire registers a function called (outside the lock) for every
// reservation reclaimed by Sweep.
func (m *Manager) OnExpire(f func(Reservation)) {
	m.mu.Lock()
	m.onExpire = f
	m.mu.Unlock()
}

// NewToken returns a random UUID version 4 string (122 random bits from
// crypto/rand).
func NewToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random token: %w", err)
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:]), nil
}

// Reserve takes a free slot of service and returns the new reservation.
func (m *Manager) Reserve(service string, opts map[string]string) (Reservation, error) {
	return m.ReserveFor(service, "", 0, opts)
}

// ErrUserLimit is a user holding as many reservations as allowed.
var ErrUserLimit = errors.New("too many reservations for this user")

// ReserveFor takes a free slot of service for owner, who may hold at most
// perUser reservations at once (0: no limit; an anonymous owner "" is not
// limited here).
func (m *Manager) ReserveFor(service, owner string, perUser int, opts map[string]string) (Reservation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.waiters[service]) > 0 {
		// Others are waiting for this service: a free slot is theirs.
		if _, ok := m.held[service]; ok {
			return Reservation{}, fmt.Errorf("%w: %d reservation(s) of %q are already waiting", ErrNoSlot, len(m.waiters[service]), service)
		}
	}
	return m.reserveLocked(service, owner, perUser, opts)
}

func (m *Manager) reserveLocked(service, owner string, perUser int, opts map[string]string) (Reservation, error) {
	tok, err := NewToken()
	if err != nil {
		return Reservation{}, err
	}
	slots, ok := m.held[service]
	if !ok {
		return Reservation{}, fmt.Errorf("%w: %q", ErrUnknownService, service)
	}
	if owner != "" && perUser > 0 {
		n := 0
		for _, r := range m.byToken {
			if r.Owner == owner {
				n++
			}
		}
		if n >= perUser {
			return Reservation{}, fmt.Errorf("%w: %s holds %d (the limit)", ErrUserLimit, owner, n)
		}
	}
	idx := -1
	for i, h := range slots {
		if !h {
			idx = i
			break
		}
	}
	if idx < 0 {
		return Reservation{}, fmt.Errorf("%w: all %d slots of %q are in use", ErrNoSlot, len(slots), service)
	}
	slots[idx] = true
	now := m.now()
	r := &Reservation{
		Token:   tok,
		Service: service,
		Index:   idx,
		Options: opts,
		State:   Reserved,
		Created: now,
		Expires: now.Add(m.timeout),
		Owner:   owner,
	}
	m.byToken[tok] = r
	m.save(r)
	return *r, nil
}

// ErrQueueFull is a wait queue at its bound.
var ErrQueueFull = errors.New("too many reservations are already waiting")

// ReserveWait is ReserveFor that, when every slot is held, waits in a FIFO
// queue (at most maxWaiters long) until a slot frees or ctx ends.
func (m *Manager) ReserveWait(ctx context.Context, service, owner string, perUser, maxWaiters int, opts map[string]string) (Reservation, error) {
	m.mu.Lock()
	var r Reservation
	var err error
	if len(m.waiters[service]) == 0 {
		r, err = m.reserveLocked(service, owner, perUser, opts)
		if !errors.Is(err, ErrNoSlot) {
			m.mu.Unlock()
			return r, err
		}
	}
	if len(m.waiters[service]) >= maxWaiters {
		m.mu.Unlock()
		return Reservation{}, fmt.Errorf("%w: %d for %q", ErrQueueFull, len(m.waiters[service]), service)
	}
	w := &waiter{owner: owner, perUser: perUser, opts: opts, ch: make(chan waitResult, 1)}
	m.waiters[service] = append(m.waiters[service], w)
	m.waitChangedLocked(service)
	m.mu.Unlock()
	select {
	case res := <-w.ch:
		return res.r, res.err
	case <-ctx.Done():
	}
	m.mu.Lock()
	q := m.waiters[service]
	for i, x := range q {
		if x == w {
			m.waiters[service] = append(q[:i:i], q[i+1:]...)
			m.waitChangedLocked(service)
			m.mu.Unlock()
			return Reservation{}, fmt.Errorf("%w: still no free slot of %q after waiting: %w", ErrNoSlot, service, ctx.Err())
		}
	}
	m.mu.Unlock()
	// Granted while giving up: take it after all.
	res := <-w.ch
	return res.r, res.err
}

// Waiting returns how many reservations wait for each service.
func (m *Manager) Waiting() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int{}
	for s, q := range m.waiters {
		if len(q) > 0 {
			out[s] = len(q)
		}
	}
	return out
}

// grantLocked hands free slots of service to its waiters, first come
// first served.
func (m *Manager) grantLocked(service string) {
	for len(m.waiters[service]) > 0 {
		w := m.waiters[service][0]
		r, err := m.reserveLocked(service, w.owner, w.perUser, w.opts)
		if errors.Is(err, ErrNoSlot) {
			return
		}
		m.waiters[service] = m.waiters[service][1:]
		m.waitChangedLocked(service)
		w.ch <- waitResult{r, err}
	}
}

// find looks a token up in constant time with respect to its content:
// tokens are compared with subtle.ConstantTimeCompare after a map lookup
// keyed by the exact token, so a near miss and a far miss cost the same.
func (m *Manager) find(tok string) (*Reservation, error) {
	r, ok := m.byToken[tok]
	if ok && subtle.ConstantTimeCompare([]byte(r.Token), []byte(tok)) == 1 {
		return r, nil
	}
	if _, gone := m.expired[tok]; gone {
		return nil, ErrExpiredToken
	}
	return nil, ErrUnknownToken
}

// Get returns the reservation for tok.
func (m *Manager) Get(tok string) (Reservation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.find(tok)
	if err != nil {
		return Reservation{}, err
	}
	return *r, nil
}

// Claim marks tok as held by a websocket. Only one websocket may hold a
// token at a time.
func (m *Manager) Claim(tok string) (Reservation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.claimableLocked(tok)
	if err != nil {
		if errors.Is(err, ErrExpiredToken) && r != nil {
			m.expireLocked(r)
		}
		return Reservation{}, err
	}
	r.State = Active
	r.Connects++
	r.LastClaim = m.now()
	m.save(r)
	return *r, nil
}

// Check says what Claim would say for tok, without claiming it.
func (m *Manager) Check(tok string) (Reservation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.claimableLocked(tok)
	if err != nil {
		return Reservation{}, err
	}
	return *r, nil
}

// claimableLocked finds tok and says whether a websocket may claim it (an
// expired reservation is returned with ErrExpiredToken, for the caller
// to reclaim).
func (m *Manager) claimableLocked(tok string) (*Reservation, error) {
	r, err := m.find(tok)
	switch {
	case err != nil:
		return nil, err
	case r.State == Active:
		return nil, ErrBusy
	case r.State == Stopping:
		return nil, ErrEnded
	case r.State == Reserved && !m.now().Before(r.Expires):
		return r, ErrExpiredToken
	}
	return r, nil
}

// Unclaim marks an active reservation as idle until deadline: the service
// keeps running and the same token may claim it again. A zero grace ends
// the reservation instead (see End).
func (m *Manager) Unclaim(tok string, grace time.Duration) (ended bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.byToken[tok]
	if !ok {
		return true
	}
	if r.State == Stopping {
		// Its service is being stopped: it stays unclaimable and its slot
		// frees only when End is called.
		return true
	}
	if grace <= 0 {
		m.removeLocked(r)
		return true
	}
	r.State = Idle
	r.Expires = m.now().Add(grace)
	m.save(r)
	return false
}

// MarkStopping makes the reservation unclaimable while its service stops.
// It reports whether the token was known.
func (m *Manager) MarkStopping(tok string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.find(tok)
	if err != nil {
		return false
	}
	r.State = Stopping
	m.save(r)
	return true
}

// End removes the reservation and frees its slot. It returns the
// reservation as it was, or ErrUnknownToken.
func (m *Manager) End(tok string) (Reservation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, err := m.find(tok)
	if err != nil {
		return Reservation{}, err
	}
	out := *r
	m.removeLocked(r)
	return out, nil
}

func (m *Manager) removeLocked(r *Reservation) {
	delete(m.byToken, r.Token)
	if m.persist != nil {
		m.persist.DeleteReservation(r.Token)
	}
	if slots, ok := m.held[r.Service]; ok && r.Index >= 0 && r.Index < len(slots) {
		slots[r.Index] = false
		m.grantLocked(r.Service)
	}
}

func (m *Manager) expireLocked(r *Reservation) {
	m.removeLocked(r)
	m.expired[r.Token] = m.now()
	m.expOrder = append(m.expOrder, r.Token)
	for len(m.expOrder) > m.expCap {
		delete(m.expired, m.expOrder[0])
		m.expOrder = m.expOrder[1:]
	}
}

// Sweep reclaims every unused reservation whose deadline has passed, and
// marks Stopping every idle one whose reconnect grace has run out (its
// slot frees when the caller, having stopped the service, calls End). It
// returns both.
func (m *Manager) Sweep() []Reservation {
	m.mu.Lock()
	now := m.now()
	var gone []Reservation
	for _, r := range m.byToken {
		if now.Before(r.Expires) {
			continue
		}
		switch r.State {
		case Reserved:
			gone = append(gone, *r)
			m.expireLocked(r)
		case Idle:
			r.State = Stopping
			m.save(r)
			gone = append(gone, *r)
		}
	}
	f := m.onExpire
	m.mu.Unlock()
	if f != nil {
		for _, r := range gone {
			f(r)
		}
	}
	return gone
}

// ServiceSlots describes one service's slots.
type ServiceSlots struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
	Free  int    `json:"free"`
}

// Snapshot returns the services' slot counts and every reservation, sorted
// by service then index.
func (m *Manager) Snapshot() ([]ServiceSlots, []Reservation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	svcs := make([]ServiceSlots, 0, len(m.held))
	for name, slots := range m.held {
		free := 0
		for _, h := range slots {
			if !h {
				free++
			}
		}
		svcs = append(svcs, ServiceSlots{Name: name, Count: len(slots), Free: free})
	}
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Name < svcs[j].Name })
	res := make([]Reservation, 0, len(m.byToken))
	for _, r := range m.byToken {
		res = append(res, *r)
	}
	sort.Slice(res, func(i, j int) bool {
		if res[i].Service != res[j].Service {
			return res[i].Service < res[j].Service
		}
		return res[i].Index < res[j].Index
	})
	return svcs, res
}

// Tokens returns every live token.
func (m *Manager) Tokens() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.byToken))
	for t := range m.byToken {
		out = append(out, t)
	}
	return out
}

func (m *Manager) save(r *Reservation) {
	if m.persist != nil {
		m.persist.SaveReservation(*r)
	}
}

// Restore puts back reservations recorded before a restart. Unused,
// unexpired ones are held again (their tokens keep working); ones whose
// session was running (active, idle or stopping) are returned as
// interrupted, since their processes died with the previous gateway; the
// rest (expired, unknown service, slot taken) are dropped. Both kinds are
// forgotten by the Persister.
func (m *Manager) Restore(rs []Reservation) (restored, interrupted []Reservation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for i := range rs {
		r := rs[i]
		slots, ok := m.held[r.Service]
		switch {
		case r.State != Reserved:
			interrupted = append(interrupted, r)
		case ok && r.Index >= 0 && r.Index < len(slots) && !slots[r.Index] && now.Before(r.Expires) && m.byToken[r.Token] == nil:
			slots[r.Index] = true
			r.Connects, r.LastClaim = 0, time.Time{}
			m.byToken[r.Token] = &r
			restored = append(restored, r)
			continue
		}
		if m.persist != nil {
			m.persist.DeleteReservation(r.Token)
		}
	}
	return restored, interrupted
}

func (m *Manager) waitChangedLocked(service string) {
	if m.onWait == nil {
		return
	}
	owners := make([]string, len(m.waiters[service]))
	for i, w := range m.waiters[service] {
		owners[i] = w.owner
	}
	m.onWait(service, owners)
}
