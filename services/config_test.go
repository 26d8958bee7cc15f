package services_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"wsgateway/scripts"
	"wsgateway/services"
)

// writeFile writes data to dir/name (creating parent directories) and
// returns the path.
func writeFile(t *testing.T, dir, name, data string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile leaves the mode of an existing file alone.
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func asConfigError(t *testing.T, err error) *services.ConfigError {
	t.Helper()
	if err == nil {
		t.Fatal("got no error")
	}
	var ce *services.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *ConfigError", err, err)
	}
	return ce
}

func TestParseConfigValid(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "bin/viz.sh", "#!/bin/sh\n", 0o755)
	other := t.TempDir()
	abs := writeFile(t, other, "desk.sh", "#!/bin/sh\n", 0o700)

	cfg := `{
  "ParaView Viz": {"script": "bin/viz.sh", "count": 2,
                   "options": {"geometry": "1600x1200", "group": "viz", "file_ext": [".vtk", ".vtu"], "reconnect_grace": 30}},
  "Desk": {"script": ` + strconvQuote(abs) + `, "count": 10000, "options": {}}
}`
	svcs, err := services.ParseConfig("svc.json", dir, []byte(cfg))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if len(svcs) != 2 {
		t.Fatalf("got %d services, want 2", len(svcs))
	}
	// Sorted by name.
	desk, viz := svcs[0], svcs[1]
	if desk.Name != "Desk" || viz.Name != "ParaView Viz" {
		t.Fatalf("names %q, %q; want Desk, ParaView Viz (sorted)", desk.Name, viz.Name)
	}
	if desk.Script != abs || desk.Count != 10000 || len(desk.Options) != 0 || desk.BuiltIn {
		t.Errorf("Desk = %+v", desk)
	}
	if desk.Options == nil {
		t.Errorf("Desk options are nil, want an empty map")
	}
	if want := filepath.Join(dir, "bin", "viz.sh"); viz.Script != want {
		t.Errorf("viz script = %q, want %q", viz.Script, want)
	}
	if viz.Count != 2 || viz.BuiltIn {
		t.Errorf("viz = %+v", viz)
	}
	if got := viz.StringOption("geometry"); got != "1600x1200" {
		t.Errorf("geometry = %q", got)
	}
	if got := viz.StringOption("group"); got != "viz" {
		t.Errorf("group = %q", got)
	}
	if got := viz.FileExt(); !reflect.DeepEqual(got, []string{".vtk", ".vtu"}) {
		t.Errorf("FileExt = %v", got)
	}
	if got := string(viz.Options["reconnect_grace"]); got != "30" {
		t.Errorf("raw reconnect_grace = %q, want 30", got)
	}
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestLoadConfigResolvesScriptsAgainstConfigDir(t *testing.T) {
	root := t.TempDir()
	confDir := filepath.Join(root, "etc", "wsgw")
	writeFile(t, root, "etc/wsgw/here.sh", "#!/bin/sh\n", 0o755)
	writeFile(t, root, "libexec/up.sh", "#!/bin/sh\n", 0o755)
	writeFile(t, root, "etc/wsgw/services.json", `{
		"Here": {"script": "here.sh", "count": 1, "options": {}},
		"Up":   {"script": "../../libexec/up.sh", "count": 3, "options": {"group": "g"}}
	}`, 0o644)

	// Load through a relative path from an unrelated working directory:
	// scripts are still found next to the config, and made absolute.
	t.Chdir(root)
	svcs, err := services.LoadConfig(filepath.Join("etc", "wsgw", "services.json"))
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	want := map[string]string{
		"Here": filepath.Join(confDir, "here.sh"),
		"Up":   filepath.Join(root, "libexec", "up.sh"),
	}
	if len(svcs) != 2 {
		t.Fatalf("got %d services", len(svcs))
	}
	for _, s := range svcs {
		if s.Script != want[s.Name] {
			t.Errorf("%s: script %q, want %q", s.Name, s.Script, want[s.Name])
		}
		if !filepath.IsAbs(s.Script) {
			t.Errorf("%s: script %q is not absolute", s.Name, s.Script)
		}
	}
}

