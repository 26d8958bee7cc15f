// Package peer finds which local user owns the other end of a loopback TCP
// connection, from the kernel's socket tables (/proc/net/tcp and tcp6 on
// Linux). The trust policy uses it so that only the gateway's own user
// (or root) is a loopback administrator: another account on the same
// machine, or a reverse proxy running as its own user, is not.
package peer

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
)

// ErrUnknown means the connection was not found in the socket tables
// (it closed meanwhile, or the system has no /proc).
var ErrUnknown = errors.New("peer: connection not found in the socket tables")

// UID returns the user id owning the socket at the far end of the
// connection whose local and remote addresses are given (as seen by this
// process). Both ends must be on this machine.
func UID(local, remote net.Addr) (int, error) {
	l, err := addrPort(local)
	if err != nil {
		return 0, err
	}
	r, err := addrPort(remote)
	if err != nil {
		return 0, err
	}
	files := []string{"/proc/net/tcp", "/proc/net/tcp6"}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		uid, err := find(f, r, l)
		f.Close()
		if err == nil {
			return uid, nil
		}
		if !errors.Is(err, ErrUnknown) {
			return 0, fmt.Errorf("%s: %w", name, err)
		}
	}
	return 0, ErrUnknown
}

func addrPort(a net.Addr) (netip.AddrPort, error) {
	if a == nil {
		return netip.AddrPort{}, fmt.Errorf("peer: no address")
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("peer: address %q: %w", a.String(), err)
	}
	return ap, nil
}

// find scans a /proc/net/tcp{,6} table for the socket whose own address
// is self and whose peer is other, and returns its uid column.
func find(rd io.Reader, self, other netip.AddrPort) (int, error) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 4096), 1<<20)
	first := true
	for sc.Scan() {
		if first { // the header line
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 {
			continue
		}
		la, err := parseHexAddr(fields[1])
		if err != nil || !same(la, self) {
			continue
		}
		ra, err := parseHexAddr(fields[2])
		if err != nil || !same(ra, other) {
			continue
		}
		uid, err := strconv.Atoi(fields[7])
		if err != nil {
			return 0, fmt.Errorf("uid column %q: %w", fields[7], err)
		}
		return uid, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, ErrUnknown
}

// same compares addresses with IPv4-mapped IPv6 unmapped on both sides.
func same(a, b netip.AddrPort) bool {
	return a.Port() == b.Port() && a.Addr().Unmap() == b.Addr().Unmap()
}

// parseHexAddr reads the kernel's "ADDR:PORT" form: the address as 32-bit
// words in host byte order (little-endian here), the port big-endian hex.
func parseHexAddr(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("no port in %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", p, err)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q", a)
	}
	out := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(out[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	ip, _ := netip.AddrFromSlice(out)
	return netip.AddrPortFrom(ip, uint16(port)), nil
}

// conn is what the gateway knows of one accepted connection: its
// addresses, and its peer's user once asked for.
type conn struct {
	local, remote net.Addr
	once          sync.Once
	uid           int
	err           error
}

type ctxKey struct{}

// WithConn remembers c in ctx (an http.Server's ConnContext), so that
// UIDFromContext reads the socket tables at most once per connection.
func WithConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, ctxKey{}, &conn{local: c.LocalAddr(), remote: c.RemoteAddr()})
}

// UIDFromContext returns the peer's user of the connection WithConn
// remembered in ctx, looking it up on first use; ok is false when ctx
// holds no connection.
func UIDFromContext(ctx context.Context) (uid int, ok bool, err error) {
	c, _ := ctx.Value(ctxKey{}).(*conn)
	if c == nil {
		return 0, false, nil
	}
	c.once.Do(func() { c.uid, c.err = UID(c.local, c.remote) })
	return c.uid, true, c.err
}
