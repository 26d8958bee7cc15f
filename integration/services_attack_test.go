package integration

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Attacks on the services side of the gateway (issue 11): another local
// user preparing the session directory (finding 4), a client replacing
// the operator's options (8), and a HEAD that takes a slot (11).

// saTheirs makes dir as another local user (uid 65534) would.
func saTheirs(t *testing.T, dir string, perm os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
}

// saVictim is another user's directory: a file and more old directories
// than the gateway keeps (200), so a prune that went there would delete
// the oldest.
func saVictim(t *testing.T) (dir, file string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "their-files")
	saTheirs(t, dir, 0o755)
	file = filepath.Join(dir, "precious.txt")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	for i := 0; i < 205; i++ {
		d := filepath.Join(dir, fmt.Sprintf("old-%03d", i))
		os.Mkdir(d, 0o755)
		os.WriteFile(filepath.Join(d, "data"), []byte("x"), 0o644)
		at := old.Add(time.Duration(i) * time.Minute)
		os.Chtimes(d, at, at)
	}
	os.Chown(file, 65534, 65534)
	return dir, file
}

func saSurvives(t *testing.T, dir, file string) {
	t.Helper()
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Errorf("the other user's file: %q, %v", b, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 206 {
		t.Errorf("the other user's directory has %d entries (%v), want 206", len(ents), err)
	}
}

// saRun runs the gateway with args and env until it exits (it must, the
// start being refused) and returns its output.
func saRun(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(gwBin, append([]string{"--bind_address", "127.0.0.1", "--http_port", "0"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	g := spawn(t, cmd, t.TempDir())
	select {
	case <-g.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("the gateway started; it should have refused: %s", g.log.String())
	}
	return cmd.ProcessState.ExitCode(), g.log.String()
}

// TestAttackSessionDirOfAnotherUser (finding 4): another local user
// prepares the gateway's default session directory in a shared TMPDIR
// (or the one it is configured with) so that pruning old sessions at
// start-up deletes their choice of files. The gateway refuses to start,
// names the path and the fix, and the files survive.
func TestAttackSessionDirOfAnotherUser(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("needs root to act as another local user")
	}
	cfg := hbEchoConfig(t)
	sharedTmp := func(t *testing.T) string {
		tmp := filepath.Join(t.TempDir(), "tmp")
		os.Mkdir(tmp, 0o777)
		os.Chmod(tmp, 0o777|os.ModeSticky)
		return tmp
	}
	uidDir := fmt.Sprintf("wsgateway-%d", os.Getuid())
	cases := []struct {
		name    string
		prepare func(t *testing.T, tmp, target string) (args []string, named string)
	}{
		{"default: sessions is their link", func(t *testing.T, tmp, target string) ([]string, string) {
			parent := filepath.Join(tmp, uidDir)
			saTheirs(t, parent, 0o755)
			link := filepath.Join(parent, "sessions")
			os.Symlink(target, link)
			os.Lchown(link, 65534, 65534)
			return nil, link
		}},
		{"default: their link in place of the gateway's directory", func(t *testing.T, tmp, target string) ([]string, string) {
			link := filepath.Join(tmp, uidDir)
			os.Symlink(target, link)
			os.Lchown(link, 65534, 65534)
			return nil, filepath.Join(link, "sessions")
		}},
		{"default: their empty directory, open to all", func(t *testing.T, tmp, target string) ([]string, string) {
			saTheirs(t, filepath.Join(tmp, uidDir), 0o777)
			return nil, filepath.Join(tmp, uidDir, "sessions")
		}},
		{"configured: a link to their directory", func(t *testing.T, tmp, target string) ([]string, string) {
			link := filepath.Join(tmp, "my-sessions")
			os.Symlink(target, link)
			os.Lchown(link, 65534, 65534)
			return []string{"--session_dir", link}, link
		}},
		{"configured: their directory", func(t *testing.T, tmp, target string) ([]string, string) {
			return []string{"--session_dir", target}, target
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmp := sharedTmp(t)
			target, file := saVictim(t)
			args, named := c.prepare(t, tmp, target)
			code, out := saRun(t, []string{"TMPDIR=" + tmp}, append(args, "--remote_session_config", cfg, "0")...)
			if code == 0 {
				t.Errorf("exit 0")
			}
			for _, want := range []string{named, "--session_dir", "another user"} {
				if !strings.Contains(out, want) {
					t.Errorf("the refusal does not say %q: %s", want, out)
				}
			}
			saSurvives(t, target, file)
		})
	}

	// Without anyone else: the default works, each level private.
	t.Run("default, fresh", func(t *testing.T) {
		tmp := sharedTmp(t)
		cmd := exec.Command(gwBin, "--bind_address", "127.0.0.1", "--http_port", "0", "--verbose", "2", "--remote_session_config", cfg, "0")
		cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
		g := spawn(t, cmd, tmp)
		waitFor(t, "the gateway to listen", 30*time.Second, func() bool {
			for _, l := range g.logLines() {
				if l["message"] == "listening" {
					return true
				}
			}
			return false
		})
		for _, d := range []string{filepath.Join(tmp, uidDir), filepath.Join(tmp, uidDir, "sessions")} {
			st, err := os.Lstat(d)
			if err != nil || !st.IsDir() || st.Mode().Perm() != 0o700 {
				t.Errorf("%s: %v %v, want a 0700 directory", d, st.Mode(), err)
			}
		}
	})
}

// saServicesConfig: "Viz" lets clients set geometry and depth, and sets a
// datadir of its own; "Legacy" declares nothing, so takes no client
// options.
func saServicesConfig(t *testing.T) *gateway {
	t.Helper()
	dir := t.TempDir()
	writeScript(t, dir, "echo.sh", fmt.Sprintf("case \"$1\" in\nstart) exec %s serve ;;\nesac\n", svcBin))
	cfg := writeConfig(t, dir, map[string]any{
		"Viz": map[string]any{"script": "echo.sh", "count": 2,
			"options":        map[string]any{"datadir": "/srv/data", "geometry": "1024x768"},
			"client_options": map[string]any{"geometry": "^[0-9]{3,4}x[0-9]{3,4}$", "depth": "int"}},
		"Legacy": map[string]any{"script": "echo.sh", "count": 1, "options": map[string]any{"datadir": "/srv/data"}},
	})
	return startGateway(t, "--remote_session_config", cfg)
}

// TestAttackClientOptionReplacesOperators (finding 8): a client's query
// option never replaces an option the services config sets, over REST or
// JSON-RPC; an undeclared option is refused with 400 naming it and what
// the service allows, and takes no slot; declared ones reach the script.
func TestAttackClientOptionReplacesOperators(t *testing.T) {
	t.Parallel()
	g := saServicesConfig(t)
	refusals := []struct {
		service string
		query   url.Values
		want    []string
	}{
		{"Viz", url.Values{"datadir": {"/etc"}}, []string{`"datadir"`, "set by the services config", "depth (int)", "geometry (^[0-9]{3,4}x[0-9]{3,4}$)"}},
		{"Viz", url.Values{"datadir": {"/etc"}, "geometry": {"800x600"}}, []string{`"datadir"`}},
		{"Viz", url.Values{"group": {"admin"}}, []string{`"group"`}},
		{"Viz", url.Values{"reconnect_grace": {"86400"}}, []string{`"reconnect_grace"`}},
		{"Viz", url.Values{"user": {"ann"}}, []string{`"user"`, "not an option a client may set"}},
		{"Viz", url.Values{"geometry": {"800x600 -rfbport 5900"}}, []string{`"geometry"`, "does not match"}},
		{"Viz", url.Values{"depth": {"24; rm -rf ~"}}, []string{`"depth"`, "whole number"}},
		{"Legacy", url.Values{"datadir": {"/etc"}}, []string{`"datadir"`, "takes no client options"}},
		{"Legacy", url.Values{"geometry": {"800x600"}}, []string{`"geometry"`, "takes no client options"}},
	}
	for _, r := range refusals {
		code, m := getJSON(t, g.httpURL("/v1/reserve/"+r.service+"?"+r.query.Encode()))
		msg, _ := m["error"].(string)
		if code != http.StatusBadRequest {
			t.Errorf("%s?%s: %d %v, want 400", r.service, r.query.Encode(), code, m)
			continue
		}
		for _, w := range r.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s?%s: %q does not say %q", r.service, r.query.Encode(), msg, w)
			}
		}
	}
	if g.free(t, "Viz") != 2 || g.free(t, "Legacy") != 1 {
		t.Fatalf("a refused reservation took a slot: Viz %d free, Legacy %d", g.free(t, "Viz"), g.free(t, "Legacy"))
	}

	// The same rule over JSON-RPC.
	c := dialRPC(t, g, "")
	for _, opts := range []map[string]string{{"datadir": "/etc"}, {"geometry": "1x1"}} {
		_, rerr := c.call("reservations.create", map[string]any{"service": "Viz", "options": opts})
		if rerr == nil || !strings.Contains(rerr.Message, "invalid params") {
			t.Errorf("reservations.create %v: %+v, want invalid params", opts, rerr)
		}
	}
	_, rerr := c.call("reservations.create", map[string]any{"service": "Legacy", "options": map[string]string{"datadir": "/etc"}})
	if rerr == nil || !strings.Contains(rerr.Message, `"datadir"`) {
		t.Errorf("reservations.create on Legacy: %+v, want a refusal naming datadir", rerr)
	}
	if g.free(t, "Viz") != 2 || g.free(t, "Legacy") != 1 {
		t.Fatalf("a refused reservations.create took a slot")
	}

	// Declared options reach the script beside the operator's.
	r := g.reserve(t, "Viz", "geometry=800x600&depth=24")
	ws, h := connectToken(t, g, r["token"].(string))
	ws.Close()
	if h.Options["datadir"] != "/srv/data" || h.Options["geometry"] != "800x600" || h.Options["depth"] != "24" {
		t.Errorf("WSGW_OPTIONS = %v, want the operator's datadir and the client's geometry and depth", h.Options)
	}
	var res struct{ Token string }
	c.must("reservations.create", map[string]any{"service": "Viz", "options": map[string]string{"geometry": "1600x900"}}, &res)
	ws, h = connectToken(t, g, res.Token)
	ws.Close()
	if h.Options["datadir"] != "/srv/data" || h.Options["geometry"] != "1600x900" {
		t.Errorf("over JSON-RPC, WSGW_OPTIONS = %v", h.Options)
	}
	r = g.reserve(t, "Legacy", "")
	ws, h = connectToken(t, g, r["token"].(string))
	ws.Close()
	if h.Options["datadir"] != "/srv/data" || len(h.Options) != 1 {
		t.Errorf("Legacy's WSGW_OPTIONS = %v, want only the operator's datadir", h.Options)
	}
}

// TestAttackHeadReserve (finding 11): HEAD /v1/reserve/<service> answers
// 405 and reserves nothing (its answer has no body, so the token would be
// lost with its slot); GET still reserves.
func TestAttackHeadReserve(t *testing.T) {
	t.Parallel()
	g := saServicesConfig(t)
	for _, path := range []string{"/v1/reserve/Viz", "/v1/reserve/Viz?wait=1", "/v1/reserve/Legacy?geometry=800x600"} {
		for i := 0; i < 3; i++ {
			req, _ := http.NewRequest(http.MethodHead, g.httpURL(path), nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET" {
				t.Errorf("HEAD %s: %d, Allow %q; want 405, Allow GET", path, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
	}
	st := g.status(t)
	if rs, _ := st["reservations"].([]any); len(rs) != 0 {
		t.Errorf("HEAD left reservations: %v", rs)
	}
	if g.free(t, "Viz") != 2 || g.free(t, "Legacy") != 1 {
		t.Errorf("HEAD took a slot: Viz %d free, Legacy %d", g.free(t, "Viz"), g.free(t, "Legacy"))
	}
	for _, m := range []string{http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(m, g.httpURL("/v1/reserve/Viz"), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /v1/reserve/Viz: %d, want 405", m, resp.StatusCode)
		}
	}
	g.reserve(t, "Viz", "")
	if g.free(t, "Viz") != 1 {
		t.Errorf("GET did not reserve")
	}
}
