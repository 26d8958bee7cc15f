package integration

// Browser tests: headless Chromium, real noVNC pages and a real Xvnc
// desktop behind the gateway. Each test opens the page in a tab, checks the
// canvas is the requested size and shows the desktop (pixels read back
// from the canvas and a screenshot decoded here), types a command into the
// desktop's xterm and waits for the file it writes in the session
// directory, then closes the tab and checks Xvnc stops and the slot is
// free. Screenshots are kept in test-artifacts/.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"
)

// browserDesktop is the service the browser tests launch.
const browserDesktop = "Browser Desktop"

// debianNoVNC is Debian's noVNC (package novnc, 1.3.0).
const debianNoVNC = "/usr/share/novnc"

// desktopGateway starts a gateway whose config has one "Browser Desktop"
// slot running scripts/desktop.sh at 1024x768 with a 1 s reconnect grace,
// so a closed tab stops the desktop about a second later.
func desktopGateway(t *testing.T, args ...string) *gateway {
	t.Helper()
	needComponent(t, "Xvnc", "tigervnc-standalone-server")
	needComponent(t, "openbox", "openbox")
	needComponent(t, "xterm", "xterm")
	dir := t.TempDir()
	cfg := map[string]any{
		browserDesktop: map[string]any{
			"script": filepath.Join(repoDir, "scripts", "desktop.sh"),
			"count":  1,
			"options": map[string]any{
				"geometry":        "1024x768",
				"reconnect_grace": 1,
				"file_ext":        []string{".vtk"},
			},
			"client_options": map[string]any{"geometry": "^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$"},
		},
	}
	p := writeConfig(t, dir, cfg)
	return startGateway(t, append([]string{"--remote_session_config", p}, args...)...)
}

// port returns the port of a host:port address.
func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// sessionDirOf finds the session directory of a token
// (<service>-<index>-<token prefix>).
func sessionDirOf(g *gateway, token string) string {
	m, _ := filepath.Glob(filepath.Join(g.dir, "sessions", "*-"+token[:8]))
	if len(m) == 1 {
		return m[0]
	}
	return ""
}

// sessionFor returns the status entry of the session of a token prefix.
func sessionFor(t *testing.T, g *gateway, token string) map[string]any {
	t.Helper()
	for _, s := range g.status(t)["sessions"].([]any) {
		m := s.(map[string]any)
		if m["token_prefix"] == token[:8] {
			return m
		}
	}
	return nil
}

// desktopSession is a desktop launched for one token, as the tests see it.
type desktopSession struct {
	token string
	dir   string // session directory
	sock  string // Xvnc's Unix socket
	pid   int    // the script's pid (the process group leader)
}

// waitRunning waits until the token's desktop runs and returns it.
func waitRunning(t *testing.T, g *gateway, token string) desktopSession {
	t.Helper()
	var s desktopSession
	waitFor(t, "the desktop session to run", 60*time.Second, func() bool {
		m := sessionFor(t, g, token)
		if m == nil || m["state"] != "running" {
			return false
		}
		pid, _ := m["pid"].(float64)
		s = desktopSession{token: token, dir: sessionDirOf(g, token), pid: int(pid)}
		return s.dir != "" && s.pid > 0
	})
	s.sock = filepath.Join(s.dir, "vnc.sock")
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(s.dir, "session.log"))
			t.Logf("%s/session.log:\n%s", s.dir, tail(string(b), 4096))
		}
	})
	if !xvncRunning(s.sock) {
		t.Fatalf("no Xvnc runs on %s", s.sock)
	}
	return s
}

// viewDesktop reserves a browserDesktop of w x h, opens the viewer on its
// token in a new tab, and waits until the viewer is connected, the session
// running and the desktop shown at w x h.
func viewDesktop(t *testing.T, g *gateway, b *browser, w, h int) (*page, desktopSession) {
	t.Helper()
	tok := g.reserve(t, browserDesktop, fmt.Sprintf("geometry=%dx%d", w, h))["token"].(string)
	v := b.newTab()
	v.navigate(g.httpURL("/wsgw/viewer.html#token=" + tok + "&service=" + url.PathEscape(browserDesktop)))
	waitViewerState(t, v, "connected", 60*time.Second)
	s := waitRunning(t, g, tok)
	checkDesktop(t, v, "#screen", w, h)
	return v, s
}

