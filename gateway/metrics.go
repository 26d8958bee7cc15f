package gateway

import (
	"net/http"
	"net/http/pprof"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the gateway's Prometheus metrics, on a registry of its own.
type metrics struct {
	reg         *prometheus.Registry
	tunnelsOpen prometheus.Gauge
	tunnels     prometheus.Counter
	bytes       *prometheus.CounterVec
	bytesIn     prometheus.Counter
	bytesOut    prometheus.Counter
	launches    *prometheus.CounterVec
	launchSecs  *prometheus.HistogramVec
	failures    *prometheus.CounterVec
	refused     *prometheus.CounterVec
	limited     *prometheus.CounterVec
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		tunnelsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wsgateway_tunnels_open", Help: "Websocket tunnels open now."}),
		tunnels: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wsgateway_tunnels_total", Help: "Websocket tunnels opened."}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgateway_tunnel_bytes_total", Help: "Payload bytes spliced, by direction (in: client to service, out: service to client)."},
			[]string{"direction"}),
		launches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgateway_launches_total", Help: "Service launches, by service and result (ok, failed)."},
			[]string{"service", "result"}),
		launchSecs: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "wsgateway_launch_seconds", Help: "Time from launch to the service accepting the gateway's connection.",
			Buckets: []float64{.005, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}},
			[]string{"service"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgateway_failures_total", Help: "Failures, by reason (start_failed, start_timeout, dial, service_exited, target_down)."},
			[]string{"reason"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgateway_upgrades_refused_total", Help: "Websocket upgrades refused before the handshake, by HTTP status."},
			[]string{"status"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wsgateway_limited_total", Help: "Requests refused or sessions ended by a limit, by limit (max_tunnels, rate_reserve, rate_launch, auth_failures, message_size, policy)."},
			[]string{"limit"}),
	}
	m.bytesIn = m.bytes.WithLabelValues("in")
	m.bytesOut = m.bytes.WithLabelValues("out")
	m.reg.MustRegister(m.tunnelsOpen, m.tunnels, m.bytes, m.launches, m.launchSecs, m.failures, m.refused, m.limited,
		&stateCollector{s: s},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if s.sessions.IsShared() {
		// The whole deployment's figures, from the replicas' shared state.
		m.reg.MustRegister(&sharedCollector{s: s})
	}
	return m
}

// stateCollector reports reservations and sessions by state at scrape time.
type stateCollector struct{ s *Server }

var (
	resDesc = prometheus.NewDesc("wsgateway_reservations", "Reservations by service and state (reserved, active, idle, stopping).",
		[]string{"service", "state"}, nil)
	sessDesc = prometheus.NewDesc("wsgateway_sessions", "Launched sessions by service and state (starting, running, idle, stopping).",
		[]string{"service", "state"}, nil)
	slotsDesc = prometheus.NewDesc("wsgateway_slots_free", "Free slots by service.", []string{"service"}, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- resDesc
	ch <- sessDesc
	ch <- slotsDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	svcs, infos := c.s.sessions.Snapshot()
	counts := map[[2]string]int{}
	sess := map[[2]string]int{}
	for _, r := range infos {
		counts[[2]string{r.Service, r.State}]++
		if !r.Since.IsZero() {
			sess[[2]string{r.Service, r.State}]++
		}
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(resDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	for _, sv := range svcs {
		ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(sv.Free), sv.Name)
	}
	for k, n := range sess {
		ch <- prometheus.MustNewConstMetric(sessDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
}

func (m *metrics) refusedWith(status int) {
	m.refused.WithLabelValues(strconv.Itoa(status)).Inc()
}

// metricsHandler serves /metrics (same authorisation as the REST API).
func (s *Server) metricsHandler() http.Handler {
	h := promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		if _, err := s.requireAuth(r); err != nil {
			return err
		}
		h.ServeHTTP(w, r)
		return nil
	})
}

// pprofHandler serves /debug/pprof/ to administrators only.
func (s *Server) pprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	// No /debug/pprof/cmdline: the command line may hold the security
	// token, which an administrator by group need not learn.
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		if _, err := s.requireAdmin(r); err != nil {
			return err
		}
		mux.ServeHTTP(w, r)
		return nil
	})
}
