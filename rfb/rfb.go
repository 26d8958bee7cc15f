// Package rfb lets the gateway hold a VNC server's password: it performs
// the RFB (VNC) handshake with a server that requires VNC authentication
// (security type 2, the DES challenge), then presents the authenticated
// connection to the browser as a server that asks for no password
// (security type 1, None). The browser's viewer never sees the password
// and the splice is unchanged: it copies bytes from ClientInit on.
//
// It also reads and writes TigerVNC's password file (the password
// obfuscated with a fixed DES key), which Xvnc takes with -PasswordFile.
package rfb

import (
	"bytes"
	"context"
	"crypto/des"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Security types of RFB.
const (
	SecInvalid = 0
	SecNone    = 1
	SecVncAuth = 2
)

// MaxPasswordLen is how much of a password VNC authentication uses.
const MaxPasswordLen = 8

// Errors of the handshake; match them with errors.Is.
var (
	// ErrProtocol: the server did not speak RFB as expected.
	ErrProtocol = errors.New("not an RFB server, or an RFB protocol error")
	// ErrNoVncAuth: the server does not offer VNC authentication.
	ErrNoVncAuth = errors.New("the VNC server does not offer VNC authentication")
	// ErrAuthFailed: the server refused the password.
	ErrAuthFailed = errors.New("the VNC server refused the password")
)

// maxReason bounds a reason string read from a server.
const maxReason = 4096

// version is an RFB protocol version, 3.x.
type version int

const (
	v33 version = 3
	v37 version = 7
	v38 version = 8
)

// parseVersion reads "RFB 003.00x\n". Versions above 3.8 (and Apple's
// 3.889) speak 3.8; the unofficial 3.4 and 3.6 speak 3.3.
func parseVersion(b []byte) (version, error) {
	if len(b) != 12 || !bytes.HasPrefix(b, []byte("RFB ")) || b[7] != '.' || b[11] != '\n' {
		return 0, fmt.Errorf("%w: bad protocol version %q", ErrProtocol, b)
	}
	major, err1 := strconv.Atoi(string(b[4:7]))
	minor, err2 := strconv.Atoi(string(b[8:11]))
	if err1 != nil || err2 != nil || major < 3 {
		return 0, fmt.Errorf("%w: bad protocol version %q", ErrProtocol, b)
	}
	switch {
	case major > 3 || minor >= 8:
		return v38, nil
	case minor == 7:
		return v37, nil
	default:
		return v33, nil
	}
}

func (v version) greeting() []byte {
	return []byte(fmt.Sprintf("RFB 003.%03d\n", int(v)))
}

// reverseBits mirrors the bits of a byte: VNC authentication's DES key
// is the password with each byte's bits in reverse order (the convention
// of the d3des code every VNC implementation inherited).
func reverseBits(b byte) byte {
	var r byte
	for i := 0; i < 8; i++ {
		r = r<<1 | b&1
		b >>= 1
	}
	return r
}

// vncKey makes the DES key for a password: its first eight bytes, padded
// with zeros, each bit-reversed.
func vncKey(password []byte) []byte {
	key := make([]byte, 8)
	copy(key, password)
	for i := range key {
		key[i] = reverseBits(key[i])
	}
	return key
}

// Response is VNC authentication's answer to a 16-byte challenge: the
// challenge encrypted with DES (ECB, two blocks) under the password's key.
func Response(password []byte, challenge [16]byte) [16]byte {
	c, err := des.NewCipher(vncKey(password))
	if err != nil {
		panic(err) // an 8-byte key never fails
	}
	var out [16]byte
	c.Encrypt(out[:8], challenge[:8])
	c.Encrypt(out[8:], challenge[8:])
	return out
}

// obfuscationKey is the fixed key TigerVNC (and every VNC since the
// original) obfuscates stored passwords with, as d3des takes it.
var obfuscationKey = []byte{23, 82, 107, 6, 35, 78, 88, 7}

// ObfuscatePassword returns the eight bytes of a TigerVNC password file
// for password (of which only the first eight bytes count).
func ObfuscatePassword(password []byte) []byte {
	c, err := des.NewCipher(vncKey(obfuscationKey))
	if err != nil {
		panic(err)
	}
	var plain [8]byte
	copy(plain[:], password)
	out := make([]byte, 8)
	c.Encrypt(out, plain[:])
	return out
}

// DeobfuscatePassword reverses ObfuscatePassword: the password, without
// its zero padding.
func DeobfuscatePassword(file []byte) ([]byte, error) {
	if len(file) < 8 {
		return nil, fmt.Errorf("a VNC password file holds 8 bytes, this one %d", len(file))
	}
	c, err := des.NewCipher(vncKey(obfuscationKey))
	if err != nil {
		panic(err)
	}
	out := make([]byte, 8)
	c.Decrypt(out, file[:8])
	if i := bytes.IndexByte(out, 0); i >= 0 {
		out = out[:i]
	}
	return out, nil
}

// WritePasswordFile writes password as a TigerVNC password file at path,
// readable only by its owner (0600), replacing nothing: the file must not
// exist yet.
func WritePasswordFile(path string, password []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing VNC password file: %w", err)
	}
	if _, err := f.Write(ObfuscatePassword(password)); err != nil {
		f.Close()
		return fmt.Errorf("writing VNC password file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing VNC password file %s: %w", path, err)
	}
	return nil
}

