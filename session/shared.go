package session

import (
	"context"
	"errors"
	"fmt"
	"time"

	"wsgateway/reservation"
)

// Shared is the state several gateway replicas share (package replica
// keeps it in Redis). A Manager without one (Config.Shared nil) is alone
// and every fact lives in its memory, as it always has.
//
// With one, the facts every replica must agree on are the Shared's:
// which slots are held and by which token, each token's record, which
// websocket holds a token, which replica runs a session's service, and
// when a reservation nobody used expires. The Manager keeps in memory
// only the sessions whose websocket or service runs on this replica, and
// drives them through the same transitions as ever; it tells the Shared
// of each change after its lock is released, in order, like a Persister.
type Shared interface {
	// Reserve takes the lowest free slot of r.Service (count of them) for
	// r.Owner, who may hold perUser reservations (0: no limit; "" is not
	// limited), records r with that index and returns it. Errors:
	// reservation.ErrNoSlot, reservation.ErrUserLimit, ErrUnavailable.
	Reserve(ctx context.Context, r reservation.Reservation, count, perUser int) (reservation.Reservation, error)
	// Get returns tok's record: reservation.ErrUnknownToken, or
	// reservation.ErrExpiredToken for one that expired unused.
	Get(ctx context.Context, tok string) (reservation.Reservation, error)
	// Claim gives tok to a websocket on this replica, for every replica
	// at once: a reserved token whose deadline is still ahead, or one
	// detached on this replica. It returns the record and the state it
	// was claimed from. Errors: reservation.ErrBusy, ErrEnded,
	// ErrExpiredToken (the reservation ends, once), ErrUnknownToken,
	// ErrUserTunnels (maxUserTunnels, 0: none, counts the owner's
	// websockets on every replica), ErrElsewhere.
	Claim(ctx context.Context, tok string, maxUserTunnels int, now time.Time) (reservation.Reservation, State, error)
	// Save records a change of a session this replica holds; false when
	// the record is no longer this replica's (it ended, or its lease ran
	// out).
	Save(ctx context.Context, r reservation.Reservation) (bool, error)
	// End forgets tok and frees its slot, once.
	End(ctx context.Context, tok string) error
	// Release ends tok's reservation when no replica holds its session,
	// or asks the replica that holds it to stop it and waits, bounded by
	// ctx, until its slot is free. It returns the record as it was.
	Release(ctx context.Context, tok string, code int, reason string) (reservation.Reservation, error)
	// Expire ends, once across replicas, the reservations nobody used
	// before their deadline and the sessions of replicas whose lease ran
	// out, and adopts those of the latter whose target every replica can
	// reach (Target.Shared, running or detached, with a grace): they are
	// this replica's from now on, detached until their token reconnects
	// within the grace. It returns those this call ended or adopted
	// (State "reserved", "interrupted" or "adopted"; Replica is the
	// replica that held the session).
	Expire(ctx context.Context, now time.Time) ([]Record, error)
	// List returns every record, with the replica holding each.
	List(ctx context.Context) ([]Record, error)
	// Lookup returns tok's record with its replica and target.
	Lookup(ctx context.Context, tok string) (Record, error)
	// SetTarget records where the service of tok, a session this replica
	// holds, listens; false when the record is no longer this replica's.
	SetTarget(ctx context.Context, tok string, t Target) (bool, error)
	// ReplicaAddress is where other replicas reach replica id ("" when
	// it gave none); ErrReplicaGone when its lease ran out.
	ReplicaAddress(ctx context.Context, id string) (string, error)
	// Run keeps this replica's lease and hands it the stop requests of
	// other replicas (stop is called for each) until ctx ends.
	Run(ctx context.Context, stop func(tok string, code int, reason string))
}

// Record is a shared reservation record and the replica that holds its
// session ("" for an unused reservation).
type Record struct {
	reservation.Reservation
	Replica string `json:"replica,omitempty"`
	// Target is where the session's service listens, once started.
	Target Target `json:"-"`
}

// Target is where a session's service listens, as the replicas share it.
type Target struct {
	// Network is "tcp" or "unix" ("" before the service started).
	Network string
	Address string
	// Shared: every replica can reach Address (a TCP address off this
	// host, or one the services config declares reachable). Otherwise
	// (a Unix socket, a loopback address) only the replica that started
	// the service reaches it, and others go through that replica.
	Shared bool
	// Grace is the service's reconnect grace (0: none).
	Grace time.Duration
}

// Errors of the shared state; match them with errors.Is.
var (
	// ErrUnavailable: the shared state cannot be reached; new
	// reservations and launches wait until it is back.
	ErrUnavailable = errors.New("the shared state is unavailable")
	// ErrElsewhere: the session runs on another replica.
	ErrElsewhere = errors.New("the session runs on another gateway replica")
	// ErrReplicaGone: the replica's lease ran out.
	ErrReplicaGone = errors.New("the gateway replica is gone")
)

