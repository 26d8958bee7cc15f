// Package wsframe is the websocket frame codec of the gateway's splice
// (RFC 6455): an incremental parser for client frames that unmasks in
// place and holds no buffer of its own, the writing of server frame
// headers and control frames, and the close codes a gateway may send or
// accept. It does no I/O; the splice in package gateway reads and writes
// the sockets with it.
package wsframe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Websocket opcodes (RFC 6455 §5.2).
const (
	OpContinuation byte = 0x0
	OpText         byte = 0x1
	OpBinary       byte = 0x2
	OpClose        byte = 0x8
	OpPing         byte = 0x9
	OpPong         byte = 0xA
)

// MaxControlPayload is the largest payload of a control frame (§5.5).
const MaxControlPayload = 125

// CloseTimeout bounds a close handshake: after a close frame is sent the
// peer has this long to answer before its connection is closed.
const CloseTimeout = 2 * time.Second

// ErrProtocol is a client frame that breaks RFC 6455; the connection is
// closed with 1002.
var ErrProtocol = errors.New("websocket protocol error")

// ErrTooBig is a data message over the parser's limit; the connection is
// closed with 1009.
var ErrTooBig = errors.New("websocket message too big")

// Handler receives what the parser decodes: payload bytes of data frames
// (whatever their message boundaries) and whole control frames. The
// slices are only valid during the call.
type Handler interface {
	Data(p []byte) error
	Control(op byte, payload []byte) error
}

// Parser decodes client-to-server frames incrementally from whatever
// chunks the socket delivers, unmasking payload in place. It holds no
// buffer of its own beyond a 125-byte control-frame area, so a caller can
// read into a pooled buffer and give it back between bursts. The zero
// value is ready to use, with no limit.
type Parser struct {
	// Limit is the largest data message accepted (0: no limit).
	Limit uint64

	hdr      [14]byte
	hdrN     int
	need     int // header length once known (0: not yet)
	inFrame  bool
	opcode   byte
	fin      bool
	remain   uint64
	mask     [4]byte
	maskPos  int
	fragment bool // inside a fragmented data message
	ctrl     [MaxControlPayload]byte
	ctrlN    int
	reason   string // why ErrProtocol or ErrTooBig was returned
	msgLen   uint64 // bytes of the current data message so far
	left     int    // bytes of the last Feed not parsed after an error
}

// Reason says why Feed returned ErrProtocol or ErrTooBig, in words fit
// for a close frame.
func (f *Parser) Reason() string { return f.reason }

func (f *Parser) fail(reason string) error {
	f.reason = reason
	return ErrProtocol
}

// Feed parses p (which it unmasks in place) and calls h. After
// ErrProtocol the parser's state is undefined: stop feeding it. After
// ErrTooBig (returned once the frame's header is read) or an error from
// h, the parser is in step with the stream: the last Unconsumed bytes of
// p were not parsed, and parsing can go on from them (with Limit 0).
func (f *Parser) Feed(p []byte, h Handler) error {
	left, err := f.feed(p, h)
	f.left = left
	return err
}

// Unconsumed is how many bytes at the end of the last Feed's input were
// not parsed when it returned an error (0 after success).
func (f *Parser) Unconsumed() int { return f.left }

func (f *Parser) feed(p []byte, h Handler) (int, error) {
	for len(p) > 0 {
		if !f.inFrame {
			if f.hdrN < 2 {
				n := copy(f.hdr[f.hdrN:2], p)
				f.hdrN += n
				p = p[n:]
				if f.hdrN < 2 {
					return 0, nil
				}
				if err := f.startHeader(); err != nil {
					return len(p), err
				}
			}
			if f.hdrN < f.need {
				n := copy(f.hdr[f.hdrN:f.need], p)
				f.hdrN += n
				p = p[n:]
				if f.hdrN < f.need {
					return 0, nil
				}
			}
			if err := f.endHeader(); err != nil {
				return len(p), err
			}
			if f.remain == 0 {
				if err := f.endFrame(h); err != nil {
					return len(p), err
				}
			}
			continue
		}
		n := len(p)
		if uint64(n) > f.remain {
			n = int(f.remain)
		}
		chunk := p[:n]
		f.maskPos = maskBytes(f.mask, f.maskPos, chunk)
		f.remain -= uint64(n)
		p = p[n:]
		if f.opcode >= OpClose {
			f.ctrlN += copy(f.ctrl[f.ctrlN:], chunk)
		} else if err := h.Data(chunk); err != nil {
			if f.remain == 0 {
				_ = f.endFrame(h) // a data frame: no callback
			}
			return len(p), err
		}
		if f.remain == 0 {
			if err := f.endFrame(h); err != nil {
				return len(p), err
			}
		}
	}
	return 0, nil
}

