package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"
)

// The replicas row: "reserve + launch + first byte" through the shipped
// nginx front end (contrib/nginx/wsgateway.conf) in front of three
// replicas, against the same front end in front of one, both on one
// redis-server. wsbench starts everything on free ports of 127.0.0.1.

// Replicas is the replicas row of a run.
type Replicas struct {
	// Skipped says why nothing was measured (redis-server or nginx
	// missing).
	Skipped string `json:"skipped,omitempty"`
	// Error is what stopped the measurement, if anything did.
	Error string `json:"error,omitempty"`
	Proxy string `json:"proxy"`
	Redis string `json:"redis"`
	// SetupWorkers is the concurrent clients of the set-up measurement.
	SetupWorkers int            `json:"setup_workers"`
	Rows         []*ReplicasRow `json:"rows"`
}

// ReplicasRow is one deployment: Count replicas behind the proxy.
type ReplicasRow struct {
	Count int `json:"replicas"`
	// Sequential reserve + websocket + first byte, every round's samples.
	Iterations int     `json:"iterations"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	// The p50 of each round, for the spread.
	RoundP50ms []float64 `json:"round_p50_ms"`
	// Complete set-ups (reserve, websocket, first byte, close) per second
	// with SetupWorkers clients at once: the median round, and each.
	SetupsPerSec float64   `json:"setups_per_s"`
	SetupRounds  []float64 `json:"setup_rounds_per_s"`
	// Cores used during the set-up rounds, by part: "replicas" (the
	// gateways and the services they launched and reaped), "nginx",
	// "redis" (shared by both deployments, idle while the other runs),
	// "wsbench" (the clients) and "other" (every other program).
	CPU map[string]float64 `json:"cpu_cores"`
	// Reservations answered 503 (no free slot while sessions stop).
	Full   int64    `json:"full"`
	Errors []string `json:"errors,omitempty"`
}

// deployment is a running front end and its replicas.
type deployment struct {
	count    int
	front    string  // the proxy's host:port
	status   string  // one replica's HTTP address, for /v1/status
	replicas []*proc // the gateways
	nginx    *proc
	redis    *proc
	client   *http.Client
	row      *ReplicasRow
	// CPU ticks by part, and seconds, summed over the set-up rounds.
	ticks   map[string]int64
	seconds float64
}

// replicasNeeds is what the row needs, with the Debian package of each.
var replicasNeeds = [][2]string{{"redis-server", "redis-server"}, {"nginx", "nginx-light"}}

// lookSbin finds a command in PATH or in /usr/sbin (not in every PATH).
func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return exec.LookPath(filepath.Join("/usr/sbin", name))
}

// measureReplicas fills the replicas row; it returns a row with Skipped
// set when redis-server or nginx is missing.
func measureReplicas(ctx context.Context, cfg *config, dir string, logf func(string, ...any)) (*Replicas, error) {
	r := &Replicas{Proxy: "nginx with contrib/nginx/wsgateway.conf (TLS left out)", SetupWorkers: min(cfg.setupWork, 8)}
	bins := map[string]string{}
	for _, n := range replicasNeeds {
		p, err := lookSbin(n[0])
		if err != nil {
			r.Skipped = fmt.Sprintf("%s not found (Debian package %s; make bench installs it)", n[0], n[1])
			return r, nil
		}
		bins[n[0]] = p
	}
	r.Redis = "redis-server " + strings.TrimPrefix(regexp.MustCompile(`v=\S+`).FindString(output("", bins["redis-server"], "--version")), "v=")
	shipped, err := os.ReadFile(filepath.Join(cfg.repo, "contrib", "nginx", "wsgateway.conf"))
	if err != nil {
		return r, fmt.Errorf("the shipped nginx file: %w", err)
	}
	svc, err := testsvcPath(cfg, dir)
	if err != nil {
		return r, err
	}
	rdir := filepath.Join(dir, "replicas")
	if err := os.MkdirAll(rdir, 0o700); err != nil {
		return r, err
	}
	script := filepath.Join(rdir, "trivial.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec "+strconv.Quote(svc)+" serve\n"), 0o755); err != nil {
		return r, err
	}
	conf := filepath.Join(rdir, "services.json")
	// Enough slots for the sessions still stopping while new ones start.
	body, _ := json.Marshal(map[string]any{"bench": map[string]any{"script": script, "count": 1000, "options": map[string]any{}}})
	if err := os.WriteFile(conf, body, 0o644); err != nil {
		return r, err
	}

	redisAddr, redis, err := startRedis(ctx, bins["redis-server"], rdir)
	if err != nil {
		return r, err
	}
	// Both deployments run side by side, each under its own key prefix,
	// and every measurement visits them in turn (as the tables do with
	// their targets), so that the machine's load hits both alike.
	var deps []*deployment
	for _, n := range []int{1, 3} {
		d, err := startDeployment(ctx, cfg, bins["nginx"], string(shipped), dir, rdir, conf, redisAddr, n, r.SetupWorkers)
		if err != nil {
			return r, fmt.Errorf("%d replicas: %w", n, err)
		}
		d.redis = redis
		deps = append(deps, d)
		r.Rows = append(r.Rows, d.row)
	}
	iters := max(cfg.launchIters*3, 30) // per deployment, over all rounds
	perRound := max(iters/cfg.rounds, 1)
	samples := map[*deployment][]time.Duration{}
	var rounds = map[*deployment][]float64{}
	setupDur := 2 * cfg.dur
	for round := 0; round < cfg.rounds && ctx.Err() == nil; round++ {
		for _, d := range deps {
			logf("replicas: round %d, %d replicas: %d set-ups in a row", round+1, d.count, perRound)
			s, err := d.sequential(ctx, perRound+2)
			if err != nil {
				d.row.Errors = append(d.row.Errors, err.Error())
				continue
			}
			s = s[2:] // warm-up
			samples[d] = append(samples[d], s...)
			sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
			d.row.RoundP50ms = append(d.row.RoundP50ms, ms(pct(s, 50)))
		}
		for _, d := range deps {
			logf("replicas: round %d, %d replicas: set-ups with %d clients for %s", round+1, d.count, r.SetupWorkers, setupDur)
			ps, err := d.concurrent(ctx, r.SetupWorkers, setupDur)
			if err != nil {
				d.row.Errors = append(d.row.Errors, err.Error())
				continue
			}
			rounds[d] = append(rounds[d], ps)
		}
	}
	if ctx.Err() != nil {
		return r, errStopped
	}
	for _, d := range deps {
		s := samples[d]
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		d.row.Iterations = len(s)
		d.row.P50ms, d.row.P99ms = ms(pct(s, 50)), ms(pct(s, 99))
		d.row.SetupRounds = rounds[d]
		d.row.CPU = map[string]float64{}
		for k, v := range d.ticks {
			d.row.CPU[k] = float64(v) / clockTick / d.seconds
		}
		sorted := append([]float64(nil), rounds[d]...)
		sort.Float64s(sorted)
		if len(sorted) > 0 {
			d.row.SetupsPerSec = sorted[len(sorted)/2]
		}
		for _, p := range d.replicas {
			for _, l := range logWarnings(p.logPath, 3, false) {
				d.row.Errors = append(d.row.Errors, "log: "+l)
			}
		}
	}
	return r, nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// startRedis runs a redis-server without persistence on a free port.
func startRedis(ctx context.Context, bin, dir string) (string, *proc, error) {
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return "", nil, err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p, err := startProc("redis-server", filepath.Join(dir, "redis.log"), nil, bin, "--port", strconv.Itoa(port),
			"--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no", "--protected-mode", "yes")
		if err != nil {
			return "", nil, err
		}
		if err = waitListening(ctx, p, addr, 15*time.Second); err == nil {
			return addr, p, nil
		}
		p.stop(time.Second)
		if attempt == 2 || ctx.Err() != nil {
			return "", nil, err
		}
	}
}

// startDeployment starts n replicas on the Redis at redisAddr (under a
// prefix of their own) and nginx in front of them with the shipped file,
// its upstream servers, listeners and TLS replaced as the integration
// test does; top is wsbench's directory, dir the replicas' own.
func startDeployment(ctx context.Context, cfg *config, nginx, shipped, top, dir, conf, redisAddr string, n, workers int) (*deployment, error) {
	d := &deployment{count: n, row: &ReplicasRow{Count: n}, ticks: map[string]int64{}}
	state := fmt.Sprintf("redis://%s/0?prefix=wsbench%d:", redisAddr, n)
	var https []string
	for i := 0; i < n; i++ {
		p, httpAddr, err := startReplica(ctx, cfg, dir, conf, state, fmt.Sprintf("r%d-%d", n, i+1))
		if err != nil {
			return nil, err
		}
		d.replicas = append(d.replicas, p)
		https = append(https, httpAddr)
	}
	d.status = https[0]

	ups := regexp.MustCompile(`(?m)^\s*server 10\.0\.0\.1[0-9]:9090.*\n`).FindAllString(shipped, -1)
	if len(ups) < n {
		return nil, fmt.Errorf("the shipped nginx file has %d upstream servers, %d wanted", len(ups), n)
	}
	site := shipped
	for i, u := range ups {
		repl := ""
		if i < n {
			repl = strings.Replace(u, regexp.MustCompile(`10\.0\.0\.1[0-9]:9090`).FindString(u), https[i], 1)
		}
		site = strings.Replace(site, u, repl, 1)
	}
	for attempt := 0; ; attempt++ {
		p1, err1 := freePort()
		p2, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		d.front = fmt.Sprintf("127.0.0.1:%d", p1)
		s := strings.Replace(site, "listen 443 ssl;", "listen "+d.front+";", 1)
		s = strings.Replace(s, "listen 80;", fmt.Sprintf("listen 127.0.0.1:%d;", p2), 1)
		var kept []string
		for _, l := range strings.Split(s, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(l), "ssl_") {
				kept = append(kept, l)
			}
		}
		// nginx's workers (nobody, when wsbench runs as root) write
		// their temporary files here.
		ndir := filepath.Join(top, fmt.Sprintf("nginx%d-%d", n, attempt))
		if err := os.MkdirAll(ndir, 0o777); err != nil {
			return nil, err
		}
		if err := os.Chmod(ndir, 0o777); err != nil {
			return nil, err
		}
		user := ""
		if os.Getuid() == 0 {
			user = "user nobody nogroup;\n"
		}
		main := fmt.Sprintf(`%sdaemon off;
master_process on;
worker_processes auto;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	%[3]s
}
`, user, ndir, strings.Join(kept, "\n"))
		cf := filepath.Join(ndir, "nginx.conf")
		if err := os.WriteFile(cf, []byte(main), 0o644); err != nil {
			return nil, err
		}
		p, err := startProc("nginx", filepath.Join(ndir, "nginx.log"), nil, nginx, "-c", cf, "-p", ndir, "-e", filepath.Join(ndir, "error.log"))
		if err != nil {
			return nil, err
		}
		if err = waitListening(ctx, p, d.front, 15*time.Second); err == nil {
			d.nginx = p
			break
		}
		p.stop(time.Second)
		if attempt == 2 || ctx.Err() != nil {
			return nil, err
		}
	}
	d.client = &http.Client{Timeout: 30 * time.Second,
		Transport: &http.Transport{Proxy: nil, MaxIdleConns: 4 * workers, MaxIdleConnsPerHost: 4 * workers}}
	return d, nil
}

// startReplica starts one gateway replica and waits for its HTTP port.
func startReplica(ctx context.Context, cfg *config, dir, conf, state, id string) (*proc, string, error) {
	for attempt := 0; ; attempt++ {
		wsPort, err1 := freePort()
		httpPort, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			return nil, "", err
		}
		httpAddr := fmt.Sprintf("127.0.0.1:%d", httpPort)
		argv := []string{cfg.gateway, "--verbose", "0", "--bind_address", "127.0.0.1",
			"--http_port", strconv.Itoa(httpPort), "--remote_session_config", conf,
			"--session_dir", filepath.Join(dir, "sessions-"+id), "--stop_grace", "1",
			"--state_db", state, "--replica_id", id}
		argv = append(append(argv, cfg.gatewayArgs...), strconv.Itoa(wsPort))
		p, err := startProc("wsgateway replica "+id, filepath.Join(dir, "wsgateway-"+id+".log"), cfg.gatewayEnv, argv...)
		if err != nil {
			return nil, "", err
		}
		if err = waitListening(ctx, p, httpAddr, 15*time.Second); err == nil {
			return p, httpAddr, nil
		}
		p.stop(time.Second)
		if attempt == 2 || ctx.Err() != nil {
			return nil, "", err
		}
	}
}

// setup is one reserve + websocket + first byte through the front end;
// it closes the websocket and returns the time to the first byte. full
// reports a 503 (no free slot).
func (d *deployment) setup(ctx context.Context) (dur time.Duration, full bool, err error) {
	t0 := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.front+"/v1/reserve/bench", nil)
	if err != nil {
		return 0, false, err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, false, fmt.Errorf("reserve: %w", err)
	}
	var res struct {
		Token string `json:"token"`
		Error string `json:"error"`
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&res)
	resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		return 0, true, nil
	}
	if err != nil || res.Token == "" {
		return 0, false, fmt.Errorf("reserve: HTTP %d %v %s", resp.StatusCode, err, res.Error)
	}
	tgt := &target{name: "replicas", kind: "wsgateway", addr: d.front, ws: true, wsPath: "/websockify?token=" + url.QueryEscape(res.Token)}
	s, err := tgt.dial(ctx, false)
	if err != nil {
		return 0, false, fmt.Errorf("websocket with the token: %w", err)
	}
	s.SetDeadline(time.Now().Add(15 * time.Second))
	var buf [4096]byte
	n, err := s.Recv(buf[:])
	dur = time.Since(t0)
	if err != nil || n == 0 {
		s.Abort()
		return 0, false, fmt.Errorf("first byte: %w", err)
	}
	_ = s.Close()
	return dur, false, nil
}

// sequential times n set-ups one after another, each after the previous
// one's service stopped.
func (d *deployment) sequential(ctx context.Context, n int) ([]time.Duration, error) {
	var out []time.Duration
	for i := 0; i < n && ctx.Err() == nil; i++ {
		dur, full, err := d.setup(ctx)
		if err != nil {
			return nil, err
		}
		if full {
			d.row.Full++
			i--
		} else {
			out = append(out, dur)
		}
		waitNoSessions(ctx, d.status, 10*time.Second)
	}
	return out, ctx.Err()
}

// concurrent counts complete set-ups per second with workers clients
// for dur.
func (d *deployment) concurrent(ctx context.Context, workers int, dur time.Duration) (float64, error) {
	waitNoSessions(ctx, d.status, 30*time.Second)
	var done, full atomic.Int64
	var firstErr error
	var mu sync.Mutex
	end := time.Now().Add(dur)
	start := time.Now()
	before := d.cpuTicks()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil {
				_, isFull, err := d.setup(ctx)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				if isFull {
					full.Add(1)
					time.Sleep(5 * time.Millisecond) // sessions are stopping: let them
					continue
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for k, v := range d.cpuTicks() {
		d.ticks[k] += v - before[k]
	}
	d.seconds += elapsed.Seconds()
	d.row.Full += full.Load()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(done.Load()) / elapsed.Seconds(), ctx.Err()
}

// cpuTicks is the CPU time so far of each part of the deployment, and of
// the rest of the machine ("other": all busy time less the parts).
func (d *deployment) cpuTicks() map[string]int64 {
	t := map[string]int64{"nginx": groupStats(d.nginx.pid(), false).ticks, "redis": groupStats(d.redis.pid(), false).ticks,
		"wsbench": selfTicks()}
	for _, p := range d.replicas {
		t["replicas"] += groupStats(p.pid(), false).ticks
	}
	t["other"] = systemBusyTicks() - t["nginx"] - t["redis"] - t["wsbench"] - t["replicas"]
	return t
}

// printReplicas prints the replicas row.
func printReplicas(w io.Writer, r *Replicas) {
	if r == nil {
		return
	}
	if r.Skipped != "" {
		fmt.Fprintf(w, "replicas: skipped: %s\n", r.Skipped)
		return
	}
	if r.Error != "" {
		fmt.Fprintf(w, "replicas: error: %s\n", r.Error)
	}
	fmt.Fprintf(w, "\nREPLICAS (reserve + launch of a trivial script + first byte through %s; one redis-server, %s)\n", r.Proxy, r.Redis)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	fmt.Fprintf(tw, "replicas\tin a row: p50\tp99\tround p50s\tset-ups/s (%d clients)\trounds\t503s\t\n", r.SetupWorkers)
	for _, row := range r.Rows {
		var rp, sr []string
		for _, v := range row.RoundP50ms {
			rp = append(rp, fmt.Sprintf("%.1f", v))
		}
		for _, v := range row.SetupRounds {
			sr = append(sr, fmt.Sprintf("%.0f", v))
		}
		fmt.Fprintf(tw, "%d\t%.1f ms\t%.1f ms\t%s\t%.0f\t%s\t%d\t\n", row.Count, row.P50ms, row.P99ms,
			strings.Join(rp, " "), row.SetupsPerSec, strings.Join(sr, " "), row.Full)
	}
	tw.Flush()
	for _, row := range r.Rows {
		fmt.Fprintf(w, "  %d replicas, cores during the set-ups: replicas and their services %.2f, nginx %.2f, redis %.2f, wsbench %.2f, other programs %.2f\n",
			row.Count, row.CPU["replicas"], row.CPU["nginx"], row.CPU["redis"], row.CPU["wsbench"], row.CPU["other"])
	}
	for _, row := range r.Rows {
		for _, e := range row.Errors {
			fmt.Fprintf(w, "error (%d replicas): %s\n", row.Count, e)
		}
	}
}
