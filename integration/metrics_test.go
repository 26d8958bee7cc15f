package integration

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, g *gateway) string {
	t.Helper()
	resp, err := insecureClient.Get(g.httpURL("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no series %s in:\n%s", series, text)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	g, _ := svcGateway(t, 2, nil)
	tok := g.reserve(t, "Echo Service", "")["token"].(string)
	ws, _ := connectToken(t, g, tok)
	roundTrip(t, ws, 100000)
	// The gateway counts the bytes once its write to the service has
	// returned, which may be just after the echo reached the client.
	var in float64
	waitFor(t, "the 100,000 bytes counted in", 10*time.Second, func() bool {
		in = metricValue(t, scrape(t, g), `wsgateway_tunnel_bytes_total{direction="in"}`)
		return in >= 100000
	})
	if in != 100000 {
		t.Errorf("bytes in %v, want 100000", in)
	}
	text := scrape(t, g)
	if v := metricValue(t, text, "wsgateway_tunnels_open"); v != 1 {
		t.Errorf("tunnels_open %v", v)
	}
	if v := metricValue(t, text, `wsgateway_launches_total{result="ok",service="Echo Service"}`); v != 1 {
		t.Errorf("launches %v", v)
	}
	if v := metricValue(t, text, `wsgateway_launch_seconds_count{service="Echo Service"}`); v != 1 {
		t.Errorf("launch histogram count %v", v)
	}
	if v := metricValue(t, text, `wsgateway_sessions{service="Echo Service",state="running"}`); v != 1 {
		t.Errorf("sessions running %v", v)
	}
	if v := metricValue(t, text, `wsgateway_slots_free{service="Echo Service"}`); v != 1 {
		t.Errorf("slots free %v", v)
	}
	ws.Close()
	// Refused upgrades are counted by status.
	dialWS(t, g.wsURL("/?token=nope"), nil)
	dialWS(t, g.wsURL("/"), nil)
	waitFor(t, "tunnel closed", 10*time.Second, func() bool {
		return metricValue(t, scrape(t, g), "wsgateway_tunnels_open") == 0
	})
	text = scrape(t, g)
	if v := metricValue(t, text, `wsgateway_upgrades_refused_total{status="403"}`); v != 1 {
		t.Errorf("refused 403: %v", v)
	}
	if v := metricValue(t, text, `wsgateway_upgrades_refused_total{status="401"}`); v != 1 {
		t.Errorf("refused 401: %v", v)
	}
	// pprof answers administrators only.
	if code, _ := getJSON(t, g.httpURL("/debug/pprof/cmdline"), "Sec-Fetch-Site", "cross-site"); code != http.StatusForbidden {
		t.Errorf("cross-site pprof: %d", code)
	}
	resp, err := insecureClient.Get(g.httpURL("/debug/pprof/"))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("loopback pprof: %v %v", resp, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "goroutine") {
		t.Error("pprof index looks wrong")
	}
}
