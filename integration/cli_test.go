package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func runBin(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(gwBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func TestHelpReadsLikeTheSeed(t *testing.T) {
	t.Parallel()
	code, out, _ := runBin(t, "-h")
	if code != 0 {
		t.Fatalf("-h exited %d", code)
	}
	for _, want := range []string{
		"usage: wsgateway [-h]", "[--http_directory http_directory]", "[--http_port http_server_port]",
		"[--cert ssl_certificate_filename]", "[--key ssl_key_filename]", "[--remote_session_config remote_config.json]",
		"[--client_hostname client_hostname]", "[--client_port client_port]", "[--timeout timeout_seconds]",
		"[--local_session appname count]", "[--verbose verbose_level]", "[--log_file log_filename]",
		"ws_server_port", "positional arguments:", "optional arguments:", "Default:9090", "--security_token",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("-h output lacks %q:\n%s", want, out)
		}
	}
}

func TestBadCommandLines(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notExec := filepath.Join(dir, "notexec.sh")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	cfg := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"bad port", []string{"--http_port", "abc", "--client_hostname", "localhost", "--client_port", "5900", "9090"}, []string{"--http_port", `"abc"`, "port number"}},
		{"bad timeout", []string{"--timeout", "-1", "--client_hostname", "h", "--client_port", "1", "9090"}, []string{"--timeout", "seconds"}},
		{"bad count", []string{"--local_session", "desktop", "two", "9090"}, []string{"--local_session", "count", `"two"`}},
		{"unknown builtin", []string{"--local_session", "ensight", "2", "9090"}, []string{"--local_session", `"ensight"`, "desktop"}},
		{"unknown flag", []string{"--http-port", "1", "9090"}, []string{"--http-port", "did you mean --http_port"}},
		{"missing port", []string{"--client_hostname", "localhost", "--client_port", "5900"}, []string{"missing ws_server_port"}},
		{"half basic", []string{"--client_hostname", "localhost", "9090"}, []string{"--client_hostname and --client_port"}},
		{"cert without key", []string{"--cert", "x.pem", "--client_hostname", "h", "--client_port", "1", "9090"}, []string{"--cert and --key"}},
		{"bad verbose", []string{"--verbose", "9", "--client_hostname", "h", "--client_port", "1", "9090"}, []string{"--verbose", "0, 1, 2 or 3"}},
		{"nothing to serve", []string{"9090"}, []string{"nothing to serve"}},
		{"missing value", []string{"--client_hostname", "h", "--client_port"}, []string{"--client_port needs client_port"}},
		{"http dir missing", []string{"--http_directory", filepath.Join(dir, "nope"), "--client_hostname", "h", "--client_port", "1", "9090"}, []string{"--http_directory", "no such file"}},
		{"config missing", []string{"--remote_session_config", filepath.Join(dir, "nope.json"), "9090"}, []string{"--remote_session_config", "nope.json", "cannot read"}},
		{"config bad json", []string{"--remote_session_config", cfg("bad.json", "{\n  \"a\": {\"script\": \n}"), "9090"}, []string{"bad.json", "line 3"}},
		{"config missing count", []string{"--remote_session_config", cfg("nocount.json", `{"Viz": {"script": "/bin/true", "options": {}}}`), "9090"}, []string{"nocount.json", `service "Viz"`, `key "count"`}},
		{"config not executable", []string{"--remote_session_config", cfg("noexec.json", `{"Viz": {"script": "notexec.sh", "count": 1, "options": {}}}`), "9090"}, []string{"noexec.json", `service "Viz"`, `key "script"`, "not an executable"}},
		{"config unknown key", []string{"--remote_session_config", cfg("extra.json", `{"Viz": {"script": "/bin/true", "count": 1, "options": {}, "cnt": 2}}`), "9090"}, []string{"extra.json", `service "Viz"`, "cnt"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runBin(t, c.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", code, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q lacks %q", stderr, w)
				}
			}
		})
	}
}
