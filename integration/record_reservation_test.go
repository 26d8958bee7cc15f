package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestRecordReservation: record=true on a reservation records its
// session when the service's client_options offer "record" and the
// operator left the "record" option unset; the recording is listed and
// holds the service's bytes in websockify's format. Without record=true
// (or with record=false) nothing is recorded, and a reservation asking
// for it where the service does not offer it is refused with 400 naming
// the option.
func TestRecordReservation(t *testing.T) {
	t.Parallel()
	bearer := []string{"Authorization", "Bearer s3cret-token-for-tests"}
	fv, dir := fakeVNCScript(t)
	p := writeConfig(t, dir, map[string]any{
		"Offered": map[string]any{"script": "fake.sh", "count": 3, "options": map[string]any{},
			"client_options": map[string]any{"record": "bool"}},
		"Operator off": map[string]any{"script": "fake.sh", "count": 1, "options": map[string]any{"record": false},
			"client_options": map[string]any{"geometry": "string"}},
		"Not offered": map[string]any{"script": "fake.sh", "count": 1, "options": map[string]any{}},
	})
	g := startGateway(t, "--remote_session_config", p, "--security_token", "s3cret-token-for-tests")

	// Refused: each a 400 naming the option and why.
	for _, tc := range []struct{ path, want string }{
		{"/v1/reserve/Not%20offered?record=true", `option "record" of service "Not offered" is not an option a client may set; it takes no client options`},
		{"/v1/reserve/Operator%20off?record=true", `option "record" of service "Operator off" is set by the services config, and a client may not replace it; a client may set only: geometry`},
		{"/v1/reserve/Offered?record=yes", `option "record" of service "Offered": "yes" must be true or false`},
	} {
		code, m := getJSON(t, g.httpURL(tc.path), bearer...)
		if msg, _ := m["error"].(string); code != http.StatusBadRequest || !strings.Contains(msg, tc.want) {
			t.Errorf("GET %s: %d %v, want 400 saying %q", tc.path, code, m, tc.want)
		}
	}
	if recs := recordingsOf(t, g, bearer...); len(recs) != 0 {
		t.Fatalf("recordings after refused reservations: %v", recs)
	}

	// session opens a websocket on a reservation of Offered with query,
	// does the RFB handshake and sends a FramebufferUpdateRequest, which
	// the service must receive (its connection number is n).
	request := []byte{3, 0, 0, 0, 0, 0, 0, 16, 0, 16}
	session := func(query string, n int) *websocket.Conn {
		t.Helper()
		code, m := getJSON(t, g.httpURL("/v1/reserve/Offered"+query), bearer...)
		if code != 200 {
			t.Fatalf("reserve Offered%s: %d %v", query, code, m)
		}
		ws, _, err := dialer.Dial(g.wsURL("/websockify?token="+m["token"].(string)), nil)
		if err != nil {
			t.Fatalf("websocket of Offered%s: %v", query, err)
		}
		rfbClient(t, ws, 1)
		if err := ws.WriteMessage(websocket.BinaryMessage, request); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the service to receive the client's request", 20*time.Second, func() bool {
			c := fv.conn(n)
			if c == nil {
				return false
			}
			got, _ := c.got()
			return bytes.Equal(got, request)
		})
		return ws
	}

	// Recorded.
	ws := session("?record=true", 0)
	var recs []map[string]any
	waitFor(t, "the recording to be listed", 20*time.Second, func() bool {
		recs = recordingsOf(t, g, bearer...)
		return len(recs) == 1
	})
	if recs[0]["service"] != "Offered" || recs[0]["end"] != nil {
		t.Errorf("recording while its connection is open: %v", recs[0])
	}
	ws.Close()
	waitFor(t, "the recording to end", 20*time.Second, func() bool {
		recs = recordingsOf(t, g, bearer...)
		return len(recs) == 1 && recs[0]["end"] != nil
	})
	id := recs[0]["id"].(string)
	req, _ := http.NewRequest("GET", g.httpURL("/v1/recordings/"+id), nil)
	req.Header.Set(bearer[0], bearer[1])
	resp, err := insecureClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || err != nil {
		t.Fatalf("GET /v1/recordings/%s: %d %v %s", id, resp.StatusCode, err, body)
	}
	// The server's bytes, exactly: greeting, security types, result and
	// ServerInit (fakeVNC.handle); the client's are not recorded.
	want := []byte("RFB 003.008\n\x01\x01\x00\x00\x00\x00")
	want = append(want, 0, 16, 0, 16, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0)
	want = binary.BigEndian.AppendUint32(want, 4)
	want = append(want, "fake"...)
	got, err := parseWebsockifyRecording(body)
	if err != nil {
		t.Fatalf("recording %s is not in websockify's format: %v\n%s", id, err, body)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("recorded server bytes %q, want %q", got, want)
	}
	if size := recs[0]["size"].(float64); int(size) != len(body) {
		t.Errorf("listed size %v, file %d bytes", size, len(body))
	}

	// Not recorded: record=false, and no record option at all. The
	// recording starts with the service connection, so by the end of
	// the handshake it would be there.
	for i, query := range []string{"?record=false", ""} {
		ws := session(query, 1+i)
		if recs := recordingsOf(t, g, bearer...); len(recs) != 1 || recs[0]["id"] != id {
			t.Errorf("Offered%s: recordings %v, want only the record=true one", query, recs)
		}
		ws.Close()
	}
	files, _ := filepath.Glob(filepath.Join(g.dir, "sessions", "*", "recording-*"))
	if len(files) != 2 {
		t.Errorf("recording files %v, want one recording and its index", files)
	}
}