// checkDesktop asserts the noVNC canvas under root shows the desktop at
// w×h: the canvas's framebuffer size, then its pixels (the white xterm at
// +20+20 on the dark root window, read back with getImageData), then a
// screenshot of the canvas decoded in Go.
func checkDesktop(t *testing.T, p *page, root string, w, h int) {
	t.Helper()
	p.waitJS(fmt.Sprintf("the canvas to be %dx%d", w, h), 60*time.Second,
		fmt.Sprintf(`(c => c && c.width === %d && c.height === %d)(document.querySelector(%q))`, w, h, root+" canvas"),
		fmt.Sprintf(`(c => c ? c.width + "x" + c.height : "no canvas")(document.querySelector(%q))`, root+" canvas"))

	// The xterm is 100x30 characters at +20+20: its inside, well clear of
	// the title bar and the edges, is white; the root window around it is
	// not. Poll: Xvnc sends the xterm once it has mapped.
	inXterm := [2]int{200, 150}
	outside := [2]int{w - 40, h - 40}
	xtermRect := []int{60, 80, 400, 300}
	var st *canvasState
	deadline := time.Now().Add(30 * time.Second)
	for {
		st = p.canvas(root, [][2]int{inXterm, outside}, xtermRect)
		b := st.BrightRect
		if st.Colours >= 2 && b.Total > 0 && b.Bright*10 >= b.Total*7 && bright(st.Probe[0]) && !bright(st.Probe[1]) {
			break
		}
		if time.Now().After(deadline) {
			p.saveScreenshot("no-desktop")
			t.Fatalf("the canvas does not show the desktop with its xterm: %d colours in %d samples, xterm area %+v, probes %v at %v",
				st.Colours, st.Samples, *b, st.Probe, st.ProbeAt)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("canvas %dx%d shown at %.0fx%.0f: %d colours in %d samples, xterm area %+v",
		st.Width, st.Height, st.CSSW, st.CSSH, st.Colours, st.Samples, *st.BrightRect)

	// What the browser paints, not only what the canvas holds.
	img := p.screenshotElement(root+" canvas", "desktop")
	if bnd := img.Bounds(); bnd.Dx() < w/2 || bnd.Dy() < h/2 {
		t.Errorf("the screenshot of the canvas is %dx%d, the desktop %dx%d", bnd.Dx(), bnd.Dy(), w, h)
	}
	if n := imageStats(img); n < 2 {
		t.Errorf("the screenshot of the canvas has %d colour(s)", n)
	}
}

func bright(p [4]int) bool { return p[0] > 200 && p[1] > 200 && p[2] > 200 }

// typeIntoXterm clicks into the xterm, types a shell command and waits for
// the file the command writes in the session directory.
func typeIntoXterm(t *testing.T, p *page, root string, s desktopSession) {
	t.Helper()
	file := filepath.Join(s.dir, "typed.txt")
	p.clickDesktop(root, 200, 150)
	p.typeKeys(`echo typed-ok > "$WSGW_SESSION_DIR/typed.txt"` + "\n")
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := os.ReadFile(file)
		if err == nil && string(b) == "typed-ok\n" {
			break
		}
		if time.Now().After(deadline) {
			p.screenshotElement(root+" canvas", "typing-failed")
			t.Fatalf("typed command did not run in the xterm: %s: %q %v", file, b, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The command line is on the screen: the xterm area has dark text.
	st := p.canvas(root, nil, []int{22, 40, 620, 420})
	if st.BrightRect.Dark == 0 {
		t.Errorf("no text visible in the xterm after typing: %+v", *st.BrightRect)
	}
	p.screenshotElement(root+" canvas", "typed")
}

// closeAndCheckFreed closes the tab and waits for the gateway to stop Xvnc
// (after the 1 s reconnect grace) and free the slot.
func closeAndCheckFreed(t *testing.T, g *gateway, p *page, s desktopSession) {
	t.Helper()
	start := time.Now()
	p.close()
	waitFor(t, "the slot to be free after the tab closed", 60*time.Second, func() bool {
		return g.free(t, browserDesktop) == 1
	})
	waitFor(t, "Xvnc and the desktop script to stop", 30*time.Second, func() bool {
		return !alive(s.pid) && !xvncRunning(s.sock)
	})
	if m := sessionFor(t, g, s.token); m != nil {
		t.Errorf("the session is still listed after the tab closed: %v", m)
	}
	t.Logf("tab closed → desktop stopped and slot free in %s", time.Since(start).Round(10*time.Millisecond))
}

// noVNCPath is noVNC's path setting for a token.
func noVNCPath(token string) string {
	return url.QueryEscape("websockify?token=" + token)
}

// TestBrowserNovncLite drives noVNC's own vnc_lite.html (Debian's noVNC,
// served with --http_directory) with the token in its path setting and the
// websocket on the gateway's websocket port.
func TestBrowserNovncLite(t *testing.T) {
	t.Parallel()
	g := desktopGateway(t, "--http_directory", debianNoVNC)
	b := newBrowser(t)
	// The reservation asks for a size other than the service's default.
	r := g.reserve(t, browserDesktop, "geometry=1152x720")
	tok := r["token"].(string)

	p := b.newTab()
	p.navigate(fmt.Sprintf("http://%s/vnc_lite.html?host=127.0.0.1&port=%s&path=%s&scale=true",
		g.httpAddr, port(t, g.wsAddr), noVNCPath(tok)))
	p.waitJS("vnc_lite.html to say it is connected", 60*time.Second,
		`document.getElementById('status').textContent.startsWith('Connected')`,
		`document.getElementById('status').textContent`)
	var status string
	p.mustEval(`document.getElementById('status').textContent`, &status)
	if !strings.Contains(status, browserDesktop) {
		t.Errorf("status %q does not name the desktop", status)
	}
	s := waitRunning(t, g, tok)
	checkDesktop(t, p, "#screen", 1152, 720)
	typeIntoXterm(t, p, "#screen", s)
	p.saveScreenshot("page")
	closeAndCheckFreed(t, g, p, s)
}

// TestBrowserNovncFull drives noVNC's full client, vnc.html, with its
// settings in the fragment (autoconnect, host, port, path) and the
// websocket on the gateway's HTTP port.
func TestBrowserNovncFull(t *testing.T) {
	t.Parallel()
	g := desktopGateway(t, "--http_directory", debianNoVNC)
	b := newBrowser(t)
	r := g.reserve(t, browserDesktop, "")
	tok := r["token"].(string)

	p := b.newTab()
	p.navigate(fmt.Sprintf("http://%s/vnc.html#autoconnect=1&resize=off&host=127.0.0.1&port=%s&path=%s",
		g.httpAddr, port(t, g.wsAddr), noVNCPath(tok)))
	p.waitJS("vnc.html to connect", 60*time.Second,
		`document.documentElement.classList.contains('noVNC_connected')`,
		`document.documentElement.className + ' / ' + (document.getElementById('noVNC_status') || {}).textContent`)
	s := waitRunning(t, g, tok)
	checkDesktop(t, p, "#noVNC_container", 1024, 768)
	typeIntoXterm(t, p, "#noVNC_container", s)
	p.saveScreenshot("page")
	closeAndCheckFreed(t, g, p, s)
}

// npmNoVNC is the noVNC the viewer is built for (npm @novnc/novnc, put in
// node_modules by make deps); the test fails under CI when it is missing.
func npmNoVNC(t *testing.T) string {
	t.Helper()
	d := filepath.Join(repoDir, "node_modules", "@novnc", "novnc")
	if _, err := os.Stat(filepath.Join(d, "core", "rfb.js")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing; CI must run make deps (npm @novnc/novnc)", d)
		}
		t.Skipf("%s is missing (make deps installs npm @novnc/novnc)", d)
	}
	return d
}

// jsString quotes s for JavaScript.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// waitViewerState waits for the viewer's #status data-state to be state,
// and checks window.wsgwViewer agrees.
func waitViewerState(t *testing.T, p *page, state string, timeout time.Duration) {
	t.Helper()
	p.waitJS("the viewer to be "+state, timeout,
		fmt.Sprintf(`document.getElementById('status').dataset.state === %s && window.wsgwViewer && window.wsgwViewer.state === %s`, jsString(state), jsString(state)),
		`({state: document.getElementById('status').dataset.state, text: document.getElementById('status').textContent,
		   reason: document.getElementById('reason').textContent, viewer: window.wsgwViewer && window.wsgwViewer.state})`)
}

// viewerText returns the #status text and the #reason text.
func viewerText(t *testing.T, p *page) (status, reason string) {
	t.Helper()
	var v [2]string
	p.mustEval(`[document.getElementById('status').textContent, document.getElementById('reason').textContent]`, &v)
	return v[0], v[1]
}

// rowSel selects a cell of the dashboard's row for a service.
func rowSel(service, cell string) string {
	return fmt.Sprintf(`tr[data-service=%s] %s`, jsString(service), cell)
}

// cellText is the JavaScript for the text of the first match of sel, or null.
func cellText(sel string) string {
	return fmt.Sprintf(`(e => e ? e.textContent.trim() : null)(document.querySelector(%s))`, jsString(sel))
}

// TestBrowserDashboardLaunch: the dashboard lists the service, Launch opens
// the viewer in a new tab, the viewer shows the desktop at the service's
// size and types into it, the dashboard shows the live session, and
// closing the viewer's tab stops Xvnc and frees the slot, which the
// dashboard shows too.
func TestBrowserDashboardLaunch(t *testing.T) {
	t.Parallel()
	g := desktopGateway(t, "--novnc_directory", npmNoVNC(t))
	b := newBrowser(t)
	dash := b.newTab()
	// Without --http_directory the dashboard is at / as well as /wsgw/.
	dash.navigate(g.httpURL("/"))
	dash.waitJS("the dashboard to list the service with its free slot", 30*time.Second,
		fmt.Sprintf(`%s === "1" && %s === "1" && %s === ".vtk"`,
			cellText(rowSel(browserDesktop, ".free")), cellText(rowSel(browserDesktop, ".count")), cellText(rowSel(browserDesktop, ".file-ext"))),
		`document.querySelector('#services').outerHTML`)
	dash.saveScreenshot("dashboard-before")

	newTab := chromedp.WaitNewTarget(dash.ctx, func(*target.Info) bool { return true })
	dash.do("click Launch", chromedp.Click(chromedp.CSS(rowSel(browserDesktop, "button.launch")), chromedp.NodeVisible))
	var id target.ID
	select {
	case id = <-newTab:
	case <-time.After(30 * time.Second):
		dash.saveScreenshot("no-new-tab")
		t.Fatal("Launch opened no new tab")
	}
	if id == "" {
		t.Fatal("Launch: no new tab (the dashboard tab is gone)")
	}
	v := b.attach(id)
	v.waitJS("the new tab to load the viewer with a token", 30*time.Second,
		`location.pathname === '/wsgw/viewer.html' && new URLSearchParams(location.hash.slice(1)).get('token') && document.readyState === 'complete'`,
		`location.href`)
	var frag struct{ Token, Service string }
	v.mustEval(`(p => ({Token: p.get('token'), Service: p.get('service')}))(new URLSearchParams(location.hash.slice(1)))`, &frag)
	if frag.Service != browserDesktop || len(frag.Token) < 8 {
		t.Fatalf("the viewer's fragment: %+v", frag)
	}
	waitViewerState(t, v, "connected", 60*time.Second)
	if st, _ := viewerText(t, v); !strings.Contains(st, "Connected") {
		t.Errorf("#status says %q", st)
	}
	s := waitRunning(t, g, frag.Token)
	checkDesktop(t, v, "#screen", 1024, 768)
	typeIntoXterm(t, v, "#screen", s)
	v.saveScreenshot("viewer")

	// The dashboard (refreshing every 2 s) shows the running session, bytes
	// both ways, Stop for the loopback administrator, and no free slot.
	row := fmt.Sprintf(`tr[data-token-prefix=%s]`, jsString(frag.Token[:8]))
	dash.waitJS("the dashboard to show the running session", 30*time.Second,
		fmt.Sprintf(`%s === "running" && !/^0 B$/.test(%s) && !/^0 B$/.test(%s) && %s !== null && %s === "0" && document.querySelector(%s).disabled`,
			cellText(row+" .state"), cellText(row+" .bytes-in"), cellText(row+" .bytes-out"), cellText(row+" .age"),
			cellText(rowSel(browserDesktop, ".free")), jsString(rowSel(browserDesktop, "button.launch"))),
		`document.querySelector('#sessions').outerHTML + document.querySelector('#services').outerHTML`)
	var hasStop bool
	dash.mustEval(fmt.Sprintf(`!!document.querySelector(%s)`, jsString(row+" button.stop")), &hasStop)
	if !hasStop {
		t.Error("no Stop button on the session row for a loopback administrator")
	}
	dash.saveScreenshot("dashboard-running")

	closeAndCheckFreed(t, g, v, s)
	dash.waitJS("the dashboard to show the slot free and the session gone", 15*time.Second,
		fmt.Sprintf(`%s === "1" && !document.querySelector(%s) && !document.querySelector(%s).disabled`,
			cellText(rowSel(browserDesktop, ".free")), jsString(row), jsString(rowSel(browserDesktop, "button.launch"))),
		`document.querySelector('#sessions').outerHTML + document.querySelector('#services').outerHTML`)
	dash.saveScreenshot("dashboard-after")
}

// TestBrowserViewerReservesAndStop: the viewer reserves the service itself
// with a requested geometry; the dashboard's Stop ends the session and the
// viewer says it was disconnected, with the gateway's reason.
func TestBrowserViewerReservesAndStop(t *testing.T) {
	t.Parallel()
	g := desktopGateway(t, "--novnc_directory", npmNoVNC(t))
	b := newBrowser(t)
	v := b.newTab()
	v.navigate(g.httpURL("/wsgw/viewer.html#service=" + url.PathEscape(browserDesktop) + "&geometry=1280x720"))
	waitViewerState(t, v, "connected", 60*time.Second)
	var tok string
	v.mustEval(`new URLSearchParams(location.hash.slice(1)).get('token') || ''`, &tok)
	if len(tok) < 8 {
		t.Fatalf("the viewer did not put its token in the fragment: %q", tok)
	}
	s := waitRunning(t, g, tok)
	checkDesktop(t, v, "#screen", 1280, 720)

	dash := b.newTab()
	dash.navigate(g.httpURL("/wsgw/"))
	stop := fmt.Sprintf(`tr[data-token-prefix=%s] button.stop`, jsString(tok[:8]))
	dash.waitJS("the session's Stop button", 30*time.Second, fmt.Sprintf(`document.querySelector(%s)`, jsString(stop)),
		`document.querySelector('#sessions').outerHTML`)
	dash.do("click Stop", chromedp.Click(chromedp.CSS(stop), chromedp.NodeVisible))

	waitViewerState(t, v, "disconnected", 30*time.Second)
	st, reason := viewerText(t, v)
	if !strings.Contains(reason, "released") {
		t.Errorf("after Stop the viewer says %q, reason %q; want the gateway's reason (reservation released)", st, reason)
	}
	var reconnectShown bool
	v.mustEval(`!document.getElementById('reconnect').hidden`, &reconnectShown)
	if !reconnectShown {
		t.Error("Reconnect is hidden after a disconnect")
	}
	v.saveScreenshot("stopped")
	waitFor(t, "Xvnc to stop after Stop", 30*time.Second, func() bool { return !alive(s.pid) && !xvncRunning(s.sock) })
	waitFor(t, "the slot to be free after Stop", 30*time.Second, func() bool { return g.free(t, browserDesktop) == 1 })
}

// TestBrowserViewerRefusedToken: a token the gateway refuses shows why on
// the page: an unknown token, and a reservation that expired unused.
func TestBrowserViewerRefusedToken(t *testing.T) {
	t.Parallel()
	g := desktopGateway(t, "--novnc_directory", npmNoVNC(t), "--timeout", "1")
	b := newBrowser(t)

	t.Run("unknown", func(t *testing.T) {
		p := b.newTab()
		p.t = t
		p.navigate(g.httpURL("/wsgw/viewer.html#token=bogus&service=" + url.PathEscape(browserDesktop)))
		waitViewerState(t, p, "error", 30*time.Second)
		st, reason := viewerText(t, p)
		if !strings.Contains(reason, "does not know this link's desktop") {
			t.Errorf("status %q, reason %q; want the reason to say the gateway does not know the token", st, reason)
		}
		p.saveScreenshot("refused")
	})

	t.Run("expired", func(t *testing.T) {
		r := g.reserve(t, browserDesktop, "")
		tok := r["token"].(string)
		waitFor(t, "the reservation to expire", 30*time.Second, func() bool { return g.free(t, browserDesktop) == 1 })
		p := b.newTab()
		p.t = t
		p.navigate(g.httpURL("/wsgw/viewer.html#token=" + tok + "&service=" + url.PathEscape(browserDesktop)))
		waitViewerState(t, p, "error", 30*time.Second)
		st, reason := viewerText(t, p)
		if !strings.Contains(reason, "expired") {
			t.Errorf("status %q, reason %q; want the reason to say expired", st, reason)
		}
		p.saveScreenshot("expired")
	})
}

// TestBrowserViewerDebianNoVNC: the viewer also works with Debian's noVNC
// (1.3.0), the gateway's fallback when npm's is not installed.
func TestBrowserViewerDebianNoVNC(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(filepath.Join(debianNoVNC, "core", "rfb.js")); err != nil {
		needComponent(t, "/usr/share/novnc/core/rfb.js", "novnc")
	}
	g := desktopGateway(t, "--novnc_directory", debianNoVNC)
	b := newBrowser(t)
	v, s := viewDesktop(t, g, b, 800, 600)
	typeIntoXterm(t, v, "#screen", s)
	closeAndCheckFreed(t, g, v, s)
}
