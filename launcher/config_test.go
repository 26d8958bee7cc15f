package launcher

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStripComments(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"hash", `{"a": 1} # c`, `{"a": 1}    `},
		{"double hash", "## head\n{}", "       \n{}"},
		{"slashes", `{"a": 1} // c`, `{"a": 1}     `},
		{"block", "{/* x\ny */\"a\": 1}", "{    \n    \"a\": 1}"},
		{"hash in string", `{"a": "x # y"}`, `{"a": "x # y"}`},
		{"slashes in string", `{"u": "ws://h:1/ws"}`, `{"u": "ws://h:1/ws"}`},
		{"block in string", `{"u": "/* no */"}`, `{"u": "/* no */"}`},
		{"escaped quote", `{"a": "q\" # still"} # gone`, `{"a": "q\" # still"}       `},
		{"escaped backslash", `{"a": "b\\"} # gone`, `{"a": "b\\"}       `},
		{"bom", "\xef\xbb\xbf{}", "   {}"},
		{"keeps CR", "{} # c\r\n{}", "{}     \n{}"},
		{"empty block", "{/**/}", "{    }"},
		{"slash last", "{} /", "{} /"},
		{"star slash last", "{} */", "{} */"},
	}
	for _, c := range cases {
		got, err := StripComments([]byte(c.in))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if string(got) != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
		if len(got) != len(c.in) {
			t.Errorf("%s: length changed", c.name)
		}
	}
	if _, err := StripComments([]byte("{\n\n /* never closed\n}")); err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("unterminated comment: %v", err)
	}
}

func TestLoadSeedConfig(t *testing.T) {
	c, err := Load("testdata/seed.config")
	if err != nil {
		t.Fatal(err)
	}
	if c.Port() != 8080 || c.Endpoint() != "paraview" || c.Configuration.Host != "localhost" {
		t.Errorf("configuration: %+v", c.Configuration)
	}
	if c.Timeout() != 5*time.Second {
		t.Errorf("timeout %v", c.Timeout())
	}
	if len(c.Apps) != 4 {
		t.Errorf("apps: %v", c.Apps)
	}
	vis := c.Apps["visualizer"]
	if vis.ReadyLine != "Starting factory" || len(vis.Cmd) != 10 || vis.Cmd[0] != "${python_exec}" || vis.Cmd[9] != "${secret}" {
		t.Errorf("visualizer: %+v", vis)
	}
	if len(c.Resources) != 1 || c.Resources[0].PortRange[1] != 9003 {
		t.Errorf("resources: %+v", c.Resources)
	}
	if strings.Join(c.Configuration.Fields, ",") != "file,host,port,updir" {
		t.Errorf("fields: %v", c.Configuration.Fields)
	}
	if c.Properties["python_exec"] != "/.../build/bin/vtkpython" {
		t.Errorf("properties: %v", c.Properties)
	}
	// Relative paths are relative to the config file.
	abs, _ := filepath.Abs("testdata")
	if c.Configuration.ProxyFile != filepath.Join(abs, "<MAPPING-FILE-DIR>", "proxy.txt") {
		t.Errorf("proxy_file %q", c.Configuration.ProxyFile)
	}
	if c.Configuration.Content != "/.../www" {
		t.Errorf("content %q", c.Configuration.Content)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings: %v", c.Warnings)
	}
}