// ReadPasswordFile reads a TigerVNC password file. It refuses a file that
// is not a regular file of this user's, or that group or others may read
// or write: a password others could read is no password.
func ReadPasswordFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("reading VNC password file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading VNC password file: %w", err)
	}
	if err := privateFile(st); err != nil {
		return nil, fmt.Errorf("VNC password file %s: %w", path, err)
	}
	buf, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return nil, fmt.Errorf("reading VNC password file %s: %w", path, err)
	}
	pw, err := DeobfuscatePassword(buf)
	if err != nil {
		return nil, fmt.Errorf("VNC password file %s: %w", path, err)
	}
	return pw, nil
}

// Authenticate performs the client side of the RFB handshake on c up to
// and including the SecurityResult, answering the server's VNC
// authentication challenge with password. On success the server waits
// for ClientInit. The protocol version agreed is the server's, up to 3.8.
// ctx bounds the handshake.
func Authenticate(ctx context.Context, c net.Conn, password []byte) (err error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	// The handshake's goroutine is the connection's only user until it
	// returns; a cancelled ctx interrupts its reads.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			if err == nil {
				err = fmt.Errorf("RFB handshake: %w", ctx.Err())
			}
			return
		}
		_ = c.SetDeadline(time.Time{})
	}()
	if err := authenticate(c, password); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return err
	}
	return nil
}

func authenticate(c net.Conn, password []byte) error {
	var vb [12]byte
	if _, err := io.ReadFull(c, vb[:]); err != nil {
		return fmt.Errorf("%w: reading the server's version: %w", ErrProtocol, err)
	}
	v, err := parseVersion(vb[:])
	if err != nil {
		return err
	}
	if _, err := c.Write(v.greeting()); err != nil {
		return fmt.Errorf("RFB handshake: sending the version: %w", err)
	}
	if v == v33 {
		var t [4]byte
		if _, err := io.ReadFull(c, t[:]); err != nil {
			return fmt.Errorf("%w: reading the security type: %w", ErrProtocol, err)
		}
		switch st := binary.BigEndian.Uint32(t[:]); st {
		case SecVncAuth:
		case SecInvalid:
			return fmt.Errorf("%w: the server refused the connection: %s", ErrProtocol, readReason(c))
		default:
			return fmt.Errorf("%w (it requires security type %d)", ErrNoVncAuth, st)
		}
	} else {
		var n [1]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return fmt.Errorf("%w: reading the security types: %w", ErrProtocol, err)
		}
		if n[0] == 0 {
			return fmt.Errorf("%w: the server refused the connection: %s", ErrProtocol, readReason(c))
		}
		types := make([]byte, n[0])
		if _, err := io.ReadFull(c, types); err != nil {
			return fmt.Errorf("%w: reading the security types: %w", ErrProtocol, err)
		}
		if bytes.IndexByte(types, SecVncAuth) < 0 {
			return fmt.Errorf("%w (it offers %v)", ErrNoVncAuth, types)
		}
		if _, err := c.Write([]byte{SecVncAuth}); err != nil {
			return fmt.Errorf("RFB handshake: choosing VNC authentication: %w", err)
		}
	}
	var ch [16]byte
	if _, err := io.ReadFull(c, ch[:]); err != nil {
		return fmt.Errorf("%w: reading the challenge: %w", ErrProtocol, err)
	}
	resp := Response(password, ch)
	if _, err := c.Write(resp[:]); err != nil {
		return fmt.Errorf("RFB handshake: answering the challenge: %w", err)
	}
	var res [4]byte
	if _, err := io.ReadFull(c, res[:]); err != nil {
		return fmt.Errorf("%w: reading the security result: %w", ErrProtocol, err)
	}
	if binary.BigEndian.Uint32(res[:]) != 0 {
		if v == v38 {
			return fmt.Errorf("%w: %s", ErrAuthFailed, readReason(c))
		}
		return ErrAuthFailed
	}
	return nil
}

// readReason reads a length-prefixed reason string, bounded.
func readReason(r io.Reader) string {
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return "(no reason given)"
	}
	n := binary.BigEndian.Uint32(l[:])
	if n > maxReason {
		n = maxReason
	}
	b := make([]byte, n)
	k, _ := io.ReadFull(r, b)
	return string(b[:k])
}

