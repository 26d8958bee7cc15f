package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Throughput is one bulk transfer.
type Throughput struct {
	MBps    float64 `json:"mb_per_s"` // payload bytes, 10^6 per second
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	// CPU used during the window, in cores (1.0 = one core busy):
	// the proxy's process group, and wsbench (client and backend).
	ProxyCPU   float64 `json:"proxy_cpu_cores"`
	WsbenchCPU float64 `json:"wsbench_cpu_cores"`
	// Everything else on the machine: other programs (interrupt and
	// softirq time, mostly the benchmark's own loopback traffic, is not
	// counted anywhere).
	OtherCPU float64 `json:"other_cpu_cores"`
}

// RTT is a sequential ping-pong of small messages.
type RTT struct {
	Size    int     `json:"message_bytes"`
	Samples int     `json:"samples"`
	P50us   float64 `json:"p50_us"`
	P90us   float64 `json:"p90_us"`
	P99us   float64 `json:"p99_us"`
	MaxUs   float64 `json:"max_us"`
	// CPU during the samples, as in Throughput.
	ProxyCPU   float64 `json:"proxy_cpu_cores"`
	WsbenchCPU float64 `json:"wsbench_cpu_cores"`
	OtherCPU   float64 `json:"other_cpu_cores"`

	lat []time.Duration // sorted samples
}

// Setups is the tunnel set-up rate.
type Setups struct {
	PerSecond   float64 `json:"per_second"`
	Done        int64   `json:"done"`
	Failed      int64   `json:"failed"`
	CloseErrors int64   `json:"close_errors"`
	FirstError  string  `json:"first_error,omitempty"`
	Workers     int     `json:"workers"`
	Seconds     float64 `json:"seconds"`
	P50ms       float64 `json:"p50_ms"` // dial to echo, per set-up
	P99ms       float64 `json:"p99_ms"`
	ProxyCPU    float64 `json:"proxy_cpu_cores"`
	WsbenchCPU  float64 `json:"wsbench_cpu_cores"`
	OtherCPU    float64 `json:"other_cpu_cores"`
}

// Idle is the memory held by idle tunnels.
type Idle struct {
	Wanted       int     `json:"wanted"`
	Held         int     `json:"held"`    // tunnels open and answering at the measurement
	Backend      int64   `json:"backend"` // backend connections open at the measurement
	Procs        int     `json:"procs"`   // processes in the proxy's group
	StopReason   string  `json:"stop_reason,omitempty"`
	OpenSeconds  float64 `json:"open_seconds"`
	RSSBeforeKiB int64   `json:"rss_before_kib"`
	RSSAfterKiB  int64   `json:"rss_after_kib"`
	PSSBeforeKiB int64   `json:"pss_before_kib"`
	PSSAfterKiB  int64   `json:"pss_after_kib"`
	RSSPerTunnel float64 `json:"rss_kib_per_tunnel"`
	PSSPerTunnel float64 `json:"pss_kib_per_tunnel"`
	FirstError   string  `json:"first_error,omitempty"`
	FailedToOpen int64   `json:"failed_to_open"`
	ProxyError   string  `json:"proxy_error,omitempty"` // the proxy log's most frequent error line
	DrainSeconds float64 `json:"drain_seconds"`
}

// cpuSnap is a CPU time reading of the proxy group and of wsbench.
type cpuSnap struct {
	at                          time.Time
	proxy, backend, self, total int64
}

func snapCPU(t *target) cpuSnap {
	s := cpuSnap{at: time.Now(), self: selfTicks(), total: systemBusyTicks()}
	for _, pg := range t.proxyPG {
		s.proxy += groupStats(pg, false).ticks
	}
	for _, pg := range t.backendPG {
		s.backend += groupStats(pg, false).ticks
	}
	return s
}

