package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// startShippedNginx runs Debian's nginx with contrib/nginx/wsgateway.conf
// as shipped, but for its addresses: the replicas' HTTP ports for the
// example upstream servers, free ports of 127.0.0.1 for its listeners,
// and no TLS (the test has no certificate for gateway.example.org). It
// returns the address of the server that was the TLS one.
func startShippedNginx(t *testing.T, gws []*gateway) string {
	t.Helper()
	needComponent(t, "/usr/sbin/nginx", "nginx-light")
	shipped, err := os.ReadFile(filepath.Join(repoDir, "contrib", "nginx", "wsgateway.conf"))
	if err != nil {
		t.Fatal(err)
	}
	conf := string(shipped)
	ups := regexp.MustCompile(`server 10\.0\.0\.1[0-9]:9090`).FindAllString(conf, -1)
	if len(ups) != len(gws) {
		t.Fatalf("the shipped file has %d upstream servers, the test %d replicas", len(ups), len(gws))
	}
	for i, u := range ups {
		conf = strings.Replace(conf, u, "server "+gws[i].httpAddr, 1)
	}
	addr, redirect := freeAddr(t), freeAddr(t)
	for old, repl := range map[string]string{"listen 443 ssl;": "listen " + addr + ";", "listen 80;": "listen " + redirect + ";"} {
		if !strings.Contains(conf, old) {
			t.Fatalf("the shipped file has no %q", old)
		}
		conf = strings.Replace(conf, old, repl, 1)
	}
	var kept []string
	for _, l := range strings.Split(conf, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "ssl_") {
			kept = append(kept, l)
		}
	}
	dir := t.TempDir()
	site := filepath.Join(dir, "wsgateway.conf")
	if err := os.WriteFile(site, []byte(strings.Join(kept, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	runNginx(t, dir, addr, "include "+site+";")
	return addr
}

// joinedElsewhere counts the websockets g joined to another replica's
// session of tok.
func joinedElsewhere(g *gateway, tok string) int {
	n := 0
	for _, l := range g.logLines() {
		if l["message"] == "websocket joined to a session of another replica" && l["token"] == tok[:8] {
			n++
		}
	}
	return n
}

// TestReplicasBehindNginx: three replicas behind the shipped nginx front
// end, round robin: 50 reservations race for 5 slots; websockets for a
// Unix-socket service started by one replica reach it whichever replica
// nginx picks; /v1/rpc through nginx sees the sessions of every replica;
// kill -9 of the replica running the sessions frees the Unix one's slot
// within the lease and another replica adopts the detached one whose
// target all reach, which then reconnects through nginx.
func TestReplicasBehindNginx(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	gws := startLinkedReplicas(t, 3, map[string]any{"Unix Echo": unixEchoService(t, dir, 5), "Remote Echo": remoteEchoService(t, dir)},
		"--replica_lease", "1")
	front := startShippedNginx(t, gws)
	base := "http://" + front

	// The race, through nginx.
	var mu sync.Mutex
	var idx []int
	var toks []string
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := insecureClient.Get(base + "/v1/reserve/Unix%20Echo")
			if err != nil {
				t.Errorf("reserve: %v", err)
				return
			}
			defer resp.Body.Close()
			var m map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&m)
			mu.Lock()
			defer mu.Unlock()
			codes[resp.StatusCode]++
			if resp.StatusCode == 200 {
				idx = append(idx, int(m["index"].(float64)))
				toks = append(toks, m["token"].(string))
			}
		}()
	}
	wg.Wait()
	sort.Ints(idx)
	if codes[200] != 5 || codes[503] != 45 || fmt.Sprint(idx) != "[0 1 2 3 4]" {
		t.Fatalf("answers %v, indexes %v; want five 200s with indexes 0-4 and forty-five 503s", codes, idx)
	}
	// (An anonymous release through a proxy is refused: not the
	// loopback administrator. Each replica releases one directly.)
	for i, tok := range toks[1:] {
		if code, body := getJSON(t, gws[i%3].httpURL("/v1/release/"+tok)); code != 200 {
			t.Fatalf("release: %d %v", code, body)
		}
	}
	tok := toks[0]

	// Events of every replica, on whichever replica nginx gives /v1/rpc.
	ews, code, body := dialWS(t, "ws://"+front+"/v1/rpc", nil)
	if ews == nil {
		t.Fatalf("/v1/rpc through nginx: %d %v", code, body)
	}
	ev := &rpcClient{t: t, ws: ews}
	defer ews.Close()
	ev.must("events.subscribe", map[string]any{"topics": []string{"session.state"}}, nil)

	// Three websockets in a row through nginx: round robin puts them on
	// three replicas, and all reach the one service.
	pid := 0
	for i := 0; i < 3; i++ {
		ws, code, body := dialWS(t, "ws://"+front+"/websockify?token="+tok, nil)
		if ws == nil {
			t.Fatalf("websocket %d through nginx: %d %v", i, code, body)
		}
		line, _, err := readLine(ws, 30*time.Second)
		var h hello
		if err != nil || json.Unmarshal(line, &h) != nil {
			t.Fatalf("greeting %d: %q %v", i, line, err)
		}
		if pid == 0 {
			pid = h.PID
		} else if h.PID != pid {
			t.Fatalf("websocket %d reached pid %d, want %d", i, h.PID, pid)
		}
		echoThrough(t, ws, fmt.Sprintf("hop-%d", i))
		ws.Close()
		waitFor(t, "the session to detach", 20*time.Second, func() bool {
			st, _ := sessionOn(t, gws[0], tok)
			return st == "detached"
		})
	}
	_, ownerID := sessionOn(t, gws[0], tok)
	var owner *gateway
	var others []*gateway
	joined := 0
	for i, g := range gws {
		if string(rune('A'+i)) == ownerID {
			owner = g
		} else {
			others = append(others, g)
		}
		joined += joinedElsewhere(g, tok)
	}
	if owner == nil || joined != 2 {
		t.Fatalf("owner %q, %d websockets joined through another replica; want 2", ownerID, joined)
	}
	runs := 0
	ev.waitEvent("three running sessions, seen through nginx", 20*time.Second, func(e rpcEvent) bool {
		if e.Method == "session.state" && e.Data["state"] == "running" && e.Data["token_prefix"] == tok[:8] {
			runs++
		}
		return runs == 3
	})

	// A detached session whose target every replica reaches, on the
	// same owner.
	rtok := owner.reserve(t, "Remote Echo", "")["token"].(string)
	rws, rh := connectToken(t, owner, rtok)
	echoThrough(t, rws, "remote")
	rws.Close()
	waitFor(t, "the remote session to detach", 20*time.Second, func() bool {
		st, _ := sessionOn(t, others[0], rtok)
		return st == "detached"
	})

	// kill -9 of the owner.
	killed := time.Now()
	if err := owner.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-owner.exited
	_ = syscall.Kill(pid, syscall.SIGKILL) // the Unix service, if its supervisor has not yet
	waitFor(t, "the Unix session's slot to be free", 20*time.Second, func() bool { return others[0].free(t, "Unix Echo") == 5 })
	if d := time.Since(killed); d > 15*time.Second {
		t.Fatalf("the slot was freed %s after the kill, with a 1 s lease", d)
	}
	waitFor(t, "the remote session to be adopted", 20*time.Second, func() bool {
		st, rep := sessionOn(t, others[1], rtok)
		return st == "detached" && rep != ownerID && rep != ""
	})
	// Through nginx (which skips the dead replica) on any live replica.
	for i := 0; i < 2; i++ {
		ws, code, body := dialWS(t, "ws://"+front+"/websockify?token="+rtok, nil)
		if ws == nil {
			t.Fatalf("the adopted session through nginx: %d %v", code, body)
		}
		line, _, err := readLine(ws, 30*time.Second)
		var h hello
		if err != nil || json.Unmarshal(line, &h) != nil || h.PID != rh.PID {
			t.Fatalf("greeting of the adopted session: %q %v, want pid %d", line, err, rh.PID)
		}
		echoThrough(t, ws, "adopted")
		ws.Close()
		waitFor(t, "the adopted session to detach", 20*time.Second, func() bool {
			st, _ := sessionOn(t, others[0], rtok)
			return st == "detached"
		})
	}
	if code, body := getJSON(t, others[0].httpURL("/v1/release/"+rtok)); code != 200 {
		t.Fatalf("release of the adopted session: %d %v", code, body)
	}
	if r, code := getJSON(t, base+"/v1/reserve/Remote%20Echo"); r != 200 {
		t.Fatalf("reserve after the release: %d %v", r, code)
	}
	if resp, err := insecureClient.Get(base + "/v1/status"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("status through nginx: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
}
