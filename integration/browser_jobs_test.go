package integration

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBrowserJobsView drives the dashboard's jobs view in headless
// Chromium against real job processes: submit from the declared params,
// progress and output, the queue (reorder, remove), stop, the history.
func TestBrowserJobsView(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := startJobsGateway(t, dir, filepath.Join(dir, "state.db"), 1)
	b := newBrowser(t)
	p := b.newTab()
	p.navigate(g.httpURL("/wsgw/jobs.html"))
	p.waitJS("the RPC connection", 30*time.Second, `document.querySelector('#conn').dataset.state === 'connected' && document.querySelector('#service').options.length >= 3`, `document.querySelector('#conn').textContent`)

	// Submit a solver run from its declared parameters.
	p.mustEval(`(() => { const s = document.querySelector('#service'); s.value = 'solve'; s.dispatchEvent(new Event('change')); return true })()`, nil)
	p.mustEval(`(() => { document.querySelector('input[name=input]').value = 'model.k'; document.querySelector('input[name=ncpu]').value = '4'; document.querySelector('#submit button[type=submit]').click(); return true })()`, nil)
	p.waitJS("the solver to succeed", 30*time.Second,
		`[...document.querySelectorAll('#jobs tbody tr')].some(tr => tr.querySelector('.state').textContent === 'succeeded' && tr.querySelector('.progress').textContent.startsWith('100 %') && tr.querySelector('.exit').textContent === '0')`,
		`document.querySelector('#jobs tbody').innerText`)
	p.waitJS("the solver's output", 15*time.Second, `document.querySelector('#output').textContent.includes('N o r m a l    t e r m i n a t i o n')`, `document.querySelector('#output').textContent`)
	var argvOK bool
	c := dialRPC(t, g, "")
	var list struct{ Jobs []rpcJob }
	c.must("jobs.list", map[string]any{"service": "solve"}, &list)
	if len(list.Jobs) == 1 && strings.HasSuffix(strings.Join(list.Jobs[0].Argv, " "), "solver.sh i=model.k ncpu=4") {
		argvOK = true
	}
	if !argvOK {
		t.Fatalf("submitted job: %+v", list.Jobs)
	}
	p.saveScreenshot("solver-done")

	// A queue: one sleeper runs (count 1), three wait.
	var ids []string
	for _, label := range []string{"run", "q1", "q2", "q3"} {
		var j rpcJob
		c.must("jobs.submit", map[string]any{"service": "sleeper", "params": map[string]any{"seconds": 60, "label": label}}, &j)
		ids = append(ids, j.ID)
	}
	p.waitJS("three queued rows", 15*time.Second, `document.querySelectorAll('#queue tbody tr').length === 3`, `document.querySelector('#queue tbody').innerText`)
	// Move the last one up, then remove the first queued one.
	p.mustEval(fmt.Sprintf(`(() => { document.querySelector('#queue tr[data-job=%q] button.up').click(); return true })()`, ids[3]), nil)
	waitFor(t, "the queue to be reordered", 15*time.Second, func() bool {
		var q struct{ Queue []rpcJob }
		c.must("queue.list", map[string]any{}, &q)
		return len(q.Queue) == 3 && q.Queue[1].ID == ids[3] && q.Queue[2].ID == ids[2]
	})
	p.mustEval(fmt.Sprintf(`(() => { document.querySelector('#queue tr[data-job=%q] button.remove').click(); return true })()`, ids[1]), nil)
	p.waitJS("the removed job to leave the queue", 15*time.Second, fmt.Sprintf(`!document.querySelector('#queue tr[data-job=%q]') && document.querySelector('#jobs tr[data-job=%q] .state').textContent === 'stopped'`, ids[1], ids[1]), `document.querySelector('#queue tbody').innerText`)
	// Live output of the running job, then stop it: the next queued starts.
	p.mustEval(fmt.Sprintf(`(() => { document.querySelector('#jobs tr[data-job=%q] button.watch').click(); return true })()`, ids[0]), nil)
	p.waitJS("the running job's output", 15*time.Second, `document.querySelector('#output').textContent.includes('start run')`, `document.querySelector('#output').textContent`)
	p.mustEval(fmt.Sprintf(`(() => { document.querySelector('#jobs tr[data-job=%q] button.stop').click(); return true })()`, ids[0]), nil)
	p.waitJS("the stopped job and the next one running", 20*time.Second,
		fmt.Sprintf(`document.querySelector('#jobs tr[data-job=%q] .state').textContent === 'stopped' && document.querySelector('#jobs tr[data-job=%q] .state').textContent === 'running'`, ids[0], ids[3]),
		`document.querySelector('#jobs tbody').innerText`)
	p.waitJS("the output to show the stop", 15*time.Second, `document.querySelector('#output').textContent.includes('got TERM run')`, `document.querySelector('#output').textContent`)
	p.saveScreenshot("queue")
	// Clean up: stop what is left.
	for _, id := range []string{ids[2], ids[3]} {
		c.call("jobs.stop", map[string]any{"id": id})
	}
}
