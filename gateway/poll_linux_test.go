//go:build linux

package gateway

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// TestPollEventKeyRoundTrip: a direction's 64-bit key survives the
// event's two 32-bit words, at every boundary of either word.
func TestPollEventKeyRoundTrip(t *testing.T) {
	for _, key := range []uint64{0, 1, 1<<31 - 1, 1 << 31, 1<<32 - 1, 1 << 32, 1<<32 + 1, 1<<63 + 5, ^uint64(0)} {
		var ev syscall.EpollEvent
		setEventKey(&ev, key)
		if got := eventKey(&ev); got != key {
			t.Errorf("key %#x came back as %#x", key, got)
		}
	}
}

// TestPollRegister: a socket registers (its direction gets a key, and
// the same key when it parks again), an event for it wakes the direction
// once, and a closed socket is refused with errPollClosed and leaves no
// entry behind.
func TestPollRegister(t *testing.T) {
	p := getPoller()
	if p == nil {
		t.Skip("no poller:", pollerErr)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc := rawConn(c)

	d := &parkDir{}
	if err := p.register(d, rc); err != nil {
		t.Fatal(err)
	}
	key := d.key
	if key == 0 || !d.registered {
		t.Fatalf("registered with key %d, registered %v", key, d.registered)
	}
	p.forget(d)
	if err := p.register(d, rc); err != nil { // again: EPOLL_CTL_MOD
		t.Fatal(err)
	}
	if d.key != key {
		t.Errorf("parked again with key %d, want %d", d.key, key)
	}
	p.forget(d)
	p.mu.Lock()
	_, still := p.parked[key]
	p.mu.Unlock()
	if still {
		t.Error("a forgotten direction is still in the poller")
	}

	c.Close()
	d2 := &parkDir{}
	err = p.register(d2, rc)
	if !errors.Is(err, errPollClosed) {
		t.Errorf("register on a closed socket: %v, want errPollClosed", err)
	}
	p.mu.Lock()
	_, left := p.parked[d2.key]
	p.mu.Unlock()
	if left {
		t.Error("a refused registration left an entry")
	}
}
