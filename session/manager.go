package session

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"wsgateway/reservation"
)

// Config sets up a Manager.
type Config struct {
	// Counts maps each service name to its number of slots.
	Counts map[string]int
	// Timeout reclaims reservations not used within it.
	Timeout time.Duration
	// StopTimeout bounds the stop of one service (default 30 s).
	StopTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// ExpiredMemory is how many expired tokens are remembered so that a late
	// client is told "expired" rather than "unknown". Default 4096.
	ExpiredMemory int
	// Persist, when set, records every change, so reservations survive a
	// restart (see Restore). It is called in the order of the changes,
	// never under the Manager's lock.
	Persist Persister
	// Publish, when set, is told session.state, reservation.expired and
	// queue.changed events (owner restricts who may see them), in order,
	// never under the Manager's lock.
	Publish func(topic, owner string, data map[string]any)
	// Durable says Persist outlives this process (a state database):
	// StopAll then leaves running the sessions whose process outlives
	// the gateway (Outliving: a cluster job), with their records, for
	// the next gateway's Restore to take back.
	Durable bool
	// Shared, when set, is the state this gateway shares with its
	// replicas (see Shared); Persist and Restore are then not used.
	Shared Shared
	// Resume, when set, is asked by Restore about each recorded session
	// that had been claimed: a service that outlived the previous gateway
	// (a cluster job) is handed back as p and the session is restored
	// detached, waiting grace for its token to reconnect; nil p means it
	// is gone (Resume has cleaned up after it). It is called without the
	// Manager's lock.
	Resume func(r reservation.Reservation) (p Process, grace time.Duration)
	// Describe, with Shared, tells where a started service listens, for
	// the other replicas (false: it cannot say). It is called under the
	// Manager's lock and must not block.
	Describe func(p Process, r reservation.Reservation) (Target, bool)
	// Adopt, with Shared, gives this replica a Process for a dead
	// replica's session whose target every replica reaches (nil: the
	// session is not adopted and ends, interrupted). It is called
	// without the Manager's lock.
	Adopt func(r Record) Process
}

// Persister records reservations as they change.
type Persister interface {
	SaveReservation(r reservation.Reservation)
	DeleteReservation(token string)
}

// Manager owns every session. It is safe for concurrent use.
type Manager struct {
	cfg     Config
	now     func() time.Time
	fx      *effects
	base    context.Context
	cancel  context.CancelFunc
	mu      sync.Mutex
	byToken map[string]*Session
	held    map[string][]bool // service -> index held
	expired map[string]time.Time
	expOrd  []string
	expCap  int
	waiters map[string][]*waiter // service -> FIFO of waiting reservations
	closing bool
	// sharedWaiting counts this replica's reservations waiting for a
	// slot of the shared state, by service.
	sharedWaiting map[string]int
}

// waiter is a reservation waiting for a slot.
type waiter struct {
	owner   string
	perUser int
	opts    map[string]string
	ch      chan waitResult // buffered 1; written once, under mu
}

type waitResult struct {
	r   reservation.Reservation
	err error
}

// New returns a Manager for the given services.
func New(cfg Config) *Manager {
	m := &Manager{
		cfg:     cfg,
		now:     cfg.Now,
		fx:      newEffects(),
		byToken: map[string]*Session{},
		held:    map[string][]bool{},
		expired: map[string]time.Time{},
		expCap:  cfg.ExpiredMemory,
		waiters: map[string][]*waiter{},

		sharedWaiting: map[string]int{},
	}
	m.base, m.cancel = context.WithCancel(context.Background())
	if m.now == nil {
		m.now = time.Now
	}
	if m.expCap <= 0 {
		m.expCap = 4096
	}
	if m.cfg.StopTimeout <= 0 {
		m.cfg.StopTimeout = 30 * time.Second
	}
	for name, n := range cfg.Counts {
		m.held[name] = make([]bool, n)
	}
	if cfg.Shared != nil {
		go cfg.Shared.Run(m.base, m.stopRequested)
	}
	return m
}

// Reserve takes a free slot of service for an anonymous caller.
func (m *Manager) Reserve(service string, opts map[string]string) (reservation.Reservation, error) {
	return m.ReserveFor(service, "", 0, opts)
}