const goodConfig = `{
  "configuration": {"host": "127.0.0.1", "port": 9000, "endpoint": "paraview",
                    "sessionURL": "ws://${host}:${port}/ws", "log_dir": "logs"},
  "resources": [{"host": "127.0.0.1", "port_range": [9001, 9002]}],
  "apps": {"a": {"cmd": ["prog", "--port", "${port}"]}}
}`

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name, old, new string
		want           []string // substrings of the error
	}{
		{"syntax names the line", `"endpoint": "paraview",`, `"endpoint": "paraview",,`, []string{"line 2", "column"}},
		{"type names key and line", `"port": 9000`, `"port": "9000"`, []string{"key configuration.port", "whole number", "line 2"}},
		{"cmd element type", `"cmd": ["prog", "--port", "${port}"]`, `"cmd": ["prog", 5]`, []string{"apps", "cmd", "a string"}},
		{"type names a number", `"log_dir": "logs"`, `"log_dir": "logs", "timeout": "5"`, []string{"key configuration.timeout", "expected a number,"}},
		{"type names a 64-bit whole number", `"log_dir": "logs"`, `"log_dir": "logs", "upload_max_size": "5"`, []string{"key configuration.upload_max_size", "expected a whole number,"}},
		{"type names a list", `"log_dir": "logs"`, `"log_dir": "logs", "fields": "id"`, []string{"key configuration.fields", "expected a list,"}},
		{"type names a map object", `"log_dir": "logs"`, `"log_dir": "logs", "sanitize": "x"`, []string{"key configuration.sanitize", "expected an object,"}},
		{"type names a struct object", `"apps": {"a": {"cmd": ["prog", "--port", "${port}"]}}`, `"apps": {"a": "prog"}`, []string{"key apps", "expected an object,"}},
		{"type names other types as Go does", `"log_dir": "logs"`, `"log_dir": "logs", "upload_replace": "yes"`, []string{"key configuration.upload_replace", "expected bool,"}},
		{"missing port", `"port": 9000, `, ``, []string{"key configuration.port", "missing"}},
		{"missing endpoint", `"endpoint": "paraview",`, ``, []string{"key configuration.endpoint"}},
		{"endpoint proxy", `"endpoint": "paraview"`, `"endpoint": "/proxy/"`, []string{"key configuration.endpoint"}},
		{"missing sessionURL", `"sessionURL": "ws://${host}:${port}/ws", `, ``, []string{"key configuration.sessionURL"}},
		{"missing log_dir", `, "log_dir": "logs"`, ``, []string{"key configuration.log_dir"}},
		{"bad range", `[9001, 9002]`, `[9002, 9001]`, []string{"key resources[0].port_range"}},
		{"range length", `[9001, 9002]`, `[9001]`, []string{"key resources[0].port_range"}},
		{"no resources", `[{"host": "127.0.0.1", "port_range": [9001, 9002]}]`, `[]`, []string{"key resources"}},
		{"empty cmd", `["prog", "--port", "${port}"]`, `[]`, []string{"key apps.a.cmd"}},
		{"no apps", `{"a": {"cmd": ["prog", "--port", "${port}"]}}`, `{}`, []string{"key apps"}},
		{"timeout", `"log_dir": "logs"`, `"log_dir": "logs", "timeout": -1`, []string{"key configuration.timeout"}},
		{"connect_timeout negative", `"log_dir": "logs"`, `"log_dir": "logs", "connect_timeout": -0.5`, []string{"key configuration.connect_timeout"}},
		{"connect_timeout too long", `"log_dir": "logs"`, `"log_dir": "logs", "connect_timeout": 86401`, []string{"key configuration.connect_timeout"}},
		{"upload_replace type", `"log_dir": "logs"`, `"log_dir": "logs", "upload_replace": "yes"`, []string{"configuration.upload_replace"}},
		{"sanitize type", `"log_dir": "logs"`, `"log_dir": "logs", "sanitize": {"file": {"type": "glob", "default": "x"}}`, []string{"key configuration.sanitize.file.type"}},
		{"sanitize regexp", `"log_dir": "logs"`, `"log_dir": "logs", "sanitize": {"file": {"type": "regexp", "regexp": "(?=x)", "default": "x"}}`, []string{"key configuration.sanitize.file.regexp"}},
		{"sanitize default", `"log_dir": "logs"`, `"log_dir": "logs", "sanitize": {"file": {"type": "inList", "list": []}}`, []string{"key configuration.sanitize.file.default"}},
		{"sessionData reserved", `"apps"`, `"sessionData": {"id": "x"}, "apps"`, []string{"key sessionData.id"}},
		{"trailing data", "}\n}", "}\n}\n{}", []string{"line 7"}},
		{"unterminated comment", `"apps"`, "/* oops\n\"apps\"", []string{"line 5", "never closed"}},
		{"truncated", "}\n}", "}\n", []string{"ends inside"}},
	}
	for _, c := range cases {
		src := strings.Replace(goodConfig, c.old, c.new, 1)
		if src == goodConfig {
			t.Fatalf("%s: replacement did not apply", c.name)
		}
		_, err := Parse([]byte(src), "launcher.config")
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Errorf("%s: %T is not a *ConfigError", c.name, err)
		}
		for _, w := range append(c.want, "launcher.config") {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not mention %q", c.name, err, w)
			}
		}
	}
	if _, err := Parse([]byte(goodConfig), "x"); err != nil {
		t.Fatalf("good config: %v", err)
	}
}

