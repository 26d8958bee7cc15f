package integration

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"wsgateway/rfb"
)

// clusterConfig is a services config with one Slurm service on the test
// cluster; slurm is merged into its "slurm" object.
func clusterConfig(t *testing.T, dir, name string, count int, slurm map[string]any) string {
	t.Helper()
	s := map[string]any{"poll_seconds": 0.2}
	for k, v := range slurm {
		s[k] = v
	}
	return writeConfig(t, dir, map[string]any{name: map[string]any{
		"kind": "slurm", "count": count, "slurm": s,
		"options":        map[string]any{"geometry": "640x480", "vnc_interface": "127.0.0.1", "reconnect_grace": 2},
		"client_options": map[string]any{"geometry": "^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$"},
	}})
}

// rfbNoneHandshake speaks a VNC client's side through the websocket and
// checks that the gateway offers exactly security type None; it returns
// the desktop's size from ServerInit.
func rfbNoneHandshake(t *testing.T, ws *websocket.Conn) (w, h int) {
	t.Helper()
	v, err := readN(ws, 12, 60*time.Second)
	if err != nil {
		t.Fatalf("reading the RFB version: %v", err)
	}
	if string(v) != "RFB 003.008\n" {
		t.Fatalf("RFB version %q", v)
	}
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte("RFB 003.008\n")); err != nil {
		t.Fatal(err)
	}
	types, err := readN(ws, 2, 10*time.Second)
	if err != nil {
		t.Fatalf("reading the security types: %v", err)
	}
	if !bytes.Equal(types, []byte{1, rfb.SecNone}) {
		t.Fatalf("security types offered to the client: %v, want only None [1 1]", types)
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte{rfb.SecNone})
	res, err := readN(ws, 4, 10*time.Second)
	if err != nil || !bytes.Equal(res, []byte{0, 0, 0, 0}) {
		t.Fatalf("security result %v, %v", res, err)
	}
	ws.WriteMessage(websocket.BinaryMessage, []byte{1}) // ClientInit
	si, err := readN(ws, 24, 10*time.Second)
	if err != nil {
		t.Fatalf("ServerInit: %v", err)
	}
	return int(binary.BigEndian.Uint16(si[0:2])), int(binary.BigEndian.Uint16(si[2:4]))
}

// clusterOf returns the "cluster" object /v1/status shows for token.
func clusterOf(t *testing.T, g *gateway, token string) map[string]any {
	t.Helper()
	for _, r := range g.status(t)["reservations"].([]any) {
		m := r.(map[string]any)
		if m["token"] == token {
			c, _ := m["cluster"].(map[string]any)
			return c
		}
	}
	return nil
}

// waitCluster polls the status until token's cluster object satisfies ok.
func waitCluster(t *testing.T, g *gateway, token, what string, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	var c map[string]any
	waitFor(t, what, 60*time.Second, func() bool {
		c = clusterOf(t, g, token)
		return c != nil && ok(c)
	})
	return c
}

func jobIDOf(c map[string]any) string { s, _ := c["job_id"].(string); return s }

// closeReason reads until the websocket closes and returns the close.
func closeReason(t *testing.T, ws *websocket.Conn, timeout time.Duration) *websocket.CloseError {
	t.Helper()
	_, ce, err := readUntilClose(ws, timeout)
	if ce == nil {
		t.Fatalf("the websocket did not close with a close frame: %v", err)
	}
	return ce
}

// TestSlurm runs the cluster-session tests against one shared one-node
// Slurm cluster.
func TestSlurm(t *testing.T) {
	t.Parallel()
	needComponent(t, "Xvnc", "tigervnc-standalone-server")
	cl := useSlurm(t)
	t.Run("Flow", func(t *testing.T) { slurmFlow(t, cl) })
	t.Run("CannotStart", func(t *testing.T) { slurmCannotStart(t, cl) })
	t.Run("ScancelOutside", func(t *testing.T) { slurmScancelOutside(t, cl) })
	t.Run("FullPartition", func(t *testing.T) { slurmFullPartition(t, cl) })
	t.Run("Restart", func(t *testing.T) { slurmRestart(t, cl) })
	t.Run("GracefulRestart", func(t *testing.T) { slurmGracefulRestart(t, cl) })
	t.Run("ShippedConfigInChromium", func(t *testing.T) { slurmBrowser(t, cl) })
}

