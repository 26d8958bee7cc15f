package wsframe

import (
	"fmt"
	"time"
)

// Host is what a websocket passthrough that lives outside the gateway
// (the launcher's /proxy) gets from the gateway so that its tunnels obey
// the same rules as the gateway's own: one cap on open tunnels, the same
// message limit and heartbeat, one policy sweep, and a place in the
// status and the metrics.
type Host interface {
	// Admit takes one place under the gateway's cap on open tunnels;
	// release gives it back (once, however often it is called). The
	// error is a sentence for the refused client.
	Admit() (release func(), err error)
	// Limits are the gateway's limits for tunnels.
	Limits() Limits
	// Register adds an open tunnel to the gateway's status, metrics and
	// policy sweep; done removes it and counts its payload bytes.
	Register(t Tunnel) (done func(bytesIn, bytesOut int64))
}

// Limits are the per-tunnel limits of the gateway.
type Limits struct {
	// MaxMessageBytes closes with 1009 a client message over it (0: no
	// limit).
	MaxMessageBytes int64
	// Heartbeat, when set, is how often clients are pinged; a client
	// that neither reads nor answers for two periods is closed with 1001.
	Heartbeat time.Duration
}

// Tunnel is a tunnel under the gateway's rules: the gateway's own and
// those registered with a Host. No method may block: the gateway calls
// them for every tunnel from one goroutine.
type Tunnel interface {
	// Check applies the heartbeat: it is called about once a second,
	// with ping true when a heartbeat is due.
	Check(now time.Time, ping bool)
	// Close ends the tunnel with a close frame of code and reason.
	Close(code int, reason string)
	// Bytes are the payload bytes so far, client to service and back.
	Bytes() (in, out int64)
}

// HeartbeatLost is the reason a client is dropped (with 1001) at now when
// its last sign of life (a pong, or data it took) was at alive: after
// two heartbeat periods and a second without one. It is "" while the
// client is alive or when the heartbeat is off.
func (l Limits) HeartbeatLost(now, alive time.Time) string {
	hb := l.Heartbeat
	if hb <= 0 || now.Sub(alive) <= 2*hb+time.Second {
		return ""
	}
	return fmt.Sprintf("the browser did not answer pings nor read for %s", (2 * hb).Round(time.Second))
}
