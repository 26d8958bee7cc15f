// Package session owns every session's whole life, from the reservation
// of a slot to the moment the slot is free again:
//
//	reserved → claimed → starting → running ⇄ detached → stopping → ended
//
// One Manager holds every session under one lock. Each transition is a
// method that says which states it leaves from; what the world must hear
// of it (the store, the event hub) is queued under the lock and told in
// order after the lock is released. REST, websockets, JSON-RPC and the
// reaper all drive sessions through these methods, so a release that
// lands at any moment of a launch either wins (the launch is aborted,
// nothing is left running and the slot is freed once) or comes after it
// (the running service is stopped).
//
// The package starts no process and knows no websocket: the caller
// starts the service and hands the session a Process, and hands it the
// splice as a Tunnel.
package session

import (
	"context"
	"errors"
	"time"

	"wsgateway/reservation"
)

// State is where a session is in its life.
type State string

// The states of a session.
const (
	// Reserved: a slot is held; no websocket has used the token yet.
	Reserved State = "reserved"
	// Claimed: a websocket holds the token; its service is not started
	// yet (first connection) or is still running (a reconnection).
	Claimed State = "claimed"
	// Starting: the service is being started for the websocket.
	Starting State = "starting"
	// Running: the websocket is spliced to the running service.
	Running State = "running"
	// Detached: the service runs with no websocket, waiting for a
	// reconnection within the service's reconnect grace.
	Detached State = "detached"
	// Stopping: the service is being stopped; the slot frees when it has.
	Stopping State = "stopping"
	// Ended: the slot is free; the session is forgotten.
	Ended State = "ended"
)

// Errors of the transitions; match them with errors.Is.
var (
	// ErrReleased: the session was released (or stopped) while the caller
	// was working for it; the caller stops what it was doing.
	ErrReleased = errors.New("the reservation was released")
	// ErrState: a transition asked from a state it does not leave from.
	ErrState = errors.New("session is not in a state for this")
	// ErrClosing: the gateway is shutting down.
	ErrClosing = errors.New("the gateway is shutting down")
	// ErrUserTunnels: the owner already has as many open websockets as
	// allowed.
	ErrUserTunnels = errors.New("too many open sessions for this user")
)

// Process is a started service as the session sees it.
type Process interface {
	// Stop stops the service (TERM, grace, KILL of its process group),
	// bounded by ctx.
	Stop(ctx context.Context) error
	// Exited is closed when the service's process has exited.
	Exited() <-chan struct{}
	// Detached reports a service its script handed to a daemon or a
	// scheduler (the script exited 0 after its ready line): it is not
	// kept for reconnections.
	Detached() bool
}

// Tunnel is the splice of a session's websocket.
type Tunnel interface {
	// Close ends the websocket with code and reason. It must not block
	// for long.
	Close(code int, reason string)
	// Bytes is what went through so far, each way.
	Bytes() (in, out int64)
}

// Session is one reservation and, once a websocket has used it, its
// service and tunnel. Its fields are guarded by its Manager's lock; its
// methods are the transitions.
type Session struct {
	m   *Manager
	rec reservation.Reservation // Token, Service, Index, Owner, Options are fixed
	st  State

	starting bool    // a start is in flight (between BeginStart and Started/StartFailed)
	kept     bool    // left running at shutdown for the next gateway (StopAll)
	proc     Process // the started service, once Started
	tun      Tunnel  // the websocket's splice while Running
	remote   string
	since    time.Time // first claim
	bytesIn  int64     // of earlier tunnels
	bytesOut int64

	stopCode   int
	stopReason string

	detail map[string]any // what Note said last (a cluster job's queue place)

	ctx    context.Context // cancelled when the session starts stopping
	cancel context.CancelFunc
	done   chan struct{} // closed when Ended
}

// Token is the session's token.
func (ss *Session) Token() string { return ss.rec.Token }

// Service is the name of the session's service.
func (ss *Session) Service() string { return ss.rec.Service }

// Index is the session's slot index in its service.
func (ss *Session) Index() int { return ss.rec.Index }

// Options are the reservation's options.
func (ss *Session) Options() map[string]string { return ss.rec.Options }

// Context is cancelled as soon as the session starts stopping; work done
// for the session (a start, a dial) runs under it.
func (ss *Session) Context() context.Context { return ss.ctx }

// Done is closed when the session has ended and its slot is free.
func (ss *Session) Done() <-chan struct{} { return ss.done }

// State is the session's current state.
func (ss *Session) State() State {
	ss.m.mu.Lock()
	defer ss.m.mu.Unlock()
	return ss.st
}

// Process is the started service (nil before it started).
func (ss *Session) Process() Process {
	ss.m.mu.Lock()
	defer ss.m.mu.Unlock()
	return ss.proc
}