// sharedTimeout bounds one call to the shared state.
const sharedTimeout = 5 * time.Second

// sharedCtx is the context of one call to the shared state.
func (m *Manager) sharedCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(m.base, sharedTimeout)
}

// reserveShared takes a slot in the shared state.
func (m *Manager) reserveShared(service, owner string, perUser int, opts map[string]string) (reservation.Reservation, error) {
	m.mu.Lock()
	_, known := m.held[service]
	closing := m.closing
	m.mu.Unlock()
	switch {
	case !known:
		return reservation.Reservation{}, fmt.Errorf("%w: %q", reservation.ErrUnknownService, service)
	case closing:
		return reservation.Reservation{}, ErrClosing
	}
	tok, err := reservation.NewToken()
	if err != nil {
		return reservation.Reservation{}, err
	}
	now := m.now()
	ctx, cancel := m.sharedCtx()
	defer cancel()
	r, err := m.cfg.Shared.Reserve(ctx, reservation.Reservation{Token: tok, Service: service, Options: opts,
		Created: now, Expires: now.Add(m.cfg.Timeout), Owner: owner, State: string(Reserved)}, m.cfg.Counts[service], perUser)
	if err != nil {
		return reservation.Reservation{}, err
	}
	return r, nil
}

// sharedPoll is how often a reservation waiting for a slot of the shared
// state tries again.
const sharedPoll = 100 * time.Millisecond

// reserveWaitShared waits for a slot of the shared state, trying again
// until ctx ends; this replica queues at most maxWaiters.
func (m *Manager) reserveWaitShared(ctx context.Context, service, owner string, perUser, maxWaiters int, opts map[string]string) (reservation.Reservation, error) {
	r, err := m.reserveShared(service, owner, perUser, opts)
	if !errors.Is(err, reservation.ErrNoSlot) {
		return r, err
	}
	m.mu.Lock()
	if m.sharedWaiting[service] >= maxWaiters {
		n := m.sharedWaiting[service]
		m.mu.Unlock()
		return reservation.Reservation{}, fmt.Errorf("%w: %d for %q", reservation.ErrQueueFull, n, service)
	}
	m.sharedWaiting[service]++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.sharedWaiting[service]--
		m.mu.Unlock()
	}()
	t := time.NewTicker(sharedPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return reservation.Reservation{}, fmt.Errorf("%w: still no free slot of %q after waiting: %w", reservation.ErrNoSlot, service, ctx.Err())
		case <-t.C:
		}
		r, err := m.reserveShared(service, owner, perUser, opts)
		if !errors.Is(err, reservation.ErrNoSlot) {
			return r, err
		}
	}
}

// getShared finds tok here, then in the shared state.
func (m *Manager) getShared(tok string) (reservation.Reservation, error) {
	m.mu.Lock()
	if ss, err := m.findLocked(tok); err == nil {
		r := ss.recordLocked()
		m.mu.Unlock()
		return r, nil
	}
	m.mu.Unlock()
	ctx, cancel := m.sharedCtx()
	defer cancel()
	return m.cfg.Shared.Get(ctx, tok)
}

// checkShared says what claimShared would say, without claiming.
func (m *Manager) checkShared(tok string) (reservation.Reservation, error) {
	m.mu.Lock()
	if ss, err := m.claimableLocked(tok); err == nil || !errors.Is(err, reservation.ErrUnknownToken) {
		if err != nil {
			m.mu.Unlock()
			return reservation.Reservation{}, err
		}
		r := ss.recordLocked()
		m.mu.Unlock()
		return r, nil
	}
	m.mu.Unlock()
	r, err := m.getShared(tok)
	if err != nil {
		return r, err
	}
	switch State(r.State) {
	case Claimed, Starting, Running:
		return reservation.Reservation{}, reservation.ErrBusy
	case Stopping, Ended:
		return reservation.Reservation{}, reservation.ErrEnded
	case Reserved:
		if !m.now().Before(r.Expires) {
			return reservation.Reservation{}, reservation.ErrExpiredToken
		}
	}
	return r, nil
}

