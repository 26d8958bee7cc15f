package gateway

import (
	"net"
	"testing"
	"time"
)

// TestLimitsKeyIPv6By64: IPv4 clients are limited per address, IPv6
// clients per /64: addresses that share their first 64 bits (the
// expectation compares the bytes themselves) share one bucket, and any
// other address has its own.
func TestLimitsKeyIPv6By64(t *testing.T) {
	same64 := func(a, b string) bool {
		x, y := net.ParseIP(a), net.ParseIP(b)
		if x.To4() != nil || y.To4() != nil {
			return x.Equal(y)
		}
		return string(x.To16()[:8]) == string(y.To16()[:8])
	}
	addrs := []string{
		"2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2:abcd::9",
		"2001:db8:1:3::1", "2001:db8:1:2::", "::1", "::2", "fe80::1",
		"192.0.2.1", "192.0.2.2", "::ffff:192.0.2.1",
	}
	for _, a := range addrs {
		for _, b := range addrs {
			ra, rb := net.JoinHostPort(a, "1000"), net.JoinHostPort(b, "2000")
			if got, want := clientKey(ra) == clientKey(rb), same64(a, b); got != want {
				t.Errorf("clientKey(%s) = %q, clientKey(%s) = %q: same key %v, want %v", ra, clientKey(ra), rb, clientKey(rb), got, want)
			}
		}
	}
	// Without a port, and not an address at all.
	if clientKey("2001:db8:1:2::7") != clientKey("[2001:db8:1:2::8]:1") {
		t.Error("an address without a port is keyed differently")
	}
	if clientKey("@") != "@" {
		t.Errorf("clientKey(@) = %q", clientKey("@"))
	}

	// The rate limiter: a burst of 2 for the whole /64, however many
	// addresses it rotates through; another /64 and IPv4 are apart.
	now := time.Unix(1700000000, 0)
	l := newRateLimiter(0.001, 2)
	l.now = func() time.Time { return now }
	for i, remote := range []string{"[2001:db8:1:2::1]:5", "[2001:db8:1:2::2]:5"} {
		if !l.allow(remote) {
			t.Fatalf("request %d from the /64 refused within the burst", i+1)
		}
	}
	if l.allow("[2001:db8:1:2:dead:beef:0:3]:5") {
		t.Fatal("a third address of the same /64 was allowed past the burst")
	}
	if !l.exhausted("[2001:db8:1:2::99]:7") {
		t.Fatal("the /64 is not reported exhausted")
	}
	if !l.allow("[2001:db8:1:3::1]:5") || !l.allow("192.0.2.1:5") {
		t.Fatal("another /64 or an IPv4 client was limited with the first /64")
	}
}
