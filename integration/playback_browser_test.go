package integration

import (
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestBrowserRecordingPlayback: a recorded desktop session, played back
// on the dashboard's playback page, shows what was on the screen: the
// same pixels at the same points as the live viewer showed (the xterm's
// inside, its title bar, the desktop's background).
func TestBrowserRecordingPlayback(t *testing.T) {
	t.Parallel()
	needComponent(t, "Xvnc", "tigervnc-standalone-server")
	dir := t.TempDir()
	cfg := writeConfig(t, dir, map[string]any{browserDesktop: map[string]any{
		"script": filepath.Join(repoDir, "scripts", "desktop.sh"), "count": 1,
		"options": map[string]any{"geometry": "1024x768", "record": true},
	}})
	g := startGateway(t, "--remote_session_config", cfg, "--novnc_directory", npmNoVNC(t))
	b := newBrowser(t)
	v := b.newTab()
	v.navigate(g.httpURL("/wsgw/viewer.html#service=" + url.PathEscape(browserDesktop)))
	waitViewerState(t, v, "connected", 60*time.Second)
	var tok string
	v.mustEval(`new URLSearchParams(location.hash.slice(1)).get('token') || ''`, &tok)
	waitRunning(t, g, tok)
	checkDesktop(t, v, "#screen", 1024, 768)
	probes := [][2]int{{200, 150}, {300, 30}, {900, 700}, {60, 300}}
	live := v.canvas("#screen", probes, nil)
	v.close()

	// The recording, listed once its connection has ended.
	var id string
	waitFor(t, "the recording to be listed as ended", 30*time.Second, func() bool {
		_, m := getJSON(t, g.httpURL("/v1/recordings"))
		recs, _ := m["recordings"].([]any)
		for _, r := range recs {
			rec := r.(map[string]any)
			if rec["end"] != nil && rec["end"] != "" {
				id, _ = rec["id"].(string)
			}
		}
		return id != ""
	})

	pb := b.newTab()
	pb.navigate(g.httpURL("/wsgw/playback.html#id=" + id))
	pb.waitJS("the recording to load", 30*time.Second, `window.wsgwPlayback.state === 'paused'`,
		`JSON.stringify({state: window.wsgwPlayback.state, error: window.wsgwPlayback.error})`)
	pb.do("click Play", chromedp.Click(chromedp.CSS("#play"), chromedp.NodeVisible))
	pb.waitJS("the playback to end", 60*time.Second, `window.wsgwPlayback.state === 'ended'`,
		`JSON.stringify({state: window.wsgwPlayback.state, position: window.wsgwPlayback.position, duration: window.wsgwPlayback.duration})`)
	checkDesktop(t, pb, "#screen", 1024, 768)
	played := pb.canvas("#screen", probes, nil)
	for i, p := range probes {
		if live.Probe[i] != played.Probe[i] {
			t.Errorf("at %v the live desktop showed %v, the playback %v", p, live.Probe[i], played.Probe[i])
		}
	}
}
