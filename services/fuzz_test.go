package services

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
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
	f.Add([]byte(`{"Echo": {"script": "s.sh", "count": 2, "options": {"geometry": "1024x768", "datadir": "/srv"}, "client_options": {"geometry": "^[0-9]{3,4}x[0-9]{3,4}$", "depth": "int"}}}`), "geometry", "800x600")
	f.Add([]byte(`{"Echo": {"script": "s.sh", "count": 2, "options": {"datadir": "/srv"}, "client_options": {"depth": "int"}}}`), "datadir", "/etc")
	f.Add([]byte(`{"Echo": {"script": "s.sh", "count": 2, "options": {}, "client_options": {"note": "string", "any": "(?s).*"}}}`), "any", "a\x00b")
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
			_, declared := s.ClientOptions[key]
			if key != "" && !declared {
				// Not offered to clients: refused, whatever the value.
				var oe *OptionError
				if err == nil || !errors.As(err, &oe) || oe.Key != key {
					t.Fatalf("service %q: undeclared option %q: %s, %v; want an *OptionError naming it", s.Name, key, out, err)
				}
				continue
			}
			if err != nil {
				var oe *OptionError
				if key == "" || !errors.As(err, &oe) {
					t.Fatalf("service %q: MergedOptions(%q=%q): %v", s.Name, key, value, err)
				}
				continue
			}
			if bytes.IndexByte(out, 0) >= 0 {
				t.Fatalf("WSGW_OPTIONS holds a NUL byte: %q", out)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatalf("WSGW_OPTIONS %q is not a JSON object: %v", out, err)
			}
			// The operator's options are all there, unchanged, except one
			// the service lets a client set.
			for k, v := range s.Options {
				if k == key {
					continue
				}
				var want, got any
				_ = json.Unmarshal(v, &want)
				_ = json.Unmarshal(m[k], &got)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("service option %q = %s became %s", k, v, m[k])
				}
			}
			if key != "" && utf8.ValidString(key) && utf8.ValidString(value) {
				var got string
				if json.Unmarshal(m[key], &got) != nil || got != value {
					t.Fatalf("option %q = %q reads back as %s from %s", key, value, m[key], out)
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

// FuzzClientOption: a declared type accepts exactly what strconv says is
// one (for int: up to 18 digits after an optional sign), and a pattern
// accepts a value only when the pattern, anchored by hand here, matches
// it whole.
//
//	go test -run='^$' -fuzz='^FuzzClientOption$' -fuzztime=30s ./services
func FuzzClientOption(f *testing.F) {
	for _, s := range []string{"0", "-1", "+18", "1e3", "0x10", "1_000", "Inf", "NaN", "true", "1280x800", "1280x800;x", "", " 1", "123456789012345678", "1234567890123456789"} {
		f.Add(s)
	}
	geometry, _ := ParseClientOption("[0-9]{3,4}x[0-9]{3,4}")
	ints, _ := ParseClientOption(OptionInt)
	nums, _ := ParseClientOption(OptionNumber)
	bools, _ := ParseClientOption(OptionBool)
	anchored := regexp.MustCompile(`\A[0-9]{3,4}x[0-9]{3,4}\z`)
	f.Fuzz(func(t *testing.T, v string) {
		_, perr := strconv.ParseInt(v, 10, 64)
		digits := strings.TrimPrefix(strings.TrimPrefix(v, "+"), "-")
		if want := perr == nil && len(digits) <= 18 && len(v)-len(digits) <= 1; (ints.Check(v) == nil) != want {
			t.Fatalf("int %q: %v, want ok=%v", v, ints.Check(v), want)
		}
		if nums.Check(v) == nil {
			if x, err := strconv.ParseFloat(v, 64); err != nil || math.IsInf(x, 0) || math.IsNaN(x) {
				t.Fatalf("number %q accepted: %v %v", v, x, err)
			}
		}
		if (bools.Check(v) == nil) != (v == "true" || v == "false") {
			t.Fatalf("bool %q: %v", v, bools.Check(v))
		}
		if (geometry.Check(v) == nil) != anchored.MatchString(v) {
			t.Fatalf("pattern on %q: %v", v, geometry.Check(v))
		}
	})
}
