package gateway

import (
	"fmt"
	"sync"

	"wsgateway/wsframe"
)

// TunnelHost is the gateway's side of wsframe.Host, for the launcher.
func (s *Server) TunnelHost() wsframe.Host { return tunnelHost{s} }

type tunnelHost struct{ s *Server }

// Admit counts a hosted tunnel like a websocket handler of the gateway.
func (h tunnelHost) Admit() (func(), error) {
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

// Register adds t to the gateway's tunnels: the status, the metrics,
// the policy sweep and the shutdown; a gateway that is shutting down
// closes it at once with 1001.
func (h tunnelHost) Register(t wsframe.Tunnel) func(in, out int64) {
	s := h.s
	s.metrics.tunnels.Inc()
	s.metrics.tunnelsOpen.Inc()
	s.mu.Lock()
	closing := s.closing
	s.tunnels[t] = struct{}{}
	s.mu.Unlock()
	if closing {
		t.Close(wsframe.CloseGoingAway, "gateway shutting down")
	}
	var once sync.Once
	return func(in, out int64) {
		once.Do(func() {
			s.mu.Lock()
			delete(s.tunnels, t)
			s.mu.Unlock()
			s.metrics.tunnelsOpen.Dec()
			s.metrics.bytesIn.Add(float64(in))
			s.metrics.bytesOut.Add(float64(out))
		})
	}
}
