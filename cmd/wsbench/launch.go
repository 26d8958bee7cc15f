package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"
)

// Launch is "reserve + launch of a trivial script + first byte".
type Launch struct {
	Iterations int     `json:"iterations"`
	P50ms      float64 `json:"p50_ms"` // GET /v1/reserve, websocket handshake, launch, first byte
	P90ms      float64 `json:"p90_ms"`
	MaxMs      float64 `json:"max_ms"`
	// The parts, medians.
	ReserveP50ms   float64 `json:"reserve_p50_ms"`
	HandshakeP50ms float64 `json:"handshake_p50_ms"`
	FirstByteP50ms float64 `json:"first_byte_p50_ms"` // after the handshake: launch, ready line, dial, greeting
	// The floor: wsbench runs the same script itself, reads its ready
	// line, dials and reads the greeting.
	DirectP50ms float64 `json:"direct_p50_ms"`
	DirectP90ms float64 `json:"direct_p90_ms"`
	Script      string  `json:"script"`
}

// measureLaunch starts a gateway with a one-service config whose script
// execs testsvc, and times reserve + connect + first byte.
func measureLaunch(ctx context.Context, cfg *config, dir string, iters int) (*Launch, error) {
	svc, err := testsvcPath(cfg, dir)
	if err != nil {
		return nil, err
	}
	script := filepath.Join(dir, "trivial.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec "+strconv.Quote(svc)+" serve\n"), 0o755); err != nil {
		return nil, err
	}
	conf := filepath.Join(dir, "services.json")
	body, _ := json.Marshal(map[string]any{"bench": map[string]any{"script": script, "count": 200, "options": map[string]any{}}})
	if err := os.WriteFile(conf, body, 0o644); err != nil {
		return nil, err
	}
	r := &Launch{Script: "sh -c 'exec testsvc serve' (prints the ready line, greets with one JSON line)"}

	// The floor first.
	var direct []time.Duration
	for i := 0; i < iters+2 && ctx.Err() == nil; i++ {
		d, err := launchDirect(ctx, script)
		if err != nil {
			return nil, fmt.Errorf("running the script directly: %w", err)
		}
		if i >= 2 {
			direct = append(direct, d)
		}
	}

	var p *proc
	var wsAddr, httpAddr string
	for attempt := 0; ; attempt++ {
		wsPort, err1 := freePort()
		httpPort, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		wsAddr, httpAddr = fmt.Sprintf("127.0.0.1:%d", wsPort), fmt.Sprintf("127.0.0.1:%d", httpPort)
		argv := []string{cfg.gateway, "--verbose", "0", "--bind_address", "127.0.0.1",
			"--http_port", strconv.Itoa(httpPort), "--remote_session_config", conf,
			"--session_dir", filepath.Join(dir, "sessions-launch"), "--stop_grace", "1"}
		argv = append(append(argv, cfg.gatewayArgs...), strconv.Itoa(wsPort))
		p, err = startProc("wsgateway (launch)", filepath.Join(dir, "wsgateway-launch.log"), cfg.gatewayEnv, argv...)
		if err != nil {
			return nil, err
		}
		err = waitListening(ctx, p, wsAddr, 10*time.Second)
		if err == nil {
			err = waitListening(ctx, p, httpAddr, 10*time.Second)
		}
		if err == nil {
			break
		}
		p.stop(time.Second)
		if attempt == 2 || ctx.Err() != nil {
			return nil, err
		}
	}
	defer p.stop(5 * time.Second)

	tgt := &target{name: "wsgateway", kind: "wsgateway", addr: wsAddr, ws: true, proc: p}
	var total, reserve, hs, first []time.Duration
	buf := make([]byte, 4096)
	for i := 0; i < iters+2 && ctx.Err() == nil; i++ {
		t0 := time.Now()
		resp, err := plainHTTP.Get("http://" + httpAddr + "/v1/reserve/bench")
		if err != nil {
			return nil, err
		}
		var res struct {
			Token string `json:"token"`
			Error string `json:"error"`
		}
		err = json.NewDecoder(resp.Body).Decode(&res)
		resp.Body.Close()
		if err != nil || res.Token == "" {
			return nil, fmt.Errorf("reserve: HTTP %d %v %s", resp.StatusCode, err, res.Error)
		}
		t1 := time.Now()
		tgt.wsPath = "/websockify?token=" + url.QueryEscape(res.Token)
		s, err := tgt.dial(ctx, false)
		if err != nil {
			return nil, fmt.Errorf("connecting with the token: %w", err)
		}
		t2 := time.Now()
		s.SetDeadline(time.Now().Add(15 * time.Second))
		n, err := s.Recv(buf)
		t3 := time.Now()
		if err != nil || n == 0 {
			s.Abort()
			return nil, fmt.Errorf("first byte: %w", err)
		}
		_ = s.Close()
		if i >= 2 {
			total = append(total, t3.Sub(t0))
			reserve = append(reserve, t1.Sub(t0))
			hs = append(hs, t2.Sub(t1))
			first = append(first, t3.Sub(t2))
		}
		// Let the gateway stop that service before the next launch, so
		// that launches do not overlap with stops.
		waitNoSessions(ctx, httpAddr, 5*time.Second)
	}
	if ctx.Err() != nil {
		return nil, errStopped
	}
	for _, l := range [][]time.Duration{total, reserve, hs, first, direct} {
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	}
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	r.Iterations = len(total)
	r.P50ms, r.P90ms, r.MaxMs = ms(pct(total, 50)), ms(pct(total, 90)), ms(total[len(total)-1])
	r.ReserveP50ms, r.HandshakeP50ms, r.FirstByteP50ms = ms(pct(reserve, 50)), ms(pct(hs, 50)), ms(pct(first, 50))
	r.DirectP50ms, r.DirectP90ms = ms(pct(direct, 50)), ms(pct(direct, 90))
	return r, nil
}

