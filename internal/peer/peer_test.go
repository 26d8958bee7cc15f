package peer

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
)

// A table as Linux prints it: 127.0.0.1:8080 ↔ 127.0.0.1:50000 owned by
// uid 1000 and 65534, and ::1 sockets in tcp6 form.
const sample = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 101 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 102 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 103 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C351 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 104 1 0000000000000000 20 4 30 10 -1
   4: 00000000000000000000000001000000:C352 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000  4242 0 105
   5: 0000000000000000FFFF00000100007F:C353 0000000000000000FFFF00000100007F:1F90 01 00000000:00000000 00:00000000 00000000  77 0 106
   6: 0100007F:C354 0100007F:1F90 01 0 0 0 99
   7: 0100007F:C355 0100007F:1F90 01 0 0 0
`

func TestFindInATable(t *testing.T) {
	gw := netip.MustParseAddrPort("127.0.0.1:8080")
	cases := []struct {
		peer string
		self netip.AddrPort
		uid  int
		ok   bool
	}{
		{"127.0.0.1:50000", gw, 1000, true},
		{"127.0.0.1:50001", gw, 65534, true},
		{"[::1]:50002", netip.MustParseAddrPort("[::1]:8080"), 4242, true},
		{"127.0.0.1:50003", gw, 77, true}, // IPv4-mapped in tcp6
		{"127.0.0.1:50004", gw, 99, true}, // the uid is the 8th field
		{"127.0.0.1:50005", gw, 0, false}, // a line cut short
		{"127.0.0.1:50009", gw, 0, false},
		{"127.0.0.1:50000", netip.MustParseAddrPort("127.0.0.1:8081"), 0, false},
	}
	for _, c := range cases {
		uid, err := find(strings.NewReader(sample), netip.MustParseAddrPort(c.peer), c.self)
		if (err == nil) != c.ok || uid != c.uid {
			t.Errorf("peer %s: uid %d, %v; want %d, ok %v", c.peer, uid, err, c.uid, c.ok)
		}
	}
	if _, err := find(strings.NewReader("header\n 0: 0100007F:C350 0100007F:1F90 01 0 0 0 notanumber 0\n"), netip.MustParseAddrPort("127.0.0.1:50000"), gw); err == nil || err == ErrUnknown {
		t.Errorf("a bad uid column: %v", err)
	}
}

func TestParseHexAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"0101A8C0:0016":                         "192.168.1.1:22",
		"00000000000000000000000001000000:01BB": "[::1]:443",
		"B80D0120000000000000000001000000:0050": "[2001:db8::1]:80",
	} {
		got, err := parseHexAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("%s: %s %v, want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"0100007F", "0100007F:zz", "01007F:0050", "0100007G:0050", "0100007F:10000"} {
		if _, err := parseHexAddr(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// TestUIDOfARealConnection: a connection this process makes to itself is
// this user's.
func TestUIDOfARealConnection(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp")
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		addr := "127.0.0.1:0"
		if network == "tcp6" {
			addr = "[::1]:0"
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		c, err := net.Dial(network, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		uid, err := UID(s.LocalAddr(), s.RemoteAddr())
		if err != nil || uid != os.Getuid() {
			t.Errorf("%s: uid %d, %v; want %d", network, uid, err, os.Getuid())
		}
		c.Close()
		s.Close()
		ln.Close()
	}
	if _, err := UID(nil, nil); err == nil {
		t.Error("no addresses accepted")
	}
	if _, err := UID(&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2}); err != ErrUnknown {
		t.Errorf("a connection that does not exist: %v", err)
	}
}
