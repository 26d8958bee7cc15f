package wsframe

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"wsgateway/wsframe/wsframetest"
)

// clientFrame builds a masked client frame.
var clientFrame = wsframetest.ClientFrame

// feedCopy feeds a copy of stream (Feed unmasks in place) to p, step
// bytes at a time, up to the first error.
func feedCopy(p *Parser, stream []byte, step int, h Handler) error {
	in := append([]byte(nil), stream...)
	for off := 0; off < len(in); off += step {
		if err := p.Feed(in[off:min(off+step, len(in))], h); err != nil {
			return err
		}
	}
	return nil
}

type recorder struct {
	got  []byte
	ctrl []string
}

func (r *recorder) Data(p []byte) error { r.got = append(r.got, p...); return nil }
func (r *recorder) Control(op byte, p []byte) error {
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
	stream = append(stream, clientFrame(true, OpBinary, []byte("hello"), key)...)
	stream = append(stream, clientFrame(true, OpPing, []byte("p1"), key)...)
	stream = append(stream, clientFrame(false, OpText, mid, key)...)
	stream = append(stream, clientFrame(true, OpPong, nil, key)...) // control inside a fragmented message
	stream = append(stream, clientFrame(true, OpContinuation, big, key)...)
	stream = append(stream, clientFrame(true, OpBinary, nil, key)...)
	want := append(append([]byte("hello"), mid...), big...)
	for _, step := range []int{1, 2, 3, 7, 13, 125, 4096, 65536, len(stream)} {
		var p Parser
		r := &recorder{}
		if err := feedCopy(&p, stream, step, r); err != nil {
			t.Fatalf("step %d: %v (%s)", step, err, p.Reason())
		}
		if !bytes.Equal(r.got, want) {
			t.Fatalf("step %d: payload differs (%d bytes, want %d)", step, len(r.got), len(want))
		}
		if len(r.ctrl) != 2 || r.ctrl[0] != "9:p1" || r.ctrl[1] != string(rune('0'+OpPong))+":" {
			t.Fatalf("step %d: control frames %q", step, r.ctrl)
		}
	}
}

func TestFrameParserProtocolErrors(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	unmasked := []byte{0x82, 0x01, 'x'}
	longPing := clientFrame(true, OpPing, make([]byte, 126), key)
	fragPing := clientFrame(false, OpPing, nil, key)
	rsv := clientFrame(true, OpBinary, []byte("x"), key)
	rsv[0] |= 0x40
	badOp := clientFrame(true, 0x3, nil, key)
	cont := clientFrame(true, OpContinuation, []byte("x"), key)
	twoStarts := append(clientFrame(false, OpBinary, []byte("a"), key), clientFrame(true, OpText, []byte("b"), key)...)
	huge := []byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}
	for name, in := range map[string][]byte{
		"unmasked": unmasked, "long control": longPing, "fragmented control": fragPing, "rsv": rsv,
		"bad opcode": badOp, "orphan continuation": cont, "new message in fragment": twoStarts, "63-bit length": huge,
	} {
		var p Parser
		err := p.Feed(in, &recorder{})
		if !errors.Is(err, ErrProtocol) || p.Reason() == "" {
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
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 1 << 20} {
		buf := make([]byte, HeaderRoom)
		start := PutHeader(buf, OpBinary, n)
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
	frame := clientFrame(true, OpBinary, make([]byte, 64<<10), key)
	buf := make([]byte, len(frame))
	var p Parser
	r := discard{}
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		copy(buf, frame)
		if err := p.Feed(buf, r); err != nil {
			b.Fatal(err)
		}
	}
}

type discard struct{}

func (discard) Data([]byte) error          { return nil }
func (discard) Control(byte, []byte) error { return nil }

