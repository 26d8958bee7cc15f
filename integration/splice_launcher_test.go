package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestSpliceLauncherProxyUnderGatewayRules: the launcher's /proxy
// tunnels count against --max_tunnels, show in /v1/status and /metrics,
// close a message over --max_message_bytes with 1009, and are dropped by
// --heartbeat with 1001 and a reason when the client neither reads nor
// answers.
func TestSpliceLauncherProxyUnderGatewayRules(t *testing.T) {
	t.Parallel()
	e := lchStart(t, true, 2, nil, "--max_tunnels", "2", "--max_message_bytes", "4096", "--heartbeat", "1")
	id := e.launch(`{"application": "wslink"}`)["id"].(string)
	url := "ws://" + strings.TrimPrefix(e.base, "http://") + "/proxy?sessionId=" + id + "&path=echo"
	tunnels := func() float64 {
		_, m := getJSON(t, e.g.httpURL("/v1/status"))
		n, _ := m["tunnels"].(float64)
		return n
	}

	ws1, code, body := dialWS(t, url, nil)
	if ws1 == nil {
		t.Fatalf("proxy: %d %v", code, body)
	}
	defer ws1.Close()
	roundTrip(t, ws1, 4096)
	if n := tunnels(); n != 1 {
		t.Errorf("/v1/status tunnels %v with one proxy open, want 1", n)
	}
	text := scrape(t, e.g)
	if v := metricValue(t, text, "wsgateway_tunnels_open"); v != 1 {
		t.Errorf("wsgateway_tunnels_open %v, want 1", v)
	}

	// --max_tunnels 2: a second proxy is served, a third refused.
	ws2, code, body := dialWS(t, url, nil)
	if ws2 == nil {
		t.Fatalf("second proxy: %d %v", code, body)
	}
	defer ws2.Close()
	if _, code, body := dialWS(t, url, nil); code != 503 || !strings.Contains(body["error"].(string), "maximum of 2") {
		t.Errorf("third proxy: %d %v, want 503 naming the cap", code, body)
	}

	// ws1 sends a message over --max_message_bytes: 1009.
	if err := ws1.WriteMessage(websocket.BinaryMessage, make([]byte, 5000)); err != nil {
		t.Fatal(err)
	}
	if _, ce, err := readUntilClose(ws1, 10*time.Second); ce == nil || ce.Code != websocket.CloseMessageTooBig {
		t.Errorf("over the limit: %v %v, want 1009", ce, err)
	}

	// ws2 neither reads nor answers pings: dropped by the heartbeat.
	waitFor(t, "the silent proxy client to be dropped", 30*time.Second, func() bool {
		return strings.Contains(e.g.log.String(), "proxy ended by policy")
	})
	if _, ce, err := readUntilClose(ws2, 10*time.Second); ce == nil || ce.Code != websocket.CloseGoingAway || !strings.Contains(ce.Text, "pings") {
		t.Errorf("silent client: %v %v, want 1001 with a reason", ce, err)
	}
	waitFor(t, "the proxies to leave the status", 20*time.Second, func() bool { return tunnels() == 0 })
	if v := metricValue(t, scrape(t, e.g), "wsgateway_tunnels_open"); v != 0 {
		t.Errorf("wsgateway_tunnels_open %v after the proxies closed", v)
	}
}