// reserve → websocket → sbatch → running → RFB with only None offered →
// disconnect → job cancelled, slot free. The password is nowhere but in
// the session directory's 0600 file.
func slurmFlow(t *testing.T, cl *slurmCluster) {
	dir := t.TempDir()
	g := startGateway(t, "--remote_session_config", clusterConfig(t, dir, "Cluster Desktop", 2, nil))
	tok := g.reserve(t, "Cluster Desktop", "geometry=800x600")["token"].(string)
	started := time.Now()
	ws, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), nil)
	if ws == nil {
		t.Fatalf("websocket refused: %d %v", code, body)
	}
	defer ws.Close()
	w, h := rfbNoneHandshake(t, ws)
	if w != 800 || h != 600 {
		t.Fatalf("desktop is %dx%d, want the reservation's 800x600", w, h)
	}
	t.Logf("reserve to ServerInit through Slurm: %v", time.Since(started).Round(time.Millisecond))
	c := clusterOf(t, g, tok)
	id := jobIDOf(c)
	if id == "" || c["job_state"] != "RUNNING" {
		t.Fatalf("status cluster object %v, want a running job", c)
	}
	if st := cl.jobState(id); st != "RUNNING" {
		t.Fatalf("squeue says job %s is %q", id, st)
	}

	// The VNC server on the node refuses a client without the password.
	ep, _ := c["endpoint"].(string)
	if ep == "" {
		t.Fatalf("no endpoint in %v", c)
	}
	direct, err := net.DialTimeout("tcp", ep, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = direct.SetDeadline(time.Now().Add(10 * time.Second))
	greet := make([]byte, 12)
	io.ReadFull(direct, greet)
	direct.Write([]byte("RFB 003.008\n"))
	n := make([]byte, 1)
	io.ReadFull(direct, n)
	types := make([]byte, n[0])
	io.ReadFull(direct, types)
	if !bytes.Equal(types, []byte{rfb.SecVncAuth}) {
		t.Fatalf("the node's VNC server offers %v, want only VncAuth [2]", types)
	}
	direct.Write([]byte{rfb.SecNone})
	rest, _ := io.ReadAll(direct)
	if len(rest) >= 4 && binary.BigEndian.Uint32(rest[:4]) == 0 {
		t.Fatal("the node's VNC server accepted a client without the password")
	}
	direct.Close()

	// The password: only in the session directory's 0600 file.
	sdir := sessionDirOf(g, tok)
	pwFile := filepath.Join(sdir, "vnc.passwd")
	st, err := os.Stat(pwFile)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("password file mode %04o", st.Mode().Perm())
	}
	pw, err := rfb.ReadPasswordFile(pwFile)
	if err != nil || len(pw) != 8 {
		t.Fatalf("password %q, %v", pw, err)
	}
	_, statusBody := getJSON(t, g.httpURL("/v1/status"))
	sb, _ := json.Marshal(statusBody)
	for what, text := range map[string]string{"the status": string(sb), "the gateway's log": g.log.String(), "the job's output": readFile(filepath.Join(sdir, "job.out"))} {
		if strings.Contains(text, string(pw)) {
			t.Fatalf("the VNC password appears in %s", what)
		}
	}
	for _, pid := range processesWithArg("Xvnc") {
		if cmd := cmdlineOf(pid); strings.Contains(cmd, string(pw)) {
			t.Fatalf("the VNC password is in a command line: %s", cmd)
		}
		if env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); bytes.Contains(env, pw) {
			t.Fatalf("the VNC password is in Xvnc's environment")
		}
	}

	// Disconnect: the job is cancelled and the slot is free.
	ws.Close()
	waitFor(t, "the job to leave the queue", 60*time.Second, func() bool { return !cl.jobActive(id) })
	waitFor(t, "the slot to be free", 30*time.Second, func() bool { return g.free(t, "Cluster Desktop") == 2 })
	if q := cl.queue(); len(q) != 0 {
		t.Fatalf("squeue is not empty: %v", q)
	}
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func cmdlineOf(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
}