// cores turns two snapshots into cores used: the proxy, wsbench (the
// client, and the backend unless it is a process of its own), and
// everything else but that backend process.
func cores(a, b cpuSnap) (proxy, self, other float64) {
	sec := b.at.Sub(a.at).Seconds()
	if sec <= 0 {
		return 0, 0, 0
	}
	c := func(t int64) float64 { return float64(t) / clockTick / sec }
	proxy, self = c(b.proxy-a.proxy), c(b.self-a.self)
	other = max(0, c(b.total-a.total)-proxy-self-c(b.backend-a.backend))
	return proxy, self, other
}

// measureDownload: the backend writes as fast as it can, the client reads
// for dur after warm and counts payload bytes.
func measureDownload(ctx context.Context, t *target, warm, dur time.Duration) (*Throughput, error) {
	s, err := t.dial(ctx, true)
	if err != nil {
		return nil, err
	}
	defer s.Abort()
	defer abortOnCancel(ctx, s)()
	s.SetDeadline(time.Now().Add(warm + dur + 20*time.Second))
	if err := s.Send([]byte{modeSource}); err != nil {
		return nil, err
	}
	buf := make([]byte, chunk)
	for end := time.Now().Add(warm); time.Now().Before(end); {
		if _, err := s.Recv(buf); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	c0 := snapCPU(t)
	var n int64
	for end := c0.at.Add(dur); ; {
		k, err := s.Recv(buf)
		n += int64(k)
		if err != nil {
			return nil, fmt.Errorf("after %d bytes: %w", n, err)
		}
		if !time.Now().Before(end) {
			break
		}
	}
	c1 := snapCPU(t)
	sec := c1.at.Sub(c0.at).Seconds()
	r := &Throughput{MBps: float64(n) / sec / 1e6, Bytes: n, Seconds: sec}
	r.ProxyCPU, r.WsbenchCPU, r.OtherCPU = cores(c0, c1)
	return r, nil
}

// measureUpload: the client writes 64 KiB messages for dur; the time ends
// when the backend has received every byte.
func measureUpload(ctx context.Context, t *target, b *backend, warm, dur time.Duration) (*Throughput, error) {
	s, err := t.dial(ctx, true)
	if err != nil {
		return nil, err
	}
	defer s.Abort()
	defer abortOnCancel(ctx, s)()
	s.SetDeadline(time.Now().Add(warm + dur + 60*time.Second))
	base := b.sunk.Load()
	if err := s.Send([]byte{modeSink}); err != nil {
		return nil, err
	}
	payload := make([]byte, chunk)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	if t.ackSink {
		return uploadAcked(t, s.(*wsStream), payload, warm, dur)
	}
	var sent int64
	for end := time.Now().Add(warm); time.Now().Before(end); {
		if err := s.Send(payload); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
		sent += chunk
	}
	if _, err := waitSunk(ctx, b, base+sent, 20*time.Second); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	c0 := snapCPU(t)
	sent0 := sent
	for end := c0.at.Add(dur); time.Now().Before(end); {
		if err := s.Send(payload); err != nil {
			return nil, fmt.Errorf("after %d bytes: %w", sent-sent0, err)
		}
		sent += chunk
	}
	last, err := waitSunk(ctx, b, base+sent, 60*time.Second)
	if err != nil {
		return nil, err
	}
	c1 := snapCPU(t)
	c1.at = last
	n := sent - sent0
	sec := last.Sub(c0.at).Seconds()
	r := &Throughput{MBps: float64(n) / sec / 1e6, Bytes: n, Seconds: sec}
	r.ProxyCPU, r.WsbenchCPU, r.OtherCPU = cores(c0, c1)
	return r, nil
}

// uploadAcked is measureUpload against a sink in another process: the
// time ends when the sink confirms it has every byte.
func uploadAcked(t *target, s *wsStream, payload []byte, warm, dur time.Duration) (*Throughput, error) {
	var sent int64
	for end := time.Now().Add(warm); time.Now().Before(end); {
		if err := s.Send(payload); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
		sent += chunk
	}
	if got, err := s.ackCount(); err != nil || got != sent {
		return nil, fmt.Errorf("warm-up: the sink has %d of %d bytes: %v", got, sent, err)
	}
	c0 := snapCPU(t)
	sent0 := sent
	for end := c0.at.Add(dur); time.Now().Before(end); {
		if err := s.Send(payload); err != nil {
			return nil, fmt.Errorf("after %d bytes: %w", sent-sent0, err)
		}
		sent += chunk
	}
	got, err := s.ackCount()
	c1 := snapCPU(t)
	if err != nil || got != sent {
		return nil, fmt.Errorf("the sink has %d of %d bytes: %v", got, sent, err)
	}
	n := sent - sent0
	sec := c1.at.Sub(c0.at).Seconds()
	r := &Throughput{MBps: float64(n) / sec / 1e6, Bytes: n, Seconds: sec}
	r.ProxyCPU, r.WsbenchCPU, r.OtherCPU = cores(c0, c1)
	return r, nil
}

// waitSunk waits until the backend has received want bytes in all and
// returns when the last of them arrived.
func waitSunk(ctx context.Context, b *backend, want int64, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		got := b.sunk.Load()
		if got >= want {
			return time.Unix(0, b.lastSunk.Load()), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("the backend received %d of %d bytes within %s", got, want, timeout)
		}
		if ctx.Err() != nil {
			return time.Time{}, errStopped
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// measureRTT: sequential round trips of size-byte messages through echo.
func measureRTT(ctx context.Context, t *target, size, warm, samples int, limit time.Duration) (*RTT, error) {
	s, err := t.dial(ctx, false)
	if err != nil {
		return nil, err
	}
	defer s.Abort()
	defer abortOnCancel(ctx, s)()
	s.SetDeadline(time.Now().Add(limit + 10*time.Second))
	if err := s.Send([]byte{modeEcho}); err != nil {
		return nil, err
	}
	msg, buf := make([]byte, size), make([]byte, size)
	for i := range msg {
		msg[i] = byte('a' + i%26)
	}
	lat := make([]time.Duration, 0, samples)
	c0 := snapCPU(t)
	end := time.Now().Add(limit)
	for i := 0; i < warm+samples && time.Now().Before(end); i++ {
		t0 := time.Now()
		if err := s.Send(msg); err != nil {
			return nil, err
		}
		if err := recvFull(s, buf); err != nil {
			return nil, err
		}
		d := time.Since(t0)
		if i >= warm {
			lat = append(lat, d)
		}
	}
	if len(lat) == 0 {
		return nil, errors.New("no samples within the time limit")
	}
	c1 := snapCPU(t)
	_ = s.Close()
	r := rttOf(size, lat)
	r.ProxyCPU, r.WsbenchCPU, r.OtherCPU = cores(c0, c1)
	return r, nil
}

func rttOf(size int, lat []time.Duration) *RTT {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	us := func(d time.Duration) float64 { return float64(d) / 1e3 }
	return &RTT{Size: size, Samples: len(lat), P50us: us(pct(lat, 50)), P90us: us(pct(lat, 90)),
		P99us: us(pct(lat, 99)), MaxUs: us(lat[len(lat)-1]), lat: lat}
}

// mergeRTT pools the samples of every round.
func mergeRTT(rs []*RTT) *RTT {
	if len(rs) == 0 {
		return nil
	}
	var lat []time.Duration
	for _, r := range rs {
		lat = append(lat, r.lat...)
	}
	return rttOf(rs[0].Size, lat)
}

// medianThroughput is the round with the median rate.
func medianThroughput(rs []*Throughput) *Throughput {
	if len(rs) == 0 {
		return nil
	}
	s := append([]*Throughput(nil), rs...)
	sort.Slice(s, func(i, j int) bool { return s[i].MBps < s[j].MBps })
	return s[len(s)/2]
}

// medianSetups is the round with the median rate.
func medianSetups(rs []*Setups) *Setups {
	if len(rs) == 0 {
		return nil
	}
	s := append([]*Setups(nil), rs...)
	sort.Slice(s, func(i, j int) bool { return s[i].PerSecond < s[j].PerSecond })
	return s[len(s)/2]
}

// pct is the p-th percentile of sorted durations (nearest rank).
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// measureSetups: workers each open a tunnel, do one 16-byte echo, close
// cleanly, and start again, for dur (at most maxCount set-ups in all).
func measureSetups(ctx context.Context, t *target, workers int, dur time.Duration, maxCount int64) (*Setups, error) {
	var done, failed, closeErrs atomic.Int64
	var mu sync.Mutex
	var firstErr string
	var lat []time.Duration
	c0 := snapCPU(t)
	end := c0.at.Add(dur)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := append([]byte{modeEcho}, "0123456789abcdef"...)
			buf := make([]byte, 16)
			var mine []time.Duration
			fail := func(err error) {
				failed.Add(1)
				mu.Lock()
				if firstErr == "" {
					firstErr = err.Error()
				}
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
			for ctx.Err() == nil && time.Now().Before(end) && done.Load() < maxCount {
				t0 := time.Now()
				s, err := t.dial(ctx, false)
				if err != nil {
					fail(err)
					continue
				}
				s.SetDeadline(time.Now().Add(10 * time.Second))
				if err := s.Send(msg); err != nil {
					s.Abort()
					fail(err)
					continue
				}
				if err := recvFull(s, buf); err != nil {
					s.Abort()
					fail(err)
					continue
				}
				mine = append(mine, time.Since(t0))
				if err := s.Close(); err != nil {
					closeErrs.Add(1)
				}
				done.Add(1)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, errStopped
	}
	c1 := snapCPU(t)
	sec := c1.at.Sub(c0.at).Seconds()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	r := &Setups{PerSecond: float64(done.Load()) / sec, Done: done.Load(), Failed: failed.Load(),
		CloseErrors: closeErrs.Load(), FirstError: firstErr, Workers: workers, Seconds: sec,
		P50ms: ms(pct(lat, 50)), P99ms: ms(pct(lat, 99))}
	r.ProxyCPU, r.WsbenchCPU, r.OtherCPU = cores(c0, c1)
	if done.Load() == 0 {
		return r, fmt.Errorf("no set-up succeeded: %s", firstErr)
	}
	return r, nil
}

// idleLimits bound the idle-tunnel test.
type idleLimits struct {
	want     int
	maxTime  time.Duration // for opening
	minAvail int64         // stop opening when MemAvailable drops below (KiB)
	settle   time.Duration
	workers  int
	hold     time.Duration // keep them open after measuring
}

// measureIdle opens up to want tunnels through t's proxy, each after one
// 1-byte echo, leaves them idle, and divides the growth of the proxy's
// memory by the number held.
func measureIdle(ctx context.Context, t *target, b *backend, lim idleLimits) (*Idle, error) {
	pg := t.proc.pid()
	// Start from a quiet proxy: earlier tests' connections gone.
	quiet(ctx, t, b, 15*time.Second)
	before := groupStats(pg, true)
	r := &Idle{Wanted: lim.want, RSSBeforeKiB: before.rssKiB, PSSBeforeKiB: before.pssKiB}

	var (
		mu      sync.Mutex
		conns   = make([]stream, 0, lim.want)
		next    atomic.Int64
		failed  atomic.Int64
		stopped atomic.Bool
		reason  string
	)
	stop := func(why string) {
		mu.Lock()
		if reason == "" {
			reason = why
		}
		mu.Unlock()
		stopped.Store(true)
	}
	start := time.Now()
	end := start.Add(lim.maxTime)
	// A watchdog for memory and time.
	watchDone := make(chan struct{})
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-watchDone:
				return
			case <-tick.C:
				if a := memAvailableKiB(); a > 0 && a < lim.minAvail {
					stop(fmt.Sprintf("MemAvailable fell to %d MiB", a>>10))
				}
				if time.Now().After(end) {
					stop(fmt.Sprintf("time limit (%s) for opening", lim.maxTime))
				}
				if t.proc.exited() {
					stop("the proxy exited")
				}
			}
		}
	}()
	var wg sync.WaitGroup
	for w := 0; w < lim.workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1)
			for ctx.Err() == nil && !stopped.Load() {
				if next.Add(1) > int64(lim.want) {
					return
				}
				s, err := t.dial(ctx, false)
				if err == nil {
					s.SetDeadline(time.Now().Add(10 * time.Second))
					if err = s.Send([]byte{modeEcho, 'x'}); err == nil {
						err = recvFull(s, buf)
					}
					s.SetDeadline(time.Time{})
					if err != nil {
						s.Abort()
					}
				}
				if err != nil {
					if failed.Add(1) == 1 {
						mu.Lock()
						r.FirstError = err.Error()
						mu.Unlock()
					}
					if failed.Load() >= 100 {
						stop("100 tunnels failed to open")
					}
					continue
				}
				mu.Lock()
				conns = append(conns, s)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(watchDone)
	r.OpenSeconds = time.Since(start).Seconds()
	r.StopReason = reason
	r.FailedToOpen = failed.Load()
	if r.FailedToOpen > 0 {
		r.ProxyError = commonError(t.proc.logPath)
	}
	defer func() {
		// Close them all, then wait for the proxy to let go of them.
		t0 := time.Now()
		for _, s := range conns {
			s.Abort()
		}
		quiet(context.Background(), t, b, 60*time.Second)
		r.DrainSeconds = time.Since(t0).Seconds()
	}()
	if ctx.Err() != nil {
		return nil, errStopped
	}
	if !sleepCtx(ctx, lim.settle) {
		return nil, errStopped
	}
	after := groupStats(pg, true)
	r.Held = len(conns)
	r.Backend = b.echoes.Load()
	r.Procs = after.procs
	r.RSSAfterKiB, r.PSSAfterKiB = after.rssKiB, after.pssKiB
	if r.Held == 0 {
		return r, fmt.Errorf("no tunnel opened: %s", r.FirstError)
	}
	r.RSSPerTunnel = float64(after.rssKiB-before.rssKiB) / float64(r.Held)
	r.PSSPerTunnel = float64(after.pssKiB-before.pssKiB) / float64(r.Held)
	if lim.hold > 0 {
		fmt.Fprintf(os.Stderr, "wsbench: %d idle tunnels through %s (pid %d, %.1f KiB RSS each); holding them for %s\n",
			r.Held, t.name, pg, r.RSSPerTunnel, lim.hold)
		sleepCtx(ctx, lim.hold)
	}
	return r, nil
}

// commonError is the most frequent line of a log that mentions an error
// or an exception, with its count.
func commonError(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	counts := map[string]int{}
	best := ""
	for _, l := range strings.Split(string(b), "\n") {
		ll := strings.ToLower(l)
		if !strings.Contains(ll, "error") && !strings.Contains(ll, "exception") {
			continue
		}
		l = strings.TrimSpace(l)
		if len(l) > 200 {
			l = l[:200]
		}
		counts[l]++
		if counts[l] > counts[best] {
			best = l
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("%dx %q", counts[best], best)
}

// quiet waits (bounded) until the backend has no echo connection left and
// the proxy group is down to its leader.
func quiet(ctx context.Context, t *target, b *backend, limit time.Duration) {
	end := time.Now().Add(limit)
	for time.Now().Before(end) && ctx.Err() == nil {
		if b.echoes.Load() == 0 && (t.proc == nil || groupStats(t.proc.pid(), false).procs <= 1) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