func TestConfigWarningsAndDefaults(t *testing.T) {
	src := strings.Replace(goodConfig, `"log_dir": "logs"`, `"log_dir": "logs", "ssl": true`, 1)
	src = strings.Replace(src, `"cmd"`, `"env": {}, "cmd"`, 1)
	src = strings.Replace(src, `"host": "127.0.0.1", "port": 9000`, `"port": 9000`, 1)
	c, err := Parse([]byte(src), "x")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"unknown key apps.a.env is ignored", "unknown key configuration.ssl is ignored"}
	if strings.Join(c.Warnings, "|") != strings.Join(want, "|") {
		t.Errorf("warnings %q", c.Warnings)
	}
	if c.Configuration.Host != DefaultHost || c.Timeout() != DefaultTimeout || c.Configuration.Fields != nil {
		t.Errorf("defaults: %+v", c.Configuration)
	}
}

func TestConfigSizeLimit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.config")
	// MaxConfigSize bytes load; one more is refused.
	for _, size := range []int{MaxConfigSize, MaxConfigSize + 1} {
		big := goodConfig + strings.Repeat(" ", size-len(goodConfig))
		if err := os.WriteFile(p, []byte(big), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Load(p)
		if size <= MaxConfigSize && err != nil {
			t.Errorf("%d bytes: %v", size, err)
		}
		if size > MaxConfigSize && (err == nil || !strings.Contains(err.Error(), "larger than")) {
			t.Errorf("%d bytes: %v", size, err)
		}
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("missing file loads")
	}
}

func TestSanitizeSections(t *testing.T) {
	src := strings.Replace(goodConfig, `"log_dir": "logs"`, `"log_dir": "logs", "sanitize": {"file": {"type": "inList", "list": ["a.vtk"], "default": "a.vtk"}}`, 1)
	src = strings.Replace(src, `"apps"`, `"sanitize": {"n": {"type": "regexp", "regexp": "[0-9]+", "default": "1"}}, "apps"`, 1)
	c, err := Parse([]byte(src), "x")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Sanitize) != 2 || c.Sanitize["n"].re == nil {
		t.Fatalf("sanitize: %+v", c.Sanitize)
	}
	dup := strings.Replace(src, `"n": {`, `"file": {`, 1)
	if _, err := Parse([]byte(dup), "x"); err == nil || !strings.Contains(err.Error(), "sanitize.file") {
		t.Errorf("duplicate rule: %v", err)
	}
}

// TestConnectTimeout: connect_timeout defaults to timeout, 0 is no limit,
// and its bounds (0 and 86400) are accepted.
func TestConnectTimeout(t *testing.T) {
	base := `{"configuration": {"port": 1, "endpoint": "pv", "sessionURL": "ws://x/${id}", "log_dir": "l", "timeout": 7%s},
 "resources": [{"host": "h", "port_range": [1, 1]}], "apps": {"a": {"cmd": ["p"]}}}`
	for _, c := range []struct {
		extra string
		want  time.Duration
	}{
		{"", 7 * time.Second},
		{`, "connect_timeout": 0`, forever},
		{`, "connect_timeout": 0.25`, 250 * time.Millisecond},
		{`, "connect_timeout": 86400`, 24 * time.Hour},
	} {
		cfg, err := Parse([]byte(fmt.Sprintf(base, c.extra)), "t.config")
		if err != nil {
			t.Fatalf("%q: %v", c.extra, err)
		}
		if got := cfg.ConnectTimeout(); got != c.want {
			t.Errorf("%q: connect timeout %v, want %v", c.extra, got, c.want)
		}
		if len(cfg.Warnings) != 0 {
			t.Errorf("%q: warnings %v", c.extra, cfg.Warnings)
		}
	}
}
