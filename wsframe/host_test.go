package wsframe

import (
	"testing"
	"time"
)

func TestHeartbeatLost(t *testing.T) {
	alive := time.Unix(1000, 0)
	const lost = "the browser did not answer pings nor read for 2s"
	for _, c := range []struct {
		name  string
		hb    time.Duration
		since time.Duration
		want  string
	}{
		{"off", 0, time.Hour, ""},
		{"just heard from", time.Second, 0, ""},
		{"two periods and a second", time.Second, 3 * time.Second, ""},
		{"a moment more", time.Second, 3*time.Second + time.Nanosecond, lost},
		{"long silent", time.Second, time.Minute, lost},
		{"default period", 30 * time.Second, 61 * time.Second, ""},
		{"default period, lost", 30 * time.Second, 62 * time.Second, "the browser did not answer pings nor read for 1m0s"},
	} {
		if got := (Limits{Heartbeat: c.hb}).HeartbeatLost(alive.Add(c.since), alive); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