// launchDirect runs "script start" as the gateway would (own process
// group), reads the ready line, dials and reads the greeting.
func launchDirect(ctx context.Context, script string) (time.Duration, error) {
	t0 := time.Now()
	cmd := exec.Command(script, "start")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	br := bufio.NewReader(out)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return 0, fmt.Errorf("ready line: %w", err)
	}
	var ready struct {
		Hostname string `json:"hostname"`
		Port     int    `json:"port"`
	}
	if err := json.Unmarshal(line, &ready); err != nil {
		return 0, fmt.Errorf("ready line %q: %w", line, err)
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := d.DialContext(dctx, "tcp", net.JoinHostPort(ready.Hostname, strconv.Itoa(ready.Port)))
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if _, err := c.Read(b[:]); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// waitNoSessions polls /v1/status until no session is left (bounded).
func waitNoSessions(ctx context.Context, httpAddr string, limit time.Duration) {
	end := time.Now().Add(limit)
	for time.Now().Before(end) && ctx.Err() == nil {
		resp, err := plainHTTP.Get("http://" + httpAddr + "/v1/status")
		if err == nil {
			var st struct {
				Sessions []json.RawMessage `json:"sessions"`
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err == nil && len(st.Sessions) == 0 {
				return
			}
		}
		if resp != nil && resp.StatusCode != http.StatusOK {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testsvcPath is the testsvc binary: the flag's, or built now.
func testsvcPath(cfg *config, dir string) (string, error) {
	if cfg.testsvc != "" {
		return filepath.Abs(cfg.testsvc)
	}
	out := filepath.Join(dir, "testsvc")
	cmd := exec.Command("go", "build", "-o", out, "./internal/testsvc")
	cmd.Dir = cfg.repo
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building internal/testsvc (give -testsvc PATH instead): %v\n%s", err, b)
	}
	return out, nil
}
