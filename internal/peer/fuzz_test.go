package peer

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// format writes an address as the kernel does (%08X per 32-bit word in
// host order, little-endian here), independently of parseHexAddr.
func format(ap netip.AddrPort) string {
	b := ap.Addr().AsSlice()
	var sb strings.Builder
	for i := 0; i < len(b); i += 4 {
		fmt.Fprintf(&sb, "%08X", binary.LittleEndian.Uint32(b[i:i+4]))
	}
	return fmt.Sprintf("%s:%04X", sb.String(), ap.Port())
}

// FuzzParseHexAddr: the kernel's form of any address reads back as that
// address.
func FuzzParseHexAddr(f *testing.F) {
	f.Add([]byte{127, 0, 0, 1}, uint16(8080))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint16(443))
	f.Fuzz(func(t *testing.T, raw []byte, port uint16) {
		ip, ok := netip.AddrFromSlice(raw)
		if !ok {
			return
		}
		ap := netip.AddrPortFrom(ip, port)
		got, err := parseHexAddr(format(ap))
		if err != nil || got != ap {
			t.Fatalf("%s → %q → %s, %v", ap, format(ap), got, err)
		}
	})
}
