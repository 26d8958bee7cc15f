package integration

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Faults: the backend dies mid-stream, the client vanishes, a script
// hangs or floods, the log directory goes away, the gateway is killed.
// Each time the slot is freed, the user is told why, what was already
// delivered or logged stays, and the gateway keeps serving others.

// ftOther opens a session that must survive the fault under test; check
// it afterwards with ftStillServed.
func ftOther(t *testing.T, g *gateway, service string) *websocket.Conn {
	t.Helper()
	tok := g.reserve(t, service, "")["token"].(string)
	ws, _ := connectToken(t, g, tok)
	t.Cleanup(func() { ws.Close() })
	roundTrip(t, ws, 16<<10)
	return ws
}

func ftStillServed(t *testing.T, ws *websocket.Conn) {
	t.Helper()
	roundTrip(t, ws, 256<<10)
}

// ftSessionPID is the start process (the supervisor) of the session whose
// token starts with prefix, from /v1/status.
func ftSessionPID(t *testing.T, g *gateway, tok string) int {
	t.Helper()
	for _, s := range g.status(t)["sessions"].([]any) {
		m := s.(map[string]any)
		if strings.HasPrefix(tok, m["token_prefix"].(string)) {
			if pid, ok := m["pid"].(float64); ok {
				return int(pid)
			}
		}
	}
	t.Fatalf("no session for %s… in the status", tok[:8])
	return 0
}

func ftSessionGone(t *testing.T, g *gateway, tok string) bool {
	t.Helper()
	for _, s := range g.status(t)["sessions"].([]any) {
		if strings.HasPrefix(tok, s.(map[string]any)["token_prefix"].(string)) {
			return false
		}
	}
	return true
}

