package gateway

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"testing"
)

// clientFrame builds a masked client frame.
func clientFrame(fin bool, op byte, payload []byte, key [4]byte) []byte {
	var b []byte
	b0 := op
	if fin {
		b0 |= 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, b0, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, b0, 0x80|126, 0, 0)
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b = append(b, b0, 0x80|127, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

type recorder struct {
	got  []byte
	ctrl []string
}

func (r *recorder) data(p []byte) error { r.got = append(r.got, p...); return nil }
func (r *recorder) control(op byte, p []byte) error {
	r.ctrl = append(r.ctrl, string(rune('0'+op))+":"+string(p))
	return nil
}

func TestFrameParserAnySplit(t *testing.T) {
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	big := make([]byte, 70000)
	rand.Read(big)
	mid := make([]byte, 300)
	rand.Read(mid)
	var stream []byte
	stream = append(stream, clientFrame(true, opBinary, []byte("hello"), key)...)
	stream = append(stream, clientFrame(true, opPing, []byte("p1"), key)...)
	stream = append(stream, clientFrame(false, opText, mid, key)...)
	stream = append(stream, clientFrame(true, opPong, nil, key)...) // control inside a fragmented message
	stream = append(stream, clientFrame(true, opContinuation, big, key)...)
	stream = append(stream, clientFrame(true, opBinary, nil, key)...)
	want := append(append([]byte("hello"), mid...), big...)
	for _, step := range []int{1, 2, 3, 7, 13, 125, 4096, 65536, len(stream)} {
		var p frameParser
		r := &recorder{}
		in := append([]byte(nil), stream...)
		for off := 0; off < len(in); off += step {
			end := off + step
			if end > len(in) {
				end = len(in)
			}
			if err := p.feed(in[off:end], r); err != nil {
				t.Fatalf("step %d: %v (%s)", step, err, p.reason)
			}
		}
		if !bytes.Equal(r.got, want) {
			t.Fatalf("step %d: payload differs (%d bytes, want %d)", step, len(r.got), len(want))
		}
		if len(r.ctrl) != 2 || r.ctrl[0] != "9:p1" || r.ctrl[1] != string(rune('0'+opPong))+":" {
			t.Fatalf("step %d: control frames %q", step, r.ctrl)
		}
	}
}

func TestFrameParserProtocolErrors(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	unmasked := []byte{0x82, 0x01, 'x'}
	longPing := clientFrame(true, opPing, make([]byte, 126), key)
	fragPing := clientFrame(false, opPing, nil, key)
	rsv := clientFrame(true, opBinary, []byte("x"), key)
	rsv[0] |= 0x40
	badOp := clientFrame(true, 0x3, nil, key)
	cont := clientFrame(true, opContinuation, []byte("x"), key)
	twoStarts := append(clientFrame(false, opBinary, []byte("a"), key), clientFrame(true, opText, []byte("b"), key)...)
	huge := []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
	for name, in := range map[string][]byte{
		"unmasked": unmasked, "long control": longPing, "fragmented control": fragPing, "rsv": rsv,
		"bad opcode": badOp, "orphan continuation": cont, "new message in fragment": twoStarts, "63-bit length": huge,
	} {
		var p frameParser
		err := p.feed(in, &recorder{})
		if !errors.Is(err, errProtocol) || p.reason == "" {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestMaskBytesMatchesBytewise(t *testing.T) {
	key := [4]byte{0xde, 0xad, 0xbe, 0xef}
	data := make([]byte, 1000)
	rand.Read(data)
	for pos := 0; pos < 4; pos++ {
		for _, n := range []int{0, 1, 3, 7, 8, 9, 31, 1000} {
			a := append([]byte(nil), data[:n]...)
			b := append([]byte(nil), data[:n]...)
			end := maskBytes(key, pos, a)
			for i := range b {
				b[i] ^= key[(pos+i)%4]
			}
			if !bytes.Equal(a, b) || end != (pos+n)%4 {
				t.Fatalf("pos %d n %d: mismatch", pos, n)
			}
		}
	}
}

func TestPutHeader(t *testing.T) {
	for _, n := range []int{0, 125, 126, 65535, 65536, 1 << 20} {
		buf := make([]byte, headerRoom)
		start := putHeader(buf, opBinary, n)
		h := buf[start:]
		if h[0] != 0x82 {
			t.Fatalf("n %d: first byte %x", n, h[0])
		}
		var got int
		switch l := h[1]; {
		case l < 126:
			got = int(l)
		case l == 126:
			got = int(binary.BigEndian.Uint16(h[2:]))
		default:
			got = int(binary.BigEndian.Uint64(h[2:]))
		}
		if got != n {
			t.Fatalf("n %d: header says %d", n, got)
		}
	}
}

func BenchmarkFrameParser64K(b *testing.B) {
	key := [4]byte{1, 2, 3, 4}
	frame := clientFrame(true, opBinary, make([]byte, 64<<10), key)
	buf := make([]byte, len(frame))
	var p frameParser
	r := discard{}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		copy(buf, frame)
		if err := p.feed(buf, r); err != nil {
			b.Fatal(err)
		}
	}
}

type discard struct{}

func (discard) data([]byte) error          { return nil }
func (discard) control(byte, []byte) error { return nil }
