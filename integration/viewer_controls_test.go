package integration

import (
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestBrowserViewerControls: the viewer's promises, in Chromium against
// a real desktop. Clipboard: text typed into the viewer's clipboard box
// reaches the desktop (pasted into the xterm with the middle button, it
// runs as a command). Full screen: the button takes the page to full
// screen and back. Reconnect: after a disconnect, within the service's
// reconnect grace, it reattaches the same desktop (same token, same
// process); after the grace, it reserves a new one (a new token).
func TestBrowserViewerControls(t *testing.T) {
	t.Parallel()
	// A reconnect grace long enough for a click on a busy machine.
	dir := t.TempDir()
	needComponent(t, "Xvnc", "tigervnc-standalone-server")
	cfg := writeConfig(t, dir, map[string]any{browserDesktop: map[string]any{
		"script": filepath.Join(repoDir, "scripts", "desktop.sh"), "count": 1,
		"options": map[string]any{"geometry": "1024x768", "reconnect_grace": 8},
	}})
	g := startGateway(t, "--remote_session_config", cfg, "--novnc_directory", npmNoVNC(t))
	b := newBrowser(t)
	v := b.newTab()
	v.navigate(g.httpURL("/wsgw/viewer.html#service=" + url.PathEscape(browserDesktop)))
	waitViewerState(t, v, "connected", 60*time.Second)
	var tok string
	v.mustEval(`new URLSearchParams(location.hash.slice(1)).get('token') || ''`, &tok)
	s := waitRunning(t, g, tok)
	checkDesktop(t, v, "#screen", 1024, 768)

	// Clipboard: the box's text becomes the desktop's selection; a middle
	// click in the xterm pastes it, and the command it holds runs on Enter.
	v.do("open the clipboard panel", chromedp.Click(chromedp.CSS("#clipboard-toggle"), chromedp.NodeVisible))
	clip := `echo clip-ok > "$WSGW_SESSION_DIR/clip.txt"`
	v.mustEval(`(() => { const c = document.getElementById('clipboard'); c.value = `+jsString(clip)+`; c.dispatchEvent(new Event('input')); return true; })()`, nil)
	st := v.canvas("#screen", nil, nil)
	cx := st.Left + 200*st.CSSW/float64(st.Width)
	cy := st.Top + 150*st.CSSH/float64(st.Height)
	file := filepath.Join(s.dir, "clip.txt")
	waitFor(t, "the pasted command to run in the xterm", 30*time.Second, func() bool {
		if b, err := os.ReadFile(file); err == nil && string(b) == "clip-ok\n" {
			return true
		}
		// Paste, then Enter (a shell with bracketed paste runs nothing
		// pasted by itself). Again, if the first paste came too early.
		v.do("middle-click the xterm", chromedp.MouseClickXY(cx, cy, chromedp.ButtonMiddle))
		v.typeKeys("\n")
		return false
	})

	// Full screen and back.
	v.do("click Full screen", chromedp.Click(chromedp.CSS("#fullscreen"), chromedp.NodeVisible))
	v.waitJS("the page to be full screen", 10*time.Second, `!!document.fullscreenElement`, `String(document.fullscreenElement)`)
	v.do("click Full screen again", chromedp.Click(chromedp.CSS("#fullscreen"), chromedp.NodeVisible))
	v.waitJS("the page to leave full screen", 10*time.Second, `!document.fullscreenElement`, `String(document.fullscreenElement)`)

	// Reconnect within the grace (8 s): the same desktop.
	v.mustEval(`window.wsgwViewer.rfb.disconnect(), true`, nil)
	waitViewerState(t, v, "disconnected", 30*time.Second)
	v.do("click Reconnect", chromedp.Click(chromedp.CSS("#reconnect"), chromedp.NodeVisible))
	waitViewerState(t, v, "connected", 60*time.Second)
	var again string
	v.mustEval(`new URLSearchParams(location.hash.slice(1)).get('token') || ''`, &again)
	if again != tok {
		t.Fatalf("Reconnect within the grace reserved a new desktop: token %s…, was %s…", again[:8], tok[:8])
	}
	if s2 := waitRunning(t, g, tok); s2.pid != s.pid {
		t.Fatalf("Reconnect within the grace reached another desktop: pid %d, was %d", s2.pid, s.pid)
	}

	// Reconnect after the grace: the desktop has ended; a new one.
	v.mustEval(`window.wsgwViewer.rfb.disconnect(), true`, nil)
	waitViewerState(t, v, "disconnected", 30*time.Second)
	waitFor(t, "the first desktop to end after its grace", 60*time.Second, func() bool { return !alive(s.pid) && sessionFor(t, g, tok) == nil })
	v.do("click Reconnect", chromedp.Click(chromedp.CSS("#reconnect"), chromedp.NodeVisible))
	waitViewerState(t, v, "connected", 60*time.Second)
	var fresh string
	v.mustEval(`new URLSearchParams(location.hash.slice(1)).get('token') || ''`, &fresh)
	if fresh == "" || fresh == tok {
		t.Fatalf("Reconnect after the grace did not reserve a new desktop: token %q", fresh)
	}
	s3 := waitRunning(t, g, fresh)
	if s3.pid == s.pid {
		t.Fatal("the new desktop has the old one's process")
	}
}