// ReserveFor takes a free slot of service for owner, who may hold at most
// perUser reservations at once (0: no limit; an anonymous owner "" is not
// limited here). The reservation is recorded before it returns.
func (m *Manager) ReserveFor(service, owner string, perUser int, opts map[string]string) (reservation.Reservation, error) {
	if m.cfg.Shared != nil {
		return m.reserveShared(service, owner, perUser, opts)
	}
	m.mu.Lock()
	if len(m.waiters[service]) > 0 {
		// Others are waiting for this service: a free slot is theirs.
		if _, ok := m.held[service]; ok {
			n := len(m.waiters[service])
			m.mu.Unlock()
			return reservation.Reservation{}, fmt.Errorf("%w: %d reservation(s) of %q are already waiting", reservation.ErrNoSlot, n, service)
		}
	}
	r, err := m.reserveLocked(service, owner, perUser, opts)
	m.mu.Unlock()
	if err == nil {
		<-m.fx.barrier()
	}
	return r, err
}

func (m *Manager) reserveLocked(service, owner string, perUser int, opts map[string]string) (reservation.Reservation, error) {
	slots, ok := m.held[service]
	if !ok {
		return reservation.Reservation{}, fmt.Errorf("%w: %q", reservation.ErrUnknownService, service)
	}
	if m.closing {
		return reservation.Reservation{}, ErrClosing
	}
	if owner != "" && perUser > 0 {
		n := 0
		for _, ss := range m.byToken {
			if ss.rec.Owner == owner {
				n++
			}
		}
		if n >= perUser {
			return reservation.Reservation{}, fmt.Errorf("%w: %s holds %d (the limit)", reservation.ErrUserLimit, owner, n)
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
		if len(slots) == 1 {
			return reservation.Reservation{}, fmt.Errorf("%w: the one slot of %q is in use", reservation.ErrNoSlot, service)
		}
		return reservation.Reservation{}, fmt.Errorf("%w: all %d slots of %q are in use", reservation.ErrNoSlot, len(slots), service)
	}
	tok, err := reservation.NewToken()
	if err != nil {
		return reservation.Reservation{}, err
	}
	slots[idx] = true
	now := m.now()
	ss := m.newSessionLocked(reservation.Reservation{
		Token: tok, Service: service, Index: idx, Options: opts,
		Created: now, Expires: now.Add(m.cfg.Timeout), Owner: owner,
	})
	m.saveLocked(ss)
	return ss.recordLocked(), nil
}

func (m *Manager) newSessionLocked(r reservation.Reservation) *Session {
	ss := &Session{m: m, rec: r, st: Reserved, done: make(chan struct{})}
	ss.ctx, ss.cancel = context.WithCancel(m.base)
	m.byToken[r.Token] = ss
	return ss
}

// ReserveWait is ReserveFor that, when every slot is held, waits in a FIFO
// queue (at most maxWaiters long) until a slot frees or ctx ends.
func (m *Manager) ReserveWait(ctx context.Context, service, owner string, perUser, maxWaiters int, opts map[string]string) (reservation.Reservation, error) {
	if m.cfg.Shared != nil {
		return m.reserveWaitShared(ctx, service, owner, perUser, maxWaiters, opts)
	}
	m.mu.Lock()
	if len(m.waiters[service]) == 0 {
		r, err := m.reserveLocked(service, owner, perUser, opts)
		if !errors.Is(err, reservation.ErrNoSlot) {
			m.mu.Unlock()
			if err == nil {
				<-m.fx.barrier()
			}
			return r, err
		}
	}
	if len(m.waiters[service]) >= maxWaiters {
		n := len(m.waiters[service])
		m.mu.Unlock()
		return reservation.Reservation{}, fmt.Errorf("%w: %d for %q", reservation.ErrQueueFull, n, service)
	}
	w := &waiter{owner: owner, perUser: perUser, opts: opts, ch: make(chan waitResult, 1)}
	m.waiters[service] = append(m.waiters[service], w)
	m.queueChangedLocked(service)
	m.mu.Unlock()
	select {
	case res := <-w.ch:
		<-m.fx.barrier()
		return res.r, res.err
	case <-ctx.Done():
	}
	m.mu.Lock()
	q := m.waiters[service]
	for i, x := range q {
		if x == w {
			m.waiters[service] = append(q[:i:i], q[i+1:]...)
			m.queueChangedLocked(service)
			m.mu.Unlock()
			return reservation.Reservation{}, fmt.Errorf("%w: still no free slot of %q after waiting: %w", reservation.ErrNoSlot, service, ctx.Err())
		}
	}
	m.mu.Unlock()
	// Granted while giving up: take it after all.
	res := <-w.ch
	<-m.fx.barrier()
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
	for s, n := range m.sharedWaiting {
		if n > 0 {
			out[s] += n
		}
	}
	return out
}

// grantLocked hands free slots of service to its waiters, first come
// first served.
func (m *Manager) grantLocked(service string) {
	granted := false
	for len(m.waiters[service]) > 0 {
		w := m.waiters[service][0]
		r, err := m.reserveLocked(service, w.owner, w.perUser, w.opts)
		if errors.Is(err, reservation.ErrNoSlot) {
			break
		}
		m.waiters[service] = m.waiters[service][1:]
		granted = true
		w.ch <- waitResult{r, err}
	}
	if granted {
		m.queueChangedLocked(service)
	}
}

// findLocked looks a token up in constant time with respect to its content:
// tokens are compared with subtle.ConstantTimeCompare after a map lookup
// keyed by the exact token, so a near miss and a far miss cost the same.
func (m *Manager) findLocked(tok string) (*Session, error) {
	ss, ok := m.byToken[tok]
	if ok && subtle.ConstantTimeCompare([]byte(ss.rec.Token), []byte(tok)) == 1 {
		return ss, nil
	}
	if _, gone := m.expired[tok]; gone {
		return nil, reservation.ErrExpiredToken
	}
	return nil, reservation.ErrUnknownToken
}

// Get returns the reservation for tok.
func (m *Manager) Get(tok string) (reservation.Reservation, error) {
	if m.cfg.Shared != nil {
		return m.getShared(tok)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ss, err := m.findLocked(tok)
	if err != nil {
		return reservation.Reservation{}, err
	}
	return ss.recordLocked(), nil
}

// Lookup returns this gateway's session of tok (a session another
// replica runs is not found).
func (m *Manager) Lookup(tok string) (*Session, error) { return m.lookup(tok) }

// lookup returns the session of tok.
func (m *Manager) lookup(tok string) (*Session, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.findLocked(tok)
}

// Check says what Claim would say for tok, without claiming it.
func (m *Manager) Check(tok string) (reservation.Reservation, error) {
	if m.cfg.Shared != nil {
		return m.checkShared(tok)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ss, err := m.claimableLocked(tok)
	if err != nil {
		return reservation.Reservation{}, err
	}
	return ss.recordLocked(), nil
}

// claimableLocked finds tok and says whether a websocket may claim it (an
// expired reservation is returned with ErrExpiredToken, for the caller
// to reclaim).
func (m *Manager) claimableLocked(tok string) (*Session, error) {
	ss, err := m.findLocked(tok)
	if err != nil {
		return nil, err
	}
	if ss.st == Claimed || ss.st == Starting || ss.st == Running {
		return nil, reservation.ErrBusy
	}
	if ss.st == Stopping || ss.st == Ended {
		return nil, reservation.ErrEnded
	}
	if ss.st == Reserved && !m.now().Before(ss.rec.Expires) {
		return ss, reservation.ErrExpiredToken
	}
	return ss, nil
}

// Claim: reserved or detached → claimed, for a websocket carrying tok.
// Only one websocket may hold a token at a time. maxUserTunnels (0: no
// limit) caps the websockets an owner holds at once.
func (m *Manager) Claim(tok string, maxUserTunnels int) (*Session, error) {
	if m.cfg.Shared != nil {
		return m.claimShared(tok, maxUserTunnels)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return nil, ErrClosing
	}
	return m.claimLocked(tok, maxUserTunnels)
}

// claimLocked is Claim under the lock.
func (m *Manager) claimLocked(tok string, maxUserTunnels int) (*Session, error) {
	ss, err := m.claimableLocked(tok)
	if err != nil {
		if errors.Is(err, reservation.ErrExpiredToken) && ss != nil {
			m.expireLocked(ss)
		}
		return nil, err
	}
	if owner := ss.rec.Owner; maxUserTunnels > 0 && owner != "" {
		n := 0
		for _, x := range m.byToken {
			if x.rec.Owner == owner && (x.st == Claimed || x.st == Starting || x.st == Running) {
				n++
			}
		}
		if n >= maxUserTunnels {
			return nil, fmt.Errorf("%w: %s already has %d open sessions (the limit)", ErrUserTunnels, owner, n)
		}
	}
	ss.rec.Connects++
	ss.rec.LastClaim = m.now()
	if ss.since.IsZero() {
		ss.since = ss.rec.LastClaim
	}
	m.setLocked(ss, Claimed)
	return ss, nil
}

// Release stops tok's session (a reservation not yet used simply ends)
// and waits, bounded by ctx, until its slot is free. It returns the
// reservation as it was.
func (m *Manager) Release(ctx context.Context, tok string, code int, reason string) (reservation.Reservation, error) {
	m.mu.Lock()
	ss, err := m.findLocked(tok)
	if err != nil {
		m.mu.Unlock()
		if m.cfg.Shared != nil {
			return m.releaseShared(ctx, tok, code, reason)
		}
		return reservation.Reservation{}, err
	}
	rec := ss.recordLocked()
	m.stopLocked(ss, code, reason)
	m.mu.Unlock()
	select {
	case <-ss.done:
		<-m.fx.barrier()
		return rec, nil
	case <-ctx.Done():
		return rec, fmt.Errorf("the session of %s… is still stopping: %w", reservation.TokenPrefix(tok), ctx.Err())
	}
}

// stopLocked moves ss to stopping (from any state but stopping and ended)
// and sees that it ends: at once when nothing runs for it; through a stop
// goroutine when a service or a websocket must be stopped first; by the
// start in flight, when there is one (Started or StartFailed finish it).
func (m *Manager) stopLocked(ss *Session, code int, reason string) {
	if ss.st == Stopping || ss.st == Ended {
		return
	}
	ss.stopCode, ss.stopReason = code, reason
	ss.cancel()
	if ss.proc == nil && ss.tun == nil && !ss.starting {
		m.endLocked(ss)
		return
	}
	m.setLocked(ss, Stopping)
	if ss.starting {
		return
	}
	m.launchStopLocked(ss)
}

// launchStopLocked starts the goroutine that closes the websocket, stops
// the service and ends ss.
func (m *Manager) launchStopLocked(ss *Session) {
	tun, proc, code, reason := ss.tun, ss.proc, ss.stopCode, ss.stopReason
	go func() {
		if tun != nil {
			tun.Close(code, reason)
		}
		if proc != nil {
			ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StopTimeout)
			_ = proc.Stop(ctx)
			cancel()
		}
		m.mu.Lock()
		m.endLocked(ss)
		m.mu.Unlock()
	}()
}

// endLocked: → ended. The slot is freed (exactly once) and handed to the
// first waiter.
func (m *Manager) endLocked(ss *Session) {
	if ss.st == Ended {
		return
	}
	ss.cancel()
	m.setLocked(ss, Ended)
	if m.byToken[ss.rec.Token] == ss {
		delete(m.byToken, ss.rec.Token)
	}
	if p := m.cfg.Persist; p != nil {
		tok := ss.rec.Token
		m.fx.add(func() { p.DeleteReservation(tok) })
	}
	if sh := m.cfg.Shared; sh != nil {
		tok := ss.rec.Token
		m.fx.add(func() {
			ctx, cancel := m.sharedCtx()
			defer cancel()
			_ = sh.End(ctx, tok)
		})
	}
	if slots, ok := m.held[ss.rec.Service]; ok && ss.rec.Index >= 0 && ss.rec.Index < len(slots) {
		slots[ss.rec.Index] = false
		m.grantLocked(ss.rec.Service)
	}
	done := ss.done
	m.fx.add(func() { close(done) })
}

func (m *Manager) expireLocked(ss *Session) {
	m.endLocked(ss)
	m.expired[ss.rec.Token] = m.now()
	m.expOrd = append(m.expOrd, ss.rec.Token)
	for len(m.expOrd) > m.expCap {
		delete(m.expired, m.expOrd[0])
		m.expOrd = m.expOrd[1:]
	}
}

// Sweep reclaims every unused reservation whose deadline has passed, and
// stops every detached session whose reconnect grace has run out. It
// returns both as they were.
func (m *Manager) Sweep() []reservation.Reservation {
	var gone []reservation.Reservation
	if m.cfg.Shared != nil {
		gone = m.expireShared()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for _, ss := range m.byToken {
		if now.Before(ss.rec.Expires) {
			continue
		}
		switch ss.st {
		case Reserved:
			gone = append(gone, ss.recordLocked())
			m.expiredEventLocked(ss)
			m.expireLocked(ss)
		case Detached:
			gone = append(gone, ss.recordLocked())
			m.expiredEventLocked(ss)
			m.stopLocked(ss, 0, "reconnect grace expired")
		}
	}
	return gone
}

// StopAll refuses new reservations and claims, stops every session that
// has a websocket or a service (websockets closed with code and reason),
// and waits, bounded by ctx, until they have ended. Unused reservations
// are kept: they are recorded and outlive a restart.
func (m *Manager) StopAll(ctx context.Context, code int, reason string) error {
	m.mu.Lock()
	m.closing = true
	// Each stopped session's end is awaited, a start in flight included:
	// it may still hand over a process that must be stopped first.
	var dones []chan struct{}
	for _, ss := range m.byToken {
		if ss.st == Reserved {
			continue
		}
		if m.outlivesLocked(ss) {
			// Left running, recorded: its websocket goes, its job stays.
			ss.kept = true
			if ss.tun != nil {
				ss.tun.Close(code, reason)
			}
			continue
		}
		m.stopLocked(ss, code, reason)
		dones = append(dones, ss.done)
	}
	for svc, q := range m.waiters {
		for _, w := range q {
			w.ch <- waitResult{err: ErrClosing}
		}
		if len(q) > 0 {
			m.waiters[svc] = nil
			m.queueChangedLocked(svc)
		}
	}
	m.mu.Unlock()
	for _, done := range dones {
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("sessions still stopping: %w", ctx.Err())
		}
	}
	select {
	case <-m.fx.barrier():
		return nil
	case <-ctx.Done():
		return fmt.Errorf("recording the sessions' ends: %w", ctx.Err())
	}
}

// Outliving is a Process that can outlive the gateway (a cluster job).
type Outliving interface {
	OutlivesGateway() bool
}

// outlivesLocked: ss runs (or waits for its token) a process that
// outlives the gateway, and its record survives this process.
func (m *Manager) outlivesLocked(ss *Session) bool {
	if !m.cfg.Durable || m.cfg.Persist == nil || (ss.st != Running && ss.st != Detached) {
		return false
	}
	o, ok := ss.proc.(Outliving)
	return ok && o.OutlivesGateway() && !exited(ss.proc)
}

// Close stops the Manager's background work once what is queued is
// told. Call it after StopAll.
func (m *Manager) Close() {
	m.cancel()
	m.fx.close()
}

// Sync waits until every change made so far has been recorded and
// published.
func (m *Manager) Sync() { <-m.fx.barrier() }

// ServiceSlots describes one service's slots.
type ServiceSlots struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
	Free  int    `json:"free"`
}

// Info is what the status shows of a session.
type Info struct {
	reservation.Reservation
	// Proc is the started service (nil before).
	Proc Process
	// Remote is the address of the websocket that claimed it last.
	Remote string
	// Since is the first claim (zero for an unused reservation).
	Since time.Time
	// BytesIn and BytesOut went through its websockets, each way.
	BytesIn, BytesOut int64
	// Tunnel is set while a websocket is spliced.
	Tunnel bool
	// Detail is what the session's last Note said (nil when none).
	Detail map[string]any
}

// Snapshot returns the services' slot counts and every session, sorted by
// service then index.
func (m *Manager) Snapshot() ([]ServiceSlots, []Info) {
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
	out := make([]Info, 0, len(m.byToken))
	for _, ss := range m.byToken {
		in := Info{Reservation: ss.recordLocked(), Proc: ss.proc, Remote: ss.remote, Since: ss.since,
			BytesIn: ss.bytesIn, BytesOut: ss.bytesOut, Tunnel: ss.tun != nil, Detail: ss.detail}
		if ss.tun != nil {
			i, o := ss.tun.Bytes()
			in.BytesIn += i
			in.BytesOut += o
		}
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Index < out[j].Index
	})
	return svcs, out
}

