package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"unicode/utf8"
)

// FuzzParser drives the client-frame parser of the splice, which
// reads whatever a websocket client sends after the handshake.
//
// Any bytes, cut anywhere, never make it panic; it stops with
// ErrProtocol or ErrTooBig and a reason, never passes on more payload
// than it was given, and never hands over a control frame over 125
// bytes. A well-formed message (fragmented, masked, with pings between
// its fragments) is reassembled exactly however the stream is cut, and
// one over the limit is refused with ErrTooBig before more than the limit
// is passed on.
//
//	go test -run='^$' -fuzz='^FuzzParser$' -fuzztime=30s ./wsframe
func FuzzParser(f *testing.F) {
	f.Add([]byte{0x82, 0x85, 1, 2, 3, 4, 'h' ^ 1, 'e' ^ 2, 'l' ^ 3, 'l' ^ 4, 'o' ^ 1}, []byte("hello world"), uint16(3), uint16(5), uint32(0x12345678), uint16(0))
	f.Fuzz(func(t *testing.T, raw, payload []byte, frag, step uint16, key uint32, limit uint16) {
		chunk := int(step%4096) + 1

		// Arbitrary bytes.
		p := Parser{Limit: uint64(limit)}
		r := &recorder{}
		err := feedCopy(&p, raw, chunk, r)
		if err != nil && !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrTooBig) {
			t.Fatalf("error %v", err)
		}
		if err != nil && p.Reason() == "" {
			t.Fatalf("%v without a reason", err)
		}
		if len(r.got) > len(raw) {
			t.Fatalf("passed on %d payload bytes from %d input bytes", len(r.got), len(raw))
		}
		for _, c := range r.ctrl {
			if len(c) > 2+125 {
				t.Fatalf("control frame of %d bytes", len(c)-2)
			}
		}

		// A well-formed message.
		var k [4]byte
		binary.BigEndian.PutUint32(k[:], key)
		size := int(frag%2048) + 1
		op := byte(OpBinary)
		if key&1 != 0 {
			op = OpText // the splice passes text payload through as it is
		}
		var stream []byte
		var pings []string
		for off := 0; ; off += size {
			end := min(off+size, len(payload))
			fop := byte(OpContinuation)
			if off == 0 {
				fop = op
			}
			stream = append(stream, clientFrame(end == len(payload), fop, payload[off:end], k)...)
			if end == len(payload) {
				break
			}
			ping := payload[off:min(end, off+125)]
			stream = append(stream, clientFrame(true, OpPing, ping, k)...)
			pings = append(pings, string(rune('0'+OpPing))+":"+string(ping))
		}
		for _, lim := range []int{0, len(payload), len(payload) - 1} {
			if lim < 0 {
				continue
			}
			p := Parser{Limit: uint64(lim)}
			r := &recorder{}
			err := feedCopy(&p, stream, chunk, r)
			if lim > 0 && lim < len(payload) {
				if !errors.Is(err, ErrTooBig) || len(r.got) > lim {
					t.Fatalf("limit %d, message of %d: %v after %d bytes", lim, len(payload), err, len(r.got))
				}
				continue
			}
			if err != nil {
				t.Fatalf("limit %d, message of %d in frames of %d, read %d at a time: %v (%s)", lim, len(payload), size, chunk, err, p.Reason())
			}
			if !bytes.Equal(r.got, payload) {
				t.Fatalf("reassembled %d bytes differ from the %d sent", len(r.got), len(payload))
			}
			if len(r.ctrl) != len(pings) {
				t.Fatalf("%d control frames, want %d", len(r.ctrl), len(pings))
			}
			for i := range pings {
				if r.ctrl[i] != pings[i] {
					t.Fatalf("ping %d: %q, want %q", i, r.ctrl[i], pings[i])
				}
			}
		}
	})
}

// FuzzMask checks maskBytes against the definition of §5.3 (byte i is
// XORed with key[i mod 4]), computed here byte by byte: any data, any
// key, any starting position, cut anywhere, and masking twice gives the
// data back.
//
//	go test -run='^$' -fuzz='^FuzzMask$' -fuzztime=30s ./wsframe
func FuzzMask(f *testing.F) {
	f.Add([]byte("hello, websocket world"), uint32(0xdeadbeef), uint8(1), uint16(5))
	f.Fuzz(func(t *testing.T, data []byte, key uint32, pos uint8, cut uint16) {
		var k [4]byte
		binary.BigEndian.PutUint32(k[:], key)
		start := int(pos % 4)
		want := make([]byte, len(data))
		for i := range data {
			want[i] = data[i] ^ k[(start+i)%4]
		}
		got := append([]byte(nil), data...)
		at := 0
		if len(got) > 0 {
			at = int(cut) % (len(got) + 1)
		}
		p := maskBytes(k, start, got[:at])
		end := maskBytes(k, p, got[at:])
		if !bytes.Equal(got, want) {
			t.Fatalf("masked % x, want % x", got, want)
		}
		if end != (start+len(data))%4 {
			t.Fatalf("end position %d, want %d", end, (start+len(data))%4)
		}
		maskBytes(k, start, got)
		if !bytes.Equal(got, data) {
			t.Fatal("masking twice did not give the data back")
		}
	})
}

// FuzzClose checks the close codes against rfcSendable, a table written
// out from RFC 6455 §7.4: ParseClose accepts exactly the valid codes
// with a UTF-8 reason, and AppendClose never puts a code on the wire
// that the table forbids, keeps a valid one, and fits any reason in a
// control frame on a UTF-8 boundary.
//
//	go test -run='^$' -fuzz='^FuzzClose$' -fuzztime=30s ./wsframe
func FuzzClose(f *testing.F) {
	f.Add(uint16(1000), []byte("bye"))
	f.Add(uint16(1005), []byte{})
	f.Add(uint16(4000), []byte{0xff})
	f.Fuzz(func(t *testing.T, code uint16, reason []byte) {
		payload := append([]byte{byte(code >> 8), byte(code)}, reason...)
		c, r, err := ParseClose(payload)
		wantOK := rfcSendable(int(code)) && utf8.Valid(reason)
		if (err == nil) != wantOK {
			t.Fatalf("ParseClose(%d, %q): %v, want ok=%v", code, reason, err, wantOK)
		}
		if err == nil && (c != int(code) || r != string(reason)) {
			t.Fatalf("ParseClose gave %d %q", c, r)
		}
		fr := AppendClose(nil, int(code), string(reason))
		if fr[0] != 0x88 || int(fr[1]) != len(fr)-2 || len(fr)-2 > 125 {
			t.Fatalf("frame header % x for %d payload bytes", fr[:2], len(fr)-2)
		}
		if len(fr) == 2 {
			if code != 0 && code != 1005 {
				t.Fatalf("code %d sent without a code", code)
			}
			return
		}
		sent := int(binary.BigEndian.Uint16(fr[2:]))
		if !rfcSendable(sent) {
			t.Fatalf("code %d put %d on the wire", code, sent)
		}
		if rfcSendable(int(code)) && sent != int(code) {
			t.Fatalf("valid code %d sent as %d", code, sent)
		}
		if !utf8.Valid(fr[4:]) && utf8.Valid(reason) {
			t.Fatalf("reason cut off a UTF-8 boundary")
		}
		if len(reason) <= 123 && string(fr[4:]) != string(reason) {
			t.Fatalf("reason %q sent as %q", reason, fr[4:])
		}
	})
}