// TestFaultBasicTargetDiesMidStream: in basic mode, a target that ends
// cleanly has everything it sent delivered, then 1000 "Target closed"; a
// target that resets gives 1011 with a reason; other tunnels go on.
func TestFaultBasicTargetDiesMidStream(t *testing.T) {
	t.Parallel()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB
	g, _ := basicGateway(t, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		cmd, err := br.ReadString('\n')
		if err != nil {
			return
		}
		switch strings.TrimSpace(cmd) {
		case "eof":
			c.Write(payload)
			// Close right away: what was sent must still arrive.
		case "reset":
			c.Write([]byte("before the reset\n"))
			br.ReadString('\n') // the client has it
			c.(*net.TCPConn).SetLinger(0)
		default:
			io.Copy(c, io.MultiReader(strings.NewReader(cmd), br))
		}
	})
	other, _, _ := dialWS(t, g.wsURL("/"), nil)
	defer other.Close()
	other.WriteMessage(websocket.BinaryMessage, []byte("echo\n"))
	if _, err := readN(other, 5, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	ws, _, _ := dialWS(t, g.wsURL("/"), nil)
	ws.WriteMessage(websocket.BinaryMessage, []byte("eof\n"))
	got, ce, err := readUntilClose(ws, 20*time.Second)
	if err != nil || ce.Code != websocket.CloseNormalClosure || ce.Text != "Target closed" {
		t.Fatalf("clean end: close %v %v", ce, err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("clean end: %d of %d bytes delivered before the close", len(got), len(payload))
	}
	ws.Close()

	ws, _, _ = dialWS(t, g.wsURL("/"), nil)
	ws.WriteMessage(websocket.BinaryMessage, []byte("reset\n"))
	if line, _, err := readLine(ws, 10*time.Second); err != nil || string(line) != "before the reset" {
		t.Fatalf("before the reset: %q %v", line, err)
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte("go\n"))
	_, ce, err = readUntilClose(ws, 20*time.Second)
	if err != nil || ce.Text == "" {
		t.Fatalf("reset: close %v %v, want a close with a reason", ce, err)
	}
	t.Logf("a reset target: %d %q", ce.Code, ce.Text)
	ws.Close()
	t.Run("a reset is not a clean end", func(t *testing.T) {
		if ce.Code == websocket.CloseInternalServerErr {
			return
		}
		t.Errorf("a target that reset the connection: %d %q, want 1011", ce.Code, ce.Text)
	})

	other.WriteMessage(websocket.BinaryMessage, []byte("still there\n"))
	if b, err := readN(other, 12, 10*time.Second); err != nil || string(b) != "still there\n" {
		t.Fatalf("the other tunnel: %q %v", b, err)
	}
}

// TestFaultServiceDiesMidStream: a service whose process dies while a
// websocket uses it: the client gets a close with a reason, the bytes the
// service sent before are delivered, the group is gone, the slot is free,
// the session log records the end, and another session goes on.
func TestFaultServiceDiesMidStream(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 3, nil)
	other := ftOther(t, g, "Echo Service")

	// The service's own process is killed (a crash).
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	ws, h := connectToken(t, g, tok)
	roundTrip(t, ws, 64<<10)
	gc := grandchildPID(t, h)
	if err := syscall.Kill(h.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, ce, err := readUntilClose(ws, 20*time.Second)
	if err != nil || ce.Text == "" || (ce.Code != websocket.CloseNormalClosure && ce.Code != websocket.CloseInternalServerErr) {
		t.Fatalf("service killed: close %v %v, want 1000 or 1011 with a reason", ce, err)
	}
	t.Logf("the service crashed: the client got %d %q", ce.Code, ce.Text)
	ws.Close()
	waitFor(t, "the crashed session's slot and grandchild", 20*time.Second, func() bool {
		return ftSessionGone(t, g, tok) && !alive(gc)
	})
	logb, _ := os.ReadFile(filepath.Join(h.SessionDir, "session.log"))
	if !strings.Contains(string(logb), "testsvc listening") || !strings.Contains(string(logb), "stopped") {
		t.Errorf("session log after the crash: %q", logb)
	}
	// The crash is not reported as a normal end: the log says how it ended.
	t.Run("a crash is reported as a failure", func(t *testing.T) {
		if ce.Code == websocket.CloseInternalServerErr {
			return
		}
		t.Errorf("a crashed service ended the websocket with %d %q, want 1011 naming the exit", ce.Code, ce.Text)
	})

	// The start process (the supervisor) is killed: 1011 naming the exit,
	// and what it started is still stopped.
	tok = g.reserve(t, "Echo Service", "")["token"].(string)
	ws, h = connectToken(t, g, tok)
	roundTrip(t, ws, 64<<10)
	gc = grandchildPID(t, h)
	sup := ftSessionPID(t, g, tok)
	if sup == h.PID {
		t.Fatalf("the session's pid %d is the service itself, not its supervisor", sup)
	}
	if err := syscall.Kill(sup, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, ce, err = readUntilClose(ws, 20*time.Second)
	if err != nil || ce.Code != websocket.CloseInternalServerErr || !strings.Contains(ce.Text, "exited") {
		t.Fatalf("start process killed: close %v %v, want 1011 naming the exit", ce, err)
	}
	t.Logf("the start process was killed: the client got %d %q", ce.Code, ce.Text)
	ws.Close()
	waitFor(t, "the service, its grandchild and the slot", 30*time.Second, func() bool {
		return !alive(h.PID) && !alive(gc) && ftSessionGone(t, g, tok)
	})
	ftStillServed(t, other)
	if n := g.free(t, "Echo Service"); n != 2 {
		t.Errorf("free slots %d, want 2", n)
	}
}

// TestFaultClientVanishes: a client that goes without a close frame (FIN,
// RST, or silence with --heartbeat) has its service stopped and its slot
// freed, and the log says the client went away.
func TestFaultClientVanishes(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 4, nil)
	other := ftOther(t, g, "Echo Service")

	for _, how := range []string{"close", "reset"} {
		tok := g.reserve(t, "Echo Service", "")["token"].(string)
		ws, h := connectToken(t, g, tok)
		roundTrip(t, ws, 32<<10)
		gc := grandchildPID(t, h)
		raw := ws.NetConn()
		if how == "reset" {
			raw.(*net.TCPConn).SetLinger(0)
		}
		raw.Close()
		waitFor(t, how+": the service stopped and the slot freed", 20*time.Second, func() bool {
			return !alive(h.PID) && !alive(gc) && ftSessionGone(t, g, tok)
		})
	}
	ftStillServed(t, other)
	if n := g.free(t, "Echo Service"); n != 3 {
		t.Errorf("free slots %d, want 3", n)
	}
	// The log says who went away: the client, without a close frame.
	vanished := 0
	for _, l := range g.logLines() {
		if l["message"] == "tunnel closed" && l["closed_by"] == "client" && l["close_code"] == float64(websocket.CloseAbnormalClosure) {
			vanished++
		}
	}
	if vanished != 2 {
		t.Errorf("%d \"tunnel closed\" lines with close_code 1006 closed by the client, want 2", vanished)
	}

	// A client that stays connected but answers nothing (a half-open
	// connection, a frozen tab) is dropped by the heartbeat.
	g, _ = svcGateway(t, 4, nil, "--heartbeat", "1")
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	w, code, body := hbDialRaw(t, g.wsAddr, "/websockify?token="+tok)
	if w == nil {
		t.Fatalf("refused: %d %s", code, body)
	}
	start := time.Now()
	waitFor(t, "the silent client to be dropped and its slot freed", 15*time.Second, func() bool {
		return strings.Contains(g.log.String(), "did not answer pings") && ftSessionGone(t, g, tok)
	})
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("dropped after %s, before two heartbeats", d)
	}
	hbServesSession(t, g, "Echo Service")
}