func (f *Parser) startHeader() error {
	b0, b1 := f.hdr[0], f.hdr[1]
	if b0&0x70 != 0 {
		return f.fail("reserved bits set without a negotiated extension")
	}
	if b1&0x80 == 0 {
		return f.fail("client frame not masked")
	}
	op := b0 & 0x0f
	fin := b0&0x80 != 0
	switch op {
	case OpContinuation:
		if !f.fragment {
			return f.fail("continuation frame without a message to continue")
		}
	case OpText, OpBinary:
		if f.fragment {
			return f.fail("new data message inside a fragmented one")
		}
	case OpClose, OpPing, OpPong:
		if !fin {
			return f.fail("fragmented control frame")
		}
		if b1&0x7f > MaxControlPayload {
			return f.fail("control frame longer than 125 bytes")
		}
	default:
		return f.fail("unknown opcode")
	}
	f.opcode, f.fin = op, fin
	switch b1 & 0x7f {
	case 126:
		f.need = 2 + 2 + 4
	case 127:
		f.need = 2 + 8 + 4
	default:
		f.need = 2 + 4
	}
	return nil
}

func (f *Parser) endHeader() error {
	var n uint64
	off := 2
	switch l := f.hdr[1] & 0x7f; l {
	case 126:
		n = uint64(binary.BigEndian.Uint16(f.hdr[2:4]))
		off = 4
	case 127:
		n = binary.BigEndian.Uint64(f.hdr[2:10])
		if n>>63 != 0 {
			return f.fail("frame length has its top bit set")
		}
		off = 10
	default:
		n = uint64(l)
	}
	copy(f.mask[:], f.hdr[off:off+4])
	f.maskPos = 0
	f.remain = n
	f.inFrame = true
	f.ctrlN = 0
	if f.opcode < OpClose {
		f.fragment = !f.fin
		if f.opcode != OpContinuation {
			f.msgLen = 0
		}
		f.msgLen += n
		if f.Limit > 0 && f.msgLen > f.Limit {
			f.reason = fmt.Sprintf("message larger than the gateway's limit of %d bytes", f.Limit)
			return ErrTooBig
		}
	}
	return nil
}

func (f *Parser) endFrame(h Handler) error {
	op := f.opcode
	f.inFrame = false
	f.hdrN = 0
	f.need = 0
	if op >= OpClose {
		return h.Control(op, f.ctrl[:f.ctrlN])
	}
	return nil
}

// maskBytes XORs b with the mask key starting at position pos (0-3) and
// returns the position after b. In place, a word at a time: 32 bytes per
// step (four 64-bit words), then 8, then byte by byte. The words are
// loaded and stored with encoding/binary, which is safe at any alignment
// (one unaligned move on amd64 and arm64).
func maskBytes(key [4]byte, pos int, b []byte) int {
	pos &= 3
	i := 0
	for ; i < len(b) && pos != 0; i++ {
		b[i] ^= key[pos]
		pos = (pos + 1) & 3
	}
	if len(b)-i >= 8 {
		// pos is 0 here (the loop above ran to a multiple of 4 or to
		// the end): the key repeats from its first byte.
		k32 := binary.LittleEndian.Uint32(key[:])
		k64 := uint64(k32) | uint64(k32)<<32
		for ; len(b)-i >= 32; i += 32 {
			w := b[i : i+32 : i+32]
			binary.LittleEndian.PutUint64(w[0:], binary.LittleEndian.Uint64(w[0:])^k64)
			binary.LittleEndian.PutUint64(w[8:], binary.LittleEndian.Uint64(w[8:])^k64)
			binary.LittleEndian.PutUint64(w[16:], binary.LittleEndian.Uint64(w[16:])^k64)
			binary.LittleEndian.PutUint64(w[24:], binary.LittleEndian.Uint64(w[24:])^k64)
		}
		for ; len(b)-i >= 8; i += 8 {
			binary.LittleEndian.PutUint64(b[i:], binary.LittleEndian.Uint64(b[i:])^k64)
		}
	}
	for ; i < len(b); i++ {
		b[i] ^= key[pos]
		pos = (pos + 1) & 3
	}
	return pos
}

// HeaderRoom is the space kept in front of a payload for a server frame
// header (unmasked, up to a 64-bit length).
const HeaderRoom = 10

// PutHeader writes a FIN frame header for op and n payload bytes so that
// it ends at buf[HeaderRoom], and returns where it starts. buf must have
// at least HeaderRoom bytes.
func PutHeader(buf []byte, op byte, n int) int {
	if n < 126 {
		buf[8] = 0x80 | op
		buf[9] = byte(n)
		return 8
	}
	if n < 1<<16 {
		buf[6] = 0x80 | op
		buf[7] = 126
		binary.BigEndian.PutUint16(buf[8:10], uint16(n))
		return 6
	}
	buf[0] = 0x80 | op
	buf[1] = 127
	binary.BigEndian.PutUint64(buf[2:10], uint64(n))
	return 0
}

// AppendControl appends an unmasked control frame (server to client) for
// op with payload, cut to 125 bytes.
func AppendControl(dst []byte, op byte, payload []byte) []byte {
	if len(payload) > MaxControlPayload {
		payload = payload[:MaxControlPayload]
	}
	dst = append(dst, 0x80|op, byte(len(payload)))
	return append(dst, payload...)
}