func TestParserLimitBoundaries(t *testing.T) {
	key := [4]byte{5, 6, 7, 8}
	for _, c := range []struct {
		name  string
		limit uint64
		sizes []int // fragments of one message
		fail  bool
	}{
		{"no limit", 0, []int{5000}, false},
		{"at the limit", 100, []int{100}, false},
		{"one over", 100, []int{101}, true},
		{"fragments at the limit", 100, []int{40, 60}, false},
		{"fragments one over", 100, []int{40, 61}, true},
		{"each message counts alone", 100, []int{100}, false},
	} {
		var stream []byte
		for m := 0; m < 2; m++ { // two messages: the count restarts
			for i, n := range c.sizes {
				op := OpContinuation
				if i == 0 {
					op = OpBinary
				}
				stream = append(stream, clientFrame(i == len(c.sizes)-1, op, make([]byte, n), key)...)
			}
		}
		p := Parser{Limit: c.limit}
		err := p.Feed(stream, &recorder{})
		if c.fail != errors.Is(err, ErrTooBig) || (!c.fail && err != nil) {
			t.Errorf("%s: %v", c.name, err)
		}
		if c.fail && !strings.Contains(p.Reason(), "limit") {
			t.Errorf("%s: reason %q", c.name, p.Reason())
		}
	}
}

func TestParserControlSizes(t *testing.T) {
	key := [4]byte{1, 1, 1, 1}
	for _, n := range []int{0, 1, 125} {
		r := &recorder{}
		var p Parser
		if err := p.Feed(clientFrame(true, OpPing, bytes.Repeat([]byte{'a'}, n), key), r); err != nil || len(r.ctrl) != 1 || len(r.ctrl[0]) != 2+n {
			t.Errorf("ping of %d: %v %q", n, err, r.ctrl)
		}
	}
	var p Parser
	if err := p.Feed(clientFrame(true, OpPing, make([]byte, 126), key), &recorder{}); !errors.Is(err, ErrProtocol) {
		t.Errorf("ping of 126: %v", err)
	}
}

func TestAppendControl(t *testing.T) {
	for _, c := range []struct {
		op      byte
		payload []byte
		want    []byte
	}{
		{OpPing, nil, []byte{0x89, 0}},
		{OpPong, []byte("ab"), []byte{0x8a, 2, 'a', 'b'}},
		{OpPong, make([]byte, 125), append([]byte{0x8a, 125}, make([]byte, 125)...)},
		{OpPong, make([]byte, 200), append([]byte{0x8a, 125}, make([]byte, 125)...)},
	} {
		if got := AppendControl(nil, c.op, c.payload); !bytes.Equal(got, c.want) {
			t.Errorf("op %x payload %d: % x", c.op, len(c.payload), got[:2])
		}
	}
}

// failAfter fails the data callback once it has seen n bytes, and the
// control callback on a close frame.
type failAfter struct {
	n    int
	got  []byte
	ctrl []byte
}

var errStop = errors.New("stop")

func (f *failAfter) Data(p []byte) error {
	f.got = append(f.got, p...)
	if len(f.got) >= f.n {
		return errStop
	}
	return nil
}

func (f *failAfter) Control(op byte, p []byte) error {
	f.ctrl = append(f.ctrl, op)
	if op == OpClose {
		return errStop
	}
	return nil
}