// TestFaultClientStopsReading: a client that stays connected but stops
// reading while its target floods it must not stall the gateway: the
// heartbeat still drops it, and reservations elsewhere still expire.
func TestFaultClientStopsReading(t *testing.T) {
	t.Parallel()
	chunk := bytes.Repeat([]byte("flood"), 13107)
	target, _ := tcpServer(t, func(c net.Conn) {
		defer c.Close()
		for {
			c.SetWriteDeadline(time.Now().Add(60 * time.Second))
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
	host, port, _ := net.SplitHostPort(target)
	dir := t.TempDir()
	writeScript(t, dir, "echo.sh", fmt.Sprintf("case \"$1\" in\nstart) exec %s serve ;;\nesac\n", svcBin))
	cfg := writeConfig(t, dir, map[string]any{"Echo Service": map[string]any{"script": "echo.sh", "count": 2, "options": map[string]any{}}})
	g := startGateway(t, "--client_hostname", host, "--client_port", port, "--heartbeat", "1", "--timeout", "2",
		"--remote_session_config", cfg)
	w, code, body := hbDialRaw(t, g.wsAddr, "/")
	if w == nil {
		t.Fatalf("refused: %d %s", code, body)
	}
	// It never reads: the gateway's writes to it soon block.
	time.Sleep(500 * time.Millisecond)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	start := time.Now()
	// The reservation is reclaimed after --timeout 2 s by the same sweep
	// that sends the heartbeats, and the heartbeat drops the client.
	reclaimed, dropped := false, false
	for time.Since(start) < 12*time.Second && !(reclaimed && dropped) {
		_, m := getJSON(t, g.httpURL("/v1/status"))
		reclaimed = !strings.Contains(fmt.Sprint(m["reservations"]), tok[:8])
		dropped = m["tunnels"] == float64(0)
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("after %s: reservation reclaimed %v, non-reading client dropped %v", time.Since(start).Round(100*time.Millisecond), reclaimed, dropped)
	if !reclaimed || !dropped {
		w.c.Close() // unblocks the gateway, so it can stop
		t.Fatalf("a non-reading client stalled the gateway's sweep: reservation reclaimed %v, client dropped %v", reclaimed, dropped)
	}
	hbServesSession(t, g, "Echo Service")
}

// TestFaultScriptHangsBeforeReady: a script that never prints its ready
// line ends with 1011 and a reason after --start_timeout, its process
// group is killed, its slot is free, and others are served meanwhile.
func TestFaultScriptHangsBeforeReady(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeScript(t, dir, "hang.sh", fmt.Sprintf(`case "$1" in
start)
	echo "$$" > "$WSGW_SESSION_DIR/pid"
	echo "hang.sh: waiting for a licence server" >&2
	echo "not a ready line"
	exec %s silent ;;
esac
`, svcBin))
	writeScript(t, dir, "echo.sh", fmt.Sprintf("case \"$1\" in\nstart) exec %s serve ;;\nesac\n", svcBin))
	cfg := writeConfig(t, dir, map[string]any{
		"Hang":         map[string]any{"script": "hang.sh", "count": 1, "options": map[string]any{}},
		"Echo Service": map[string]any{"script": "echo.sh", "count": 2, "options": map[string]any{}},
	})
	g := startGateway(t, "--remote_session_config", cfg, "--start_timeout", "3")
	other := ftOther(t, g, "Echo Service")

	tok := g.reserve(t, "Hang", "")["token"].(string)
	ws, code, body := dialWS(t, g.wsURL("/?token="+tok), nil)
	if ws == nil {
		t.Fatalf("refused: %d %v", code, body)
	}
	start := time.Now()
	// While it hangs, the gateway serves others.
	ftStillServed(t, other)
	if code, _ := getJSON(t, g.httpURL("/v1/status")); code != 200 {
		t.Fatalf("status while a start hangs: %d", code)
	}
	_, ce, err := readUntilClose(ws, 30*time.Second)
	if err != nil || ce.Code != websocket.CloseInternalServerErr || !strings.Contains(ce.Text, "ready line") {
		t.Fatalf("close %v %v, want 1011 about the ready line", ce, err)
	}
	if d := time.Since(start); d < 2*time.Second || d > 15*time.Second {
		t.Errorf("closed after %s with --start_timeout 3", d)
	}
	t.Logf("the client was told: %q", ce.Text)
	ws.Close()
	waitFor(t, "the slot to be free", 20*time.Second, func() bool { return g.free(t, "Hang") == 1 })
	ents, _ := filepath.Glob(filepath.Join(g.dir, "sessions", "Hang-0-*", "pid"))
	if len(ents) != 1 {
		t.Fatalf("session pid files: %v", ents)
	}
	b, _ := os.ReadFile(ents[0])
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	waitFor(t, "the hung script to be killed", 20*time.Second, func() bool { return !alive(pid) })
	logb, _ := os.ReadFile(filepath.Join(filepath.Dir(ents[0]), "session.log"))
	for _, want := range []string{"licence server", "not a ready line", "start failed"} {
		if !strings.Contains(string(logb), want) {
			t.Errorf("session log lacks %q: %q", want, logb)
		}
	}
	ftStillServed(t, other)
}

// ftVmHWM is a process's peak resident memory in bytes.
func ftVmHWM(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmHWM:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// TestFaultScriptFloodsOutput: a script that writes a gigabyte and more
// to stdout and stderr, before and after its ready line: the gateway
// stays responsive with bounded memory, the session works, and the log
// has it all.
func TestFaultScriptFloodsOutput(t *testing.T) {
	t.Parallel()
	const (
		pre    = 64 << 20  // stdout before the ready line, one long line
		errOut = 256 << 20 // stderr
		post   = 1 << 30   // stdout after the ready line
	)
	dir := t.TempDir()
	writeScript(t, dir, "flood.sh", fmt.Sprintf(`case "$1" in
start)
	head -c %d /dev/zero | tr '\0' p
	echo
	head -c %d /dev/zero | tr '\0' e >&2
	%s serve | { IFS= read -r line; printf '%%s\n' "$line"; head -c %d /dev/zero | tr '\0' o; echo; echo FLOOD-DONE; cat; } ;;
esac
`, pre, errOut, svcBin, post))
	writeScript(t, dir, "echo.sh", fmt.Sprintf("case \"$1\" in\nstart) exec %s serve ;;\nesac\n", svcBin))
	cfg := writeConfig(t, dir, map[string]any{
		"Flood":        map[string]any{"script": "flood.sh", "count": 1, "options": map[string]any{}},
		"Echo Service": map[string]any{"script": "echo.sh", "count": 2, "options": map[string]any{}},
	})
	g := startGateway(t, "--remote_session_config", cfg, "--start_timeout", "120", "--verbose", "1")
	other := ftOther(t, g, "Echo Service")
	base := ftVmHWM(t, g.cmd.Process.Pid)

	tok := g.reserve(t, "Flood", "")["token"].(string)
	done := make(chan struct{})
	var slowest time.Duration
	go func() {
		defer close(done)
		// The gateway answers while the flood goes on.
		for {
			select {
			case <-time.After(100 * time.Millisecond):
			case <-g.exited:
				return
			}
			start := time.Now()
			resp, err := insecureClient.Get(g.httpURL("/v1/status"))
			if err != nil {
				return
			}
			resp.Body.Close()
			if d := time.Since(start); d > slowest {
				slowest = d
			}
			if logSize(g, "Flood") >= pre+errOut+post {
				return
			}
		}
	}()
	ws, h := connectToken(t, g, tok)
	roundTrip(t, ws, 256<<10)
	logPath := filepath.Join(h.SessionDir, "session.log")
	waitFor(t, "the flood to be in the session log", 120*time.Second, func() bool {
		b, _ := exec.Command("tail", "-c", "64", logPath).Output()
		return bytes.Contains(b, []byte("FLOOD-DONE"))
	})
	<-done
	roundTrip(t, ws, 256<<10)
	ftStillServed(t, other)
	st, _ := os.Stat(logPath)
	if st.Size() < pre+errOut+post {
		t.Errorf("session log is %d bytes, want at least %d", st.Size(), pre+errOut+post)
	}
	peak := ftVmHWM(t, g.cmd.Process.Pid)
	t.Logf("gateway peak RSS %d MB (before the flood %d MB), slowest status answer %s, log %d MB",
		peak>>20, base>>20, slowest.Round(time.Millisecond), st.Size()>>20)
	if peak > 200<<20 {
		t.Errorf("gateway peak RSS %d MB while a script wrote %d MB", peak>>20, (pre+errOut+post)>>20)
	}
	// A status answer takes milliseconds; a gateway blocked by the flood
	// would stall for most of the flood (tens of seconds). 10 s leaves a
	// busy two-core machine its margin.
	if slowest > 10*time.Second {
		t.Errorf("a status request took %s during the flood", slowest)
	}
	ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
	ws.Close()
	waitFor(t, "the flooding session to stop", 30*time.Second, func() bool { return ftSessionGone(t, g, tok) })
}

// logSize is the size of the first session log of a service.
func logSize(g *gateway, service string) int64 {
	m, _ := filepath.Glob(filepath.Join(g.dir, "sessions", service+"-*", "session.log"))
	if len(m) == 0 {
		return 0
	}
	st, err := os.Stat(m[0])
	if err != nil {
		return 0
	}
	return st.Size()
}

// TestFaultLogDirectoryNotWritable: a session directory root that cannot
// be created stops the start with a message; one that goes away while
// the gateway runs fails each launch with 1011 and a reason (and frees
// the slot) until it is back; a launcher log_dir that goes away fails
// each launch with a JSON error and returns the port; a --log_file that
// cannot be written does not stop the gateway serving.
func TestFaultLogDirectoryNotWritable(t *testing.T) {
	t.Parallel()
	t.Run("session_dir at start", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "a-file")
		os.WriteFile(file, []byte("x"), 0o644)
		cmd := exec.Command(gwBin, "--bind_address", "127.0.0.1", "--http_port", "0", "--session_dir", filepath.Join(file, "sessions"),
			"--remote_session_config", hbEchoConfig(t), "0")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatal("the gateway did not stop")
		}
		if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(stderr.String(), "session") || !strings.Contains(stderr.String(), "not a directory") {
			t.Errorf("exit %d, stderr %q", cmd.ProcessState.ExitCode(), stderr.String())
		}
	})

	t.Run("session_dir while running", func(t *testing.T) {
		g, _ := svcGateway(t, 2, nil)
		other := ftOther(t, g, "Echo Service")
		root := filepath.Join(g.dir, "sessions")
		moved := root + ".moved"
		if err := os.Rename(root, moved); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(root, []byte("not a directory"), 0o644); err != nil {
			t.Fatal(err)
		}
		tok := g.reserve(t, "Echo Service", "")["token"].(string)
		ws, code, body := dialWS(t, g.wsURL("/?token="+tok), nil)
		if ws == nil {
			t.Fatalf("refused: %d %v", code, body)
		}
		_, ce, err := readUntilClose(ws, 20*time.Second)
		if err != nil || ce.Code != websocket.CloseInternalServerErr || !strings.Contains(ce.Text, "session directory") {
			t.Fatalf("close %v %v, want 1011 about the session directory", ce, err)
		}
		t.Logf("the client was told: %q", ce.Text)
		ws.Close()
		waitFor(t, "the slot to be free", 10*time.Second, func() bool { return g.free(t, "Echo Service") == 1 })
		ftStillServed(t, other)
		// Back in place: launches work again, and the old logs are there.
		os.Remove(root)
		if err := os.Rename(moved, root); err != nil {
			t.Fatal(err)
		}
		other.Close()
		waitFor(t, "the other slot to be free", 20*time.Second, func() bool { return g.free(t, "Echo Service") == 2 })
		hbServesSession(t, g, "Echo Service")
	})

	t.Run("launcher log_dir while running", func(t *testing.T) {
		e := lchStart(t, true, 1, nil)
		s := e.launch(`{"application": "wslink"}`)
		id := s["id"].(string)
		e.do("DELETE", "/paraview/"+id, "")
		moved := e.logDir + ".moved"
		if err := os.Rename(e.logDir, moved); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(e.logDir, []byte("not a directory"), 0o644)
		code, m := e.do("POST", "/paraview/", `{"application": "wslink"}`)
		if code < 500 || m["error"] == nil {
			t.Errorf("launch without a log_dir: %d %v", code, m)
		}
		t.Logf("launch without a log_dir: %d %v", code, m["error"])
		os.Remove(e.logDir)
		os.Rename(moved, e.logDir)
		// The only port came back: the next launch gets it.
		s = e.launch(`{"application": "wslink"}`)
		if s["port"] != float64(e.lo) {
			t.Errorf("port %v, want %d", s["port"], e.lo)
		}
		e.do("DELETE", "/paraview/"+s["id"].(string), "")
		if _, err := os.Stat(filepath.Join(e.logDir, id+".txt")); err != nil {
			t.Errorf("the first session's log is gone: %v", err)
		}
	})

	t.Run("log_file not writable", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "a-file")
		os.WriteFile(file, []byte("x"), 0o644)
		httpPort, wsPort := freePort(t), freePort(t)
		cmd := exec.Command(gwBin, "--bind_address", "127.0.0.1", "--http_port", httpPort, "--session_dir", filepath.Join(dir, "sessions"),
			"--remote_session_config", hbEchoConfig(t), "--log_file", filepath.Join(file, "gw.log"), wsPort)
		stderr := &syncBuf{}
		cmd.Stderr, cmd.Stdout = stderr, stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		defer func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-exited
			}
		}()
		g := &gateway{t: t, cmd: cmd, log: stderr, wsAddr: "127.0.0.1:" + wsPort, httpAddr: "127.0.0.1:" + httpPort, exited: exited, dir: dir}
		waitFor(t, "the gateway to answer", 15*time.Second, func() bool {
			select {
			case <-exited:
				t.Fatalf("the gateway exited: %s", stderr.String())
			default:
			}
			resp, err := http.Get(g.httpURL("/v1/status"))
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
		hbServesSession(t, g, "Echo Service")
		if !strings.Contains(stderr.String(), "a-file") {
			t.Logf("nothing on stderr says the log cannot be written: %q", tail(stderr.String(), 500))
			t.Run("says the log cannot be written", func(t *testing.T) {
				t.Errorf("no word on stderr that --log_file cannot be written")
			})
		}
	})
}