// TestNumericOptionsAccepted: the numbers the gateway reads may be 0, a
// fraction, or a numeric string.
func TestNumericOptionsAccepted(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "ok.sh", "#!/bin/sh\n", 0o755)
	cfg := `{"Viz": {"script": "ok.sh", "count": 1, "options": {"reconnect_grace": 0, "idle_timeout": "600",
		"max_duration": 2.5, "record_max_mb": "1", "record_keep_days": 0.5}}}`
	if _, err := services.ParseConfig("svc.json", dir, []byte(cfg)); err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "ok.sh", "#!/bin/sh\n", 0o755)
	writeFile(t, dir, "noexec.sh", "#!/bin/sh\n", 0o644)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	svc := func(body string) string { return `{"Viz": {` + body + `}}` }

	tests := []struct {
		name    string
		config  string
		service string // want ConfigError.Service
		key     string // want ConfigError.Key
		msg     []string
	}{
		{"missing script", svc(`"count": 1, "options": {}`), "Viz", "script", []string{"missing"}},
		{"empty script", svc(`"script": "", "count": 1, "options": {}`), "Viz", "script", []string{"missing"}},
		{"missing count", svc(`"script": "ok.sh", "options": {}`), "Viz", "count", []string{"missing"}},
		{"count zero", svc(`"script": "ok.sh", "count": 0, "options": {}`), "Viz", "count", []string{"1 to 10000", "got 0"}},
		{"count negative", svc(`"script": "ok.sh", "count": -2, "options": {}`), "Viz", "count", []string{"got -2"}},
		{"count fraction", svc(`"script": "ok.sh", "count": 2.5, "options": {}`), "Viz", "count", []string{"whole number", "got 2.5"}},
		{"count exponent", svc(`"script": "ok.sh", "count": 1e2, "options": {}`), "Viz", "count", []string{"got 1e2"}},
		{"count above max", svc(`"script": "ok.sh", "count": 10001, "options": {}`), "Viz", "count", []string{"got 10001"}},
		{"count huge", svc(`"script": "ok.sh", "count": 123456789012345678901234567890, "options": {}`), "Viz", "count", []string{"got 123456789012345678901234567890"}},
		{"missing options", svc(`"script": "ok.sh", "count": 1`), "Viz", "options", []string{"missing", "{}"}},
		{"null options", svc(`"script": "ok.sh", "count": 1, "options": null`), "Viz", "options", []string{"missing"}},
		{"unknown key", svc(`"script": "ok.sh", "count": 1, "options": {}, "geometry": "1x1"`), "Viz", "", []string{`"geometry"`, `inside "options"`}},
		{"script not executable", svc(`"script": "noexec.sh", "count": 1, "options": {}`), "Viz", "script", []string{filepath.Join(dir, "noexec.sh"), "not an executable", "chmod +x"}},
		{"script is a directory", svc(`"script": "adir", "count": 1, "options": {}`), "Viz", "script", []string{"not an executable"}},
		{"script missing", svc(`"script": "gone.sh", "count": 1, "options": {}`), "Viz", "script", []string{filepath.Join(dir, "gone.sh"), "no such file"}},
		{"group not a string", svc(`"script": "ok.sh", "count": 1, "options": {"group": 7}`), "Viz", "options", []string{`"group" must be a string`}},
		{"file_ext a string", svc(`"script": "ok.sh", "count": 1, "options": {"file_ext": ".vtk"}`), "Viz", "options", []string{`"file_ext" must be a list of strings`}},
		{"file_ext numbers", svc(`"script": "ok.sh", "count": 1, "options": {"file_ext": [1, 2]}`), "Viz", "options", []string{`"file_ext"`}},
		{"idle_timeout in words", svc(`"script": "ok.sh", "count": 1, "options": {"idle_timeout": "ten minutes"}`), "Viz", "options", []string{`"idle_timeout" must be a number of seconds`, "600", `"ten minutes"`}},
		{"reconnect_grace with a unit", svc(`"script": "ok.sh", "count": 1, "options": {"reconnect_grace": "30s"}`), "Viz", "options", []string{`"reconnect_grace" must be a number of seconds`}},
		{"max_duration negative", svc(`"script": "ok.sh", "count": 1, "options": {"max_duration": -5}`), "Viz", "options", []string{`"max_duration"`, "0 or more", "got -5"}},
		{"max_duration a list", svc(`"script": "ok.sh", "count": 1, "options": {"max_duration": [1]}`), "Viz", "options", []string{`"max_duration"`}},
		{"record_max_mb not a number", svc(`"script": "ok.sh", "count": 1, "options": {"record_max_mb": "lots"}`), "Viz", "options", []string{`"record_max_mb" must be a number of MiB`}},
		{"record_keep_days NaN", svc(`"script": "ok.sh", "count": 1, "options": {"record_keep_days": "NaN"}`), "Viz", "options", []string{`"record_keep_days" must be a number of days`}},
		{"idle_timeout infinite", svc(`"script": "ok.sh", "count": 1, "options": {"idle_timeout": "+Inf"}`), "Viz", "options", []string{`"idle_timeout"`}},
		{"slash in name", `{"a/b": {"script": "ok.sh", "count": 1, "options": {}}}`, "a/b", "", []string{"'/'"}},
		{"empty name", `{"": {"script": "ok.sh", "count": 1, "options": {}}}`, "", "", []string{"empty service name"}},
		{"control char in name", `{"a\tb": {"script": "ok.sh", "count": 1, "options": {}}}`, "a\tb", "", []string{`'\t'`}},
		{"name too long", `{"` + strings.Repeat("n", 129) + `": {"script": "ok.sh", "count": 1, "options": {}}}`, strings.Repeat("n", 129), "", []string{"128 bytes"}},
		{"empty object", `{}`, "", "", []string{"no services defined"}},
		{"null", `null`, "", "", []string{"no services defined"}},
		{"not an object", `[{"script": "ok.sh"}]`, "", "", []string{"not a JSON object"}},
		{"trailing data", `{"Viz": {"script": "ok.sh", "count": 1, "options": {}}} {}`, "", "", []string{"unexpected data after"}},
		{"truncated", `{"Viz": {"script": "ok.sh"`, "", "", []string{"not a JSON object"}},
		{"service not an object", `{"Viz": "ok.sh"}`, "Viz", "", []string{"cannot unmarshal"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svcs, err := services.ParseConfig("conf/svc.json", dir, []byte(tt.config))
			if svcs != nil {
				t.Errorf("got services %v with an error", svcs)
			}
			ce := asConfigError(t, err)
			if ce.File != "conf/svc.json" || ce.Service != tt.service || ce.Key != tt.key {
				t.Errorf("ConfigError{File: %q, Service: %q, Key: %q}, want {conf/svc.json, %q, %q}",
					ce.File, ce.Service, ce.Key, tt.service, tt.key)
			}
			text := err.Error()
			if !strings.HasPrefix(text, "conf/svc.json: ") {
				t.Errorf("message %q does not start with the file", text)
			}
			if tt.service != "" && !strings.Contains(text, `service "`) {
				t.Errorf("message %q does not name the service", text)
			}
			if tt.key != "" && !strings.Contains(text, `key "`+tt.key+`"`) {
				t.Errorf("message %q does not name key %q", text, tt.key)
			}
			for _, m := range tt.msg {
				if !strings.Contains(text, m) {
					t.Errorf("message %q does not contain %q", text, m)
				}
			}
		})
	}
}

