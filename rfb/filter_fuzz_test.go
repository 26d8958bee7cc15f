package rfb

import (
	"bytes"
	"errors"
	"testing"
)

// refFilter is a reference model of the view-only filter, written from
// RFC 6143 §7.5 over the whole stream at once (no streaming state): it
// returns what may reach the server and whether the stream is refused.
// It does not share code with FilterConn.
func refFilter(mode Mode, in []byte) (out []byte, refused bool) {
	if len(in) < 12 {
		return nil, false
	}
	v := in[:12]
	if string(v[:4]) != "RFB " || v[7] != '.' || v[11] != '\n' {
		return nil, true
	}
	for _, c := range string(v[4:7]) + string(v[8:11]) {
		if c < '0' || c > '9' {
			return nil, true
		}
	}
	if string(v[4:7]) < "003" {
		return nil, true
	}
	out = append(out, v...)
	in = in[12:]
	newer := string(v[4:7]) > "003" || string(v[8:11]) >= "007"
	if newer {
		if len(in) == 0 {
			return out, false
		}
		if in[0] != 1 {
			return out, true
		}
		out = append(out, 1)
		in = in[1:]
	}
	if len(in) == 0 {
		return out, false
	}
	out = append(out, 1) // shared
	in = in[1:]
	if mode == Control {
		return append(out, in...), false
	}
	u16 := func(b []byte) int { return int(b[0])<<8 | int(b[1]) }
	for len(in) > 0 {
		// size: the whole message's length once known (-1: need more
		// header); keep: whether it reaches the server.
		size, keep := -1, true
		switch in[0] {
		case 0:
			size = 20
		case 2:
			if len(in) >= 4 {
				size = 4 + 4*u16(in[2:4])
			}
		case 3, 150:
			size = 10
		case 4:
			size, keep = 8, false
		case 5:
			size, keep = 6, false
		case 6:
			if len(in) >= 8 {
				l := int32(uint32(in[4])<<24 | uint32(in[5])<<16 | uint32(in[6])<<8 | uint32(in[7]))
				if l < 0 {
					l = -l
				}
				size, keep = 8+int(l), false
			}
		case 248:
			if len(in) >= 9 {
				if in[8] > 64 {
					return out, true
				}
				size = 9 + int(in[8])
			}
		case 251:
			if len(in) >= 8 {
				size, keep = 8+16*int(in[6]), false
			}
		case 252:
			size, keep = 4, false
		case 255:
			if len(in) >= 2 {
				if in[1] != 0 {
					return out, true
				}
				size, keep = 12, false
			}
		default:
			return out, true
		}
		if size < 0 {
			// An incomplete header: nothing of it is decided yet.
			return out, false
		}
		k := min(size, len(in))
		if keep {
			out = append(out, in[:k]...)
		}
		in = in[k:]
	}
	return out, false
}

func FuzzFilterConn(f *testing.F) {
	f.Add(cat(hs38, keyEvent(1, 'a'), fbur, pointer(1, 2, 3)), uint8(3), false)
	f.Add(cat(hs38, setEncodings(1, 2), cutText(-3, "abc"), fence(2), desktopSize(1)), uint8(1), false)
	f.Add(cat([]byte("RFB 003.003\n\x00"), qemuKey, xvp, contUpdates, []byte{9}), uint8(5), false)
	f.Add(cat(hs38, []byte{7}), uint8(2), true)
	f.Fuzz(func(t *testing.T, in []byte, chunk uint8, control bool) {
		mode := ViewOnly
		if control {
			mode = Control
		}
		want, wantRefused := refFilter(mode, in)
		cc := &captureConn{}
		fc := NewFilterConn(cc, mode)
		refused := false
		step := int(chunk)%17 + 1
		for rest := in; len(rest) > 0; {
			k := min(step, len(rest))
			if _, err := fc.Write(rest[:k]); err != nil {
				if !errors.Is(err, ErrRefused) {
					t.Fatalf("unexpected error %v", err)
				}
				refused = true
				break
			}
			rest = rest[k:]
		}
		got := cc.bytes()
		if refused != wantRefused {
			t.Fatalf("refused %v, reference %v", refused, wantRefused)
		}
		// The stream filter forwards a message it keeps as soon as its
		// bytes arrive, the reference only whole streams: the reference's
		// output is what the filter sent, up to a message cut at the end.
		if !bytes.HasPrefix(want, got) && !bytes.HasPrefix(got, want) {
			t.Fatalf("forwarded\n %q\nreference\n %q", got, want)
		}
		if len(got) != len(want) {
			t.Fatalf("forwarded %d bytes, reference %d:\n %q\n %q", len(got), len(want), got, want)
		}
	})
}