// NoneConn is an authenticated connection to a VNC server presented as a
// server that offers security type None: reading it first yields an RFB
// 3.8 greeting, the one security type None and, as the client's version
// asks, a SecurityResult of OK; what the client writes up to its choice
// of security type is consumed here. From the client's ClientInit on, it
// is the server's connection, byte for byte.
type NoneConn struct {
	net.Conn

	mu      sync.Mutex
	cond    *sync.Cond
	phase   phase
	out     []byte // to the client, before the server's own bytes
	in      []byte // the client's handshake bytes collected so far
	v38     bool   // the client speaks 3.8: SecurityResult follows None
	closed  bool
	failErr error // the client's handshake was refused
}

type phase int

const (
	wantVersion phase = iota // waiting for the client's 12-byte version
	wantChoice               // waiting for its security type choice
	passing                  // the handshake is over: bytes pass through
	failed                   // the client broke the handshake
)

// NewNoneConn wraps c, a connection on which Authenticate succeeded.
func NewNoneConn(c net.Conn) *NoneConn {
	nc := &NoneConn{Conn: c, out: v38.greeting()}
	nc.cond = sync.NewCond(&nc.mu)
	return nc
}

// Read returns the handshake's bytes to the client, then the server's.
func (nc *NoneConn) Read(p []byte) (int, error) {
	nc.mu.Lock()
	for len(nc.out) == 0 && nc.phase != passing && nc.phase != failed && !nc.closed {
		nc.cond.Wait()
	}
	if len(nc.out) > 0 {
		n := copy(p, nc.out)
		nc.out = nc.out[n:]
		nc.mu.Unlock()
		return n, nil
	}
	closed, ph, ferr := nc.closed, nc.phase, nc.failErr
	nc.mu.Unlock()
	switch {
	case ph == failed:
		return 0, ferr
	case closed && ph != passing:
		return 0, net.ErrClosed
	}
	return nc.Conn.Read(p)
}

// Write takes the client's handshake bytes, then passes the rest to the
// server.
func (nc *NoneConn) Write(p []byte) (int, error) {
	nc.mu.Lock()
	if nc.phase == passing {
		nc.mu.Unlock()
		return nc.Conn.Write(p)
	}
	taken := 0
	for taken < len(p) && nc.phase != passing && nc.phase != failed {
		need := 12
		if nc.phase == wantChoice {
			need = 1
		}
		k := min(need-len(nc.in), len(p)-taken)
		nc.in = append(nc.in, p[taken:taken+k]...)
		taken += k
		if len(nc.in) == need {
			nc.stepLocked()
		}
	}
	ph, ferr := nc.phase, nc.failErr
	nc.cond.Broadcast()
	nc.mu.Unlock()
	if ph == failed {
		return taken, ferr
	}
	if taken < len(p) {
		n, err := nc.Conn.Write(p[taken:])
		return taken + n, err
	}
	return taken, nil
}

// stepLocked acts on a complete handshake message of the client's.
func (nc *NoneConn) stepLocked() {
	msg := nc.in
	nc.in = nil
	switch nc.phase {
	case wantVersion:
		v, err := parseVersion(msg)
		if err != nil {
			nc.failLocked(err)
			return
		}
		if v == v33 {
			// 3.3: the server decides the type; no SecurityResult for None.
			nc.out = append(nc.out, 0, 0, 0, SecNone)
			nc.phase = passing
			return
		}
		nc.out = append(nc.out, 1, SecNone)
		nc.phase = wantChoice
		nc.v38 = v == v38
	case wantChoice:
		if msg[0] != SecNone {
			reason := "only security type None (1) is offered"
			if nc.v38 {
				nc.out = append(nc.out, 0, 0, 0, 1)
				nc.out = binary.BigEndian.AppendUint32(nc.out, uint32(len(reason)))
				nc.out = append(nc.out, reason...)
			}
			nc.failLocked(fmt.Errorf("%w: the client chose security type %d; %s", ErrProtocol, msg[0], reason))
			return
		}
		if nc.v38 {
			nc.out = append(nc.out, 0, 0, 0, 0)
		}
		nc.phase = passing
	}
}

func (nc *NoneConn) failLocked(err error) {
	nc.phase = failed
	nc.failErr = err
}

// Close closes the server connection and wakes a waiting Read.
func (nc *NoneConn) Close() error {
	nc.mu.Lock()
	nc.closed = true
	nc.cond.Broadcast()
	nc.mu.Unlock()
	return nc.Conn.Close()
}

// CloseWrite half-closes the server connection when it can be.
func (nc *NoneConn) CloseWrite() error {
	if cw, ok := nc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// privateFile checks that st is a regular file of this user's that group
// and others cannot read or write.
func privateFile(st os.FileInfo) error {
	if !st.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	if st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("mode %04o lets others read or change it; make it 0600", st.Mode().Perm())
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Getuid() {
		return fmt.Errorf("owned by uid %d, not by the gateway's user (%d)", sys.Uid, os.Getuid())
	}
	return nil
}