// tokens returns every live token.
func (m *Manager) tokens() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.byToken))
	for t := range m.byToken {
		out = append(out, t)
	}
	return out
}

// Restore puts back reservations recorded before a restart. Unused,
// unexpired ones are held again (their tokens keep working); ones whose
// session had been claimed are returned as interrupted, since their
// processes died with the previous gateway; the rest (expired, unknown
// service, slot taken) are dropped. Both kinds are forgotten by the
// Persister, and each interrupted one is published as a session.state
// event.
func (m *Manager) Restore(rs []reservation.Reservation) (restored, interrupted []reservation.Reservation) {
	type resumed struct {
		p     Process
		grace time.Duration
	}
	var back map[string]resumed
	if m.cfg.Resume != nil {
		back = map[string]resumed{}
		for _, r := range rs {
			if r.State != string(Reserved) {
				if p, grace := m.cfg.Resume(r); p != nil {
					back[r.Token] = resumed{p, grace}
				}
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	for i := range rs {
		r := rs[i]
		slots, ok := m.held[r.Service]
		b, isBack := back[r.Token]
		free := ok && r.Index >= 0 && r.Index < len(slots) && !slots[r.Index] && m.byToken[r.Token] == nil
		if isBack && free {
			// Its service outlived the previous gateway: detached, for
			// its token to reconnect within the grace.
			slots[r.Index] = true
			r.State = ""
			r.Expires = now.Add(b.grace)
			ss := m.newSessionLocked(r)
			ss.proc = b.p
			ss.since = now
			m.setLocked(ss, Detached)
			restored = append(restored, ss.recordLocked())
			continue
		}
		if isBack {
			// No slot for it (the config changed): stop what outlived us.
			p := b.p
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), m.cfg.StopTimeout)
				_ = p.Stop(ctx)
				cancel()
			}()
			interrupted = append(interrupted, r)
		} else if r.State != string(Reserved) {
			interrupted = append(interrupted, r)
			m.publishLocked("session.state", r.Owner, map[string]any{"service": r.Service, "index": r.Index,
				"token_prefix": reservation.TokenPrefix(r.Token), "state": "interrupted"})
		} else if free && now.Before(r.Expires) {
			slots[r.Index] = true
			r.Connects, r.LastClaim, r.State = 0, time.Time{}, ""
			restored = append(restored, m.newSessionLocked(r).recordLocked())
			continue
		}
		if p := m.cfg.Persist; p != nil {
			tok := r.Token
			m.fx.add(func() { p.DeleteReservation(tok) })
		}
	}
	return restored, interrupted
}

