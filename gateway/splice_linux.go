//go:build linux

package gateway

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"wsgateway/wsframe"
)

// The zero-copy download: splice(2) moves the service's bytes from its
// socket into a pipe, the frame header is sent with MSG_MORE, and splice
// moves the pipe's bytes into the client's socket, so header and payload
// leave in one segment where they fit and the payload never enters user
// space. Both sockets are waited on by Go's netpoller through
// syscall.RawConn. Pipes are pooled and held only while data flows.
//
// Where the kernel refuses (a socket type without splice support) the
// refusal moved nothing, and the tunnel goes on with the copy path;
// TLS and wrapped connections (no RawConn) take the copy path from the
// start. WSGATEWAY_SPLICE=off in the environment turns the zero-copy path
// off, to measure the copy path.

// spliceOff turns the zero-copy path off for the whole process.
var spliceOff = os.Getenv("WSGATEWAY_SPLICE") == "off"

const (
	// pipeSize is the capacity asked for each pipe (F_SETPIPE_SZ), the
	// most one frame carries; the kernel's default (64 KiB) stays if the
	// request is refused.
	pipeSize = 256 << 10
	// pipesKept is how many idle pipes the pool keeps open.
	pipesKept  = 32
	fSetPipeSz = 1031 // F_SETPIPE_SZ
)

// The system calls, as variables so that tests can make the kernel
// refuse.
var (
	spliceIn  = func(sock, pipeW, n int) (int, error) { return spliceNB(sock, pipeW, n) }
	spliceOut = func(pipeR, sock, n int) (int, error) { return spliceNB(pipeR, sock, n) }
)

func spliceNB(from, to, n int) (int, error) {
	m, err := syscall.Splice(from, nil, to, nil, n, spliceMove|spliceNonblock)
	return int(m), err
}

const (
	spliceMove     = 0x1 // SPLICE_F_MOVE
	spliceNonblock = 0x2 // SPLICE_F_NONBLOCK
)

// sendMore sends b with MSG_MORE: the kernel holds it for what follows
// (the payload), so both leave in one segment.
func sendMore(fd int, b []byte) (int, error) {
	n, _, e := syscall.Syscall6(syscall.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		syscall.MSG_MORE|syscall.MSG_DONTWAIT|syscall.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// refused reports whether a splice error means the kernel cannot splice
// these descriptors (as opposed to a failing connection).
func refused(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS) ||
		errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, errNoPipe)
}

// pipe is a non-blocking pipe, empty whenever it is in the pool.
type pipe struct {
	r, w int
	size int
}

// pipePool keeps up to pipesKept idle pipes; open counts the pipes that
// exist (in the pool or in use).
type pipePool struct {
	free chan *pipe
	open atomic.Int64
}

var pipes = pipePool{free: make(chan *pipe, pipesKept)}

func (pp *pipePool) get() (*pipe, error) {
	select {
	case p := <-pp.free:
		return p, nil
	default:
	}
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	p := &pipe{r: fds[0], w: fds[1], size: 64 << 10}
	if n, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(p.w), fSetPipeSz, pipeSize); e == 0 {
		p.size = int(n)
	}
	pp.open.Add(1)
	return p, nil
}

// put keeps an empty pipe for later, or closes it when enough are kept.
func (pp *pipePool) put(p *pipe) {
	select {
	case pp.free <- p:
	default:
		pp.close(p)
	}
}

func (pp *pipePool) close(p *pipe) {
	_ = syscall.Close(p.r)
	_ = syscall.Close(p.w)
	pp.open.Add(-1)
}

// smallFrame: a read of the service that brings less than this is sent
// by a copy (one read, one write of header and payload), and so is the
// next one: for a message of a few bytes splice costs a system call more
// (into the pipe, the header, out of the pipe) than it saves. A read that
// brings this much switches back to splice.
const smallFrame = 16 << 10

// splicer is a tunnel's zero-copy download state; its callbacks are made
// once, so a frame allocates nothing.
type splicer struct {
	t     *tunnel
	p     *pipe // held while data flows
	full  bool  // p may hold bytes (a frame not sent whole)
	n     int   // bytes the last fill put in the pipe
	eof   bool
	err   error
	hdr   [wsframe.HeaderRoom]byte
	h     []byte     // header bytes still to send
	left  int        // payload bytes still in the pipe
	small bool       // the last frame was small: read the next by copy
	rd    pooledRead // a small read: at most smallFrame bytes
	fill  func(fd uintptr) bool
	send  func(fd uintptr) bool
}

// errNoPipe: no pipe could be made (out of descriptors); nothing was
// moved, and the copy path takes over.
var errNoPipe = errors.New("no pipe for splice")

// errOutRefused: the kernel refused to splice into the client's socket;
// the frame's payload is still in the pipe.
var errOutRefused = errors.New("splice to the client refused")

// fillFn is the service socket's RawConn callback: it splices what the
// socket has into a pipe (taken from the pool now, given back while the
// socket is empty), and returns false to wait for readability.
func (s *splicer) fillFn(fd uintptr) bool {
	for {
		if s.p == nil {
			p, err := pipes.get()
			if err != nil {
				s.err = fmt.Errorf("%w: %w", errNoPipe, err)
				return true
			}
			s.p = p
		}
		n, err := spliceIn(int(fd), s.p.w, s.p.size)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			pipes.put(s.p)
			s.p = nil
			s.t.armPark(&s.t.downPark, s.t.conn)
			return false
		case err != nil:
			s.err = err
		case n == 0:
			s.eof = true
		default:
			s.n = n
		}
		return true
	}
}

