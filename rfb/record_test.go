package rfb

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// frame is one entry of a recording as a player reads it.
type frame struct {
	fromClient bool
	ms         int64
	data       []byte
}

// parseRecording reads a recording the way noVNC's playback does,
// written here from the format's description (not with the code that
// writes it): lines of single-quoted JavaScript strings after the
// header, each '{ms{data' or '}ms}data', ending with 'EOF'];.
func parseRecording(t testing.TB, text string) (frames []frame, complete bool) {
	t.Helper()
	const head = "var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n"
	if !strings.HasPrefix(text, head) {
		t.Fatalf("recording does not start with the header: %q", text[:min(len(text), 80)])
	}
	lines := strings.Split(strings.TrimPrefix(text, head), "\n")
	for i, line := range lines {
		if line == "'EOF'];" {
			if i != len(lines)-2 || lines[i+1] != "" {
				t.Fatalf("lines after the trailer: %q", lines[i:])
			}
			return frames, true
		}
		if line == "" && i == len(lines)-1 {
			return frames, false
		}
		if !strings.HasPrefix(line, "'") || !strings.HasSuffix(line, "',") {
			t.Fatalf("line %d is not a quoted string and a comma: %q", i, line)
		}
		s := line[1 : len(line)-2]
		// Decode the JavaScript string: \xHH escapes, all else literal.
		var dec []byte
		for j := 0; j < len(s); j++ {
			c := s[j]
			switch {
			case c == '\\':
				if j+3 >= len(s) || s[j+1] != 'x' {
					t.Fatalf("line %d: bad escape at %d: %q", i, j, s)
				}
				v, err := strconv.ParseUint(s[j+2:j+4], 16, 8)
				if err != nil {
					t.Fatalf("line %d: bad escape %q", i, s[j:j+4])
				}
				dec = append(dec, byte(v))
				j += 3
			case c == '\'' || c < 0x20 || c >= 0x7f:
				t.Fatalf("line %d: unescaped byte %#x", i, c)
			default:
				dec = append(dec, c)
			}
		}
		mark := dec[0]
		if mark != '{' && mark != '}' {
			t.Fatalf("line %d: no direction mark: %q", i, dec)
		}
		end := bytes.IndexByte(dec[1:], mark)
		if end < 0 {
			t.Fatalf("line %d: no time: %q", i, dec)
		}
		ms, err := strconv.ParseInt(string(dec[1:1+end]), 10, 64)
		if err != nil {
			t.Fatalf("line %d: time %q: %v", i, dec[1:1+end], err)
		}
		frames = append(frames, frame{fromClient: mark == '}', ms: ms, data: dec[2+end:]})
	}
	return frames, false
}

type memFile struct {
	bytes.Buffer
	closed int
	failAt int // fail writes once the buffer holds this much (0: never)
	closeE error
}

func (m *memFile) Write(p []byte) (int, error) {
	if m.failAt > 0 && m.Len()+len(p) > m.failAt {
		return 0, errors.New("disk full")
	}
	return m.Buffer.Write(p)
}

func (m *memFile) Close() error { m.closed++; return m.closeE }