// A job that cannot start closes the websocket with 1011 and Slurm's
// reason, and gives the slot back; nothing stays in the queue.
func slurmCannotStart(t *testing.T, cl *slurmCluster) {
	dir := t.TempDir()
	failing := writeScript(t, dir, "fails.sh", "echo 'no desktop on this node' >&2\nexit 3\n")
	for _, tc := range []struct {
		name  string
		slurm map[string]any
		want  string
	}{
		{"sbatch refuses", map[string]any{"constraint": "nosuchfeature"}, "Invalid feature specification"},
		{"partition limit", map[string]any{"partition": "short", "time": "02:00:00"}, "cannot start: Slurm says Partition"},
		{"bad partition", map[string]any{"partition": "nosuchpartition"}, "Invalid partition name"},
		{"node script fails", map[string]any{"node_script": failing}, "no desktop on this node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sub := t.TempDir()
			g := startGateway(t, "--remote_session_config", clusterConfig(t, sub, "Cluster Desktop", 1, tc.slurm))
			tok := g.reserve(t, "Cluster Desktop", "")["token"].(string)
			ws, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), nil)
			if ws == nil {
				t.Fatalf("websocket refused: %d %v", code, body)
			}
			defer ws.Close()
			ce := closeReason(t, ws, 60*time.Second)
			if ce.Code != websocket.CloseInternalServerErr || !strings.Contains(ce.Text, tc.want) {
				t.Fatalf("closed with %d %q, want 1011 with %q", ce.Code, ce.Text, tc.want)
			}
			waitFor(t, "the slot back", 30*time.Second, func() bool { return g.free(t, "Cluster Desktop") == 1 })
			waitFor(t, "an empty queue", 30*time.Second, func() bool { return len(cl.queue()) == 0 })
		})
	}
}

// scancel by someone else closes the websocket with 1011 and a reason
// saying so; the slot comes back.
func slurmScancelOutside(t *testing.T, cl *slurmCluster) {
	dir := t.TempDir()
	g := startGateway(t, "--remote_session_config", clusterConfig(t, dir, "Cluster Desktop", 1, nil))
	tok := g.reserve(t, "Cluster Desktop", "")["token"].(string)
	ws, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), nil)
	if ws == nil {
		t.Fatalf("websocket refused: %d %v", code, body)
	}
	defer ws.Close()
	rfbNoneHandshake(t, ws)
	id := jobIDOf(clusterOf(t, g, tok))
	if out, err := cl.cmd("scancel", id).CombinedOutput(); err != nil {
		t.Fatalf("scancel: %v %s", err, out)
	}
	ce := closeReason(t, ws, 60*time.Second)
	if ce.Code != websocket.CloseInternalServerErr || !strings.Contains(ce.Text, "cancelled outside the gateway") {
		t.Fatalf("closed with %d %q, want 1011 saying the job was cancelled outside the gateway", ce.Code, ce.Text)
	}
	waitFor(t, "the slot back", 30*time.Second, func() bool { return g.free(t, "Cluster Desktop") == 1 })
}

