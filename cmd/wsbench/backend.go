package main

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The first byte a client sends selects what the backend does with the
// connection.
const (
	modeSource = 'D' // download: the backend writes 64 KiB chunks until the connection fails
	modeSink   = 'U' // upload: the backend reads and counts everything
	modeEcho   = 'E' // echo: the backend writes back what it reads (RTT, set-ups, idle tunnels)
)

const chunk = 64 << 10

// backend is the benchmark's own TCP server: the far end of every tunnel,
// and the peer of the direct-TCP measurements.
type backend struct {
	ln    net.Listener // plain TCP
	tlsLn net.Listener // TLS, for the direct column of the wss table (nil without TLS)

	sunk     atomic.Int64 // bytes received by sinks (after the mode byte)
	lastSunk atomic.Int64 // time of the last sink read, Unix nanoseconds
	echoes   atomic.Int64 // open echo connections (idle tunnels are echoes)

	src []byte // what sources write; read-only

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newBackend(tlsCfg *tls.Config) (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &backend{ln: ln, conns: map[net.Conn]struct{}{}, src: make([]byte, chunk)}
	for i := range b.src {
		b.src[i] = byte(i*7 + 1)
	}
	if tlsCfg != nil {
		tln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			ln.Close()
			return nil, err
		}
		b.tlsLn = tls.NewListener(tln, tlsCfg)
	}
	b.wg.Add(1)
	go b.serve(b.ln)
	if b.tlsLn != nil {
		b.wg.Add(1)
		go b.serve(b.tlsLn)
	}
	return b, nil
}

func (b *backend) addr() string { return b.ln.Addr().String() }

func (b *backend) port() int { return b.ln.Addr().(*net.TCPAddr).Port }

func (b *backend) tlsAddr() string { return b.tlsLn.Addr().String() }

func (b *backend) serve(ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		b.mu.Lock()
		if b.conns == nil {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		go b.handle(c)
	}
}

func (b *backend) handle(c net.Conn) {
	defer func() {
		c.Close()
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
	}()
	var m [1]byte
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, m[:]); err != nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	switch m[0] {
	case modeSource:
		for {
			if _, err := c.Write(b.src); err != nil {
				return
			}
		}
	case modeSink:
		buf := make([]byte, 4*chunk)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				b.lastSunk.Store(time.Now().UnixNano())
				b.sunk.Add(int64(n))
			}
			if err != nil {
				return
			}
		}
	case modeEcho:
		b.echoes.Add(1)
		defer b.echoes.Add(-1)
		// Small: thousands of these sit idle during the memory test.
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
}

// close stops the listeners and closes every connection.
func (b *backend) close() {
	b.ln.Close()
	if b.tlsLn != nil {
		b.tlsLn.Close()
	}
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	b.conns = nil
	b.mu.Unlock()
	b.wg.Wait()
}
