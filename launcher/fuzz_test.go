package launcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// Fuzz targets for what a launcher.config author and a launcher client
// control: the config file (comments, JSON, checks), the templates and
// the client's payload (substitution, sanitize). Seeds are in
// testdata/fuzz/<FuzzName>; run one with
//
//	go test -run='^$' -fuzz='^FuzzParse$' -fuzztime=30s ./launcher

// FuzzStripComments: a comment of each kind (#, // and /* */) put
// between two tokens of a JSON document, whose token boundaries come from
// encoding/json's own decoder, is turned into exactly as many spaces
// (newlines kept), and nothing else changes: the result is the document
// with the comment's bytes blanked, and decodes to the same value. Any
// other input never panics, keeps the length and every newline, only
// turns bytes into spaces, leaves valid JSON as it is, and is idempotent.
func FuzzStripComments(f *testing.F) {
	f.Add([]byte("# c\n{\"a\": \"x # y\"} // z\n/* b */"), []byte(`{"a": "x # y // z /* w */", "b": [1, "\\"", 2]}`), "note", uint8(0), uint16(3))
	f.Add([]byte(`{"a": 1}`), []byte(`{"a": ["#", "//", "/*"], "b": {"c": "*/"}}`), "multi\nline", uint8(2), uint16(5))
	f.Add([]byte(`[]`), []byte(`["a\\", "b"]`), "x", uint8(1), uint16(2))
	f.Fuzz(func(t *testing.T, src, doc []byte, comment string, kind uint8, at uint16) {
		checkStripInvariants(t, src)

		// The construction: a comment inserted at a token boundary.
		if !json.Valid(doc) || bytes.HasPrefix(doc, []byte("\xef\xbb\xbf")) {
			return
		}
		var bounds []int
		dec := json.NewDecoder(bytes.NewReader(doc))
		for {
			if _, err := dec.Token(); err != nil {
				break
			}
			bounds = append(bounds, int(dec.InputOffset()))
		}
		if len(bounds) == 0 {
			return
		}
		pos := bounds[int(at)%len(bounds)]
		var cmt string
		switch kind % 3 {
		case 0:
			cmt = "#" + strings.ReplaceAll(comment, "\n", " ") + "\n"
		case 1:
			cmt = "//" + strings.ReplaceAll(comment, "\n", " ") + "\n"
		default:
			cmt = "/*" + strings.ReplaceAll(comment, "*/", "* /") + "*/"
		}
		in := string(doc[:pos]) + " " + cmt + " " + string(doc[pos:])
		blank := []byte(cmt)
		for i := range blank {
			if blank[i] != '\n' {
				blank[i] = ' '
			}
		}
		want := string(doc[:pos]) + " " + string(blank) + " " + string(doc[pos:])
		out, err := StripComments([]byte(in))
		if err != nil {
			t.Fatalf("StripComments(%q): %v", in, err)
		}
		if string(out) != want {
			t.Fatalf("StripComments(%q)\n got %q\nwant %q", in, out, want)
		}
		var a, b any
		if json.Unmarshal(out, &a) != nil || json.Unmarshal(doc, &b) != nil || !jsonEqual(a, b) {
			t.Fatalf("stripped %q does not decode to the value of %q", out, doc)
		}
	})
}

// checkStripInvariants holds for any input.
func checkStripInvariants(t *testing.T, src []byte) {
	t.Helper()
	out, err := StripComments(src)
	if err != nil {
		var se *stripError
		if !errors.As(err, &se) || se.line < 1 || se.line > bytes.Count(src, []byte{'\n'})+1 {
			t.Fatalf("error %v", err)
		}
		if !bytes.Contains(src, []byte("/*")) {
			t.Fatalf("error %v for a file without /*", err)
		}
		return
	}
	if len(out) != len(src) {
		t.Fatalf("length %d, want %d", len(out), len(src))
	}
	for i := range src {
		if out[i] != src[i] && (out[i] != ' ' || src[i] == '\n') {
			t.Fatalf("byte %d: %q became %q", i, src[i], out[i])
		}
	}
	if json.Valid(src) && !bytes.Equal(out, src) {
		t.Fatalf("valid JSON changed:\n%q\n%q", src, out)
	}
	again, err := StripComments(out)
	if err != nil || !bytes.Equal(again, out) {
		t.Fatalf("not idempotent: %q -> %q (%v)", out, again, err)
	}
}

