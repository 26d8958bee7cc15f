package rfb

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// The recording format is websockify's --record, which noVNC's playback
// reads: a JavaScript file declaring
//
//	var VNC_frame_encoding = 'binary';
//	var VNC_frame_data = [
//	'{<ms>{<bytes>',
//	...
//	'EOF'];
//
// one single-quoted string per read from the server: '{' marks bytes
// from the server ('}' would mark the client's), <ms> is the time since
// the recording began in milliseconds, and <bytes> is the data, one
// character per byte (printable ASCII as itself, everything else, the
// quote and the backslash as \xHH).
const (
	recordHeader  = "var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n"
	recordTrailer = "'EOF'];\n"
)

// ErrRecordFull: the recording reached its size limit; later frames are
// not written. Match with errors.Is.
var ErrRecordFull = errors.New("the recording reached its size limit")

// Recorder writes frames to a recording. It is safe for concurrent use.
type Recorder struct {
	mu     sync.Mutex
	f      io.WriteCloser
	w      *bufio.Writer
	start  time.Time
	max    int64 // most bytes the file may hold (0: no limit)
	size   int64
	full   bool
	closed bool
	err    error
	buf    []byte
}

// NewRecorder starts a recording on f, its times counted from start; it
// holds at most maxBytes (0: no limit), trailer included, and is cut
// there (still a complete, playable file).
func NewRecorder(f io.WriteCloser, start time.Time, maxBytes int64) (*Recorder, error) {
	r := &Recorder{f: f, w: bufio.NewWriterSize(f, 64<<10), start: start, max: maxBytes}
	if maxBytes > 0 && maxBytes < int64(len(recordHeader)+len(recordTrailer)) {
		return nil, fmt.Errorf("a recording's size limit must be at least %d bytes, got %d", len(recordHeader)+len(recordTrailer), maxBytes)
	}
	if err := r.write([]byte(recordHeader)); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Recorder) write(b []byte) error {
	if _, err := r.w.Write(b); err != nil {
		r.err = fmt.Errorf("writing the recording: %w", err)
		return r.err
	}
	if err := r.w.Flush(); err != nil {
		r.err = fmt.Errorf("writing the recording: %w", err)
		return r.err
	}
	r.size += int64(len(b))
	return nil
}

// Frame records data as read from the server (fromClient false) or
// written by the client (true) at time at. Once the size limit is
// reached it returns ErrRecordFull and records nothing more.
func (r *Recorder) Frame(at time.Time, fromClient bool, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.err != nil:
		return r.err
	case r.closed:
		return fmt.Errorf("recording: %w", net.ErrClosed)
	case r.full:
		return ErrRecordFull
	}
	ms := at.Sub(r.start).Milliseconds()
	if ms < 0 {
		ms = 0
	}
	mark := byte('{')
	if fromClient {
		mark = '}'
	}
	b := append(r.buf[:0], '\'', mark)
	b = strconv.AppendInt(b, ms, 10)
	b = append(b, mark)
	b = AppendEscaped(b, data)
	b = append(b, '\'', ',', '\n')
	r.buf = b
	if r.max > 0 && r.size+int64(len(b))+int64(len(recordTrailer)) > r.max {
		r.full = true
		return ErrRecordFull
	}
	return r.write(b)
}

// AppendEscaped appends data as the inside of a JavaScript single-quoted
// string, one character per byte.
func AppendEscaped(dst, data []byte) []byte {
	const hex = "0123456789abcdef"
	for _, c := range data {
		if c >= 0x20 && c < 0x7f && c != '\'' && c != '\\' {
			dst = append(dst, c)
			continue
		}
		dst = append(dst, '\\', 'x', hex[c>>4], hex[c&15])
	}
	return dst
}

// Size is how many bytes the recording holds so far (without the
// trailer Close adds).
func (r *Recorder) Size() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.size
}

// Full reports whether the size limit cut the recording.
func (r *Recorder) Full() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.full
}

// Close ends the recording with its trailer and closes the file. It is
// idempotent.
func (r *Recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.err
	}
	r.closed = true
	if r.err == nil {
		_ = r.write([]byte(recordTrailer))
	}
	if err := r.f.Close(); err != nil && r.err == nil {
		r.err = fmt.Errorf("closing the recording: %w", err)
	}
	return r.err
}

// RecordConn wraps a connection to a VNC server: what is read from it
// (the server-to-client stream) is also written to a Recorder. A full or
// failed recording does not disturb the connection; Err says what went
// wrong. Closing the connection closes the recording.
//
// RecordConn does not implement syscall.Conn: a splice sees a generic
// connection.
type RecordConn struct {
	net.Conn
	rec *Recorder
	now func() time.Time

	once   sync.Once
	mu     sync.Mutex
	recErr error
}

// NewRecordConn records what is read from c into rec.
func NewRecordConn(c net.Conn, rec *Recorder) *RecordConn {
	return &RecordConn{Conn: c, rec: rec, now: time.Now}
}

// Read reads from the server and records what it read.
func (rc *RecordConn) Read(p []byte) (int, error) {
	n, err := rc.Conn.Read(p)
	if n > 0 {
		if ferr := rc.rec.Frame(rc.now(), false, p[:n]); ferr != nil {
			rc.mu.Lock()
			if rc.recErr == nil {
				rc.recErr = ferr
			}
			rc.mu.Unlock()
		}
	}
	return n, err
}

// Err is the first error of the recording (ErrRecordFull when cut by
// its limit), nil while all is recorded.
func (rc *RecordConn) Err() error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.recErr
}

// Close closes the connection and ends the recording.
func (rc *RecordConn) Close() error {
	err := rc.Conn.Close()
	rc.once.Do(func() {
		if rerr := rc.rec.Close(); rerr != nil && err == nil {
			err = rerr
		}
	})
	return err
}

// CloseWrite half-closes the server connection when it can be.
func (rc *RecordConn) CloseWrite() error {
	if cw, ok := rc.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