func TestRecorderRoundTrip(t *testing.T) {
	start := time.Unix(1000, 0)
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	tests := []struct {
		name   string
		frames []frame
	}{
		{"none", nil},
		{"greeting", []frame{{false, 0, []byte("RFB 003.008\n")}}},
		{"every byte", []frame{{false, 5, all}, {false, 1500, []byte(`'\'"{}`)}}},
		{"both directions", []frame{{false, 1, []byte{1}}, {true, 2, []byte("RFB 003.008\n")}, {false, 3, []byte{0, 0, 0, 0}}}},
		{"empty frame", []frame{{false, 10, nil}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mf := &memFile{}
			r, err := NewRecorder(mf, start, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.frames {
				if err := r.Frame(start.Add(time.Duration(f.ms)*time.Millisecond), f.fromClient, f.data); err != nil {
					t.Fatal(err)
				}
			}
			if got := r.Size(); got != int64(mf.Len()) {
				t.Errorf("Size() = %d, file holds %d", got, mf.Len())
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if err := r.Close(); err != nil || mf.closed != 1 {
				t.Errorf("second Close: %v, file closed %d times", err, mf.closed)
			}
			got, complete := parseRecording(t, mf.String())
			if !complete {
				t.Errorf("no trailer")
			}
			if len(got) != len(tc.frames) {
				t.Fatalf("%d frames, want %d", len(got), len(tc.frames))
			}
			for i := range got {
				if got[i].fromClient != tc.frames[i].fromClient || got[i].ms != tc.frames[i].ms || !bytes.Equal(got[i].data, tc.frames[i].data) {
					t.Errorf("frame %d = %+v, want %+v", i, got[i], tc.frames[i])
				}
			}
			if err := r.Frame(start, false, []byte("x")); !errors.Is(err, net.ErrClosed) {
				t.Errorf("Frame after Close: %v", err)
			}
		})
	}
}

func TestRecorderTimes(t *testing.T) {
	start := time.Unix(1000, 0)
	mf := &memFile{}
	r, _ := NewRecorder(mf, start, 0)
	_ = r.Frame(start.Add(-time.Second), false, []byte("a")) // a clock step back
	_ = r.Frame(start.Add(2999*time.Microsecond), false, []byte("b"))
	_ = r.Frame(start.Add(time.Hour), false, []byte("c"))
	r.Close()
	got, _ := parseRecording(t, mf.String())
	want := []int64{0, 2, 3600000}
	for i, f := range got {
		if f.ms != want[i] {
			t.Errorf("frame %d at %d ms, want %d", i, f.ms, want[i])
		}
	}
}

func TestRecorderLimit(t *testing.T) {
	start := time.Unix(1000, 0)
	min := int64(len(recordHeader) + len(recordTrailer))
	if _, err := NewRecorder(&memFile{}, start, min-1); err == nil {
		t.Errorf("a limit below header and trailer accepted")
	}
	frameLen := int64(len("'{0{abcd',\n"))
	tests := []struct {
		name   string
		max    int64
		frames int // of "abcd" recorded
	}{
		{"exactly one", min + frameLen, 1},
		{"one byte short of one", min + frameLen - 1, 0},
		{"exactly two", min + 2*frameLen, 2},
		{"header only", min, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mf := &memFile{}
			r, err := NewRecorder(mf, start, tc.max)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for i := 0; i < 5; i++ {
				err := r.Frame(start, false, []byte("abcd"))
				if errors.Is(err, ErrRecordFull) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				n++
			}
			if n != tc.frames || !r.Full() {
				t.Errorf("recorded %d frames (full %v), want %d and full", n, r.Full(), tc.frames)
			}
			if err := r.Frame(start, false, nil); !errors.Is(err, ErrRecordFull) {
				t.Errorf("after full: %v", err)
			}
			r.Close()
			if int64(mf.Len()) > tc.max {
				t.Errorf("file of %d bytes, limit %d", mf.Len(), tc.max)
			}
			got, complete := parseRecording(t, mf.String())
			if !complete || len(got) != tc.frames {
				t.Errorf("parsed %d frames, complete %v", len(got), complete)
			}
		})
	}
	mf := &memFile{}
	r, _ := NewRecorder(mf, start, min+frameLen)
	if r.Full() {
		t.Errorf("full before anything was recorded")
	}
}

func TestRecorderErrors(t *testing.T) {
	start := time.Unix(1000, 0)
	if _, err := NewRecorder(&memFile{failAt: 1}, start, 0); err == nil {
		t.Errorf("a failing header write accepted")
	}
	mf := &memFile{failAt: len(recordHeader) + 5}
	r, err := NewRecorder(mf, start, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Frame(start, false, []byte("0123456789")); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Frame on a full disk: %v", err)
	}
	if err := r.Frame(start, false, []byte("x")); err == nil {
		t.Errorf("Frame after a failure succeeded")
	}
	if err := r.Close(); err == nil || mf.closed != 1 {
		t.Errorf("Close after a failure: %v (closed %d)", err, mf.closed)
	}
	cf := &memFile{closeE: errors.New("close failed")}
	r2, _ := NewRecorder(cf, start, 0)
	if err := r2.Close(); err == nil || !strings.Contains(err.Error(), "close failed") {
		t.Errorf("Close error lost: %v", err)
	}
}

func TestRecordConn(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rec.js")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rec, err := NewRecorder(f, start, 0)
	if err != nil {
		t.Fatal(err)
	}
	server, client := net.Pipe()
	rc := NewRecordConn(client, rec)
	var clock int64
	rc.now = func() time.Time { clock += 7; return start.Add(time.Duration(clock) * time.Millisecond) }
	sent := [][]byte{[]byte("RFB 003.008\n"), {1, 1}, bytes.Repeat([]byte{0xff}, 100)}
	go func() {
		for _, b := range sent {
			server.Write(b)
		}
		// What the client writes is not recorded.
		buf := make([]byte, 16)
		server.Read(buf)
		server.Close()
	}()
	var got []byte
	buf := make([]byte, 1000)
	for len(got) < 114 {
		n, err := rc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if _, err := rc.Write([]byte("RFB 003.008\n")); err != nil {
		t.Fatal(err)
	}
	if n, err := rc.Read(buf); err != io.EOF || n != 0 {
		t.Fatalf("read at the end = %d, %v", n, err)
	}
	if err := rc.Err(); err != nil {
		t.Errorf("Err() = %v", err)
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	_ = rc.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	frames, complete := parseRecording(t, string(data))
	if !complete {
		t.Fatalf("recording not closed")
	}
	var all []byte
	for i, fr := range frames {
		if fr.fromClient {
			t.Errorf("frame %d from the client", i)
		}
		if want := int64(7 * (i + 1)); fr.ms != want {
			t.Errorf("frame %d at %d ms, want %d", i, fr.ms, want)
		}
		all = append(all, fr.data...)
	}
	if !bytes.Equal(all, got) || !bytes.Equal(all, bytes.Join(sent, nil)) {
		t.Errorf("recorded %q\nread %q", all, got)
	}
	if err := rc.CloseWrite(); err != nil {
		t.Errorf("CloseWrite on a pipe: %v", err)
	}
}

func TestRecordConnErrAndCloseWrite(t *testing.T) {
	start := time.Now()
	rec, _ := NewRecorder(&memFile{}, start, int64(len(recordHeader)+len(recordTrailer)))
	cc := &captureConn{}
	rc := NewRecordConn(&readerConn{captureConn: cc, data: []byte("hello")}, rec)
	buf := make([]byte, 10)
	if n, err := rc.Read(buf); n != 5 || err != nil {
		t.Fatalf("Read = %d, %v: a full recording must not disturb the stream", n, err)
	}
	if !errors.Is(rc.Err(), ErrRecordFull) {
		t.Errorf("Err() = %v, want ErrRecordFull", rc.Err())
	}
	if err := rc.CloseWrite(); err != nil || !cc.halfOff {
		t.Errorf("CloseWrite not passed on: %v", err)
	}
}

type readerConn struct {
	*captureConn
	data []byte
}

func (r *readerConn) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func FuzzRecorder(f *testing.F) {
	f.Add([]byte("RFB 003.008\n\x01\x01"), uint8(4), uint16(0))
	f.Add([]byte{0, '\'', '\\', 0x7f, 0x80, 0xff, '\n'}, uint8(1), uint16(90))
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8, extra uint16) {
		start := time.Unix(0, 0)
		mf := &memFile{}
		max := int64(0)
		if extra > 0 {
			max = int64(len(recordHeader)+len(recordTrailer)) + int64(extra)
		}
		r, err := NewRecorder(mf, start, max)
		if err != nil {
			t.Fatal(err)
		}
		step := int(chunk)%13 + 1
		var recorded []byte
		for i := 0; i*step < len(data); i++ {
			part := data[i*step : min((i+1)*step, len(data))]
			err := r.Frame(start.Add(time.Duration(i)*time.Millisecond), false, part)
			if errors.Is(err, ErrRecordFull) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			recorded = append(recorded, part...)
		}
		r.Close()
		if max > 0 && int64(mf.Len()) > max {
			t.Fatalf("file of %d bytes over its limit %d", mf.Len(), max)
		}
		frames, complete := parseRecording(t, mf.String())
		if !complete {
			t.Fatalf("no trailer")
		}
		var got []byte
		for i, fr := range frames {
			if fr.ms != int64(i) {
				t.Fatalf("frame %d at %d ms", i, fr.ms)
			}
			got = append(got, fr.data...)
		}
		if !bytes.Equal(got, recorded) || !bytes.HasPrefix(data, got) {
			t.Fatalf("round trip: %q of %q", got, data)
		}
		if max == 0 && !bytes.Equal(got, data) {
			t.Fatalf("unlimited recording lost data: %s", fmt.Sprint(len(got), len(data)))
		}
	})
}
