// Package wsframetest builds websocket frames as a client sends them, for
// the tests of the frame codec and of the splice.
package wsframetest

import "encoding/binary"

// ClientFrame builds a masked client frame (RFC 6455 §5.2) of op with
// payload, masked with key, with FIN set when fin is.
func ClientFrame(fin bool, op byte, payload []byte, key [4]byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	var b []byte
	switch n := len(payload); {
	case n < 126:
		b = append(b, b0, 0x80|byte(n))
	case n < 1<<16:
		b = append(b, b0, 0x80|126, 0, 0)
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b = append(b, b0, 0x80|127, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(b[2:], uint64(n))
	}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}