// parseWebsockifyRecording reads a recording in websockify's --record
// format (stated in the test, not taken from package rfb): a header of
// two lines, then one line per read, '{<ms>{<data>', with data one
// character per byte except \xHH escapes (and \\ and \' as websockify
// writes them), then 'EOF'];. It returns the server's bytes in order and
// refuses client frames, unordered times and anything else.
func parseWebsockifyRecording(b []byte) ([]byte, error) {
	const header = "var VNC_frame_encoding = 'binary';\nvar VNC_frame_data = [\n"
	s := string(b)
	if !strings.HasPrefix(s, header) || !strings.HasSuffix(s, "'EOF'];\n") {
		return nil, fmt.Errorf("no header or no 'EOF'];")
	}
	body := strings.TrimSuffix(strings.TrimPrefix(s, header), "'EOF'];\n")
	frame := regexp.MustCompile(`^'\{([0-9]+)\{(.*)',$`)
	var out []byte
	last := -1
	for _, line := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		m := frame.FindStringSubmatch(line)
		if m == nil {
			return nil, fmt.Errorf("line %q is not a server frame '{<ms>{<data>',", line)
		}
		ms, _ := strconv.Atoi(m[1])
		if ms < last {
			return nil, fmt.Errorf("frame at %d ms after one at %d ms", ms, last)
		}
		last = ms
		d := m[2]
		for i := 0; i < len(d); i++ {
			c := d[i]
			if c < 0x20 || c > 0x7e || c == '\'' {
				return nil, fmt.Errorf("raw byte %#x in frame %q", c, line)
			}
			if c != '\\' {
				out = append(out, c)
				continue
			}
			if i+1 < len(d) && (d[i+1] == '\\' || d[i+1] == '\'') {
				out = append(out, d[i+1])
				i++
				continue
			}
			if i+3 >= len(d) || d[i+1] != 'x' {
				return nil, fmt.Errorf("bad escape in frame %q", line)
			}
			v, err := strconv.ParseUint(d[i+2:i+4], 16, 8)
			if err != nil {
				return nil, fmt.Errorf("bad escape in frame %q: %w", line, err)
			}
			out = append(out, byte(v))
			i += 3
		}
	}
	return out, nil
}
