package rfb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
)

// Mode is what a filtered viewer may send to the desktop.
type Mode int

const (
	// ViewOnly drops every input message (KeyEvent, PointerEvent,
	// ClientCutText, QEMU key events, desktop resizes and xvp power
	// actions) and refuses a message type it does not know.
	ViewOnly Mode = iota
	// Control passes the viewer's messages unchanged.
	Control
)

// String is the mode's name in the API: "view" or "control".
func (m Mode) String() string {
	if m == Control {
		return "control"
	}
	return "view"
}

// ErrRefused: a filtered viewer sent what its mode does not allow (an
// unknown message type, a security type other than None); match with
// errors.Is.
var ErrRefused = errors.New("RFB message refused")

// Client-to-server message types of RFB (RFC 6143 §7.5 and the
// registered extensions noVNC sends).
const (
	msgSetPixelFormat       = 0
	msgSetEncodings         = 2
	msgFramebufferUpdateReq = 3
	msgKeyEvent             = 4
	msgPointerEvent         = 5
	msgClientCutText        = 6
	msgEnableContinuous     = 150
	msgClientFence          = 248
	msgSetDesktopSize       = 251
	msgXvp                  = 252
	msgQEMU                 = 255
)

// maxFenceData is the most payload a ClientFence may carry (RFB
// community wiki: "at most 64 bytes").
const maxFenceData = 64

// filterState is where the client's stream is.
type filterState int

const (
	fVersion  filterState = iota // the client's 12-byte ProtocolVersion
	fSecurity                    // its choice of security type (3.7, 3.8)
	fInit                        // ClientInit: the shared flag
	fMessages                    // normal messages
	fRefused                     // something was refused: nothing more passes
)

// FilterConn wraps a connection to a VNC server (which, or whose
// NoneConn, offers security type None) and filters what the client
// writes to it. It parses the client's handshake, forces ClientInit's
// shared flag to 1 (a viewer never disconnects the others), and then, in
// ViewOnly mode, parses each client message: those that only ask for
// pixels pass, input is dropped, and an unknown type refuses the viewer:
// Write returns an error wrapping ErrRefused and OnRefuse is called with
// the reason. Reads pass through unchanged.
//
// FilterConn does not implement syscall.Conn: a splice sees a generic
// connection.
type FilterConn struct {
	net.Conn
	mode Mode
	// OnRefuse, when set, is called once with the reason a viewer was
	// refused, before Write returns the error.
	OnRefuse func(reason string)

	mu      sync.Mutex
	state   filterState
	hdr     []byte // a message (or handshake) header collected so far
	pass    int    // bytes of the current message still to forward
	skip    int    // bytes of the current message still to drop
	out     []byte // what this Write forwards
	dropped int64  // messages dropped
	reason  string
}

// NewFilterConn filters what is written to c as mode says.
func NewFilterConn(c net.Conn, mode Mode) *FilterConn {
	return &FilterConn{Conn: c, mode: mode}
}

// Mode is the connection's mode.
func (f *FilterConn) Mode() Mode { return f.mode }

// Dropped is how many input messages were dropped so far.
func (f *FilterConn) Dropped() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dropped
}

// Write filters p and forwards what passes. It reports all of p written
// unless the viewer is refused.
func (f *FilterConn) Write(p []byte) (int, error) {
	f.mu.Lock()
	if f.state == fRefused {
		err := fmt.Errorf("%w: %s", ErrRefused, f.reason)
		f.mu.Unlock()
		return 0, err
	}
	f.out = f.out[:0]
	refused := f.feed(p)
	out := f.out
	reason := f.reason
	f.mu.Unlock()
	if len(out) > 0 {
		if _, err := f.Conn.Write(out); err != nil {
			return 0, err
		}
	}
	if refused {
		if f.OnRefuse != nil {
			f.OnRefuse(reason)
		}
		return 0, fmt.Errorf("%w: %s", ErrRefused, reason)
	}
	return len(p), nil
}

