package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/proc"
	"wsgateway/store"
)

func writeExe(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// shService is job service "s": the shell script body, count at a time,
// with no parameters.
func shService(t *testing.T, dir, body string, count int) *Service {
	t.Helper()
	return &Service{Name: "s", Count: count, Cmd: []string{writeExe(t, dir, "job.sh", body)}, Params: map[string]*Param{}}
}

// openStore opens a store in dir, closed when the test ends.
func openStore(t *testing.T, dir string) *store.SQLite {
	t.Helper()
	st, err := store.Open(context.Background(), filepath.Join(dir, "s.db"), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestJobConfigParse(t *testing.T) {
	dir := t.TempDir()
	writeExe(t, dir, "run.sh", "exit 0\n")
	good := `{
	  "Desktop": {"script": "run.sh", "count": 1, "options": {}},
	  "solve": {"kind": "job", "count": 2, "cmd": ["./run.sh", "i=${input}", "ncpu=${ncpu}", "--${mode}"],
	    "options": {"params": {
	      "input": {"type": "string", "required": true, "pattern": "^[a-z]+\\.k$"},
	      "ncpu": {"type": "int", "default": 1, "min": 1, "max": 8},
	      "mode": {"type": "enum", "values": ["single", "double"], "default": "single"}},
	     "progress": [{"regex": "t (?P<current>[0-9.E+-]+)", "total": 2}]}}}`
	svcs, err := ParseConfig("f.json", dir, []byte(good))
	if err != nil || len(svcs) != 1 || svcs[0].Name != "solve" || svcs[0].Count != 2 {
		t.Fatalf("parse: %v %+v", err, svcs)
	}
	s := svcs[0]
	argv, full, err := s.Argv(map[string]json.RawMessage{"input": json.RawMessage(`"a.k"`)})
	if err != nil || strings.Join(argv[1:], " ") != "i=a.k ncpu=1 --single" || string(full["ncpu"]) != "1" {
		t.Fatalf("argv %v %v %v", argv, full, err)
	}
	for _, bad := range []map[string]json.RawMessage{
		{}, // required missing
		{"input": json.RawMessage(`"a b; rm -rf / .k"`)}, // pattern
		{"input": json.RawMessage(`"a.k"`), "ncpu": json.RawMessage(`9`)},
		{"input": json.RawMessage(`"a.k"`), "ncpu": json.RawMessage(`1.5`)},
		{"input": json.RawMessage(`"a.k"`), "mode": json.RawMessage(`"quad"`)},
		{"input": json.RawMessage(`"a.k"`), "other": json.RawMessage(`1`)},
		{"input": json.RawMessage(`7`)},
	} {
		if _, _, err := s.Argv(bad); err == nil {
			t.Errorf("params %s accepted", bad)
		} else if pe := (*ParamError)(nil); !errors.As(err, &pe) {
			t.Errorf("params %s: %T is not a ParamError", bad, err)
		}
	}
	for name, cfg := range map[string]string{
		"undeclared placeholder": `{"j": {"kind": "job", "count": 1, "cmd": ["./run.sh", "${nope}"], "options": {}}}`,
		"program from a param":   `{"j": {"kind": "job", "count": 1, "cmd": ["${p}"], "options": {"params": {"p": {"type": "string"}}}}}`,
		"script key":             `{"j": {"kind": "job", "count": 1, "script": "run.sh", "cmd": ["./run.sh"], "options": {}}}`,
		"no cmd":                 `{"j": {"kind": "job", "count": 1, "options": {}}}`,
		"bad type":               `{"j": {"kind": "job", "count": 1, "cmd": ["./run.sh"], "options": {"params": {"p": {"type": "float"}}}}}`,
		"bad regex":              `{"j": {"kind": "job", "count": 1, "cmd": ["./run.sh"], "options": {"progress": [{"regex": "("}]}}}`,
		"regex without group":    `{"j": {"kind": "job", "count": 1, "cmd": ["./run.sh"], "options": {"progress": [{"regex": "t"}]}}}`,
		"missing program":        `{"j": {"kind": "job", "count": 1, "cmd": ["./nope.sh"], "options": {}}}`,
		"zero count":             `{"j": {"kind": "job", "count": 0, "cmd": ["./run.sh"], "options": {}}}`,
	} {
		if _, err := ParseConfig("f.json", dir, []byte(cfg)); err == nil || !strings.Contains(err.Error(), `"j"`) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestJobProgressParsing(t *testing.T) {
	rules := []*ProgressRule{
		{Regex: `^\s*\d+\s+t\s+(?P<current>[0-9.]+E[+-]\d+)\s+dt`},
		{Regex: `termination time\s*=?\s*(?P<total>[0-9.]+E[+-]\d+)`},
	}
	for _, r := range rules {
		r.re = regexp.MustCompile(r.Regex)
	}
	p := newProgressParser(rules)
	t0 := time.Unix(1000, 0)
	if _, ok := p.line(" termination time  2.0000E-02", t0); ok {
		t.Fatal("a total alone is not progress yet")
	}
	if _, ok := p.line("some other line", t0); ok {
		t.Fatal("unrelated line")
	}
	pr, ok := p.line("      10 t 5.0000E-03 dt 1.00E-06 write d3plot file", t0)
	if !ok || pr.Percent != 25 || pr.ETA != nil {
		t.Fatalf("first: %+v", pr)
	}
	pr, ok = p.line("      20 t 1.0000E-02 dt 1.00E-06 flush i/o buffers", t0.Add(10*time.Second))
	if !ok || pr.Percent != 50 || pr.ETA == nil || *pr.ETA != 20 {
		t.Fatalf("second: %+v eta %v", pr, pr.ETA)
	}
}

type memPub struct {
	mu  sync.Mutex
	evs []map[string]any
}

func (m *memPub) Publish(topic, owner string, data any) {
	b, _ := json.Marshal(data)
	var d map[string]any
	_ = json.Unmarshal(b, &d)
	d["topic"] = topic
	m.mu.Lock()
	m.evs = append(m.evs, d)
	m.mu.Unlock()
}

func (m *memPub) states(id string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, e := range m.evs {
		if e["topic"] == "job.state" && e["id"] == id {
			out = append(out, e["state"].(string))
		}
	}
	return out
}

func newManager(t *testing.T, dir string, st store.Store, svcs []*Service, pub Publisher) *Manager {
	t.Helper()
	m, err := New(context.Background(), Config{Services: svcs, Store: st, Events: pub, Dir: filepath.Join(dir, "jobs"),
		StopGrace: 500 * time.Millisecond, Watchdog: 50 * time.Millisecond, LogFlush: 20 * time.Millisecond}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// shManager is a manager, not started, of the one job service shService
// makes, over a store of its own.
func shManager(t *testing.T, body string, count int) *Manager {
	t.Helper()
	dir := t.TempDir()
	return newManager(t, dir, openStore(t, dir), []*Service{shService(t, dir, body, count)}, &memPub{})
}

func waitState(t *testing.T, m *Manager, id, state string) Job {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		j, err := m.Get(context.Background(), id)
		if err == nil && j.State == state {
			return j
		}
		time.Sleep(10 * time.Millisecond)
	}
	j, _ := m.Get(context.Background(), id)
	t.Fatalf("job %s is %s (%s), want %s", id, j.State, j.Reason, state)
	return j
}

// waitLog waits for a job's log to hold want.
func waitLog(t *testing.T, m *Manager, id, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := m.ReadLog(context.Background(), id, 0, 0)
		if err == nil && strings.Contains(c.Data, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s: log %q (%v) lacks %q", id, c.Data, err, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestJobManagerCountQueueAndRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	prog := writeExe(t, dir, "sleep.sh", "echo \"hello $1\"\nexec sleep \"$1\"\n")
	svc := &Service{Name: "s", Count: 1, Cmd: []string{prog, "${secs}"},
		Params: map[string]*Param{"secs": {Type: TypeNumber, Default: json.RawMessage("0")}}}
	st := openStore(t, dir)
	pub := &memPub{}
	m := newManager(t, dir, st, []*Service{svc}, pub)
	m.Start()
	a, err := m.Submit(ctx, "s", "", map[string]json.RawMessage{"secs": json.RawMessage("30")})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := m.Submit(ctx, "s", "", nil)
	c, _ := m.Submit(ctx, "s", "", nil)
	waitState(t, m, a.ID, StateRunning)
	if q := m.Queue(); len(q) != 2 || q[0].ID != b.ID || q[1].ID != c.ID || q[0].QueuePosition != 1 {
		t.Fatalf("queue %+v", q)
	}
	if _, err := m.Move(c.ID, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, a.ID); !errors.Is(err, ErrNotFinished) {
		t.Fatalf("remove running: %v", err)
	}
	// A "crash": a second manager over the same store, as after SIGKILL.
	m2 := newManager(t, dir, st, []*Service{svc}, pub)
	ga, _ := m2.Get(ctx, a.ID)
	if ga.State != StateInterrupted {
		t.Fatalf("running job after restart: %+v", ga)
	}
	if q := m2.Queue(); len(q) != 2 || q[0].ID != c.ID || q[1].ID != b.ID {
		t.Fatalf("queue after restart %+v", q)
	}
	// Stop the first manager's job for real before going on.
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	m2.Start()
	waitState(t, m2, b.ID, StateSucceeded)
	gc := waitState(t, m2, c.ID, StateSucceeded)
	if gc.ExitStatus == nil || *gc.ExitStatus != 0 {
		t.Fatalf("c: %+v", gc)
	}
	ch, err := m2.ReadLog(ctx, c.ID, 0, 0)
	if err != nil || ch.Data != "hello 0\n" || !ch.Complete {
		t.Fatalf("log %+v %v", ch, err)
	}
	ch, _ = m2.ReadLog(ctx, c.ID, 2, 3)
	if ch.Data != "llo" || ch.NextOffset != 5 || ch.Complete {
		t.Fatalf("partial log %+v", ch)
	}
	if got := strings.Join(pub.states(c.ID), ","); got != "queued,starting,running,succeeded" {
		t.Fatalf("c states %s", got)
	}
	if err := m2.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestJobWatchdogMarksVanished(t *testing.T) {
	ctx := context.Background()
	m := shManager(t, "exec sleep 30\n", 1)
	var mu sync.Mutex
	gone := false
	m.alive = func(pid int) bool { mu.Lock(); defer mu.Unlock(); return !gone && proc.Alive(pid) }
	m.Start()
	j, _ := m.Submit(ctx, "s", "", nil)
	waitState(t, m, j.ID, StateRunning)
	// The process is still there, but the watchdog is told it is gone,
	// as when a process disappears without the runner hearing of it.
	mu.Lock()
	gone = true
	mu.Unlock()
	got := waitState(t, m, j.ID, StateFailed)
	if !strings.HasPrefix(got.Reason, "vanished") {
		t.Fatalf("reason %q", got.Reason)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestJobStopQueuedAndRunning(t *testing.T) {
	ctx := context.Background()
	m := shManager(t, "trap 'echo no' TERM\necho ready\nwhile :; do sleep 0.05; done\n", 1)
	m.Start()
	a, _ := m.Submit(ctx, "s", "", nil)
	b, _ := m.Submit(ctx, "s", "", nil)
	waitState(t, m, a.ID, StateRunning)
	waitLog(t, m, a.ID, "ready\n") // SIGTERM is trapped from now on
	gb, err := m.Stop(ctx, b.ID, "tester")
	if err != nil || gb.State != StateStopped {
		t.Fatalf("stop queued: %+v %v", gb, err)
	}
	start := time.Now()
	ga, err := m.Stop(ctx, a.ID, "tester")
	if err != nil || ga.State != StateStopped || ga.Reason != "stopped by tester" {
		t.Fatalf("stop running: %+v %v", ga, err)
	}
	if d := time.Since(start); d < 400*time.Millisecond || d > 5*time.Second {
		t.Fatalf("SIGTERM-ignoring job stopped after %s (grace 500ms)", d)
	}
	if proc.Alive(ga.PID) {
		t.Fatal("job process survived")
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestJobQueueLimitAndUnknownService(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	svc := shService(t, dir, "exit 0\n", 1)
	st := openStore(t, dir)
	m, err := New(ctx, Config{Services: []*Service{svc}, Store: st, Dir: filepath.Join(dir, "jobs"), MaxQueued: 1}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	// Not started: everything stays queued.
	if _, err := m.Submit(ctx, "s", "", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(ctx, "s", "", nil); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("second submit: %v", err)
	}
	if _, err := m.Submit(ctx, "nope", "", nil); !errors.Is(err, ErrUnknownService) {
		t.Fatalf("unknown service: %v", err)
	}
	if _, err := m.Get(ctx, "job-99"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown job: %v", err)
	}
	if _, err := m.Move("job-99", 1); !errors.Is(err, ErrNotQueued) {
		t.Fatalf("move unknown: %v", err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Submit(ctx, "s", "", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("submit after close: %v", err)
	}
}

// TestJobEnvironmentPolicy: a job gets the variables the operator's
// policy passes, its own WSGW_* variables, and nothing else of the
// gateway's environment.
func TestJobEnvironmentPolicy(t *testing.T) {
	t.Setenv("WSGWTEST_PV_PLUGIN_PATH", "/opt/pv")
	t.Setenv("WSGWTEST_OTHER", "not for jobs")
	ctx := context.Background()
	m := shManager(t, "echo \"pv=$WSGWTEST_PV_PLUGIN_PATH other=$WSGWTEST_OTHER id=$WSGW_JOB_ID\"\n", 1)
	m.cfg.EnvPolicy = proc.Policy{Pass: []string{"WSGWTEST_PV_*"}}
	m.Start()
	defer m.Close(ctx)
	j, err := m.Submit(ctx, "s", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, m, j.ID, StateSucceeded)
	c, err := m.ReadLog(ctx, j.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := "pv=/opt/pv other= id=" + j.ID + "\n"; c.Data != want {
		t.Errorf("the job printed %q, want %q", c.Data, want)
	}
}
