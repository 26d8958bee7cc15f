package gateway

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzFrameParser drives the client-frame parser of the splice, which
// reads whatever a websocket client sends after the handshake.
//
// Any bytes, cut anywhere, never make it panic; it stops with
// errProtocol or errTooBig and a reason, never passes on more payload
// than it was given, and never hands over a control frame over 125
// bytes. A well-formed message (fragmented, masked, with pings between
// its fragments) is reassembled exactly however the stream is cut, and
// one over the limit is refused with errTooBig before more than the limit
// is passed on.
//
//	go test -run='^$' -fuzz='^FuzzFrameParser$' -fuzztime=30s ./gateway
func FuzzFrameParser(f *testing.F) {
	f.Add([]byte{0x82, 0x85, 1, 2, 3, 4, 'h' ^ 1, 'e' ^ 2, 'l' ^ 3, 'l' ^ 4, 'o' ^ 1}, []byte("hello world"), uint16(3), uint16(5), uint32(0x12345678), uint16(0))
	f.Fuzz(func(t *testing.T, raw, payload []byte, frag, step uint16, key uint32, limit uint16) {
		chunk := int(step%4096) + 1

		// Arbitrary bytes.
		p := frameParser{limit: uint64(limit)}
		r := &recorder{}
		in := append([]byte(nil), raw...)
		var err error
		for off := 0; off < len(in) && err == nil; off += chunk {
			err = p.feed(in[off:min(off+chunk, len(in))], r)
		}
		if err != nil && !errors.Is(err, errProtocol) && !errors.Is(err, errTooBig) {
			t.Fatalf("error %v", err)
		}
		if err != nil && p.reason == "" {
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
		op := byte(opBinary)
		if key&1 != 0 {
			op = opText // the splice passes text payload through as it is
		}
		var stream []byte
		var pings []string
		for off := 0; ; off += size {
			end := min(off+size, len(payload))
			fop := byte(opContinuation)
			if off == 0 {
				fop = op
			}
			stream = append(stream, clientFrame(end == len(payload), fop, payload[off:end], k)...)
			if end == len(payload) {
				break
			}
			ping := payload[off:min(end, off+125)]
			stream = append(stream, clientFrame(true, opPing, ping, k)...)
			pings = append(pings, string(rune('0'+opPing))+":"+string(ping))
		}
		for _, lim := range []int{0, len(payload), len(payload) - 1} {
			if lim < 0 {
				continue
			}
			p := frameParser{limit: uint64(lim)}
			r := &recorder{}
			in := append([]byte(nil), stream...)
			var err error
			for off := 0; off < len(in) && err == nil; off += chunk {
				err = p.feed(in[off:min(off+chunk, len(in))], r)
			}
			if lim > 0 && lim < len(payload) {
				if !errors.Is(err, errTooBig) || len(r.got) > lim {
					t.Fatalf("limit %d, message of %d: %v after %d bytes", lim, len(payload), err, len(r.got))
				}
				continue
			}
			if err != nil {
				t.Fatalf("limit %d, message of %d in frames of %d, read %d at a time: %v (%s)", lim, len(payload), size, chunk, err, p.reason)
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
