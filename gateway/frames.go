package gateway

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Websocket opcodes (RFC 6455 §5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// errProtocol is a client frame that breaks RFC 6455; the tunnel closes
// with 1002.
var errProtocol = errors.New("websocket protocol error")

// frameParser decodes client-to-server frames incrementally from whatever
// chunks the socket delivers, unmasking payload in place. It holds no
// buffer of its own beyond a 125-byte control-frame area, so the splice
// can read into a pooled buffer and give it back between bursts.
type frameParser struct {
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
	ctrl     [125]byte
	ctrlN    int
	reason   string // why errProtocol or errTooBig was returned
	limit    uint64 // largest data message accepted (0: no limit)
	msgLen   uint64 // bytes of the current data message so far
}

// errTooBig is a data message over the read limit; the tunnel closes with
// 1009.
var errTooBig = errors.New("websocket message too big")

// frameHandler receives what the parser decodes: payload bytes of data
// frames (whatever their message boundaries) and whole control frames.
type frameHandler interface {
	data(p []byte) error
	control(op byte, payload []byte) error
}

func (f *frameParser) fail(reason string) error {
	f.reason = reason
	return errProtocol
}

// feed parses p (which it unmasks in place) and calls h.
func (f *frameParser) feed(p []byte, h frameHandler) error {
	for len(p) > 0 {
		if !f.inFrame {
			if f.hdrN < 2 {
				n := copy(f.hdr[f.hdrN:2], p)
				f.hdrN += n
				p = p[n:]
				if f.hdrN < 2 {
					return nil
				}
				if err := f.startHeader(); err != nil {
					return err
				}
			}
			if f.hdrN < f.need {
				n := copy(f.hdr[f.hdrN:f.need], p)
				f.hdrN += n
				p = p[n:]
				if f.hdrN < f.need {
					return nil
				}
			}
			if err := f.endHeader(); err != nil {
				return err
			}
			if f.remain == 0 {
				if err := f.endFrame(h); err != nil {
					return err
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
		if f.opcode >= opClose {
			f.ctrlN += copy(f.ctrl[f.ctrlN:], chunk)
		} else if err := h.data(chunk); err != nil {
			return err
		}
		f.remain -= uint64(n)
		p = p[n:]
		if f.remain == 0 {
			if err := f.endFrame(h); err != nil {
				return err
			}
		}
	}
	return nil
}

func (f *frameParser) startHeader() error {
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
	case opContinuation:
		if !f.fragment {
			return f.fail("continuation frame without a message to continue")
		}
	case opText, opBinary:
		if f.fragment {
			return f.fail("new data message inside a fragmented one")
		}
	case opClose, opPing, opPong:
		if !fin {
			return f.fail("fragmented control frame")
		}
		if b1&0x7f > 125 {
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

func (f *frameParser) endHeader() error {
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
	if f.opcode < opClose {
		f.fragment = !f.fin
		if f.opcode != opContinuation {
			f.msgLen = 0
		}
		f.msgLen += n
		if f.limit > 0 && f.msgLen > f.limit {
			f.reason = fmt.Sprintf("message larger than the gateway's limit of %d bytes", f.limit)
			return errTooBig
		}
	}
	return nil
}

func (f *frameParser) endFrame(h frameHandler) error {
	op := f.opcode
	f.inFrame = false
	f.hdrN = 0
	f.need = 0
	if op >= opClose {
		return h.control(op, f.ctrl[:f.ctrlN])
	}
	return nil
}

// maskBytes XORs b with the mask starting at position pos and returns the
// position after b. Eight bytes at a time where it can.
func maskBytes(key [4]byte, pos int, b []byte) int {
	i := 0
	for ; i < len(b) && pos&3 != 0; i++ {
		b[i] ^= key[pos&3]
		pos++
	}
	if rest := len(b) - i; rest >= 8 {
		k32 := binary.LittleEndian.Uint32(key[:])
		k32 = bits.RotateLeft32(k32, -8*(pos&3))
		k64 := uint64(k32) | uint64(k32)<<32
		for ; len(b)-i >= 8; i += 8 {
			v := binary.LittleEndian.Uint64(b[i:])
			binary.LittleEndian.PutUint64(b[i:], v^k64)
		}
	}
	for ; i < len(b); i++ {
		b[i] ^= key[pos&3]
		pos++
	}
	return pos & 3
}

// headerRoom is the space kept in front of a payload for a server frame
// header (unmasked, up to 64-bit length).
const headerRoom = 10

// putHeader writes a FIN frame header for op and n payload bytes so that
// it ends at buf[headerRoom], and returns where it starts.
func putHeader(buf []byte, op byte, n int) int {
	switch {
	case n < 126:
		buf[8] = 0x80 | op
		buf[9] = byte(n)
		return 8
	case n < 1<<16:
		buf[6] = 0x80 | op
		buf[7] = 126
		binary.BigEndian.PutUint16(buf[8:10], uint16(n))
		return 6
	default:
		buf[0] = 0x80 | op
		buf[1] = 127
		binary.BigEndian.PutUint64(buf[2:10], uint64(n))
		return 0
	}
}
