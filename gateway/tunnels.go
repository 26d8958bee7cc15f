package gateway

import (
	"fmt"
	"sync"
	"time"

	"wsgateway/wsframe"
)

// hostedTunnels are the tunnels that other packages run under the
// gateway's rules (the launcher's /proxy passthrough): counted against
// --max_tunnels, swept by the heartbeat, shown in /v1/status and
// /metrics.
type hostedTunnels struct {
	mu  sync.Mutex
	set map[wsframe.Tunnel]struct{}
}

func (h *hostedTunnels) add(t wsframe.Tunnel) {
	h.mu.Lock()
	if h.set == nil {
		h.set = map[wsframe.Tunnel]struct{}{}
	}
	h.set[t] = struct{}{}
	h.mu.Unlock()
}

func (h *hostedTunnels) remove(t wsframe.Tunnel) {
	h.mu.Lock()
	delete(h.set, t)
	h.mu.Unlock()
}

func (h *hostedTunnels) list() []wsframe.Tunnel {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]wsframe.Tunnel, 0, len(h.set))
	for t := range h.set {
		out = append(out, t)
	}
	return out
}

func (h *hostedTunnels) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.set)
}

// check runs the heartbeat of every hosted tunnel; it never blocks.
func (h *hostedTunnels) check(now time.Time, ping bool) {
	for _, t := range h.list() {
		t.Check(now, ping)
	}
}

// closeAll closes every hosted tunnel; it never blocks. (The launcher
// closes its own at shutdown, with "launcher shutting down"; this is for
// a shutdown that owns every tunnel.)
func (h *hostedTunnels) closeAll(code int, reason string) {
	for _, t := range h.list() {
		t.Close(code, reason)
	}
}

// TunnelHost is the gateway's side of wsframe.Host, for the launcher.
func (s *Server) TunnelHost() wsframe.Host { return tunnelHost{s} }

type tunnelHost struct{ s *Server }

// Admit counts a hosted tunnel like a websocket handler of the gateway.
func (h tunnelHost) Admit(kind string) (func(), error) {
	s := h.s
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return nil, fmt.Errorf("the gateway is shutting down")
	}
	if n := s.active.Add(1); s.cfg.MaxTunnels > 0 && n > int64(s.cfg.MaxTunnels) {
		s.active.Add(-1)
		s.metrics.limited.WithLabelValues("max_tunnels").Inc()
		return nil, fmt.Errorf("the gateway is serving its maximum of %d websockets; try again later", s.cfg.MaxTunnels)
	}
	var once sync.Once
	return func() { once.Do(func() { s.active.Add(-1) }) }, nil
}

func (h tunnelHost) Limits() wsframe.Limits {
	return wsframe.Limits{MaxMessageBytes: h.s.cfg.MaxMessageBytes, Heartbeat: h.s.cfg.Heartbeat}
}

// Register adds t to the status, the metrics and the sweep; a gateway
// that is shutting down closes it at once with 1001.
func (h tunnelHost) Register(t wsframe.Tunnel) func(in, out int64) {
	s := h.s
	s.hosted.add(t)
	s.metrics.tunnels.Inc()
	s.metrics.tunnelsOpen.Inc()
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		t.Close(wsframe.CloseGoingAway, "gateway shutting down")
	}
	var once sync.Once
	return func(in, out int64) {
		once.Do(func() {
			s.hosted.remove(t)
			s.metrics.tunnelsOpen.Dec()
			s.metrics.bytesIn.Add(float64(in))
			s.metrics.bytesOut.Add(float64(out))
		})
	}
}
