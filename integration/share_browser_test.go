package integration

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// shareLink makes a share of the running session of tok (as the loopback
// administrator) and returns its viewer URL and share token.
func shareLink(t *testing.T, g *gateway, tok, mode string) (link, share string) {
	t.Helper()
	code, m, _ := call(t, http.MethodPost, g.httpURL("/v1/share/"+tok), []byte(`{"mode": "`+mode+`"}`), "Content-Type", "application/json")
	if code != http.StatusOK {
		t.Fatalf("POST /v1/share (%s): %d %v", mode, code, m)
	}
	return g.httpURL(m["url"].(string)), m["share"].(string)
}

// TestBrowserShares: the owner's desktop opened through share links in a
// second browser (another profile: another user's browser). A view share
// shows the desktop, and its keys never reach it even when the page is
// tampered with to send them (the gateway drops them): a command typed
// there never runs, while the same typed through a control share does.
// Revoking the view share closes its viewer at once, with the reason.
func TestBrowserShares(t *testing.T) {
	t.Parallel()
	g := desktopGateway(t, "--novnc_directory", npmNoVNC(t))
	owner := newBrowser(t)
	v := owner.newTab()
	v.navigate(g.httpURL("/wsgw/viewer.html#service=" + url.PathEscape(browserDesktop)))
	waitViewerState(t, v, "connected", 60*time.Second)
	var tok string
	v.mustEval(`new URLSearchParams(location.hash.slice(1)).get('token') || ''`, &tok)
	s := waitRunning(t, g, tok)
	checkDesktop(t, v, "#screen", 1024, 768)

	other := newBrowser(t)
	viewLink, viewShare := shareLink(t, g, tok, "view")
	view := other.newTab()
	view.navigate(viewLink)
	waitViewerState(t, view, "connected", 60*time.Second)
	checkDesktop(t, view, "#screen", 1024, 768)

	// The view share's page, tampered with, sends keys: the gateway drops
	// them. Then the owner types a command of its own: once that has run,
	// the view share's would have too.
	view.mustEval(`window.wsgwViewer.rfb.viewOnly = false, true`, nil)
	view.clickDesktop("#screen", 200, 150)
	view.typeKeys(`echo view-typed > "$WSGW_SESSION_DIR/view.txt"` + "\n")
	v.clickDesktop("#screen", 200, 150)
	v.typeKeys(`echo owner-typed > "$WSGW_SESSION_DIR/owner.txt"` + "\n")
	waitFor(t, "the owner's command to run", 30*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(s.dir, "owner.txt"))
		return err == nil && string(b) == "owner-typed\n"
	})
	if _, err := os.Stat(filepath.Join(s.dir, "view.txt")); err == nil {
		t.Fatal("keys typed in a view share reached the desktop")
	}

	// A control share types like the owner.
	ctlLink, _ := shareLink(t, g, tok, "control")
	ctl := other.newTab()
	ctl.navigate(ctlLink)
	waitViewerState(t, ctl, "connected", 60*time.Second)
	checkDesktop(t, ctl, "#screen", 1024, 768)
	ctl.clickDesktop("#screen", 200, 150)
	ctl.typeKeys(`echo control-typed > "$WSGW_SESSION_DIR/control.txt"` + "\n")
	waitFor(t, "the control share's command to run", 30*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(s.dir, "control.txt"))
		return err == nil && string(b) == "control-typed\n"
	})

	// Presence: the owner's viewer shows who watches, and how.
	v.waitJS("the owner's viewer to show the watchers", 30*time.Second,
		`(t => t.includes('watching') && t.includes('(view)') && t.includes('(control)'))(document.getElementById('presence').textContent)`,
		`document.getElementById('presence').textContent`)

	// Revoking the view share closes its viewer at once, with the reason.
	req, _ := http.NewRequest(http.MethodDelete, g.httpURL("/v1/share/"+tok+"/"+viewShare), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %d %v", resp.StatusCode, m)
	}
	view.waitJS("the view share's viewer to be closed", 30*time.Second,
		`['disconnected', 'error'].includes(document.getElementById('status').dataset.state)`,
		`document.getElementById('status').dataset.state`)
	_, reason := viewerText(t, view)
	if !strings.Contains(strings.ToLower(reason), "revoked") {
		t.Errorf("the revoked viewer says %q", reason)
	}
	// The owner and the control share are still connected.
	var states []string
	for _, p := range []*page{v, ctl} {
		var st string
		p.mustEval(`document.getElementById('status').dataset.state`, &st)
		states = append(states, st)
	}
	if states[0] != "connected" || states[1] != "connected" {
		t.Errorf("after the revocation the owner and the control share are %v", states)
	}
}
