package jobs

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestJobParamPathUnder: a path parameter confined to a directory takes
// paths inside it, relative or absolute, and refuses every way out: "..",
// an absolute path elsewhere, a symbolic link out (even one to nothing),
// a sibling with the same prefix, and a value that reads as an option.
func TestJobParamPathUnder(t *testing.T) {
	top := t.TempDir()
	base := filepath.Join(top, "decks")
	outside := filepath.Join(top, "decks-evil") // shares base's prefix
	for _, d := range []string{base, filepath.Join(base, "sub"), outside} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(base, "deck.k"), filepath.Join(base, "sub", "deck.k"), filepath.Join(outside, "x.k")} {
		os.WriteFile(f, []byte("*KEYWORD\n"), 0o644)
	}
	os.Symlink(outside, filepath.Join(base, "out"))                           // a directory outside
	os.Symlink(filepath.Join(base, "deck.k"), filepath.Join(base, "alias.k")) // a file inside
	os.Symlink("/nonexistent-dir/x.k", filepath.Join(base, "dangling.k"))     // nothing, outside
	os.Symlink("../decks-evil", filepath.Join(base, "sub", "up"))             // relative, outside
	real, err := filepath.EvalSymlinks(base)
	if err != nil {
		t.Fatal(err)
	}
	p := &Param{Type: TypeString, PathUnder: base}
	if err := p.check("input"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		value string
		want  string // resolved path; "" for a refusal
	}{
		{"deck.k", filepath.Join(real, "deck.k")},
		{"sub/deck.k", filepath.Join(real, "sub", "deck.k")},
		{"sub/../deck.k", filepath.Join(real, "deck.k")},
		{"./deck.k", filepath.Join(real, "deck.k")},
		{filepath.Join(base, "deck.k"), filepath.Join(real, "deck.k")},
		{"alias.k", filepath.Join(real, "deck.k")},
		{"new/run-1/out.k", filepath.Join(real, "new", "run-1", "out.k")}, // not there yet
		{"a b;$(rm).k", filepath.Join(real, "a b;$(rm).k")},               // data, never a shell
		{"../../etc/x.k", ""},
		{"../decks-evil/x.k", ""},
		{"sub/../../decks-evil/x.k", ""},
		{filepath.Join(outside, "x.k"), ""},
		{"/etc/passwd", ""},
		{"out/x.k", ""},
		{"out/new.k", ""},
		{"sub/up/x.k", ""},
		{"dangling.k", ""},
		{"-rf.k", ""},
		{"--help", ""},
		{"-", ""},
		{"", ""},
		{".", ""},
		{"sub/..", ""},
		{base, ""},
	}
	for _, tt := range tests {
		raw, _ := json.Marshal(tt.value)
		got, err := p.value("input", raw)
		if tt.want == "" {
			if err == nil {
				t.Errorf("%q accepted as %q", tt.value, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%q = %q, %v; want %q", tt.value, got, err, tt.want)
		}
	}
}

func TestJobParamPathUnderConfig(t *testing.T) {
	dir := t.TempDir()
	writeExe(t, dir, "run.sh", "exit 0\n")
	decks := filepath.Join(dir, "decks")
	os.Mkdir(decks, 0o755)
	os.WriteFile(filepath.Join(decks, "deck.k"), nil, 0o644)
	file := filepath.Join(dir, "a-file")
	os.WriteFile(file, nil, 0o644)
	conf := func(param string) string {
		return `{"solve": {"kind": "job", "count": 1, "cmd": ["./run.sh", "i=${input}"], "options": {"params": {"input": ` + param + `}}}}`
	}
	svcs, err := ParseConfig("f.json", dir, []byte(conf(`{"type": "string", "required": true, "path_under": `+strconv.Quote(decks)+`, "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*\\.k$"}`)))
	if err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(decks)
	argv, full, err := svcs[0].Argv(map[string]json.RawMessage{"input": json.RawMessage(`"deck.k"`)})
	if err != nil || argv[1] != "i="+filepath.Join(real, "deck.k") || string(full["input"]) != `"deck.k"` {
		t.Errorf("argv %q, params %s, %v", argv, full, err)
	}
	for _, v := range []string{`"../../etc/x.k"`, `"-rf.k"`, `"sub/x.k"`} {
		_, _, err := svcs[0].Argv(map[string]json.RawMessage{"input": json.RawMessage(v)})
		var pe *ParamError
		if !errors.As(err, &pe) {
			t.Errorf("%s: %v, want a ParamError", v, err)
		}
	}
	for name, param := range map[string]string{
		"not a string":   `{"type": "int", "path_under": ` + strconv.Quote(decks) + `}`,
		"relative":       `{"type": "string", "path_under": "decks"}`,
		"missing":        `{"type": "string", "path_under": ` + strconv.Quote(filepath.Join(dir, "nope")) + `}`,
		"a file":         `{"type": "string", "path_under": ` + strconv.Quote(file) + `}`,
		"default out":    `{"type": "string", "path_under": ` + strconv.Quote(decks) + `, "default": "../x.k"}`,
		"default option": `{"type": "string", "path_under": ` + strconv.Quote(decks) + `, "default": "-x.k"}`,
	} {
		_, err := ParseConfig("f.json", dir, []byte(conf(param)))
		if err == nil || !strings.Contains(err.Error(), "options.params.input") {
			t.Errorf("%s: %v, want a config error naming the parameter", name, err)
		}
	}
}

// TestJobParamExamplesAreSafe: every example parameter pattern in the
// README and the docs refuses a path out of the working directory and a
// value that reads as an option, and still takes a plain file name.
func TestJobParamExamplesAreSafe(t *testing.T) {
	quoted := regexp.MustCompile(`\\?"pattern\\?":\s*\\?"((?:[^"\\]|\\[^"])*)\\?"`)
	var n int
	for _, doc := range []string{"../README.md", "../docs/rpc.md", "../docs/launcher.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range quoted.FindAllStringSubmatch(string(b), -1) {
			var pat string
			if err := json.Unmarshal([]byte(`"`+m[1]+`"`), &pat); err != nil {
				t.Errorf("%s: pattern %s is not a JSON string: %v", doc, m[1], err)
				continue
			}
			re, err := regexp.Compile(pat)
			if err != nil {
				t.Errorf("%s: pattern %q: %v", doc, pat, err)
				continue
			}
			n++
			if strings.Contains(pat, `\.k`) && !re.MatchString("deck_01.k") {
				t.Errorf("%s: pattern %q refuses deck_01.k", doc, pat)
			}
			for _, attack := range []string{"../../etc/x.k", "-rf.k", "/etc/x.k", "a/../../x.k", "--help"} {
				if re.MatchString(attack) {
					t.Errorf("%s: example pattern %q accepts %q", doc, pat, attack)
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("no example patterns found: the test reads the wrong files")
	}
}

// FuzzParamPathUnder: whatever the value, an accepted path parameter is a
// clean absolute path strictly inside the directory, with no link left to
// resolve in it, and never reads as an option; a plain file name is always
// accepted. (Invariants stated without the code under test.)
//
//	go test -run='^$' -fuzz='^FuzzParamPathUnder$' -fuzztime=30s ./jobs
func FuzzParamPathUnder(f *testing.F) {
	top := f.TempDir()
	base := filepath.Join(top, "decks")
	os.MkdirAll(filepath.Join(base, "sub"), 0o755)
	os.MkdirAll(filepath.Join(top, "decks-evil"), 0o755)
	os.WriteFile(filepath.Join(base, "deck.k"), nil, 0o644)
	os.Symlink(filepath.Join(top, "decks-evil"), filepath.Join(base, "out"))
	os.Symlink("../..", filepath.Join(base, "sub", "up"))
	os.Symlink("/nonexistent/x", filepath.Join(base, "dangling"))
	os.Symlink("deck.k", filepath.Join(base, "alias.k"))
	real, err := filepath.EvalSymlinks(base)
	if err != nil {
		f.Fatal(err)
	}
	p := &Param{Type: TypeString, PathUnder: base}
	if err := p.check("input"); err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{"deck.k", "../x", "out/x", "sub/up/decks-evil/x", "dangling", "-rf.k", "/etc/passwd", base + "/deck.k", "alias.k", "sub/../sub/./n.k", ""} {
		f.Add(s)
	}
	plain := regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.]{0,40}$`)
	links := map[string]bool{"out": true, "dangling": true, "alias.k": true}
	f.Fuzz(func(t *testing.T, v string) {
		raw, _ := json.Marshal(v)
		got, err := p.value("input", raw)
		if err != nil {
			if plain.MatchString(v) && !links[v] && strings.Trim(v, ".") != "" && !strings.HasPrefix(v, "..") {
				t.Fatalf("plain name %q refused: %v", v, err)
			}
			return
		}
		if !strings.HasPrefix(got, real+"/") || filepath.Clean(got) != got {
			t.Fatalf("%q accepted as %q, not a clean path inside %s", v, got, real)
		}
		if strings.HasPrefix(v, "-") {
			t.Fatalf("%q, which reads as an option, accepted", v)
		}
		if r, err := filepath.EvalSymlinks(got); err == nil && r != got {
			t.Fatalf("%q accepted as %q, which still resolves to %q", v, got, r)
		}
	})
}