// record is a copy of the session's reservation record.
func (ss *Session) record() reservation.Reservation {
	ss.m.mu.Lock()
	defer ss.m.mu.Unlock()
	return ss.recordLocked()
}

func (ss *Session) recordLocked() reservation.Reservation {
	r := ss.rec
	r.State = string(ss.st)
	return r
}

// BeginStart: claimed → starting. The returned context is cancelled when
// the session is released during the start; the caller starts the
// service under it and then calls Started or StartFailed, exactly once.
func (ss *Session) BeginStart() (context.Context, error) {
	m := ss.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if ss.st == Stopping || ss.st == Ended {
		return nil, ErrReleased
	}
	if ss.st != Claimed || ss.proc != nil || ss.starting {
		return nil, ErrState
	}
	ss.starting = true
	m.setLocked(ss, Starting)
	return ss.ctx, nil
}

// Started hands the session its started service. When the session was
// released during the start it returns ErrReleased and stops p itself:
// the caller must not use p.
func (ss *Session) Started(p Process) error {
	m := ss.m
	m.mu.Lock()
	if !ss.starting {
		m.mu.Unlock()
		return ErrState
	}
	ss.starting = false
	ss.proc = p
	if ss.st == Stopping {
		m.launchStopLocked(ss)
		m.mu.Unlock()
		return ErrReleased
	}
	m.describeLocked(ss)
	m.mu.Unlock()
	return nil
}

// StartFailed says the start failed: the session ends and frees its slot.
func (ss *Session) StartFailed(reason string) {
	m := ss.m
	m.mu.Lock()
	if !ss.starting {
		m.mu.Unlock()
		return
	}
	ss.starting = false
	if ss.st != Stopping {
		m.stopLocked(ss, 0, reason)
	} else {
		m.launchStopLocked(ss)
	}
	m.mu.Unlock()
}

// Attach: claimed or starting → running, with t as the websocket's
// splice. It fails with ErrReleased when the session was released
// meanwhile (the caller closes t).
func (ss *Session) Attach(t Tunnel, remote string) error {
	m := ss.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if ss.st == Stopping || ss.st == Ended {
		return ErrReleased
	}
	if (ss.st != Claimed && ss.st != Starting) || ss.proc == nil || ss.starting {
		return ErrState
	}
	ss.tun = t
	ss.remote = remote
	m.setLocked(ss, Running)
	return nil
}

// Detach says the websocket ended (t is its tunnel, nil when none was
// attached). A running service whose service sets a reconnect grace is
// kept, detached, for a reconnection within grace; otherwise the session
// stops. A session already stopping is left to its stop.
func (ss *Session) Detach(t Tunnel, grace time.Duration) {
	m := ss.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if t != nil && ss.tun == t {
		in, out := t.Bytes()
		ss.bytesIn += in
		ss.bytesOut += out
		ss.tun = nil
	}
	if ss.kept {
		return // left running for the next gateway (StopAll)
	}
	switch ss.st {
	case Claimed, Starting, Running:
	default:
		return
	}
	if ss.starting {
		// The start finishes first; its Started or StartFailed decides.
		return
	}
	if grace > 0 && ss.proc != nil && !exited(ss.proc) && !ss.proc.Detached() && !m.closing {
		ss.rec.Expires = m.now().Add(grace)
		m.setLocked(ss, Detached)
		return
	}
	m.stopLocked(ss, 0, "websocket closed")
}

// Stop stops the session now, whatever its state (a reservation not yet
// used simply ends): its websocket, if any, is closed with code and
// reason, its service stopped, its slot freed. It does not wait; see
// Done.
func (ss *Session) Stop(code int, reason string) {
	m := ss.m
	m.mu.Lock()
	m.stopLocked(ss, code, reason)
	m.mu.Unlock()
}

func exited(p Process) bool {
	select {
	case <-p.Exited():
		return true
	default:
		return false
	}
}

// Note tells what a session is waiting for, or where its service runs,
// without changing its state: detail (e.g. a cluster job's "job_id",
// "reason" and "position") is published with a session.state event of
// the current state and shown in the status until the next Note. It is
// dropped silently once the session is stopping.
func (ss *Session) Note(detail map[string]any) {
	m := ss.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if ss.st == Stopping || ss.st == Ended {
		return
	}
	d := make(map[string]any, len(detail))
	for k, v := range detail {
		d[k] = v
	}
	ss.detail = d
	ev := map[string]any{}
	for k, v := range d {
		ev[k] = v
	}
	ev["service"], ev["index"] = ss.rec.Service, ss.rec.Index
	ev["token_prefix"], ev["state"] = reservation.TokenPrefix(ss.rec.Token), string(ss.st)
	m.publishLocked("session.state", ss.rec.Owner, ev)
}
