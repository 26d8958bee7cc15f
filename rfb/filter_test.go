package rfb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
)

// captureConn is a net.Conn whose writes are kept.
type captureConn struct {
	net.Conn
	mu      sync.Mutex
	got     bytes.Buffer
	closed  bool
	halfOff bool
	failW   error
}

func (c *captureConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failW != nil {
		return 0, c.failW
	}
	return c.got.Write(p)
}

func (c *captureConn) Close() error { c.closed = true; return nil }

func (c *captureConn) CloseWrite() error { c.halfOff = true; return nil }

func (c *captureConn) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.got.Bytes()...)
}

var hs38 = []byte("RFB 003.008\n\x01\x00") // version, None, ClientInit(exclusive)
var hs38Out = []byte("RFB 003.008\n\x01\x01")

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func keyEvent(down byte, sym uint32) []byte {
	b := []byte{4, down, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:], sym)
	return b
}

func pointer(mask byte, x, y uint16) []byte {
	b := []byte{5, mask, 0, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], x)
	binary.BigEndian.PutUint16(b[4:], y)
	return b
}

func cutText(n int32, body string) []byte {
	b := []byte{6, 0, 0, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[4:], uint32(n))
	return append(b, body...)
}

func setEncodings(encs ...int32) []byte {
	b := []byte{2, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], uint16(len(encs)))
	for _, e := range encs {
		b = binary.BigEndian.AppendUint32(b, uint32(e))
	}
	return b
}

var (
	fbur        = []byte{3, 1, 0, 0, 0, 0, 4, 0, 3, 0}
	pixelFormat = cat([]byte{0, 0, 0, 0}, bytes.Repeat([]byte{7}, 16))
	contUpdates = []byte{150, 1, 0, 0, 0, 0, 4, 0, 3, 0}
	xvp         = []byte{252, 0, 1, 2}
	qemuKey     = []byte{255, 0, 0, 1, 0, 0, 0, 0x41, 0, 0, 0, 0x1e}
)

func fence(n int) []byte {
	return cat([]byte{248, 0, 0, 0, 0, 0, 0, 1, byte(n)}, bytes.Repeat([]byte{9}, n))
}

func desktopSize(screens int) []byte {
	return cat([]byte{251, 0, 4, 0, 3, 0, byte(screens), 0}, bytes.Repeat([]byte{1}, 16*screens))
}

