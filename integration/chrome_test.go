package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/target"
	"github.com/chromedp/chromedp"
)

// chromiumPath is Debian's Chromium; the browser tests drive it headless.
const chromiumPath = "/usr/bin/chromium"

// browser is a headless Chromium started for one test. Its first tab is
// blank; each page under test gets a tab of its own (newTab), so closing
// that tab is what a user closing it does.
type browser struct {
	t       *testing.T
	ctx     context.Context // the browser's first tab
	dataDir string
	out     *syncBuf // Chromium's own stdout and stderr
}

// newBrowser starts Chromium, skipping when it is missing (failing under
// CI=true). The browser and every process it started are gone when the
// test's cleanups have run.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	needComponent(t, chromiumPath, "chromium")
	// Registered before the cleanup below, so removed after Chromium is gone.
	dataDir := t.TempDir()
	b := &browser{t: t, dataDir: dataDir, out: &syncBuf{}}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless, // --headless, plus --hide-scrollbars and --mute-audio
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-popup-blocking", true), // the dashboard's Launch opens a tab
		chromedp.UserDataDir(dataDir),
		chromedp.WindowSize(1280, 1000),
		chromedp.CombinedOutput(b.out),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	b.ctx = ctx
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc() // waits for the browser process
		killChromium(t, dataDir)
		if t.Failed() {
			if s := b.out.String(); s != "" {
				t.Logf("chromium output (last 4 kB):\n%s", tail(s, 4096))
			}
		}
	})
	// Start the browser now, with no deadline: the first Run binds the
	// browser's life to its context.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v\n%s", chromiumPath, err, b.out.String())
	}
	return b
}

// killChromium kills whatever still runs with this profile directory (the
// zygote, the crashpad handler…) and waits until nothing does.
func killChromium(t *testing.T, dataDir string) {
	want := "--user-data-dir=" + dataDir
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := processesWithArg(want)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("chromium processes %v are still running", pids)
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processesWithArg lists the live processes that have arg on their command
// line.
func processesWithArg(arg string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range bytes.Split(b, []byte{0}) {
			if string(a) == arg && alive(pid) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// page is one tab of the browser.
type page struct {
	t       *testing.T
	b       *browser
	ctx     context.Context
	cancel  context.CancelFunc
	closed  bool
	console *syncBuf // the tab's console messages and exceptions
}

// newTab opens a blank tab.
func (b *browser) newTab() *page {
	b.t.Helper()
	ctx, cancel := chromedp.NewContext(b.ctx)
	p := &page{t: b.t, b: b, ctx: ctx, cancel: cancel}
	b.t.Cleanup(p.close)
	if err := chromedp.Do(ctx); err != nil {
		b.t.Fatalf("opening a tab: %v", err)
	}
	p.logConsole()
	return p
}

// logConsole collects the tab's console; a failed test shows it.
func (p *page) logConsole() {
	p.console = &syncBuf{}
	msgs := chromedp.Console(p.ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			fmt.Fprintf(p.console, "%s %s: %s (%s:%d)\n", m.Time.Format("15:04:05.000"), m.Type, m.Text, m.URL, m.Line)
		}
	}()
	t := p.t
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console of the tab:\n%s", tail(p.console.String(), 8192))
		}
	})
}

// attach attaches to a tab the page opened itself (window.open).
func (b *browser) attach(id target.ID) *page {
	b.t.Helper()
	tctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithTargetID(id))
	p := &page{t: b.t, b: b, ctx: tctx, cancel: cancel}
	b.t.Cleanup(p.close)
	if err := chromedp.Do(tctx); err != nil {
		b.t.Fatalf("attaching to the new tab: %v", err)
	}
	p.logConsole()
	return p
}

// close closes the tab, as a user closing it.
func (p *page) close() {
	if !p.closed {
		p.closed = true
		p.cancel()
	}
}

// navigate loads url and waits for the load event (bounded).
func (p *page) navigate(url string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		p.t.Fatalf("navigate %s: %v", url, err)
	}
}

// do runs actions with a bound.
func (p *page) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression and decodes its JSON value into v.
func (p *page) eval(expr string, v any) error {
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		return err
	}
	if v == nil {
		return nil
	}
	return json.Unmarshal(raw, v)
}

// mustEval is eval failing the test on error.
func (p *page) mustEval(expr string, v any) {
	p.t.Helper()
	if err := p.eval(expr, v); err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
}

// waitJS polls a JavaScript expression until it is true. On a timeout it
// fails, showing what the expression describe evaluates to then.
func (p *page) waitJS(what string, timeout time.Duration, cond, describe string) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		var ok bool
		if lastErr = p.eval("!!("+cond+")", &ok); lastErr == nil && ok {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	var state any
	if describe != "" {
		if err := p.eval(describe, &state); err != nil {
			state = "(" + err.Error() + ")"
		}
	}
	p.saveScreenshot("timeout")
	p.t.Fatalf("timed out after %s waiting for %s (%s); page state: %v; last error: %v", timeout, what, cond, state, lastErr)
}

