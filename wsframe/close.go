package wsframe

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// Close codes the gateway uses (RFC 6455 §7.4.1).
const (
	CloseNormal        = 1000 // a normal end: the service closed
	CloseGoingAway     = 1001 // shutdown, or the client stopped answering
	CloseProtocolError = 1002 // the client broke RFC 6455
	ClosePolicy        = 1008 // idle timeout, maximum duration
	CloseTooBig        = 1009 // a message over the limit
	CloseInternalError = 1011 // the service crashed or failed
	CloseNoStatus      = 1005 // received a close frame without a code; never sent
	CloseAbnormal      = 1006 // the connection ended without a close frame; never sent
)

// ValidCloseCode reports whether code may appear in a close frame on the
// wire, sent or received: the codes RFC 6455 §7.4.1 defines for use
// (1004, 1005, 1006 and 1015 are reserved or stand for "no frame"), those
// IANA registered since (1012-1014), and the ranges §7.4.2 opens to
// libraries, frameworks and applications (3000-4999). Anything below
// 1000 and from 5000 up is invalid.
func ValidCloseCode(code int) bool {
	return (code >= 1000 && code <= 1003) ||
		(code >= 1007 && code <= 1014) ||
		(code >= 3000 && code <= 4999)
}

// ParseClose reads a close frame's payload: no payload is 1005 (no code);
// a single byte, a code that is not valid on the wire, or a reason that
// is not UTF-8 is ErrProtocol (answered with 1002) with the code and the
// reason found so far.
func ParseClose(payload []byte) (code int, reason string, err error) {
	switch len(payload) {
	case 0:
		return CloseNoStatus, "", nil
	case 1:
		return 0, "", fmt.Errorf("%w: a close frame of one byte", ErrProtocol)
	}
	code = int(binary.BigEndian.Uint16(payload))
	if !ValidCloseCode(code) {
		return code, "", fmt.Errorf("%w: invalid close code %d", ErrProtocol, code)
	}
	if !utf8.Valid(payload[2:]) {
		return code, "", fmt.Errorf("%w: close reason is not UTF-8", ErrProtocol)
	}
	return code, string(payload[2:]), nil
}

// AppendClose appends an unmasked close frame whose payload is
// ClosePayload's.
func AppendClose(dst []byte, code int, reason string) []byte {
	return AppendControl(dst, OpClose, ClosePayload(code, reason))
}

// ClosePayload is the payload of a close frame the gateway sends. A code
// that may not go on the wire becomes 1011 (so 1005, 1006 and 1015 never
// leave the gateway), except 0 and 1005, which give an empty payload
// (the answer to a close that had none). The reason is cut to fit on a
// UTF-8 boundary.
func ClosePayload(code int, reason string) []byte {
	if code == 0 || code == CloseNoStatus {
		return nil
	}
	if !ValidCloseCode(code) {
		code = CloseInternalError
	}
	reason = TruncateReason(reason, MaxControlPayload-2)
	return append([]byte{byte(code >> 8), byte(code)}, reason...)
}

// TruncateReason cuts s to at most n bytes on a UTF-8 boundary (a close
// reason has room for 123).
func TruncateReason(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}
