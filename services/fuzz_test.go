package services

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// Fuzz targets for what a services config author and a service script
// control: the config file, the query options merged into WSGW_OPTIONS,
// and the script's stdout up to its ready line. Seeds are in
// testdata/fuzz/<FuzzName>; run one with
//
//	go test -run='^$' -fuzz='^FuzzParseConfig$' -fuzztime=30s ./services

// fuzzScriptDir holds the executable scripts the seed configs name
// ("s.sh", "bin/viz.sh").
func fuzzScriptDir(f *testing.F) string {
	dir := f.TempDir()
	for _, name := range []string{"s.sh", "bin/viz.sh"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			f.Fatal(err)
		}
	}
	return dir
}

// FuzzParseConfig: any bytes give services or a *ConfigError, never a
// panic; what is accepted obeys the documented limits, and the options a
// script receives (service options merged with one query option) are a
// JSON object without a NUL byte (an environment variable cannot hold
// one) in which the query value reads back exactly.
func FuzzParseConfig(f *testing.F) {
	dir := fuzzScriptDir(f)
	f.Add([]byte(`{"Echo": {"script": "s.sh", "count": 2, "options": {"geometry": "1024x768"}}}`), "geometry", "800x600")
	f.Fuzz(func(t *testing.T, data []byte, key, value string) {
		svcs, err := ParseConfig("fuzz.json", dir, data)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
			}
			if !strings.HasPrefix(err.Error(), "fuzz.json") {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if len(svcs) == 0 && !bytes.Contains(data, []byte(`"job"`)) && !bytes.Contains(data, []byte(`\u`)) {
			t.Fatal("no services, no jobs and no error")
		}
		seen := map[string]bool{}
		for _, s := range svcs {
			if err := ValidName(s.Name); err != nil {
				t.Fatalf("accepted service name %q: %v", s.Name, err)
			}
			if seen[s.Name] {
				t.Fatalf("service %q twice", s.Name)
			}
			seen[s.Name] = true
			if s.Count < 1 || s.Count > MaxCount {
				t.Fatalf("service %q: count %d accepted", s.Name, s.Count)
			}
			if !filepath.IsAbs(s.Script) {
				t.Fatalf("service %q: script %q is not absolute", s.Name, s.Script)
			}
			if s.Options == nil {
				t.Fatalf("service %q: nil options accepted", s.Name)
			}
			_ = s.StringOption("group")
			_ = s.FileExt()
			var q map[string]string
			if key != "" {
				q = map[string]string{key: value}
			}
			out, err := s.MergedOptions(q)
			if err != nil {
				t.Fatalf("service %q: MergedOptions: %v", s.Name, err)
			}
			if bytes.IndexByte(out, 0) >= 0 {
				t.Fatalf("WSGW_OPTIONS holds a NUL byte: %q", out)
			}
			var m map[string]any
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatalf("WSGW_OPTIONS %q is not a JSON object: %v", out, err)
			}
			if key != "" && utf8.ValidString(key) && utf8.ValidString(value) {
				if got, ok := m[key].(string); !ok || got != value {
					t.Fatalf("option %q = %q reads back as %#v from %s", key, value, m[key], out)
				}
			}
		}
	})
}

// FuzzParseReadyLine: any line gives an endpoint or an error, never a
// panic; an endpoint is a Unix socket at an absolute path or a TCP
// address with a port 1..65535.
func FuzzParseReadyLine(f *testing.F) {
	f.Add([]byte(`{"hostname": "127.0.0.1", "port": 5901}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		ep, err := ParseReadyLine(line)
		if err != nil {
			if ep != (Endpoint{}) {
				t.Fatalf("error %v with endpoint %+v", err, ep)
			}
			return
		}
		switch ep.Network {
		case "unix":
			if !filepath.IsAbs(ep.Address) {
				t.Fatalf("unix endpoint %q is not absolute", ep.Address)
			}
		case "tcp":
			_, port, err := net.SplitHostPort(ep.Address)
			if err != nil {
				t.Fatalf("tcp endpoint %q: %v", ep.Address, err)
			}
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				t.Fatalf("tcp endpoint %q: port %q", ep.Address, port)
			}
		default:
			t.Fatalf("endpoint network %q", ep.Network)
		}
	})
}

// FuzzReadyOutput runs a script's whole stdout through the reader the
// gateway uses: it never panics, a ready result is the first line that
// starts with '{' (after spaces), and every byte before that line, in
// pieces of at most maxReadyLine plus one read buffer, goes to the log.
func FuzzReadyOutput(f *testing.F) {
	logPath := filepath.Join(f.TempDir(), "session.log")
	f.Add([]byte("starting\n{\"hostname\": \"127.0.0.1\", \"port\": 5901}\nafter\n"))
	// A line longer than maxReadyLine whose second piece looks like a
	// ready line, and one that is cut at the end without a newline.
	f.Add(append(bytes.Repeat([]byte("x"), 64<<10), []byte("{\"port\": 5901}\nafter")...))
	f.Add([]byte("  no newline at the end"))
	f.Add([]byte("  {\"port\": 0}"))
	f.Fuzz(func(t *testing.T, out []byte) {
		lf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		defer lf.Close()
		inst := &Instance{logFile: lf}
		ch := make(chan readyResult, 1)
		inst.readStdout(nopCloser{bytes.NewReader(out)}, ch)
		r := <-ch

		// What the protocol says, written out here: stdout is read in
		// pieces, each a line with its newline or, for a longer line, its
		// next maxReadyLine bytes (or what is left at the end); the first
		// piece that starts with '{' after spaces is the ready line.
		var before, want, rest []byte
		found := false
		for in := out; len(in) > 0; {
			n := min(len(in), maxReadyLine)
			if i := bytes.IndexByte(in[:n], '\n'); i >= 0 {
				n = i + 1
			}
			piece := in[:n]
			in = in[n:]
			if tr := bytes.TrimSpace(piece); len(tr) > 0 && tr[0] == '{' {
				want, found, rest = tr, true, in
				break
			}
			before = append(before, piece...)
			if piece[len(piece)-1] != '\n' {
				before = append(before, '\n')
			}
		}
		if !found {
			if !errors.Is(r.err, errNoLine) {
				t.Fatalf("no line starts with '{' but the result is %+v", r)
			}
		} else {
			if errors.Is(r.err, errNoLine) || !bytes.Equal(r.line, want) {
				t.Fatalf("result %+v, want the line %q", r, want)
			}
			wantEP, wantErr := ParseReadyLine(want)
			if (wantErr == nil) != (r.err == nil) || r.ep != wantEP {
				t.Fatalf("result %+v, want %+v / %v", r, wantEP, wantErr)
			}
		}
		got, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		if want := append(before, rest...); !bytes.Equal(got, want) {
			t.Fatalf("session log (%d bytes, want %d):\n got %.300q\nwant %.300q", len(got), len(want), got, want)
		}
	})
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