func TestConfigErrorMessage(t *testing.T) {
	tests := []struct {
		err  services.ConfigError
		want string
	}{
		{services.ConfigError{File: "f.json", Msg: "bad"}, "f.json: bad"},
		{services.ConfigError{File: "f.json", Service: "Viz", Msg: "bad"}, `f.json: service "Viz": bad`},
		{services.ConfigError{File: "f.json", Service: "Viz", Key: "count", Msg: "bad"}, `f.json: service "Viz": key "count": bad`},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestParseConfigSyntaxErrorPosition(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name   string
		config string
		want   string
	}{
		// The second comma is on line 3, column 23.
		{"stray comma", "{\n  \"Viz\": {\n    \"script\": \"ok.sh\",, \"count\": 1}\n}", "line 3 column 23"},
		{"first line", `{"Viz" x}`, "line 1 column 8"},
		{"first byte", `x`, "line 1 column 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := services.ParseConfig("svc.json", dir, []byte(tt.config))
			ce := asConfigError(t, err)
			if ce.Service != "" || ce.Key != "" {
				t.Errorf("syntax error names service %q key %q", ce.Service, ce.Key)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("message %q does not contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "invalid character") {
				t.Errorf("message %q does not say what is wrong", err)
			}
		})
	}
}

func TestLoadConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.json")
	_, err := services.LoadConfig(missing)
	ce := asConfigError(t, err)
	if ce.File != missing || !strings.Contains(err.Error(), "cannot read") {
		t.Errorf("missing file: %v (%+v)", err, ce)
	}

	_, err = services.LoadConfig(dir)
	ce = asConfigError(t, err)
	if ce.File != dir {
		t.Errorf("directory: %v", err)
	}
}

