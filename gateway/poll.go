package gateway

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// Parking: an idle tunnel holds no goroutine. Each direction of a tunnel
// (client to service, service to client) runs on a goroutine while its
// socket has data; when the socket has been quiet for parkAfter, the
// direction registers the socket with the process's poller (poll_linux.go)
// and its goroutine ends. The first byte (or hang-up) on the socket
// resumes the direction on a new goroutine, with a fresh, small stack;
// nothing else is kept but the tunnel's own state, and no buffer or pipe
// is held while parked.
//
// The wait for parkAfter is a read deadline, set by the read callback
// just before the goroutine would block and cleared as soon as the wait
// ends, so no read but the readiness wait ever sees it. A parked
// direction is not in Go's netpoller, so nothing that Go would wake it
// for (a close of its socket, a deadline) reaches it: every path that
// ends a tunnel sets t.initiated first and calls t.wake after (closeWith,
// requestClose, writeFailed, halfCloseService), and a direction never
// parks once t.initiated is set, checking it again after it has parked,
// so a close that comes while it parks still wakes it. The close timeout
// of the service side is a timer that closes the connection, not a
// deadline, for the same reason.
//
// Where there is no poller (other systems, WSGATEWAY_PARK=off, or the
// poller could not be made) the directions wait on their goroutines as
// before.

// defaultParkAfter is how long a direction waits for its socket on its
// goroutine before it parks: long enough that a tunnel carrying traffic
// (a desktop redrawn, keys typed) keeps its goroutines, short enough that
// a burst of new tunnels left idle does not hold thousands of stacks at
// once. Resuming costs a few microseconds once per quiet spell.
const defaultParkAfter = 100 * time.Millisecond

// parkAfterNs overrides defaultParkAfter when not zero (tests).
var parkAfterNs atomic.Int64

func parkAfter() time.Duration {
	if d := parkAfterNs.Load(); d > 0 {
		return time.Duration(d)
	}
	return defaultParkAfter
}

// parkOff turns parking off for the whole process (to measure without it).
var parkOff = os.Getenv("WSGATEWAY_PARK") == "off"

// parkDir is the parking state of one direction of a tunnel.
type parkDir struct {
	t  *tunnel
	up bool // client → service; otherwise service → client

	parked atomic.Bool // waiting in the poller, no goroutine

	// the direction's goroutine only
	armed bool // the park deadline is set on the socket
	off   bool // parking failed: this direction waits on its goroutine

	// under the poller's mutex
	key        uint64 // the events' key (0: never registered)
	registered bool   // the socket is in the epoll set (armed or not)
}

// wake resumes d on a new goroutine if it is parked, and reports whether
// it did. Whoever wakes it first (an event, a close) resumes it; the
// others find it running.
func (d *parkDir) wake() bool {
	if !d.parked.CompareAndSwap(true, false) {
		return false
	}
	getPoller().forget(d)
	if d.up {
		go d.t.upLoop()
	} else {
		go d.t.downLoop()
	}
	return true
}

// wake resumes both directions of t where they are parked: after every
// change that ends the tunnel (a close, a close timeout armed), since a
// parked direction would not see it.
func (t *tunnel) wake() {
	t.upPark.wake()
	t.downPark.wake()
}

// parking reports whether d may park at all.
func (t *tunnel) parking(d *parkDir) bool {
	return !parkOff && !d.off && getPoller() != nil
}

// armPark is called by a read callback that found c's socket empty and
// is about to wait: the first time in a wait, it sets the park deadline.
func (t *tunnel) armPark(d *parkDir, c net.Conn) {
	if d.armed || !t.parking(d) || t.initiated.Load() {
		return
	}
	d.armed = true
	_ = c.SetReadDeadline(time.Now().Add(parkAfter()))
}

// disarm clears the park deadline after a readiness wait that returned
// err, and reports whether it was the park deadline that ended the wait.
func (t *tunnel) disarm(d *parkDir, c net.Conn, err error) (expired bool) {
	if !d.armed {
		return false
	}
	d.armed = false
	_ = c.SetReadDeadline(time.Time{})
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// park registers rc's socket with the poller for d. true: d is parked (or
// was already resumed on another goroutine), and the caller's goroutine
// must return without touching the direction's state again; false: d
// goes on waiting on this goroutine (the tunnel is ending, or parking
// failed).
func (t *tunnel) park(d *parkDir, rc syscall.RawConn) bool {
	p := getPoller()
	if p == nil || t.initiated.Load() {
		return false
	}
	d.parked.Store(true)
	if err := p.register(d, rc); err != nil {
		if !d.parked.CompareAndSwap(true, false) {
			return true // woken meanwhile: it runs elsewhere now
		}
		if !errors.Is(err, errPollClosed) {
			d.off = true
			t.log.Debug().Err(err).Msg("cannot park an idle tunnel; it keeps its goroutine")
		}
		return false
	}
	// A close between the check above and the registration found the
	// direction running and did not wake it: wake it now.
	if t.initiated.Load() {
		d.wake()
	}
	return true
}
