package main

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// The bare proxy: the least a websocket-to-TCP proxy in its own process
// can do, measured beside wsgateway so that the report tells the cost of
// the machine (one more process, two more sockets, two more wake-ups per
// round trip, a second connection per set-up) apart from wsgateway's own.
// It reads the upgrade request without an HTTP server (it looks for the
// key and nothing else), dials the backend, and copies: a goroutine per
// direction, one read and one write per step, the client's frames
// unmasked in place; no policy, no logging, no limits, no TLS. It is a
// yardstick, not a server: it trusts its client.
//
// It runs as "wsbench -serve_bare PORT -bare_to HOST:PORT", started by
// wsbench itself.

// bareReadyLine is what the bare proxy prints once it listens.
const bareReadyLine = "wsbench bare proxy ready"

// serveBare runs the bare proxy on port until ctx ends.
func serveBare(ctx context.Context, port int, to string, stdout io.Writer) error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, bareReadyLine)
	return bareServe(ctx, ln, to)
}

// bareServe runs the bare proxy on ln until ctx ends.
func bareServe(ctx context.Context, ln net.Listener, to string) error {
	context.AfterFunc(ctx, func() { ln.Close() })
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go bareConn(c, to)
	}
}

// wsGUID is RFC 6455's fixed accept-key suffix.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// bareConn answers one upgrade and copies until either side ends.
func bareConn(c net.Conn, to string) {
	key, rest, err := bareHandshake(c)
	if err != nil {
		c.Close()
		return
	}
	s, err := net.Dial("tcp", to)
	if err != nil {
		_, _ = c.Write([]byte("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
		c.Close()
		return
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n"
	if _, err := c.Write([]byte(resp)); err != nil {
		c.Close()
		s.Close()
		return
	}
	b := &bareTunnel{c: c, s: s}
	go b.down()
	b.up(rest)
}

// bareHandshake reads the request head (at most 4 KiB) and returns the
// Sec-WebSocket-Key and what the client sent after the head.
func bareHandshake(c net.Conn) (key string, rest []byte, err error) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	var arr [4096]byte
	buf := arr[:]
	n := 0
	for {
		m, err := c.Read(buf[n:])
		n += m
		if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 {
			head := buf[:i]
			for _, line := range bytes.Split(head, []byte("\r\n")) {
				name, value, ok := bytes.Cut(line, []byte(":"))
				if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Sec-WebSocket-Key")) {
					key = string(bytes.TrimSpace(value))
				}
			}
			if key == "" {
				return "", nil, errors.New("no Sec-WebSocket-Key")
			}
			return key, append([]byte(nil), buf[i+4:n]...), nil
		}
		if err != nil {
			return "", nil, err
		}
		if n == len(buf) {
			return "", nil, errors.New("request head too long")
		}
	}
}

// bareBufs are the copy buffers, reused from tunnel to tunnel as any
// proxy would.
var bareBufs = sync.Pool{New: func() any { b := make([]byte, 10+(128<<10)); return &b }}

// bareTunnel is one spliced connection: c the client, s the service.
type bareTunnel struct {
	c, s net.Conn
	wmu  sync.Mutex // writes to the client (data and the close echo)
	once sync.Once
}

func (b *bareTunnel) end() {
	b.once.Do(func() {
		b.c.Close()
		b.s.Close()
	})
}

// up unmasks the client's frames into the service until a close frame or
// an error; first is what came with the request head.
func (b *bareTunnel) up(first []byte) {
	defer b.end()
	var p bareParser
	bp := bareBufs.Get().(*[]byte)
	defer bareBufs.Put(bp)
	buf := (*bp)[:128<<10]
	n := copy(buf, first)
	for {
		if n > 0 {
			out, closed, err := p.feed(buf[:n])
			if err != nil {
				return
			}
			if len(out) > 0 {
				if _, err := b.s.Write(out); err != nil {
					return
				}
			}
			if closed {
				b.wmu.Lock()
				_, _ = b.c.Write([]byte{0x88, 0x02, 0x03, 0xe8}) // close 1000
				b.wmu.Unlock()
				return
			}
		}
		var err error
		n, err = b.c.Read(buf)
		if err != nil && n == 0 {
			return
		}
	}
}

// down frames every read of the service as one binary message.
func (b *bareTunnel) down() {
	defer b.end()
	bp := bareBufs.Get().(*[]byte)
	defer bareBufs.Put(bp)
	buf := *bp
	for {
		n, err := b.s.Read(buf[10:])
		if n > 0 {
			h := bareHeader(buf[:10], n)
			b.wmu.Lock()
			_, werr := b.c.Write(buf[10-h : 10+n])
			b.wmu.Unlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// bareHeader writes a FIN binary frame header for n bytes at the end of
// room (10 bytes) and returns its length.
func bareHeader(room []byte, n int) int {
	switch {
	case n < 126:
		room[8], room[9] = 0x82, byte(n)
		return 2
	case n < 1<<16:
		room[6], room[7] = 0x82, 126
		binary.BigEndian.PutUint16(room[8:], uint16(n))
		return 4
	default:
		room[0], room[1] = 0x82, 127
		binary.BigEndian.PutUint64(room[2:], uint64(n))
		return 10
	}
}

// bareParser unmasks a stream of client frames in place, across reads.
type bareParser struct {
	hdr     [14]byte
	hn      int    // header bytes gathered
	left    uint64 // payload bytes left in the current frame
	mask    [4]byte
	pos     int  // position in the mask
	control bool // the current frame is a control frame (not forwarded)
	close   bool
}

// feed unmasks p in place and returns the data payload in it (moved to
// its front), and whether a close frame ended it.
func (p *bareParser) feed(in []byte) (out []byte, closed bool, err error) {
	w := 0
	for i := 0; i < len(in); {
		if p.left == 0 {
			// gather the header
			p.hdr[p.hn] = in[i]
			p.hn++
			i++
			if p.hn == 2 && p.hdr[1]&0x80 == 0 {
				return nil, false, errors.New("unmasked client frame")
			}
			need, ok := p.headerLen()
			if !ok || p.hn < need {
				continue
			}
			var l uint64
			switch p.hdr[1] & 0x7f {
			case 126:
				l = uint64(binary.BigEndian.Uint16(p.hdr[2:]))
			case 127:
				l = binary.BigEndian.Uint64(p.hdr[2:])
			default:
				l = uint64(p.hdr[1] & 0x7f)
			}
			copy(p.mask[:], p.hdr[need-4:need])
			op := p.hdr[0] & 0x0f
			p.control, p.close = op >= 8, op == 8
			p.left, p.pos, p.hn = l, 0, 0
			if l == 0 && p.close {
				return in[:w], true, nil
			}
			continue
		}
		k := int(min(p.left, uint64(len(in)-i)))
		seg := in[i : i+k]
		unmask(seg, p.mask, p.pos)
		p.pos = (p.pos + k) & 3
		if !p.control {
			w += copy(in[w:], seg)
		}
		i += k
		p.left -= uint64(k)
		if p.left == 0 && p.close {
			return in[:w], true, nil
		}
	}
	return in[:w], false, nil
}

// headerLen is the full header length once two bytes are known.
func (p *bareParser) headerLen() (int, bool) {
	if p.hn < 2 {
		return 0, false
	}
	switch p.hdr[1] & 0x7f {
	case 126:
		return 2 + 2 + 4, true
	case 127:
		return 2 + 8 + 4, true
	}
	return 2 + 4, true
}

// unmask XORs b with the mask starting at mask position pos, eight bytes
// at a time where it can.
func unmask(b []byte, mask [4]byte, pos int) {
	var m [4]byte
	for i := range m {
		m[i] = mask[(pos+i)&3]
	}
	m32 := binary.LittleEndian.Uint32(m[:])
	m64 := uint64(m32) | uint64(m32)<<32
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], binary.LittleEndian.Uint64(b[i:])^m64)
	}
	for ; i < len(b); i++ {
		b[i] ^= m[i&3]
	}
}