func TestLoadConfigSizeLimit(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "ok.sh", "#!/bin/sh\n", 0o755)
	valid := `{"Viz": {"script": "ok.sh", "count": 1, "options": {}}}`
	pad := func(n int) string { return valid + strings.Repeat(" ", n-len(valid)) }

	atLimit := writeFile(t, dir, "at.json", pad(services.MaxConfigBytes), 0o644)
	if svcs, err := services.LoadConfig(atLimit); err != nil || len(svcs) != 1 {
		t.Errorf("config of exactly MaxConfigBytes: %v, %v", svcs, err)
	}

	over := writeFile(t, dir, "over.json", pad(services.MaxConfigBytes+1), 0o644)
	_, err := services.LoadConfig(over)
	ce := asConfigError(t, err)
	if ce.File != over || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized config: %v", err)
	}
}

func TestLoadConfigErrorNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "svc.json", `{"Viz": {"script": "gone.sh", "count": 1, "options": {}}}`, 0o644)
	_, err := services.LoadConfig(p)
	ce := asConfigError(t, err)
	if ce.File != p || ce.Service != "Viz" || ce.Key != "script" {
		t.Errorf("ConfigError = %+v", ce)
	}
	if !strings.Contains(err.Error(), filepath.Join(dir, "gone.sh")) {
		t.Errorf("message %q does not name the resolved script path", err)
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"Local Desktop", true},
		{"ParaView-5.12 (viz)", true},
		{"Ünïcödé ✓", true},
		{strings.Repeat("x", 128), true},
		{"", false},
		{strings.Repeat("x", 129), false},
		{"a/b", false},
		{"/", false},
		{"a\nb", false},
		{"a\x00b", false},
		{"a\x7fb", false},
	}
	for _, tt := range tests {
		err := services.ValidName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

func TestMergedOptions(t *testing.T) {
	s := &services.Service{Name: "Viz", Options: map[string]json.RawMessage{
		"geometry":        json.RawMessage(`"1600x1200"`),
		"reconnect_grace": json.RawMessage(`30`),
		"file_ext":        json.RawMessage(`[".vtk"]`),
		"nested":          json.RawMessage(`{"a": [1, 2]}`),
	}, ClientOptions: clientOptions(t, map[string]string{"geometry": "[0-9]+x[0-9]+", "user": "(?s).*", "empty": "string"})}
	tests := []struct {
		name  string
		query map[string]string
		want  map[string]any
	}{
		{"nil query", nil, map[string]any{
			"geometry": "1600x1200", "reconnect_grace": 30.0, "file_ext": []any{".vtk"},
			"nested": map[string]any{"a": []any{1.0, 2.0}},
		}},
		{"declared options override and add", map[string]string{
			"geometry": "800x600",
			"user":     `ann "the admin" \ <b>`,
			"empty":    "",
		}, map[string]any{
			"geometry": "800x600", "reconnect_grace": 30.0, "file_ext": []any{".vtk"},
			"nested": map[string]any{"a": []any{1.0, 2.0}},
			"user":   `ann "the admin" \ <b>`, "empty": "",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := s.MergedOptions(tt.query)
			if err != nil {
				t.Fatalf("MergedOptions: %v", err)
			}
			if !json.Valid(out) {
				t.Fatalf("not valid JSON: %s", out)
			}
			var got map[string]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("merged = %v\nwant       %v", got, tt.want)
			}
		})
	}
	// The service's own options are untouched.
	if got := s.StringOption("geometry"); got != "1600x1200" {
		t.Errorf("service geometry became %q", got)
	}
	if len(s.Options) != 4 {
		t.Errorf("service options changed: %v", s.Options)
	}

	empty := &services.Service{Name: "E"}
	out, err := empty.MergedOptions(nil)
	if err != nil || string(out) != "{}" {
		t.Errorf("empty MergedOptions = %s, %v; want {}", out, err)
	}

	// Operator options win: an option the client may not set (the
	// gateway's own, or any the service does not declare) is an error,
	// never merged, so a reservation recorded before the config changed
	// cannot bring one in either.
	for _, q := range []map[string]string{
		{"reconnect_grace": "5"},
		{"datadir": "/etc"},
		{"geometry": "800x600; touch x"},
		{"geometry": "800x600", "datadir": "/etc"},
	} {
		out, err := s.MergedOptions(q)
		var oe *services.OptionError
		if err == nil || !errors.As(err, &oe) || out != nil {
			t.Errorf("MergedOptions(%v) = %s, %v; want an *OptionError and nothing", q, out, err)
		}
	}
}

