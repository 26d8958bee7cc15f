//go:build linux

package gateway

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
)

// The parking poller: one epoll instance for the whole process, in which
// the tunnels' idle directions wait without a goroutine (poll.go says
// when a direction parks and how it is woken). The epoll descriptor is
// itself waited on by Go's netpoller, so no thread blocks in epoll_wait:
// one goroutine, woken when a parked socket becomes readable (or is
// hung up), takes the ready events without blocking and resumes each
// direction on a new goroutine.
//
// Every socket is registered EPOLLONESHOT: after one event it stays in
// the set, disabled, until it parks again (EPOLL_CTL_MOD) or is closed
// (the kernel drops a closed socket from the set by itself). Events
// carry a direction's key, never a descriptor or a pointer, so an event
// that comes late (the direction was woken another way, or parked again
// since) resumes at most a direction that was parked, which is harmless:
// a resumed direction looks at its socket before it does anything.

type poller struct {
	epfd int
	f    *os.File // the epoll descriptor, for Go's netpoller

	mu      sync.Mutex
	parked  map[uint64]*parkDir // by key
	nextKey uint64
}

var (
	thePoller   *poller
	pollerErr   error
	pollerStart sync.Once
)

// getPoller returns the process's poller, started on first use, or nil
// when it cannot be started (the tunnels then never park).
func getPoller() *poller {
	pollerStart.Do(func() { thePoller, pollerErr = newPoller() })
	return thePoller
}

func newPoller() (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		_ = syscall.Close(epfd)
		return nil, os.NewSyscallError("fcntl", err)
	}
	// A non-blocking descriptor given to os.NewFile is waited on by the
	// netpoller (an epoll descriptor is readable while it has events).
	f := os.NewFile(uintptr(epfd), "tunnel-poller")
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("tunnel poller: %w", err)
	}
	p := &poller{epfd: epfd, f: f, parked: map[uint64]*parkDir{}}
	go p.loop(rc)
	return p, nil
}

// loop takes the ready events whenever the epoll descriptor is readable.
// It runs for the life of the process (the poller is shared by every
// server in it and holds one descriptor).
func (p *poller) loop(rc syscall.RawConn) {
	var events [128]syscall.EpollEvent
	var woken []*parkDir
	take := func(uintptr) bool {
		for {
			n, err := syscall.EpollWait(p.epfd, events[:], 0)
			if err == syscall.EINTR {
				continue
			}
			if err != nil || n <= 0 {
				return false // wait for the next event
			}
			woken = woken[:0]
			p.mu.Lock()
			for _, ev := range events[:n] {
				if d := p.parked[eventKey(&ev)]; d != nil {
					woken = append(woken, d)
				}
			}
			p.mu.Unlock()
			for _, d := range woken {
				d.wake()
			}
			clear(woken)
			if n < len(events) {
				return false
			}
		}
	}
	for {
		// take never returns true: Read returns only if the descriptor
		// fails, which an epoll descriptor that is never closed does not.
		if err := rc.Read(take); err != nil {
			return
		}
	}
}

// eventKey and setEventKey keep a direction's 64-bit key in the event's
// user data (the Fd and Pad words of syscall.EpollEvent).
func eventKey(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

func setEventKey(ev *syscall.EpollEvent, key uint64) {
	ev.Fd, ev.Pad = int32(uint32(key)), int32(uint32(key>>32))
}

// errPollClosed: the socket was closed before it could be registered.
var errPollClosed = errors.New("socket closed before parking")

// register puts d's socket in the set, armed for one event. It runs in
// rc.Control, so the descriptor cannot be closed (and its number reused)
// meanwhile.
func (p *poller) register(d *parkDir, rc syscall.RawConn) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if d.key == 0 {
		p.nextKey++
		d.key = p.nextKey
	}
	p.parked[d.key] = d
	var opErr error
	err := rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
		setEventKey(&ev, d.key)
		op := syscall.EPOLL_CTL_MOD
		if !d.registered {
			op = syscall.EPOLL_CTL_ADD
		}
		opErr = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
		if opErr == syscall.EEXIST {
			opErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		} else if opErr == syscall.ENOENT {
			opErr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
		if opErr == nil {
			d.registered = true
		}
	})
	if err == nil && opErr != nil {
		err = os.NewSyscallError("epoll_ctl", opErr)
	}
	if err != nil {
		delete(p.parked, d.key)
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) || errors.Is(err, syscall.EBADF) {
			return errPollClosed
		}
		return err
	}
	return nil
}

// forget drops d from the parked directions (it was woken).
func (p *poller) forget(d *parkDir) {
	p.mu.Lock()
	delete(p.parked, d.key)
	p.mu.Unlock()
}

// parkedCount is how many directions wait in the poller (tests, status).
func (p *poller) parkedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}

// pollerFDs is the number of descriptors the poller holds (tests).
func pollerFDs() int {
	if thePoller == nil {
		return 0
	}
	return 1
}