// setLocked moves ss to st, and queues the record and the event.
func (m *Manager) setLocked(ss *Session, st State) {
	ss.st = st
	if st != Ended {
		m.saveLocked(ss)
	}
	if st == Reserved || (st == Ended && ss.since.IsZero()) {
		// An unused reservation's life is not a session's.
		return
	}
	m.publishLocked("session.state", ss.rec.Owner, map[string]any{"service": ss.rec.Service, "index": ss.rec.Index,
		"token_prefix": reservation.TokenPrefix(ss.rec.Token), "state": string(st)})
}

func (m *Manager) saveLocked(ss *Session) {
	if p := m.cfg.Persist; p != nil {
		r := ss.recordLocked()
		m.fx.add(func() { p.SaveReservation(r) })
	}
	if sh := m.cfg.Shared; sh != nil {
		r := ss.recordLocked()
		m.fx.add(func() {
			ctx, cancel := m.sharedCtx()
			defer cancel()
			if ok, err := sh.Save(ctx, r); err == nil && !ok {
				// The record is no longer this replica's (its lease ran
				// out and another replica ended it): stop what runs here.
				m.stopRequested(r.Token, 1011, "this gateway replica lost its lease")
			}
		})
	}
}

func (m *Manager) expiredEventLocked(ss *Session) {
	m.publishLocked("reservation.expired", ss.rec.Owner, map[string]any{"service": ss.rec.Service, "index": ss.rec.Index,
		"token_prefix": reservation.TokenPrefix(ss.rec.Token), "state": string(ss.st)})
}

// queueChangedLocked queues one queue.changed event for the service's
// wait queue: the owners in order (the control plane shows each
// subscriber its own position).
func (m *Manager) queueChangedLocked(service string) {
	owners := make([]string, len(m.waiters[service]))
	for i, w := range m.waiters[service] {
		owners[i] = w.owner
	}
	m.publishLocked("queue.changed", "", map[string]any{"kind": "reservations", "service": service,
		"waiting": len(owners), "queue": owners})
}

func (m *Manager) publishLocked(topic, owner string, data map[string]any) {
	if f := m.cfg.Publish; f != nil {
		m.fx.add(func() { f(topic, owner, data) })
	}
}