// claimShared claims tok in the shared state, then here: a session
// detached on this replica is claimed again; a reservation becomes a
// session of this replica.
func (m *Manager) claimShared(tok string, maxUserTunnels int) (*Session, error) {
	m.mu.Lock()
	closing := m.closing
	_, local := m.byToken[tok]
	m.mu.Unlock()
	if closing {
		return nil, ErrClosing
	}
	if local {
		// The shared record must say what this replica last did with it
		// (detached) before the claim reads it.
		m.Sync()
	}
	ctx, cancel := m.sharedCtx()
	defer cancel()
	rec, from, err := m.cfg.Shared.Claim(ctx, tok, maxUserTunnels, m.now())
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ss, ok := m.byToken[tok]
	switch {
	case m.closing:
		err = ErrClosing
	case ok:
		var got *Session
		if got, err = m.claimLocked(tok, 0); err == nil {
			return got, nil
		}
	case from == Reserved:
		ss = m.newSessionLocked(rec)
		ss.rec.Connects, ss.rec.LastClaim = 0, time.Time{}
		ss.rec.Connects++
		ss.rec.LastClaim = m.now()
		ss.since = ss.rec.LastClaim
		m.setLocked(ss, Claimed)
		return ss, nil
	default:
		// Detached here by a replica of the same name that is gone.
		err = reservation.ErrEnded
	}
	if err != nil {
		// Hand the record back as it is here (or end it).
		if ok {
			m.saveLocked(ss)
		} else {
			m.fx.add(func() {
				ctx, cancel := m.sharedCtx()
				defer cancel()
				_ = m.cfg.Shared.End(ctx, tok)
			})
		}
		return nil, err
	}
	return ss, nil
}

// releaseShared releases a token no session of this replica holds.
func (m *Manager) releaseShared(ctx context.Context, tok string, code int, reason string) (reservation.Reservation, error) {
	return m.cfg.Shared.Release(ctx, tok, code, reason)
}

// stopRequested stops a session of this replica at another replica's
// request.
func (m *Manager) stopRequested(tok string, code int, reason string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ss, ok := m.byToken[tok]; ok {
		m.stopLocked(ss, code, reason)
	}
}

// expireShared ends what expired in the shared state and publishes it,
// and takes over the sessions this replica adopted.
func (m *Manager) expireShared() []reservation.Reservation {
	ctx, cancel := m.sharedCtx()
	defer cancel()
	gone, err := m.cfg.Shared.Expire(ctx, m.now())
	if err != nil || len(gone) == 0 {
		return nil
	}
	out := make([]reservation.Reservation, 0, len(gone))
	for _, r := range gone {
		if r.State == "adopted" {
			out = append(out, m.adopt(ctx, r))
			continue
		}
		data := map[string]any{"service": r.Service, "index": r.Index, "token_prefix": reservation.TokenPrefix(r.Token), "state": r.State}
		m.mu.Lock()
		if r.State == "interrupted" {
			m.publishLocked("session.state", r.Owner, data)
		} else {
			m.publishLocked("reservation.expired", r.Owner, data)
		}
		m.mu.Unlock()
		out = append(out, r.Reservation)
	}
	return out
}

// adopt makes a dead replica's session one of this replica's, detached
// with the Process Config.Adopt gives for its target; without one the
// session ends, interrupted. It returns the record as adopted (State
// "adopted") or ended ("interrupted").
func (m *Manager) adopt(ctx context.Context, gone Record) reservation.Reservation {
	rec, err := m.cfg.Shared.Lookup(ctx, gone.Token)
	var p Process
	if err == nil && m.cfg.Adopt != nil {
		rec.Replica = gone.Replica
		p = m.cfg.Adopt(rec)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	data := map[string]any{"service": gone.Service, "index": gone.Index, "token_prefix": reservation.TokenPrefix(gone.Token)}
	if p == nil || m.closing || m.byToken[gone.Token] != nil {
		data["state"] = "interrupted"
		m.publishLocked("session.state", gone.Owner, data)
		tok := gone.Token
		m.fx.add(func() {
			ctx, cancel := m.sharedCtx()
			defer cancel()
			_ = m.cfg.Shared.End(ctx, tok)
		})
		if p != nil {
			m.fx.add(func() {
				ctx, cancel := context.WithTimeout(m.base, m.cfg.StopTimeout)
				defer cancel()
				_ = p.Stop(ctx)
			})
		}
		r := gone.Reservation
		r.State = "interrupted"
		return r
	}
	r := rec.Reservation
	r.State = ""
	ss := m.newSessionLocked(r)
	ss.proc = p
	ss.since = m.now()
	m.setLocked(ss, Detached)
	r = ss.recordLocked()
	r.State = "adopted"
	return r
}

// describeLocked shares where ss's started service listens.
func (m *Manager) describeLocked(ss *Session) {
	sh := m.cfg.Shared
	if sh == nil || m.cfg.Describe == nil || ss.proc == nil {
		return
	}
	t, ok := m.cfg.Describe(ss.proc, ss.recordLocked())
	if !ok {
		return
	}
	tok := ss.rec.Token
	m.fx.add(func() {
		ctx, cancel := m.sharedCtx()
		defer cancel()
		_, _ = sh.SetTarget(ctx, tok, t)
	})
}

// Records returns every shared record (nil without shared state).
func (m *Manager) Records(ctx context.Context) ([]Record, error) {
	if m.cfg.Shared == nil {
		return nil, nil
	}
	return m.cfg.Shared.List(ctx)
}

// IsShared reports whether the Manager shares its state with replicas.
func (m *Manager) IsShared() bool { return m.cfg.Shared != nil }