// sendFn is the client socket's RawConn callback: the header, then the
// pipe's bytes; false waits for writability. Each step forward counts as
// the client's sign of life.
func (s *splicer) sendFn(fd uintptr) bool {
	for len(s.h) > 0 {
		m, err := sendMore(int(fd), s.h)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil:
			s.err = os.NewSyscallError("sendto", err)
			return true
		}
		s.h = s.h[m:]
	}
	for s.left > 0 {
		m, err := spliceOut(s.p.r, int(fd), s.left)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return false
		case err != nil && refused(err):
			s.err = errOutRefused
			return true
		case err != nil:
			s.err = os.NewSyscallError("splice", err)
			return true
		}
		s.left -= m
		s.t.lastAlive.Store(time.Now().UnixNano())
	}
	return true
}

// download moves the service's bytes to the client with splice until the
// service ends (io.EOF, or its read error), the client cannot be written
// (errWritesOver), or the kernel refuses (errNoSplice, nothing lost:
// the copy path goes on from there), or the service stays quiet and the
// direction parks (errParked; the splicer, holding no pipe, is kept for
// when it resumes).
func (t *tunnel) download() error {
	if spliceOff || t.connRaw == nil || t.clientRaw == nil {
		return errNoSplice
	}
	s := t.spl
	if s == nil {
		s = &splicer{t: t, small: true}
		s.fill, s.send = s.fillFn, s.sendFn
		s.rd.init(t, smallFrame)
		t.spl = s
	}
	parked := false
	defer func() {
		switch {
		case parked:
			// s may be in use on the goroutine that resumed the
			// direction: hands off (it held no pipe when it parked).
		case s.p == nil:
		case s.full:
			pipes.close(s.p)
		default:
			pipes.put(s.p)
		}
	}()
	for {
		if s.small {
			n, bp, park, err := s.rd.read(nil)
			if park {
				if t.park(&t.downPark, t.connRaw) {
					parked = true
					return errParked
				}
				continue
			}
			if n > 0 {
				err = t.writeData(bp, n) // (a read brings data or an error)
			}
			if bp != nil {
				t.s.bufPool.Put(bp)
			}
			if err != nil {
				return err
			}
			s.small = n < smallFrame
			continue
		}
		s.n, s.eof, s.err = 0, false, nil
		err := t.connRaw.Read(s.fill)
		if t.disarm(&t.downPark, t.conn, err) {
			if t.park(&t.downPark, t.connRaw) {
				parked = true
				return errParked
			}
			continue
		}
		if err != nil {
			return &net.OpError{Op: "read", Net: t.conn.LocalAddr().Network(), Err: err}
		}
		switch {
		case s.err != nil && refused(s.err):
			if s.p != nil {
				pipes.put(s.p) // nothing went in
				s.p = nil
			}
			return errNoSplice
		case s.err != nil:
			return &net.OpError{Op: "read", Net: t.conn.LocalAddr().Network(), Err: os.NewSyscallError("splice", s.err)}
		case s.eof:
			return io.EOF
		}
		if t.trace {
			t.log.Trace().Int("bytes", s.n).Msg("service → client (splice)")
		}
		s.full = true
		fallback, err := t.sendPipe(s)
		if err != nil {
			return err
		}
		s.full = false
		if fallback {
			return errNoSplice
		}
		if s.small = s.n < smallFrame; s.small && s.p != nil {
			pipes.put(s.p) // empty: the frame went out whole
			s.p = nil
		}
	}
}

// sendPipe writes the frame whose payload is in the pipe, holding the
// write token; fallback reports that the kernel refused to splice into
// the client (the payload was copied instead).
func (t *tunnel) sendPipe(s *splicer) (fallback bool, err error) {
	<-t.own
	defer t.release()
	if t.dataStops() {
		return false, errWritesOver
	}
	start := wsframe.PutHeader(s.hdr[:], wsframe.OpBinary, s.n)
	s.h, s.left, s.err = s.hdr[start:], s.n, nil
	err = t.clientRaw.Write(s.send)
	if err == nil && s.err == errOutRefused {
		fallback = true
		s.err = t.copyPipe(s)
	}
	if err == nil {
		err = s.err
	}
	if err != nil {
		t.writeFailed()
		return false, errWritesOver
	}
	t.sent(s.n)
	return fallback, nil
}

// copyPipe writes the payload left in the pipe through a buffer, for a
// client socket the kernel will not splice into.
func (t *tunnel) copyPipe(s *splicer) error {
	bp := t.s.bufPool.Get().(*[]byte)
	defer t.s.bufPool.Put(bp)
	buf := *bp
	for s.left > 0 {
		m, err := syscall.Read(s.p.r, buf[:min(s.left, len(buf))])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("read", err)
		}
		if m <= 0 {
			return io.ErrUnexpectedEOF
		}
		if _, err := t.client.Write(buf[:m]); err != nil {
			return err
		}
		s.left -= m
	}
	return nil
}

// pipesOpen is how many pipes exist (kept in the pool or in use).
func pipesOpen() int { return int(pipes.open.Load()) }

// setSpliceOff sets spliceOff and returns what restores it (tests).
func setSpliceOff(off bool) func() {
	old := spliceOff
	spliceOff = off
	return func() { spliceOff = old }
}

// pipesIdle is how many pipes wait in the pool.
func pipesIdle() int { return len(pipes.free) }