func TestParserUnconsumedResumes(t *testing.T) {
	key := [4]byte{9, 9, 9, 9}
	big := clientFrame(true, OpBinary, []byte("0123456789"), key)
	ping := clientFrame(true, OpPing, []byte("p"), key)
	closeF := clientFrame(true, OpClose, []byte{0x03, 0xe8}, key)
	tail := clientFrame(true, OpBinary, []byte("tail"), key)

	// Over the limit: the header is consumed, the payload is not.
	stream := append(append(append(append([]byte(nil), big...), ping...), closeF...), tail...)
	p := Parser{Limit: 5}
	if err := p.Feed(append([]byte(nil), stream...), &recorder{}); !errors.Is(err, ErrTooBig) {
		t.Fatalf("limit: %v", err)
	}
	if want := len(stream) - 6; p.Unconsumed() != want {
		t.Fatalf("Unconsumed %d after the too-big header, want %d", p.Unconsumed(), want)
	}
	// Parsing goes on in step: the ping and then the close are found.
	p.Limit = 0
	h := &failAfter{n: 1 << 30}
	rest := append([]byte(nil), stream[len(stream)-p.Unconsumed():]...)
	if err := p.Feed(rest, h); !errors.Is(err, errStop) {
		t.Fatalf("resumed: %v", err)
	}
	if string(h.got) != "0123456789" || !bytes.Equal(h.ctrl, []byte{OpPing, OpClose}) || p.Unconsumed() != len(tail) {
		t.Fatalf("resumed: data %q control %v, %d unconsumed (want %d)", h.got, h.ctrl, p.Unconsumed(), len(tail))
	}

	// A data callback error mid-frame.
	var q Parser
	h = &failAfter{n: 9}
	in := append(append([]byte(nil), big...), tail...)
	if err := q.Feed(in[:len(big)-3], h); err != nil {
		t.Fatal(err)
	}
	if err := q.Feed(in[len(big)-3:], h); !errors.Is(err, errStop) || q.Unconsumed() != len(tail) {
		t.Fatalf("data error: %v, %d unconsumed, want %d", err, q.Unconsumed(), len(tail))
	}
	h.n = 1 << 30
	if err := q.Feed(in[len(in)-q.Unconsumed():], h); err != nil || string(h.got) != "0123456789tail" {
		t.Fatalf("after a data error: %v %q", err, h.got)
	}
	if err := q.Feed(tail[:0], h); err != nil || q.Unconsumed() != 0 {
		t.Fatalf("empty feed: %v %d", err, q.Unconsumed())
	}
}

// TestParserDataErrorMidFrame: a data callback that fails on a chunk that
// is not the end of its frame leaves the parser inside that frame, so the
// frame's remaining payload is read as payload, not as a new header.
func TestParserDataErrorMidFrame(t *testing.T) {
	key := [4]byte{1, 2, 3, 4}
	frame := clientFrame(true, OpBinary, []byte("0123456789"), key)
	next := clientFrame(true, OpText, []byte("next"), key)
	var p Parser
	h := &failAfter{n: 3}
	cut := 6 + 4 // the header and 4 of the 10 payload bytes
	if err := p.Feed(append([]byte(nil), frame[:cut]...), h); !errors.Is(err, errStop) || p.Unconsumed() != 0 {
		t.Fatalf("first part: %v, %d unconsumed", err, p.Unconsumed())
	}
	h.n = 1 << 30
	rest := append(append([]byte(nil), frame[cut:]...), next...)
	if err := p.Feed(rest, h); err != nil {
		t.Fatalf("rest after a data error mid-frame: %v (%s)", err, p.Reason())
	}
	if string(h.got) != "0123456789next" {
		t.Fatalf("data %q, want the frame's payload and the next frame", h.got)
	}
}

// TestParserLimitIsForDataOnly: Limit bounds messages, not control frames:
// a close or a ping longer than the limit passes, and a close inside a
// fragmented message neither ends nor restarts the message's count.
func TestParserLimitIsForDataOnly(t *testing.T) {
	key := [4]byte{5, 6, 7, 8}
	var stream []byte
	stream = append(stream, clientFrame(false, OpText, []byte("ab"), key)...)
	stream = append(stream, clientFrame(true, OpPing, []byte("ping!"), key)...)
	stream = append(stream, clientFrame(true, OpClose, append([]byte{0x03, 0xe8}, "bye!"...), key)...)
	stream = append(stream, clientFrame(true, OpContinuation, []byte("cd"), key)...)
	p := Parser{Limit: 4}
	r := &recorder{}
	if err := p.Feed(stream, r); err != nil {
		t.Fatalf("%v (%s)", err, p.Reason())
	}
	if string(r.got) != "abcd" || len(r.ctrl) != 2 || r.ctrl[1] != string(rune('0'+OpClose))+":\x03\xe8bye!" {
		t.Fatalf("data %q, control %q", r.got, r.ctrl)
	}
	// One more byte in the message is over the limit.
	over := append(append([]byte(nil), stream[:len(stream)-len(clientFrame(true, OpContinuation, []byte("cd"), key))]...),
		clientFrame(true, OpContinuation, []byte("cde"), key)...)
	p = Parser{Limit: 4}
	if err := p.Feed(over, &recorder{}); !errors.Is(err, ErrTooBig) {
		t.Fatalf("message of 5 bytes with a limit of 4: %v", err)
	}
}