// A full partition: reservations are granted up to the count, their jobs
// wait in Slurm, and the status and session.state events show Slurm's
// reason and the position; when the partition frees, they run.
func slurmFullPartition(t *testing.T, cl *slurmCluster) {
	out, err := cl.cmd("sbatch", "--parsable", "--exclusive", "--output=/dev/null", "--job-name=other-user", "--wrap", "sleep 600").CombinedOutput()
	if err != nil {
		t.Fatalf("filling the partition: %v %s", err, out)
	}
	blocker := strings.TrimSpace(string(out))
	defer cl.cmd("scancel", blocker).Run()
	waitFor(t, "the blocking job to run", 30*time.Second, func() bool { return cl.jobState(blocker) == "RUNNING" })

	dir := t.TempDir()
	g := startGateway(t, "--remote_session_config", clusterConfig(t, dir, "Cluster Desktop", 2, nil))
	rpc := dialRPC(t, g, "")
	rpc.must("events.subscribe", map[string]any{"topics": []string{"session.state"}}, nil)
	var toks []string
	var wss []*websocket.Conn
	for i := 0; i < 2; i++ {
		tok := g.reserve(t, "Cluster Desktop", "")["token"].(string)
		ws, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), nil)
		if ws == nil {
			t.Fatalf("websocket refused: %d %v", code, body)
		}
		defer ws.Close()
		toks = append(toks, tok)
		wss = append(wss, ws)
	}
	// The two jobs wait behind the blocker, in the order they were
	// submitted (the websockets' sbatch calls may run in either order):
	// the older job is first.
	var cs []map[string]any
	for i, tok := range toks {
		c := waitCluster(t, g, tok, "a pending job with a position", func(c map[string]any) bool {
			return c["job_state"] == "PENDING" && c["position"] != nil && c["reason"] != ""
		})
		if r := c["reason"].(string); r != "Resources" && r != "Priority" {
			t.Fatalf("session %d: reason %q, want Resources or Priority", i, r)
		}
		cs = append(cs, c)
	}
	first, second := cs[0], cs[1]
	id0, _ := strconv.Atoi(jobIDOf(cs[0]))
	id1, _ := strconv.Atoi(jobIDOf(cs[1]))
	if id1 < id0 {
		first, second = cs[1], cs[0]
	}
	if int(first["position"].(float64)) != 1 || int(second["position"].(float64)) != 2 {
		t.Fatalf("positions %v and %v, want 1 for the older job and 2 for the newer", first, second)
	}
	ev := rpc.waitEvent("a session.state event with the job's reason and position", 30*time.Second, func(e rpcEvent) bool {
		return e.Data["token_prefix"] == toks[0][:8] && e.Data["job_state"] == "PENDING" && e.Data["position"] != nil
	})
	if ev.Data["state"] != "starting" || ev.Data["reason"] == "" {
		t.Fatalf("pending event %v", ev.Data)
	}
	// The partition frees: both run, on the websockets opened while the
	// jobs waited.
	cl.cmd("scancel", blocker).Run()
	for i, ws := range wss {
		if w, h := rfbNoneHandshake(t, ws); w != 640 || h != 480 {
			t.Fatalf("session %d: desktop %dx%d", i, w, h)
		}
	}
	for _, tok := range toks {
		waitCluster(t, g, tok, "the job to run", func(c map[string]any) bool { return c["job_state"] == "RUNNING" })
	}
	for _, ws := range wss {
		ws.Close()
	}
	waitFor(t, "every job to leave the queue", 60*time.Second, func() bool { return len(cl.queue()) == 0 })
	waitFor(t, "the slots back", 30*time.Second, func() bool { return g.free(t, "Cluster Desktop") == 2 })
}

// The gateway is SIGKILLed with a running cluster session, a session
// whose job then ends, and one whose job is still pending; after the
// restart the first token reconnects to the same desktop, the second is
// cleaned up, and the pending job is cancelled.
func slurmRestart(t *testing.T, cl *slurmCluster) {
	dir := t.TempDir()
	sessions := filepath.Join(dir, "sessions")
	db := filepath.Join(dir, "state.db")
	cfg := clusterConfig(t, dir, "Cluster Desktop", 3, nil)
	args := []string{"--verbose", "2", "--bind_address", "127.0.0.1", "--http_port", "0",
		"--remote_session_config", cfg, "--state_db", db, "--session_dir", sessions, "0"}
	start := func() *gateway {
		return startGatewayArgs(t, args...)
	}
	g := start()
	tokA := g.reserve(t, "Cluster Desktop", "")["token"].(string)
	tokB := g.reserve(t, "Cluster Desktop", "")["token"].(string)
	wsA, _, _ := dialWS(t, g.wsURL("/websockify?token="+tokA), nil)
	wsB, _, _ := dialWS(t, g.wsURL("/websockify?token="+tokB), nil)
	if wsA == nil || wsB == nil {
		t.Fatal("websocket refused")
	}
	rfbNoneHandshake(t, wsA)
	rfbNoneHandshake(t, wsB)
	idA := jobIDOf(clusterOf(t, g, tokA))
	idB := jobIDOf(clusterOf(t, g, tokB))
	// A third session whose job waits behind a job holding the node.
	out, err := cl.cmd("sbatch", "--parsable", "--exclusive", "--output=/dev/null", "--wrap", "sleep 600").CombinedOutput()
	if err != nil {
		t.Fatalf("sbatch: %v %s", err, out)
	}
	blocker := strings.TrimSpace(string(out))
	defer cl.cmd("scancel", blocker).Run()
	tokC := g.reserve(t, "Cluster Desktop", "")["token"].(string)
	wsC, _, _ := dialWS(t, g.wsURL("/websockify?token="+tokC), nil)
	if wsC == nil {
		t.Fatal("websocket refused")
	}
	idC := jobIDOf(waitCluster(t, g, tokC, "a pending job", func(c map[string]any) bool { return c["job_state"] == "PENDING" }))

	g.cmd.Process.Signal(syscall.SIGKILL)
	<-g.exited
	wsA.Close()
	wsB.Close()
	wsC.Close()
	if cl.jobState(idA) != "RUNNING" || cl.jobState(idB) != "RUNNING" {
		t.Fatalf("the jobs did not outlive the gateway: %s %s", cl.jobState(idA), cl.jobState(idB))
	}
	// B's job ends while the gateway is down.
	cl.cmd("scancel", idB).Run()
	waitFor(t, "B's job to end", 30*time.Second, func() bool { return !cl.jobActive(idB) })

	g2 := start()
	waitFor(t, "the pending job of the lost session to be cancelled", 30*time.Second, func() bool { return !cl.jobActive(idC) })
	ws, code, body := dialWS(t, g2.wsURL("/websockify?token="+tokA), nil)
	if ws == nil {
		t.Fatalf("the running session's token after the restart: %d %v", code, body)
	}
	defer ws.Close()
	if w, h := rfbNoneHandshake(t, ws); w != 640 || h != 480 {
		t.Fatalf("reconnected desktop is %dx%d", w, h)
	}
	if id := jobIDOf(clusterOf(t, g2, tokA)); id != idA {
		t.Fatalf("reconnected to job %q, want the same job %s", id, idA)
	}
	if _, code, _ := dialWS(t, g2.wsURL("/websockify?token="+tokB), nil); code != 403 {
		t.Fatalf("the token of the session whose job ended: %d, want 403", code)
	}
	if _, code, _ := dialWS(t, g2.wsURL("/websockify?token="+tokC), nil); code != 403 {
		t.Fatalf("the token of the lost pending session: %d, want 403", code)
	}
	cl.cmd("scancel", blocker).Run()
	ws.Close()
	waitFor(t, "A's job to be cancelled", 60*time.Second, func() bool { return !cl.jobActive(idA) })
	waitFor(t, "all slots back", 30*time.Second, func() bool { return g2.free(t, "Cluster Desktop") == 3 })
	waitFor(t, "an empty queue", 30*time.Second, func() bool { return len(cl.queue()) == 0 })
}

