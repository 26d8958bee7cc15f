//go:build linux

package gateway

import (
	"sync/atomic"
	"syscall"
	"testing"
)

// hookSplice replaces the splice system calls for one test: in and out
// are called before the real ones and may refuse with an error.
func hookSplice(t *testing.T, in, out func() error) (ins, outs *atomic.Int64) {
	t.Helper()
	ins, outs = new(atomic.Int64), new(atomic.Int64)
	realIn, realOut := spliceIn, spliceOut
	spliceIn = func(sock, pipeW, n int) (int, error) {
		if in != nil {
			if err := in(); err != nil {
				return 0, err
			}
		}
		m, err := realIn(sock, pipeW, n)
		if m > 0 {
			ins.Add(1)
		}
		return m, err
	}
	spliceOut = func(pipeR, sock, n int) (int, error) {
		if out != nil {
			if err := out(); err != nil {
				return 0, err
			}
		}
		m, err := realOut(pipeR, sock, n)
		if m > 0 {
			outs.Add(1)
		}
		return m, err
	}
	t.Cleanup(func() { spliceIn, spliceOut = realIn, realOut })
	return ins, outs
}

// TestSpliceFallbacksByteExact: the zero-copy path is taken on TCP and
// Unix sockets and not for TLS or a wrapped connection; where the kernel
// refuses to splice from the service (at once, or after some frames went
// through) or into the client (after the header went out), or splice is
// turned off, the tunnel goes on with copies and no byte is lost or
// repeated, in either direction.
func TestSpliceFallbacksByteExact(t *testing.T) {
	refuseAfter := func(n int64, err error) func() error {
		var calls atomic.Int64
		return func() error {
			if calls.Add(1) > n {
				return err
			}
			return nil
		}
	}
	cases := []struct {
		name       string
		network    string
		tls, wrap  bool
		off        bool
		in, out    func() error
		wantSplice bool
	}{
		{name: "tcp", network: "tcp", wantSplice: true},
		{name: "unix", network: "unix", wantSplice: true},
		{name: "tls", network: "tcp", tls: true},
		{name: "wrapped", network: "tcp", wrap: true},
		{name: "off", network: "tcp", off: true},
		{name: "in_refused", network: "unix", in: refuseAfter(0, syscall.EINVAL)},
		{name: "in_refused_later", network: "tcp", in: refuseAfter(5, syscall.EOPNOTSUPP), wantSplice: true},
		{name: "out_refused", network: "tcp", out: refuseAfter(0, syscall.EINVAL)},
		{name: "out_refused_later", network: "unix", out: refuseAfter(3, syscall.ENOSYS), wantSplice: true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ins, outs := hookSplice(t, c.in, c.out)
			old := spliceOff
			spliceOff = c.off
			t.Cleanup(func() { spliceOff = old })

			sb := startBackend(t, c.network, randomBytes(4<<20+7, uint64(100+i)), source)
			_, url, d := tunnelServer(t, Config{}, c.tls, dialBackend(sb, c.wrap))
			checkSource(t, url, d, sb.want)

			eb := startBackend(t, c.network, nil, echo)
			_, url, d = tunnelServer(t, Config{}, c.tls, dialBackend(eb, c.wrap))
			checkEcho(t, url, d, 2<<20, uint64(200+i))

			if spliced := outs.Load() > 0; spliced != c.wantSplice {
				t.Errorf("spliced into the client: %v (%d in, %d out), want %v", spliced, ins.Load(), outs.Load(), c.wantSplice)
			}
		})
	}
}

// TestSpliceSmallReadsCopied: a read of the service that brings less
// than smallFrame goes out by copy, and so does the next; one that brings
// smallFrame switches back to splice, and a small one after a spliced
// frame goes back to copies. Every byte arrives either way.
func TestSpliceSmallReadsCopied(t *testing.T) {
	ins, _ := hookSplice(t, nil, nil)
	eb := startBackend(t, "tcp", nil, echo)
	s, url, d := tunnelServer(t, Config{}, false, dialBackend(eb, false))
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	onlyTunnel(t, s)
	steps := []struct {
		size   int
		any    bool // spliced or not, depending on the size of the read before
		splice bool // whether some of it is spliced
	}{
		{size: 100},
		{size: smallFrame - 1},
		{size: 4 << 20, splice: true},
		{size: 10, any: true}, // after the last read of the 4 MiB: small or not
		{size: 10},
		{size: 1},
	}
	for i, st := range steps {
		before := ins.Load()
		echoBurst(t, ws, st.size, uint64(300+i))
		if spliced := ins.Load() > before; !st.any && spliced != st.splice {
			t.Errorf("step %d (%d bytes): spliced %v, want %v", i, st.size, spliced, st.splice)
		}
	}
}
