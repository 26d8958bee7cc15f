package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBrowserUxBackgroundClick (a short name: the session directory under
// it holds a Unix socket, whose path is limited to 108 bytes): in the built-in
// desktop, a click on the background (outside the xterm) does not take the
// keyboard from the terminal, and the first character typed after it is
// not lost.
func TestBrowserUxBackgroundClick(t *testing.T) {
	t.Parallel()
	g := desktopGateway(t, "--novnc_directory", npmNoVNC(t))
	b := newBrowser(t)
	v, s := viewDesktop(t, g, b, 1024, 768)

	// The xterm is at +20+20 and about 600x400: the bottom right corner is
	// the root window.
	for i, at := range [][2]int{{980, 720}, {60, 700}} {
		file := filepath.Join(s.dir, fmt.Sprintf("after-background-click-%d.txt", i))
		want := fmt.Sprintf("every-character-arrived-%d", i)
		v.clickDesktop("#screen", at[0], at[1])
		// "echo" loses its first letter if the first key is lost, and then
		// writes nothing.
		v.typeKeys(fmt.Sprintf(`echo %s > "$WSGW_SESSION_DIR/%s"`, want, filepath.Base(file)) + "\n")
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, err := os.ReadFile(file)
			if err == nil && string(got) == want+"\n" {
				break
			}
			if time.Now().After(deadline) {
				v.screenshotElement("#screen canvas", fmt.Sprintf("background-click-%d", i))
				t.Fatalf("after a click on the desktop background at %v, the typed command did not write %s: %q %v", at, file, got, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	v.saveScreenshot("after-background-clicks")
}

// startPlainServices runs a gateway with one reservable service, "Echo"
// (the test service, no desktop; with a file_ext option when fileExt), and
// "Broken", whose script fails with a message.
func startPlainServices(t *testing.T, fileExt bool, args ...string) *gateway {
	t.Helper()
	dir := t.TempDir()
	opts := map[string]any{}
	if fileExt {
		opts["file_ext"] = []string{".vtk"}
	}
	script := writeScript(t, dir, "echo.sh", fmt.Sprintf("case \"$1\" in\nstart) exec %s serve ;;\nesac\n", svcBin))
	broken := writeScript(t, dir, "broken.sh", "echo 'no licence is free for this program' >&2\nexit 1\n")
	cfg := writeConfig(t, dir, map[string]any{
		"Echo":   map[string]any{"script": script, "count": 2, "options": opts},
		"Broken": map[string]any{"script": broken, "count": 1, "options": map[string]any{}},
	})
	return startGateway(t, append([]string{"--remote_session_config", cfg}, args...)...)
}

// TestBrowserUxJobsPageWithoutJobServices: the jobs page says there are no
// job services instead of showing an empty form.
func TestBrowserUxJobsPageWithoutJobServices(t *testing.T) {
	t.Parallel()
	g := startPlainServices(t, false)
	b := newBrowser(t)
	p := b.newTab()
	p.navigate(g.httpURL("/wsgw/jobs.html"))
	p.waitJS("the jobs page to load its services", 30*time.Second,
		`document.querySelector('#conn').dataset.state === 'connected' && !document.querySelector('#no-job-services').hidden`,
		`document.querySelector('#conn').textContent + ' / ' + document.querySelector('main').innerText`)
	var v struct {
		FormShown, TitleShown bool
		Text                  string
	}
	p.mustEval(`({FormShown: document.querySelector('#submit').offsetParent !== null,
	              TitleShown: document.querySelector('#submit-title').offsetParent !== null,
	              Text: document.querySelector('#no-job-services').innerText})`, &v)
	if v.FormShown || v.TitleShown {
		t.Errorf("the submit form is shown with no job service: %+v", v)
	}
	if !strings.Contains(v.Text, "no job services") || !strings.Contains(v.Text, `"kind": "job"`) {
		t.Errorf("the page says %q", v.Text)
	}
	p.saveScreenshot("no-job-services")
}

// TestBrowserUxDashboardColumns: the dashboard shows a column only when it
// has something to show: "Opens files" when a service declares file types,
// the Stop column when there is a session this user may stop.
func TestBrowserUxDashboardColumns(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		fileExt  bool
		wantOpen bool
	}{
		{"no file types", false, false},
		{"file types", true, true},
	}
	b := newBrowser(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := startPlainServices(t, c.fileExt)
			p := b.newTab()
			p.t = t
			p.navigate(g.httpURL("/wsgw/"))
			p.waitJS("the dashboard to list the service", 30*time.Second,
				cellText(rowSel("Echo", ".free"))+` === "2"`, `document.querySelector('#services').outerHTML`)
			var v struct {
				HeadShown, CellShown, StopHeadShown bool
				Head                                string
			}
			p.mustEval(`({HeadShown: document.querySelector('#services th.file-ext').offsetParent !== null,
			              CellShown: document.querySelector('#services td.file-ext').offsetParent !== null,
			              StopHeadShown: document.querySelector('#sessions th.actions').offsetParent !== null,
			              Head: document.querySelector('#services th.file-ext').innerText})`, &v)
			if v.HeadShown != c.wantOpen || v.CellShown != c.wantOpen {
				t.Errorf("file types column shown %v/%v, want %v", v.HeadShown, v.CellShown, c.wantOpen)
			}
			if c.wantOpen && v.Head == "" {
				t.Error("the file types column has no heading")
			}
			if v.StopHeadShown {
				t.Error("the Stop column is shown with no session")
			}
			// A reservation: the loopback administrator may stop it.
			tok := g.reserve(t, "Echo", "")["token"].(string)
			row := fmt.Sprintf(`tr[data-token-prefix=%s]`, jsString(tok[:8]))
			p.waitJS("the reservation's Stop button", 30*time.Second,
				fmt.Sprintf(`(b => b && b.offsetParent !== null && document.querySelector('#sessions th.actions').offsetParent !== null)(document.querySelector(%s))`, jsString(row+" button.stop")),
				`document.querySelector('#sessions').outerHTML`)
			p.saveScreenshot("dashboard")
		})
	}
}

// TestBrowserUxViewerRefusalsInPlainWords: the viewer says why a websocket
// was refused in plain words, whole: no API paths, no cut text.
func TestBrowserUxViewerRefusalsInPlainWords(t *testing.T) {
	t.Parallel()
	g := startPlainServices(t, false, "--novnc_directory", npmNoVNC(t))
	b := newBrowser(t)
	busy := g.reserve(t, "Echo", "")["token"].(string)
	ws, code, body := dialWS(t, g.wsURL("/websockify?token="+busy), nil)
	if ws == nil {
		t.Fatalf("first websocket: %d %v", code, body)
	}
	defer ws.Close()
	cases := []struct {
		name, fragment, state string
		want                  []string
	}{
		{"unknown token", "token=no-such-token&service=Echo", "error", []string{"does not know", "Reconnect reserves a new one"}},
		{"token in use", "token=" + busy + "&service=Echo", "error", []string{"already open in another tab or window"}},
		// The close reason of a failed launch holds a log path that a close
		// frame's 123 bytes cut: it is left out, not shown cut.
		{"launch failed", "service=Broken", "disconnected", []string{"could not be started", "no licence is free for this program.", "session log on the gateway"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := b.newTab()
			p.t = t
			p.navigate(g.httpURL("/wsgw/viewer.html#" + c.fragment))
			waitViewerState(t, p, c.state, 30*time.Second)
			var v struct {
				Reason             string
				Cut                bool
				Overflow, Ellipsis string
			}
			p.mustEval(`(r => ({Reason: r.textContent, Cut: r.scrollWidth > r.clientWidth + 1 || r.scrollHeight > r.clientHeight + 1,
			                    Overflow: getComputedStyle(r).overflow, Ellipsis: getComputedStyle(r).textOverflow}))(document.getElementById('reason'))`, &v)
			for _, w := range c.want {
				if !strings.Contains(v.Reason, w) {
					t.Errorf("reason %q lacks %q", v.Reason, w)
				}
			}
			for _, bad := range []string{"…", "/v1/", "GET ", "X-Wsgw", "(log:", "/tmp/"} {
				if strings.Contains(v.Reason, bad) {
					t.Errorf("reason %q is not plain words (%q)", v.Reason, bad)
				}
			}
			if v.Cut || v.Ellipsis == "ellipsis" {
				t.Errorf("the reason is cut on the page: %+v", v)
			}
			p.saveScreenshot("refused")
		})
	}
}