// clientOptions parses declarations for a test.
func clientOptions(t *testing.T, specs map[string]string) map[string]*services.ClientOption {
	t.Helper()
	out := map[string]*services.ClientOption{}
	for k, spec := range specs {
		o, err := services.ParseClientOption(spec)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		out[k] = o
	}
	return out
}

func TestStringOptionAndFileExt(t *testing.T) {
	s := &services.Service{Options: map[string]json.RawMessage{
		"group":    json.RawMessage(`"viz"`),
		"count":    json.RawMessage(`3`),
		"nothing":  json.RawMessage(`null`),
		"list":     json.RawMessage(`["a"]`),
		"file_ext": json.RawMessage(`[".vtk", ".vtu"]`),
	}}
	for key, want := range map[string]string{"group": "viz", "count": "", "nothing": "", "list": "", "absent": ""} {
		if got := s.StringOption(key); got != want {
			t.Errorf("StringOption(%q) = %q, want %q", key, got, want)
		}
	}
	if got := s.FileExt(); !reflect.DeepEqual(got, []string{".vtk", ".vtu"}) {
		t.Errorf("FileExt = %v", got)
	}

	tests := []struct {
		raw  string
		want []string
	}{
		{"", nil}, // absent
		{`[]`, []string{}},
		{`".vtk"`, nil},
	}
	for _, tt := range tests {
		o := map[string]json.RawMessage{}
		if tt.raw != "" {
			o["file_ext"] = json.RawMessage(tt.raw)
		}
		got := (&services.Service{Options: o}).FileExt()
		if len(got) != len(tt.want) || (len(tt.want) > 0 && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("FileExt with %q = %#v, want %#v", tt.raw, got, tt.want)
		}
	}
	if got := (&services.Service{}).StringOption("x"); got != "" {
		t.Errorf("StringOption on nil options = %q", got)
	}
}

func TestBuiltInDesktop(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "scripts") // does not exist yet
	want, err := scripts.FS.ReadFile("desktop.sh")
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ { // the second call overwrites in place
		s, err := services.BuiltIn("desktop", 2, dir)
		if err != nil {
			t.Fatalf("BuiltIn: %v", err)
		}
		if s.Name != "desktop" || s.Count != 2 || !s.BuiltIn {
			t.Errorf("service = %+v", s)
		}
		if s.Script != filepath.Join(dir, "desktop.sh") {
			t.Errorf("script = %q", s.Script)
		}
		st, err := os.Stat(s.Script)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o100 == 0 || !st.Mode().IsRegular() {
			t.Errorf("script mode %v is not an executable file", st.Mode())
		}
		got, err := os.ReadFile(s.Script)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("script content differs from the embedded desktop.sh (%v)", err)
		}
		if s.StringOption("geometry") == "" {
			t.Errorf("desktop has no default geometry: %v", s.Options)
		}
		// Changing one service's options must not leak into the next.
		s.Options["geometry"] = json.RawMessage(`"1x1"`)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "desktop.sh" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("directory holds %v, want only desktop.sh (no temporary files)", names)
	}
	s, err := services.BuiltIn("desktop", 1, dir)
	if err != nil {
		t.Fatal(err)
	}
	if s.StringOption("geometry") == "1x1" {
		t.Errorf("a change to one built-in's options leaked into the next")
	}
}

func TestBuiltInErrors(t *testing.T) {
	names := services.BuiltInNames()
	if !sort.StringsAreSorted(names) || len(names) == 0 {
		t.Fatalf("BuiltInNames = %v, want a sorted non-empty list", names)
	}
	found := false
	for _, n := range names {
		found = found || n == "desktop"
	}
	if !found {
		t.Errorf("BuiltInNames = %v, want desktop in it", names)
	}

	dir := t.TempDir()
	_, err := services.BuiltIn("ensight", 2, dir)
	if err == nil {
		t.Fatal("unknown built-in: no error")
	}
	for _, want := range append([]string{`"ensight"`, "built-ins are"}, names...) {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not contain %q", err, want)
		}
	}

	for _, n := range []int{0, -1, services.MaxCount + 1} {
		if _, err := services.BuiltIn("desktop", n, dir); err == nil || !strings.Contains(err.Error(), "count") {
			t.Errorf("BuiltIn count %d: %v, want a count error", n, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("failed BuiltIn calls wrote %d files", len(ents))
	}
}
