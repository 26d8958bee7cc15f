package launcher

import (
	"fmt"
	"strings"
	"testing"
)

// TestConfigErrorText: a ConfigError names its file, then its line when
// it has one, then its key when it has one.
func TestConfigErrorText(t *testing.T) {
	for _, tc := range []struct {
		err  ConfigError
		want string
	}{
		{ConfigError{File: "l.config", Key: "apps", Msg: "m"}, "l.config: key apps: m"},
		{ConfigError{File: "l.config", Line: 1, Msg: "m"}, "l.config line 1: m"},
		{ConfigError{File: "l.config", Line: 3, Key: "configuration.port", Msg: "m"}, "l.config line 3: key configuration.port: m"},
		{ConfigError{File: "l.config", Msg: "m"}, "l.config: m"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestConfigSyntaxPosition: a syntax error names the line and the
// column (from 1) of the character that is wrong, counted by hand here.
func TestConfigSyntaxPosition(t *testing.T) {
	for _, tc := range []struct {
		src        string
		line, col  int
		unexpected string
	}{
		{"{,}", 1, 2, "','"},
		{"{\n  \"a\": 1,,\n}", 2, 10, "','"},
		{"{\"a\":\n\n   x}", 3, 4, "'x'"},
	} {
		_, err := Parse([]byte(tc.src), "s.config")
		want := fmt.Sprintf("s.config line %d: column %d: invalid character %s", tc.line, tc.col, tc.unexpected)
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: %v, want %q...", tc.src, err, want)
		}
	}
}

// TestConfigBounds: each bound of the config's numbers is accepted at
// the bound and refused one step past it, and each required piece,
// missing, is named by its key.
func TestConfigBounds(t *testing.T) {
	// One host, every port: 65535 ports; a second host adds more.
	allPorts := `[{"host": "a", "port_range": [1, 65535]}, {"host": "b", "port_range": [1, 1]}]`
	for _, tc := range []struct {
		name, old, new string
		wantKey        string // "" when the config is valid
		inMsg          string
	}{
		{"port 0", `"port": 9000`, `"port": 0`, "", ""},
		{"port 65535", `"port": 9000`, `"port": 65535`, "", ""},
		{"port -1", `"port": 9000`, `"port": -1`, "configuration.port", "not a port number"},
		{"port 65536", `"port": 9000`, `"port": 65536`, "configuration.port", "not a port number"},
		{"timeout a day", `"log_dir": "logs"`, `"log_dir": "logs", "timeout": 86400`, "", ""},
		{"timeout past a day", `"log_dir": "logs"`, `"log_dir": "logs", "timeout": 86400.5`, "configuration.timeout", "0 to 86400"},
		{"timeout 0", `"log_dir": "logs"`, `"log_dir": "logs", "timeout": 0`, "configuration.timeout", "0 to 86400"},
		{"connect_timeout 0 (no limit)", `"log_dir": "logs"`, `"log_dir": "logs", "connect_timeout": 0`, "", ""},
		{"connect_timeout a day", `"log_dir": "logs"`, `"log_dir": "logs", "connect_timeout": 86400`, "", ""},
		{"connect_timeout past a day", `"log_dir": "logs"`, `"log_dir": "logs", "connect_timeout": 86400.5`, "configuration.connect_timeout", "0 (no limit) to 86400"},
		{"upload_max_size 1", `"log_dir": "logs"`, `"log_dir": "logs", "upload_max_size": 1`, "", ""},
		{"upload_max_size 0", `"log_dir": "logs"`, `"log_dir": "logs", "upload_max_size": 0`, "configuration.upload_max_size", "positive"},
		{"first port 1", `[9001, 9002]`, `[1, 1]`, "", ""},
		{"first port 0", `[9001, 9002]`, `[0, 1]`, "resources[0].port_range", "not a range of ports"},
		{"last port 65535", `[9001, 9002]`, `[65535, 65535]`, "", ""},
		{"last port 65536", `[9001, 9002]`, `[65535, 65536]`, "resources[0].port_range", "not a range of ports"},
		{"one port", `[9001, 9002]`, `[9001, 9001]`, "", ""},
		{"every port", `[{"host": "127.0.0.1", "port_range": [9001, 9002]}]`, allPorts, "", ""},
		{"more than every port", `[{"host": "127.0.0.1", "port_range": [9001, 9002]}]`,
			strings.Replace(allPorts, "[1, 1]", "[1, 2]", 1), "resources[1].port_range", "more than 65536 ports"},
		{"same last port", `[{"host": "127.0.0.1", "port_range": [9001, 9002]}]`,
			`[{"host": "h", "port_range": [9001, 9003]}, {"host": "h", "port_range": [9003, 9003]}]`,
			"resources[1].port_range", "port 9003 of host h is already in resources[0]"},
		{"same first port", `[{"host": "127.0.0.1", "port_range": [9001, 9002]}]`,
			`[{"host": "h", "port_range": [9001, 9003]}, {"host": "h", "port_range": [8000, 9001]}]`,
			"resources[1].port_range", "port 9001 of host h is already in resources[0]"},
		{"same ports, other host", `[{"host": "127.0.0.1", "port_range": [9001, 9002]}]`,
			`[{"host": "h", "port_range": [9001, 9003]}, {"host": "i", "port_range": [9001, 9003]}]`, "", ""},
		{"blank host", `"host": "127.0.0.1", "port_range"`, `"host": " ", "port_range"`, "resources[0].host", "missing host"},
		{"blank program", `["prog", "--port", "${port}"]`, `[" ", "--port"]`, "apps.a.cmd[0]", "the program to run is empty"},
		{"NUL first in an argument", `["prog", "--port", "${port}"]`, `["prog", "\u0000--port"]`, "apps.a.cmd[1]", "NUL"},
		{"NUL inside an argument", `["prog", "--port", "${port}"]`, `["prog", "--po\u0000rt"]`, "apps.a.cmd[1]", "NUL"},
		{"ready_line of two lines", `"cmd"`, `"ready_line": "a\nb", "cmd"`, "apps.a.ready_line", "one line"},
		{"ready_line of one line", `"cmd"`, `"ready_line": "Starting factory", "cmd"`, "", ""},
		{"inList without a list", `"log_dir": "logs"`, `"log_dir": "logs", "sanitize": {"f": {"type": "inList", "default": "x"}}`,
			"configuration.sanitize.f.list", "missing: the allowed values"},
		{"regexp without one", `"log_dir": "logs"`, `"log_dir": "logs", "sanitize": {"f": {"type": "regexp", "default": "x"}}`,
			"configuration.sanitize.f.regexp", "missing: the expression"},
		{"rule without a type", `"log_dir": "logs"`, `"log_dir": "logs", "sanitize": {"f": {"default": "x"}}`,
			"configuration.sanitize.f.type", `missing: "inList" or "regexp"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(goodConfig, tc.old, tc.new, 1)
			if src == goodConfig {
				t.Fatalf("the replacement of %q did not apply", tc.old)
			}
			_, err := Parse([]byte(src), "b.config")
			if tc.wantKey == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			want := "b.config: key " + tc.wantKey + ": "
			if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), tc.inMsg) {
				t.Fatalf("Parse = %v, want %q... saying %q", err, want, tc.inMsg)
			}
		})
	}
}

// TestStripCommentsResumesAfterComment: scanning resumes on the very
// byte after "*/", so a string right after a comment is still a string.
func TestStripCommentsResumesAfterComment(t *testing.T) {
	src := `{"k":/*c*/"a//b"}`
	got, err := StripComments([]byte(src))
	if want := `{"k":     "a//b"}`; err != nil || string(got) != want {
		t.Fatalf("StripComments(%s) = %q, %v; want %q", src, got, err, want)
	}
}