// The gateway is stopped with SIGTERM, as an operator restarting it:
// with a state database the running cluster job is left running, and
// after the restart its token reconnects to the same desktop. Without
// one, the stop cancels the job (nothing could take it back).
func slurmGracefulRestart(t *testing.T, cl *slurmCluster) {
	dir := t.TempDir()
	sessions := filepath.Join(dir, "sessions")
	db := filepath.Join(dir, "state.db")
	cfg := clusterConfig(t, dir, "Cluster Desktop", 1, nil)
	args := []string{"--verbose", "2", "--bind_address", "127.0.0.1", "--http_port", "0",
		"--remote_session_config", cfg, "--state_db", db, "--session_dir", sessions, "0"}
	g := startGatewayArgs(t, args...)
	tok := g.reserve(t, "Cluster Desktop", "")["token"].(string)
	ws, code, body := dialWS(t, g.wsURL("/websockify?token="+tok), nil)
	if ws == nil {
		t.Fatalf("websocket refused: %d %v", code, body)
	}
	rfbNoneHandshake(t, ws)
	id := jobIDOf(clusterOf(t, g, tok))
	g.stop()
	ws.Close()
	if err := g.exitErr; err != nil {
		t.Fatalf("the gateway's stop: %v", err)
	}
	if st := cl.jobState(id); st != "RUNNING" {
		t.Fatalf("a graceful stop with a state database left the job %s, want RUNNING", st)
	}
	g2 := startGatewayArgs(t, args...)
	ws, code, body = dialWS(t, g2.wsURL("/websockify?token="+tok), nil)
	if ws == nil {
		t.Fatalf("the token after a graceful restart: %d %v", code, body)
	}
	rfbNoneHandshake(t, ws)
	if got := jobIDOf(clusterOf(t, g2, tok)); got != id {
		t.Fatalf("reconnected to job %q, want %s", got, id)
	}
	ws.Close()
	if code, m := getJSON(t, g2.httpURL("/v1/release/"+tok)); code != 200 {
		t.Fatalf("release: %d %v", code, m)
	}
	waitFor(t, "the job to be cancelled", 60*time.Second, func() bool { return !cl.jobActive(id) })

	// Without a state database a stop cancels the job.
	noDB := []string{"--verbose", "2", "--bind_address", "127.0.0.1", "--http_port", "0",
		"--remote_session_config", cfg, "--session_dir", filepath.Join(dir, "s2"), "0"}
	g3 := startGatewayArgs(t, noDB...)
	tok = g3.reserve(t, "Cluster Desktop", "")["token"].(string)
	ws, code, body = dialWS(t, g3.wsURL("/websockify?token="+tok), nil)
	if ws == nil {
		t.Fatalf("websocket refused: %d %v", code, body)
	}
	rfbNoneHandshake(t, ws)
	id = jobIDOf(clusterOf(t, g3, tok))
	g3.stop()
	ws.Close()
	waitFor(t, "the job of a gateway without a state database to be cancelled", 60*time.Second, func() bool { return !cl.jobActive(id) })
	waitFor(t, "an empty queue", 30*time.Second, func() bool { return len(cl.queue()) == 0 })
}