// TestFaultGatewayKilledAndRestarted: the gateway is killed with SIGKILL
// and started again on the same ports and session directory: the first
// run's services are gone, its session logs are still on disk, its
// tokens are refused with a reason (without --state_db the state is in
// memory; TestReservationsSurviveSIGKILL covers --state_db), and the new
// run serves.
func TestFaultGatewayKilledAndRestarted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := hbEchoConfig(t)
	sessions := filepath.Join(dir, "sessions")
	httpPort, wsPort := freePort(t), freePort(t)
	args := []string{"--verbose", "2", "--bind_address", "127.0.0.1", "--http_port", httpPort,
		"--remote_session_config", cfg, "--session_dir", sessions, wsPort}

	g1 := startGatewayExact(t, args...)
	tok := g1.reserve(t, "Echo Service", "")["token"].(string)
	ws, h := connectToken(t, g1, tok)
	roundTrip(t, ws, 64<<10)
	sup := ftSessionPID(t, g1, tok)
	gc := grandchildPID(t, h)
	pending := g1.reserve(t, "Echo Service", "")["token"].(string)

	if err := g1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-g1.exited
	// The client sees the connection end (no close frame can be sent by a
	// killed process).
	// A read that merely times out is not that.
	_, ce, err := readUntilClose(ws, 30*time.Second)
	if ne, ok := err.(net.Error); (ok && ne.Timeout()) || (err == nil && (ce == nil || ce.Code != websocket.CloseAbnormalClosure)) {
		t.Errorf("after SIGKILL the client read %v %v, want the connection to end (1006 or a reset)", ce, err)
	}
	ws.Close()
	waitFor(t, "the first run's services to die", 20*time.Second, func() bool {
		return !alive(sup) && !alive(h.PID) && !alive(gc)
	})

	g2 := startGatewayExact(t, args...)
	if g2.httpAddr != g1.httpAddr || g2.wsAddr != g1.wsAddr {
		t.Fatalf("restarted on %s/%s, want %s/%s", g2.httpAddr, g2.wsAddr, g1.httpAddr, g1.wsAddr)
	}
	st := g2.status(t)
	if len(st["sessions"].([]any)) != 0 || len(st["reservations"].([]any)) != 0 {
		t.Errorf("the new run has the old run's state: %v", st)
	}
	for _, old := range []string{tok, pending} {
		_, code, body := dialWS(t, g2.wsURL("/?token="+old), nil)
		if code != http.StatusForbidden || body["error"] == nil {
			t.Errorf("a token from before the restart: %d %v", code, body)
		}
	}
	logb, err := os.ReadFile(filepath.Join(h.SessionDir, "session.log"))
	if err != nil || !strings.Contains(string(logb), "testsvc listening") {
		t.Errorf("the first run's session log: %q %v", logb, err)
	}
	if n := g2.free(t, "Echo Service"); n != 4 {
		t.Errorf("free slots after the restart: %d", n)
	}
	hbServesSession(t, g2, "Echo Service")
}