// artifactDir is where screenshots are kept (gitignored).
func artifactDir(t *testing.T) string {
	t.Helper()
	d := filepath.Join(repoDir, "test-artifacts")
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// artifactName makes a file name from the test name and a label.
func artifactName(t *testing.T, label string) string {
	r := strings.NewReplacer("/", "-", " ", "_", ":", "_")
	return r.Replace(t.Name()) + "-" + label + ".png"
}

// saveScreenshot saves the visible tab as a PNG artifact (best effort).
func (p *page) saveScreenshot(label string) string {
	ctx, cancel := context.WithTimeout(p.ctx, 15*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Logf("screenshot %s: %v", label, err)
		return ""
	}
	f := filepath.Join(artifactDir(p.t), artifactName(p.t, label))
	if err := os.WriteFile(f, buf, 0o644); err != nil {
		p.t.Logf("screenshot %s: %v", label, err)
		return ""
	}
	p.t.Logf("screenshot: %s", f)
	return f
}

// screenshotElement saves a PNG of one element (the noVNC canvas) as an
// artifact and returns it decoded.
func (p *page) screenshotElement(sel, label string) image.Image {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 30*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS(sel), chromedp.NodeVisible))
	if err != nil {
		p.t.Fatalf("screenshot of %s: %v", sel, err)
	}
	f := filepath.Join(artifactDir(p.t), artifactName(p.t, label))
	if err := os.WriteFile(f, buf, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", f)
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		p.t.Fatalf("screenshot of %s is not a PNG: %v", sel, err)
	}
	return img
}

// canvasState is what the page reports about noVNC's canvas: its
// framebuffer size, where it is on the page, and pixels read back with
// getImageData at framebuffer coordinates.
type canvasState struct {
	Width, Height int     // canvas.width, canvas.height
	Left, Top     float64 // getBoundingClientRect
	CSSW, CSSH    float64
	Colours       int          // distinct colours over a grid of samples
	Samples       int          // how many samples that grid had
	Probe         [][4]int     // RGBA at each probe point
	ProbeAt       [][2]int     // the probe points
	BrightRect    *brightStats `json:"bright"`
}

// brightStats describes the near-white pixels inside a rectangle.
type brightStats struct {
	Total, Bright, Dark int
}

// canvasJS reads the state of the first canvas under root. Probe points and
// the rectangle are framebuffer coordinates.
const canvasJS = `(function(root, probes, rect){
  const c = document.querySelector(root + ' canvas');
  if (!c) return null;
  const r = c.getBoundingClientRect();
  const out = {Width: c.width, Height: c.height, Left: r.left, Top: r.top, CSSW: r.width, CSSH: r.height,
               Colours: 0, Samples: 0, Probe: [], ProbeAt: probes, bright: null};
  if (!c.width || !c.height) return out;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const px = (x, y) => { const i = (y * c.width + x) * 4; return [d[i], d[i+1], d[i+2], d[i+3]]; };
  const seen = new Set();
  for (let y = 0; y < c.height; y += 7) for (let x = 0; x < c.width; x += 7) {
    const p = px(x, y); seen.add((p[0] << 16) | (p[1] << 8) | p[2]); out.Samples++;
  }
  out.Colours = seen.size;
  for (const [x, y] of probes) out.Probe.push(px(x, y));
  if (rect) {
    const b = {Total: 0, Bright: 0, Dark: 0};
    for (let y = rect[1]; y < rect[3] && y < c.height; y += 2) for (let x = rect[0]; x < rect[2] && x < c.width; x += 2) {
      const p = px(x, y); b.Total++;
      if (p[0] > 200 && p[1] > 200 && p[2] > 200) b.Bright++;
      if (p[0] < 60 && p[1] < 60 && p[2] < 60) b.Dark++;
    }
    out.bright = b;
  }
  return out;
})(%s, %s, %s)`

// canvas reads the canvas under root (a CSS selector for its container).
func (p *page) canvas(root string, probes [][2]int, rect []int) *canvasState {
	p.t.Helper()
	pj, _ := json.Marshal(probes)
	if probes == nil {
		pj = []byte("[]")
	}
	rj := []byte("null")
	if rect != nil {
		rj, _ = json.Marshal(rect)
	}
	rootJ, _ := json.Marshal(root)
	var st *canvasState
	p.mustEval(fmt.Sprintf(canvasJS, rootJ, pj, rj), &st)
	if st == nil {
		p.t.Fatalf("no canvas under %s", root)
	}
	return st
}

// clickDesktop clicks the remote desktop at framebuffer pixel (x, y) of the
// canvas under root, whatever the scaling.
func (p *page) clickDesktop(root string, x, y int) {
	p.t.Helper()
	st := p.canvas(root, nil, nil)
	cx := st.Left + float64(x)*st.CSSW/float64(st.Width)
	cy := st.Top + float64(y)*st.CSSH/float64(st.Height)
	p.do("click the desktop", chromedp.MouseClickXY(cx, cy))
}

// typeKeys sends key events to the focused element (noVNC's canvas after a
// click on it).
func (p *page) typeKeys(s string) {
	p.t.Helper()
	p.do("type "+strconv.Quote(s), chromedp.KeyEvent(s))
}

// imageStats counts distinct colours over a grid of an image, and reports
// whether it is one flat colour.
func imageStats(img image.Image) (colours int) {
	seen := map[uint32]bool{}
	bnd := img.Bounds()
	for y := bnd.Min.Y; y < bnd.Max.Y; y += 5 {
		for x := bnd.Min.X; x < bnd.Max.X; x += 5 {
			r, g, b, _ := img.At(x, y).RGBA()
			seen[(r>>8)<<16|(g>>8)<<8|b>>8] = true
		}
	}
	return len(seen)
}