// FuzzParse: any bytes give a checked config or a *ConfigError naming the
// file, never a panic, and an accepted config has what a launch needs.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"configuration": {"port": 8080, "endpoint": "paraview", "sessionURL": "ws://USE_HOST/proxy?sessionId=${id}", "log_dir": "/tmp/l"},
 "resources": [{"host": "localhost", "port_range": [9001, 9003]}], "apps": {"v": {"cmd": ["pvpython", "--port", "${port}"]}}}`))
	f.Fuzz(func(t *testing.T, src []byte) {
		c, err := Parse(src, "fuzz.config")
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
			}
			if !strings.HasPrefix(err.Error(), "fuzz.config") {
				t.Fatalf("error %q does not name the file", err)
			}
			if ce.Line < 0 || ce.Line > bytes.Count(src, []byte{'\n'})+1 {
				t.Fatalf("error line %d in a file of %d lines", ce.Line, bytes.Count(src, []byte{'\n'})+1)
			}
			return
		}
		if c.Endpoint() == "" || c.Configuration.SessionURL == "" || c.Configuration.LogDir == "" {
			t.Fatalf("accepted without endpoint, sessionURL or log_dir: %+v", c.Configuration)
		}
		if c.Port() < 0 || c.Port() > 65535 || c.Timeout() <= 0 {
			t.Fatalf("port %d, timeout %v accepted", c.Port(), c.Timeout())
		}
		if len(c.Resources) == 0 || len(c.Apps) == 0 {
			t.Fatal("accepted without resources or apps")
		}
		p := newPool(c.Resources)
		if total := p.total(); total < 1 || total > maxPorts {
			t.Fatalf("pool of %d ports", total)
		}
		for name, a := range c.Apps {
			if name == "" || len(a.Cmd) == 0 || strings.TrimSpace(a.Cmd[0]) == "" {
				t.Fatalf("app %q: %+v accepted", name, a)
			}
		}
		for k, r := range c.Sanitize {
			if r.Type == "regexp" && r.re == nil {
				t.Fatalf("sanitize %q: regexp not compiled", k)
			}
			if r.Default == nil {
				t.Fatalf("sanitize %q: no default", k)
			}
		}
	})
}

// pyTemplate is Python's string.Template pattern (idpattern
// (?a:[_a-z][_a-z0-9]*) with re.IGNORECASE), as Go's leftmost-first
// alternation reads it the same way Python's re does.
var pyTemplate = regexp.MustCompile(`\$(?:(\$)|([_a-zA-Z][_a-zA-Z0-9]*)|\{([_a-zA-Z][_a-zA-Z0-9]*)\}|())`)

// pySafeSubstitute is Template.safe_substitute written the way Python's
// string module writes it, as the reference for SafeSubstitute.
func pySafeSubstitute(tmpl string, vars map[string]any) string {
	return pyTemplate.ReplaceAllStringFunc(tmpl, func(m string) string {
		sm := pyTemplate.FindStringSubmatch(m)
		switch {
		case sm[1] != "":
			return "$"
		case sm[2] != "":
			if v, ok := vars[sm[2]]; ok {
				return PyStr(v)
			}
		case sm[3] != "":
			if v, ok := vars[sm[3]]; ok {
				return PyStr(v)
			}
		}
		return m
	})
}

// FuzzSafeSubstitute compares SafeSubstitute with the regular expression
// Python uses, for any template and one variable (a string, or any JSON
// value), and checks that substituted values are never substituted again
// within one pass.
func FuzzSafeSubstitute(f *testing.F) {
	f.Add("--port ${port} $$ $file ${x", "file", "$(touch /tmp/x)", []byte(`9001`))
	f.Fuzz(func(t *testing.T, tmpl, name, value string, jsonValue []byte) {
		vars := map[string]any{name: value}
		if got, want := SafeSubstitute(tmpl, vars), pySafeSubstitute(tmpl, vars); got != want {
			t.Fatalf("SafeSubstitute(%q, %q=%q) = %q, Python gives %q", tmpl, name, value, got, want)
		}
		dec := json.NewDecoder(bytes.NewReader(jsonValue))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) == nil {
			vars = map[string]any{name: v, "other": value}
			if got, want := SafeSubstitute(tmpl, vars), pySafeSubstitute(tmpl, vars); got != want {
				t.Fatalf("SafeSubstitute(%q, %q=%s) = %q, Python gives %q", tmpl, name, jsonValue, got, want)
			}
			_ = Substitute(tmpl, vars, map[string]any{"other": v})
			_ = substituteValue(v, vars)
		}
	})
}

// FuzzSanitize: a client value for a key with a rule is kept when it
// passes the rule (Python's re.match for regexp, membership for inList)
// and replaced by the default otherwise; nothing panics, whatever the
// rule's expression and the client's JSON.
func FuzzSanitize(f *testing.F) {
	f.Add(`[a-z0-9_.-]+\.vtk$`, []byte(`"can.vtk"`), []byte(`["a", 1, 2.0, true, null]`))
	// Anchoring: a value with a forbidden start before an allowed part.
	f.Add(`[a-z0-9_.-]+\.vtk$`, []byte(`"../../etc/x.vtk"`), []byte(`["a"]`))
	f.Add(`[a-z]+`, []byte(`"; rm -rf /tmp/x"`), []byte(`["a"]`))
	f.Add(`a|b`, []byte(`"xb"`), []byte(`[]`))
	f.Fuzz(func(t *testing.T, expr string, value, list []byte) {
		exprJSON, _ := json.Marshal(expr)
		src := `{"configuration": {"port": 8080, "endpoint": "pv", "sessionURL": "ws://h/${id}", "log_dir": "/tmp/l",
  "sanitize": {"file": {"type": "regexp", "regexp": ` + string(exprJSON) + `, "default": "default.vtk"}}},
 "sanitize": {"mode": {"type": "inList", "list": ` + string(list) + `, "default": "safe"}},
 "resources": [{"host": "localhost", "port_range": [9001, 9001]}], "apps": {"v": {"cmd": ["app", "${file}", "${mode}"]}}}`
		c, err := Parse([]byte(src), "fuzz.config")
		if err != nil {
			return // an expression RE2 refuses, or a list that is not a list
		}
		dec := json.NewDecoder(bytes.NewReader(value))
		dec.UseNumber()
		var v any
		if dec.Decode(&v) != nil {
			return
		}
		l := &Launcher{cfg: c, log: zerolog.Nop(), audit: &auditLog{}}
		payload := map[string]any{"application": "v", "file": v, "mode": v}
		l.sanitize(payload)
		// The oracle: Python's re.match, a match that starts at the
		// value's first byte. Go's leftmost-first search returns a match at
		// 0 whenever there is one, so the expression compiled on its own
		// (not the launcher's compiled rule) decides.
		// (The expression as the config file holds it: JSON turns invalid
		// UTF-8 into U+FFFD.)
		var inFile string
		if err := json.Unmarshal(exprJSON, &inFile); err != nil {
			t.Fatal(err)
		}
		own, err := regexp.Compile(inFile)
		if err != nil {
			t.Fatalf("regexp %q is not valid on its own (%v) but the config was accepted", inFile, err)
		}
		s, isStr := v.(string)
		loc := []int(nil)
		if isStr {
			loc = own.FindStringIndex(s)
		}
		if loc != nil && loc[0] == 0 {
			if payload["file"] != v {
				t.Fatalf("file %q matches %q but became %#v", s, c.Sanitize["file"].Regexp, payload["file"])
			}
		} else if payload["file"] != "default.vtk" {
			t.Fatalf("file %#v does not match %q but stayed %#v", v, c.Sanitize["file"].Regexp, payload["file"])
		}
		want := any("safe")
		for _, a := range c.Sanitize["mode"].List {
			if jsonEqual(v, a) {
				want = v
			}
		}
		if !jsonEqual(payload["mode"], want) {
			t.Fatalf("mode %#v became %#v, want %#v", v, payload["mode"], want)
		}
		// Whatever survives sanitizing is substituted as a plain string.
		_ = Substitute("${file} ${mode}", payload)
	})
}

// FuzzSubstituteNoLeak: whatever the template and the client's values, a
// property's value comes out of Substitute only if the template itself
// names that property. The oracle does not run the substitution: a
// template in which the property's name does not occur cannot name it,
// so the value (a marker found in no input) must not be in the output.
// When the template does hold "${secretProp}" on its own, the value must
// be there (the template's text still reaches the property pass).
func FuzzSubstituteNoLeak(f *testing.F) {
	f.Add("--user=${user} ${file}", "${secretProp}", "$secretProp")
	f.Add("$${user}", "secretProp", "$")
	f.Add("${a}${b}", "$", "{secretProp}")
	f.Fuzz(func(t *testing.T, tmpl, user, file string) {
		const marker = "\x00MARKER-7f3a\x00"
		if strings.Contains(tmpl+user+file, "MARKER-7f3a") {
			return
		}
		vars := map[string]any{"user": user, "file": file, "a": user, "b": file}
		props := map[string]any{"secretProp": marker, "other": "x"}
		got := Substitute(tmpl, vars, props)
		names := strings.Contains(tmpl, "secretProp")
		if !names && strings.Contains(got, marker) {
			t.Fatalf("template %q with user %q, file %q: the property's value leaked: %q", tmpl, user, file, got)
		}
		if tmpl == "${secretProp}" && got != marker {
			t.Fatalf("the template's own ${secretProp} became %q", got)
		}
		// substituteValue obeys the same rule inside JSON values.
		out := substituteValue([]any{tmpl, map[string]any{"k": tmpl}}, vars, props)
		if b, _ := json.Marshal(out); !names && bytes.Contains(b, []byte("MARKER-7f3a")) {
			t.Fatalf("substituteValue leaked the property: %s", b)
		}
	})
}
