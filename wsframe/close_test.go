package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// rfcSendable is RFC 6455 §7.4 written out by hand, independently of
// ValidCloseCode: the codes §7.4.1 defines for use in a close frame, the
// ones IANA registered since (1012 Service Restart, 1013 Try Again
// Later, 1014 Bad Gateway), and the ranges of §7.4.2 for libraries and
// applications. 1004 is reserved, 1005, 1006 and 1015 "MUST NOT be set
// as a status code in a Close control frame", 0-999 are not used, and
// 1016-2999 are reserved for future revisions of the protocol.
func rfcSendable(code int) bool {
	defined := map[int]bool{
		1000: true, 1001: true, 1002: true, 1003: true, 1004: false, 1005: false, 1006: false,
		1007: true, 1008: true, 1009: true, 1010: true, 1011: true,
		1012: true, 1013: true, 1014: true, 1015: false,
	}
	if ok, listed := defined[code]; listed {
		return ok
	}
	return 3000 <= code && code <= 3999 || 4000 <= code && code <= 4999
}

func TestValidCloseCode(t *testing.T) {
	for _, c := range []struct {
		code int
		want bool
	}{
		{-1, false}, {0, false}, {999, false}, {1000, true}, {1001, true}, {1002, true}, {1003, true},
		{1004, false}, {1005, false}, {1006, false}, {1007, true}, {1008, true}, {1009, true},
		{1010, true}, {1011, true}, {1012, true}, {1013, true}, {1014, true}, {1015, false},
		{1016, false}, {2999, false}, {3000, true}, {3999, true}, {4000, true}, {4999, true},
		{5000, false}, {65535, false},
	} {
		if got := ValidCloseCode(c.code); got != c.want {
			t.Errorf("ValidCloseCode(%d) = %v, want %v", c.code, got, c.want)
		}
		if rfcSendable(c.code) != c.want {
			t.Errorf("the reference table disagrees on %d", c.code)
		}
	}
	for code := 0; code < 1<<16; code++ {
		if ValidCloseCode(code) != rfcSendable(code) {
			t.Fatalf("code %d: ValidCloseCode %v, RFC %v", code, ValidCloseCode(code), rfcSendable(code))
		}
	}
}

func closePayload(code int, reason string) []byte {
	b := []byte{byte(code >> 8), byte(code)}
	return append(b, reason...)
}

func TestParseClose(t *testing.T) {
	for _, c := range []struct {
		name    string
		payload []byte
		code    int
		reason  string
		bad     bool
	}{
		{"empty", nil, CloseNoStatus, "", false},
		{"one byte", []byte{3}, 0, "", true},
		{"1000", closePayload(1000, ""), 1000, "", false},
		{"4001 with reason", closePayload(4001, "bye é"), 4001, "bye é", false},
		{"1005", closePayload(1005, ""), 1005, "", true},
		{"1006", closePayload(1006, ""), 1006, "", true},
		{"1015", closePayload(1015, ""), 1015, "", true},
		{"999", closePayload(999, ""), 999, "", true},
		{"5000", closePayload(5000, ""), 5000, "", true},
		{"bad UTF-8", append(closePayload(1000, ""), 0xff, 0xfe), 1000, "", true},
	} {
		code, reason, err := ParseClose(c.payload)
		if (err != nil) != c.bad || (err != nil && !errors.Is(err, ErrProtocol)) {
			t.Errorf("%s: error %v, want bad=%v", c.name, err, c.bad)
		}
		if code != c.code || reason != c.reason {
			t.Errorf("%s: %d %q, want %d %q", c.name, code, reason, c.code, c.reason)
		}
	}
}

func TestAppendClose(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	for _, c := range []struct {
		name   string
		code   int
		reason string
		want   []byte
	}{
		{"no code", 0, "ignored", []byte{0x88, 0}},
		{"1005 answers without a code", 1005, "", []byte{0x88, 0}},
		{"1000", 1000, "Target closed", append([]byte{0x88, 15, 0x03, 0xe8}, "Target closed"...)},
		{"1006 never goes out", 1006, "x", []byte{0x88, 3, 0x03, 0xf3, 'x'}},
		{"1015 never goes out", 1015, "", []byte{0x88, 2, 0x03, 0xf3}},
		{"999 never goes out", 999, "", []byte{0x88, 2, 0x03, 0xf3}},
		{"5000 never goes out", 5000, "", []byte{0x88, 2, 0x03, 0xf3}},
		{"4999 goes out", 4999, "", []byte{0x88, 2, 0x13, 0x87}},
	} {
		if got := AppendClose(nil, c.code, c.reason); !bytes.Equal(got, c.want) {
			t.Errorf("%s: % x, want % x", c.name, got, c.want)
		}
		if got := ClosePayload(c.code, c.reason); !bytes.Equal(got, c.want[2:]) {
			t.Errorf("%s: payload % x, want % x", c.name, got, c.want[2:])
		}
	}
	f := AppendClose([]byte("prefix"), 1001, long)
	f = f[len("prefix"):]
	if f[1] != 2+122 || !utf8.Valid(f[4:]) || binary.BigEndian.Uint16(f[2:]) != 1001 {
		t.Errorf("long reason: length %d, valid UTF-8 %v", f[1], utf8.Valid(f[4:]))
	}
}

func TestTruncateReason(t *testing.T) {
	for _, c := range []struct {
		in   string
		n    int
		want string
	}{
		{"abc", 3, "abc"}, {"abcd", 3, "abc"}, {"a\xff", 2, "a\xff"}, {"a\xffb", 2, "a"}, {"", 0, ""}, {"aé", 2, "a"}, {"aé", 3, "aé"}, {"éé", 3, "é"},
	} {
		if got := TruncateReason(c.in, c.n); got != c.want {
			t.Errorf("TruncateReason(%q, %d) = %q, want %q", c.in, c.n, got, c.want)
		}
	}
}