// CloseWrite half-closes the server connection when it can be.
func (f *FilterConn) CloseWrite() error {
	if cw, ok := f.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// feed consumes p, appending what passes to f.out; it reports whether
// the viewer was refused.
func (f *FilterConn) feed(p []byte) bool {
	for len(p) > 0 {
		switch {
		case f.pass > 0:
			k := min(f.pass, len(p))
			f.out = append(f.out, p[:k]...)
			f.pass -= k
			p = p[k:]
			continue
		case f.skip > 0:
			k := min(f.skip, len(p))
			f.skip -= k
			p = p[k:]
			continue
		case f.state == fMessages && f.mode == Control:
			f.out = append(f.out, p...)
			return false
		}
		// Collect one byte into the header, then see whether it is whole.
		f.hdr = append(f.hdr, p[0])
		p = p[1:]
		if f.step() {
			return true
		}
	}
	return false
}

// refuse ends the viewer with reason.
func (f *FilterConn) refuse(reason string) bool {
	f.state = fRefused
	f.reason = reason
	f.hdr = nil
	return true
}

// step acts on f.hdr once it holds enough to decide; it reports a
// refusal.
func (f *FilterConn) step() bool {
	h := f.hdr
	switch f.state {
	case fVersion:
		if len(h) < 12 {
			return false
		}
		v, err := parseVersion(h)
		if err != nil || !digits(h[4:7]) || !digits(h[8:11]) {
			return f.refuse("the viewer did not send an RFB protocol version")
		}
		f.out = append(f.out, h...)
		f.hdr = f.hdr[:0]
		if v == v33 {
			f.state = fInit
		} else {
			f.state = fSecurity
		}
	case fSecurity:
		if h[0] != SecNone {
			return f.refuse(fmt.Sprintf("a shared viewer connects with security type None (1), not %d", h[0]))
		}
		f.out = append(f.out, h[0])
		f.hdr = f.hdr[:0]
		f.state = fInit
	case fInit:
		// The shared flag: 1, whatever the viewer asked.
		f.out = append(f.out, 1)
		f.hdr = f.hdr[:0]
		f.state = fMessages
	case fMessages:
		return f.message()
	}
	return false
}

// message decides on a client message once its header is complete:
// forward, drop or refuse.
func (f *FilterConn) message() bool {
	h := f.hdr
	forward := func(total int) {
		f.out = append(f.out, h...)
		f.pass = total - len(h)
		f.hdr = f.hdr[:0]
	}
	drop := func(total int) {
		f.skip = total - len(h)
		f.dropped++
		f.hdr = f.hdr[:0]
	}
	switch h[0] {
	case msgSetPixelFormat:
		forward(20)
	case msgSetEncodings:
		if len(h) < 4 {
			return false
		}
		forward(4 + 4*int(binary.BigEndian.Uint16(h[2:4])))
	case msgFramebufferUpdateReq, msgEnableContinuous:
		forward(10)
	case msgKeyEvent:
		drop(8)
	case msgPointerEvent:
		drop(6)
	case msgClientCutText:
		if len(h) < 8 {
			return false
		}
		// A negative length is the extended clipboard's: |length| bytes.
		n := int64(int32(binary.BigEndian.Uint32(h[4:8])))
		if n < 0 {
			n = -n
		}
		drop(8 + int(n))
	case msgClientFence:
		if len(h) < 9 {
			return false
		}
		if h[8] > maxFenceData {
			return f.refuse(fmt.Sprintf("ClientFence with %d bytes of data (at most %d)", h[8], maxFenceData))
		}
		forward(9 + int(h[8]))
	case msgSetDesktopSize:
		if len(h) < 8 {
			return false
		}
		drop(8 + 16*int(h[6]))
	case msgXvp:
		drop(4)
	case msgQEMU:
		if len(h) < 2 {
			return false
		}
		if h[1] != 0 {
			return f.refuse(fmt.Sprintf("QEMU client message subtype %d is not allowed on a view-only share", h[1]))
		}
		drop(12)
	default:
		return f.refuse(fmt.Sprintf("RFB message type %d is not allowed on a view-only share", h[0]))
	}
	return false
}

// digits reports whether b is all ASCII digits.
func digits(b []byte) bool {
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