func TestFilterConn(t *testing.T) {
	tests := []struct {
		name    string
		mode    Mode
		in      []byte
		want    []byte
		dropped int64
		refuse  string // part of the reason; "" when none
	}{
		{"handshake 3.8 forces shared", ViewOnly, hs38, hs38Out, 0, ""},
		{"handshake 3.7", ViewOnly, []byte("RFB 003.007\n\x01\x00"), []byte("RFB 003.007\n\x01\x01"), 0, ""},
		{"handshake 3.3 has no security choice", ViewOnly, []byte("RFB 003.003\n\x00"), []byte("RFB 003.003\n\x01"), 0, ""},
		{"shared flag kept at 1", ViewOnly, []byte("RFB 003.008\n\x01\x01"), hs38Out, 0, ""},
		{"control forces shared too", Control, hs38, hs38Out, 0, ""},
		{"bad version", ViewOnly, []byte("HTTP/1.1 200\n\x01\x00"), nil, 0, "protocol version"},
		{"security VncAuth refused", ViewOnly, []byte("RFB 003.008\n\x02"), []byte("RFB 003.008\n"), 0, "security type None (1), not 2"},
		{"security 0 refused", Control, []byte("RFB 003.008\n\x00"), []byte("RFB 003.008\n"), 0, "not 0"},
		{"pixel requests pass", ViewOnly, cat(hs38, pixelFormat, setEncodings(0, 1, -223, 7), fbur, contUpdates, fence(3)),
			cat(hs38Out, pixelFormat, setEncodings(0, 1, -223, 7), fbur, contUpdates, fence(3)), 0, ""},
		{"no encodings", ViewOnly, cat(hs38, setEncodings(), fbur), cat(hs38Out, setEncodings(), fbur), 0, ""},
		{"fence of 64 passes", ViewOnly, cat(hs38, fence(64), fbur), cat(hs38Out, fence(64), fbur), 0, ""},
		{"fence of 65 refused", ViewOnly, cat(hs38, fence(65)), hs38Out, 0, "ClientFence with 65 bytes"},
		{"keys dropped", ViewOnly, cat(hs38, keyEvent(1, 'a'), fbur, keyEvent(0, 'a')), cat(hs38Out, fbur), 2, ""},
		{"pointer dropped", ViewOnly, cat(hs38, pointer(1, 10, 20), pointer(0, 10, 20), fbur), cat(hs38Out, fbur), 2, ""},
		{"cut text dropped", ViewOnly, cat(hs38, cutText(5, "touch"), fbur), cat(hs38Out, fbur), 1, ""},
		{"empty cut text dropped", ViewOnly, cat(hs38, cutText(0, ""), fbur), cat(hs38Out, fbur), 1, ""},
		{"extended cut text dropped", ViewOnly, cat(hs38, cutText(-4, "\x10\x00\x00\x01"), fbur), cat(hs38Out, fbur), 1, ""},
		{"desktop size dropped", ViewOnly, cat(hs38, desktopSize(2), fbur), cat(hs38Out, fbur), 1, ""},
		{"desktop size without screens dropped", ViewOnly, cat(hs38, desktopSize(0), fbur), cat(hs38Out, fbur), 1, ""},
		{"xvp dropped", ViewOnly, cat(hs38, xvp, fbur), cat(hs38Out, fbur), 1, ""},
		{"qemu key dropped", ViewOnly, cat(hs38, qemuKey, fbur), cat(hs38Out, fbur), 1, ""},
		{"qemu audio refused", ViewOnly, cat(hs38, []byte{255, 1, 0, 0}), hs38Out, 0, "QEMU client message subtype 1"},
		{"unknown type refused", ViewOnly, cat(hs38, fbur, []byte{7, 0, 0}), cat(hs38Out, fbur), 0, "RFB message type 7"},
		{"gii refused", ViewOnly, cat(hs38, []byte{253, 0}), hs38Out, 0, "type 253"},
		{"type 1 refused", ViewOnly, cat(hs38, []byte{1}), hs38Out, 0, "type 1 "},
		{"input after a refusal is not passed", ViewOnly, cat(hs38, []byte{9}, fbur), hs38Out, 0, "type 9"},
		{"control passes input", Control, cat(hs38, keyEvent(1, 'a'), pointer(1, 1, 1), cutText(2, "hi"), []byte{7, 8, 9}),
			cat(hs38Out, keyEvent(1, 'a'), pointer(1, 1, 1), cutText(2, "hi"), []byte{7, 8, 9}), 0, ""},
	}
	for _, tc := range tests {
		for _, chunk := range []int{0, 1, 3} { // 0: all at once
			name := tc.name
			if chunk > 0 {
				name += "/chunks"
			}
			t.Run(name, func(t *testing.T) {
				cc := &captureConn{}
				f := NewFilterConn(cc, tc.mode)
				var reasons []string
				f.OnRefuse = func(r string) { reasons = append(reasons, r) }
				var werr error
				in := tc.in
				for len(in) > 0 && werr == nil {
					k := len(in)
					if chunk > 0 {
						k = min(chunk, len(in))
					}
					var n int
					n, werr = f.Write(in[:k])
					if werr == nil && n != k {
						t.Fatalf("Write reported %d of %d bytes", n, k)
					}
					in = in[k:]
				}
				if got := cc.bytes(); !bytes.Equal(got, tc.want) {
					t.Errorf("forwarded\n %q\nwant\n %q", got, tc.want)
				}
				if got := f.Dropped(); got != tc.dropped {
					t.Errorf("Dropped() = %d, want %d", got, tc.dropped)
				}
				if tc.refuse == "" {
					if werr != nil || len(reasons) != 0 {
						t.Fatalf("refused: %v %q", werr, reasons)
					}
					return
				}
				if !errors.Is(werr, ErrRefused) || !strings.Contains(werr.Error(), tc.refuse) {
					t.Errorf("Write error %v, want ErrRefused with %q", werr, tc.refuse)
				}
				if len(reasons) != 1 || !strings.Contains(reasons[0], tc.refuse) {
					t.Errorf("OnRefuse called with %q, want once with %q", reasons, tc.refuse)
				}
				// Once refused, nothing more passes and OnRefuse is not
				// called again.
				before := len(cc.bytes())
				if n, err := f.Write(fbur); n != 0 || !errors.Is(err, ErrRefused) {
					t.Errorf("Write after refusal = %d, %v", n, err)
				}
				if len(cc.bytes()) != before || len(reasons) != 1 {
					t.Errorf("a write after the refusal passed bytes or refused again")
				}
			})
		}
	}
}

func TestFilterConnMisc(t *testing.T) {
	if ViewOnly.String() != "view" || Control.String() != "control" {
		t.Errorf("mode names %q %q", ViewOnly, Control)
	}
	cc := &captureConn{}
	f := NewFilterConn(cc, Control)
	if f.Mode() != Control {
		t.Errorf("Mode() = %v", f.Mode())
	}
	if err := f.CloseWrite(); err != nil || !cc.halfOff {
		t.Errorf("CloseWrite: %v, passed %v", err, cc.halfOff)
	}
	// Without CloseWrite on the inner connection it is a no-op.
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if err := NewFilterConn(p1, ViewOnly).CloseWrite(); err != nil {
		t.Errorf("CloseWrite on a pipe: %v", err)
	}
	// A failing server write is the Write's error, not a refusal.
	boom := errors.New("boom")
	cc.failW = boom
	if n, err := f.Write([]byte("RFB 003.008\n")); !errors.Is(err, boom) || n != 0 {
		t.Errorf("Write on a failing conn = %d, %v", n, err)
	}
	// Dropping alone writes nothing to the server.
	cc2 := &captureConn{failW: boom}
	f2 := NewFilterConn(cc2, ViewOnly)
	f2.state = fMessages
	if n, err := f2.Write(keyEvent(1, 'x')); err != nil || n != 8 {
		t.Errorf("a dropped message = %d, %v", n, err)
	}
	// OnRefuse may be unset.
	f3 := NewFilterConn(&captureConn{}, ViewOnly)
	if _, err := f3.Write([]byte("RFB 003.008\n\x05")); !errors.Is(err, ErrRefused) {
		t.Errorf("refusal without OnRefuse: %v", err)
	}
}