// startGatewayArgs runs the binary with exactly args (no private session
// directory of its own) and waits until it listens.
func startGatewayArgs(t *testing.T, args ...string) *gateway {
	t.Helper()
	cmd := exec.Command(gwBin, args...)
	cmd.Env = os.Environ()
	g := spawn(t, cmd, t.TempDir())
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range g.logLines() {
			if l["message"] == "listening" {
				switch l["listener"] {
				case "websocket":
					g.wsAddr = l["address"].(string)
				case "http":
					g.httpAddr = l["address"].(string)
				}
			}
		}
		if g.wsAddr != "" && g.httpAddr != "" {
			return g
		}
		select {
		case <-g.exited:
			t.Fatalf("gateway exited early: %v\n%s", g.exitErr, g.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("gateway did not start listening:\n%s", g.log.String())
	return nil
}

// noVNC in Chromium, through the viewer, on the shipped
// scripts/slurm/services.json unchanged: while the partition is full the
// viewer says it waits for the cluster with Slurm's reason and its
// position; then it shows the cluster desktop without asking for a
// password.
func slurmBrowser(t *testing.T, cl *slurmCluster) {
	needComponent(t, "openbox", "openbox")
	needComponent(t, "xterm", "xterm")
	out, err := cl.cmd("sbatch", "--parsable", "--exclusive", "--output=/dev/null", "--wrap", "sleep 600").CombinedOutput()
	if err != nil {
		t.Fatalf("filling the partition: %v %s", err, out)
	}
	blocker := strings.TrimSpace(string(out))
	defer cl.cmd("scancel", blocker).Run()
	waitFor(t, "the blocking job to run", 30*time.Second, func() bool { return cl.jobState(blocker) == "RUNNING" })

	g := startGateway(t, "--remote_session_config", filepath.Join(repoDir, "scripts", "slurm", "services.json"),
		"--novnc_directory", npmNoVNC(t))
	b := newBrowser(t)
	v := b.newTab()
	v.navigate(g.httpURL("/wsgw/viewer.html#service=Cluster%20Desktop&geometry=1024x768"))
	waitViewerState(t, v, "waiting", 60*time.Second)
	v.waitJS("the viewer to show Slurm's reason and the position", 30*time.Second,
		`/^waiting for the cluster: (Resources|Priority), position 1$/.test(document.getElementById('status').textContent)`,
		`document.getElementById('status').textContent`)
	v.saveScreenshot("cluster-waiting")
	cl.cmd("scancel", blocker).Run()
	waitViewerState(t, v, "connected", 90*time.Second)
	checkDesktop(t, v, "#screen", 1024, 768)
	var asked bool
	v.mustEval(`!!document.querySelector('.noVNC_credentials_dlg, input[type=password]')`, &asked)
	if asked {
		t.Fatal("the viewer asked for a password")
	}
	var tok string
	v.mustEval(`new URLSearchParams(location.hash.slice(1)).get('token') || ''`, &tok)
	id := jobIDOf(clusterOf(t, g, tok))
	if id == "" || cl.jobState(id) != "RUNNING" {
		t.Fatalf("the viewer's session has no running job (%q)", id)
	}
	if code, m := getJSON(t, g.httpURL("/v1/release/"+tok)); code != 200 {
		t.Fatalf("release: %d %v", code, m)
	}
	waitViewerState(t, v, "disconnected", 30*time.Second)
	waitFor(t, "the job to leave the queue", 60*time.Second, func() bool { return !cl.jobActive(id) })
}
