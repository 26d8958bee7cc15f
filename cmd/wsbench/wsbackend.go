package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// wsReadyLine is what "wsbench -serve_ws PORT" prints once it listens;
// the launcher config waits for it.
const wsReadyLine = "wsbench ws backend ready"

// serveWSBackend is the websocket counterpart of the TCP backend, for the
// /proxy passthrough (websocket to websocket): the first message selects
// source, sink or echo as its first byte. A sink answers a text message
// with the number of payload bytes it has received, so that the client
// knows when an upload has arrived. It runs until ctx ends or its parent
// goes away.
func serveWSBackend(ctx context.Context, port int, stdout io.Writer) error {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	src := make([]byte, chunk)
	for i := range src {
		src[i] = byte(i*7 + 1)
	}
	// Write buffers are pooled (held only while a message is written) and
	// the read buffer is small (large payloads are read past it), so that
	// set-ups do not allocate 128 KiB each.
	up := websocket.Upgrader{ReadBufferSize: 4096, WriteBufferSize: chunk, WriteBufferPool: &sync.Pool{},
		CheckOrigin: func(*http.Request) bool { return true }}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		mt, first, err := ws.ReadMessage()
		if err != nil || len(first) == 0 {
			return
		}
		buf := make([]byte, 4096)
		switch first[0] {
		case modeSource:
			for {
				if err := ws.WriteMessage(websocket.BinaryMessage, src); err != nil {
					return
				}
			}
		case modeSink:
			buf = make([]byte, chunk)
			var n int64
			for {
				mt, rd, err := ws.NextReader()
				if err != nil {
					return
				}
				if mt == websocket.TextMessage {
					_, _ = io.Copy(io.Discard, rd)
					if err := ws.WriteMessage(websocket.TextMessage, strconv.AppendInt(nil, n, 10)); err != nil {
						return
					}
					continue
				}
				for {
					k, err := rd.Read(buf)
					n += int64(k)
					if err == io.EOF {
						break
					}
					if err != nil {
						return
					}
				}
			}
		case modeEcho:
			if len(first) > 1 {
				if err := ws.WriteMessage(mt, first[1:]); err != nil {
					return
				}
			}
			var msg bytes.Buffer
			for {
				mt, rd, err := ws.NextReader()
				if err != nil {
					return
				}
				msg.Reset()
				if _, err := msg.ReadFrom(rd); err != nil {
					return
				}
				if err := ws.WriteMessage(mt, msg.Bytes()); err != nil {
					return
				}
			}
		}
	})}
	go func() { _ = srv.Serve(ln) }()
	fmt.Fprintln(stdout, wsReadyLine)
	ppid := os.Getppid()
	for end := time.Now().Add(time.Hour); time.Now().Before(end) && os.Getppid() == ppid; {
		if !sleepCtx(ctx, 500*time.Millisecond) {
			break
		}
	}
	return srv.Close()
}

// startWSDirect starts "wsbench -serve_ws" as its own process: the direct
// column of the /proxy table.
func startWSDirect(ctx context.Context, dir string) (*target, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		p, err := startProc("ws backend", filepath.Join(dir, "ws-backend.log"), nil, self, "-serve_ws", strconv.Itoa(port))
		if err != nil {
			return nil, err
		}
		if err = waitListening(ctx, p, addr, 10*time.Second); err == nil {
			return &target{name: "direct ws", kind: "direct", addr: addr, ws: true, wsPath: "/ws", proc: p, ackSink: true,
				backendPG: []int{p.pid()}}, nil
		}
		p.stop(time.Second)
		if attempt == 2 || ctx.Err() != nil {
			return nil, err
		}
	}
}

// startProxyTarget starts a gateway with a ParaViewWeb launcher config
// whose one application is "wsbench -serve_ws ${port}", asks the launcher
// for a session, and returns the session's /proxy websocket as a target.
func startProxyTarget(ctx context.Context, cfg *config, dir string) (*target, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		lport, err1 := freePort()
		wsPort, err2 := freePort()
		appPort, err3 := freePort()
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("no free port: %v %v %v", err1, err2, err3)
		}
		conf := map[string]any{
			"configuration": map[string]any{
				"host": "127.0.0.1", "port": lport, "endpoint": "paraview",
				"sessionURL": "ws://USE_HOST/proxy?sessionId=${id}&path=ws",
				"log_dir":    filepath.Join(dir, "launcher-logs"), "timeout": 25,
			},
			"resources": []any{map[string]any{"host": "127.0.0.1", "port_range": []int{appPort, appPort}}},
			"apps": map[string]any{
				"wsbench": map[string]any{"cmd": []string{self, "-serve_ws", "${port}"}, "ready_line": wsReadyLine},
			},
		}
		b, _ := json.MarshalIndent(conf, "", "  ")
		confPath := filepath.Join(dir, "launcher.config")
		if err := os.WriteFile(confPath, b, 0o644); err != nil {
			return nil, err
		}
		argv := []string{cfg.gateway, "--verbose", "0", "--bind_address", "127.0.0.1",
			"--session_dir", filepath.Join(dir, "sessions-proxy"), "--launcher_config", confPath}
		argv = append(append(argv, cfg.gatewayArgs...), strconv.Itoa(wsPort))
		p, err := startProc("wsgateway", filepath.Join(dir, "wsgateway-proxy.log"), cfg.gatewayEnv, argv...)
		if err != nil {
			return nil, err
		}
		laddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(lport))
		if err = waitListening(ctx, p, laddr, 15*time.Second); err == nil {
			var id string
			id, err = launchSession(ctx, laddr)
			if err == nil {
				t := &target{name: "wsgateway /proxy", kind: "wsgateway", addr: laddr, ws: true,
					wsPath: "/proxy?sessionId=" + id + "&path=ws", proc: p, ackSink: true, proxyPG: []int{p.pid()}}
				if pg := pgroupOf("-serve_ws", strconv.Itoa(appPort)); pg != 0 && pg != p.pid() {
					t.backendPG = []int{pg}
				}
				return t, nil
			}
		}
		p.stop(time.Second)
		if attempt == 2 || ctx.Err() != nil {
			return nil, err
		}
	}
}

// pgroupOf is the process group of the process whose command line ends
// with the given arguments (0 if none).
func pgroupOf(args ...string) int {
	want := []byte(strings.Join(args, "\x00") + "\x00")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.HasSuffix(b, want) {
			continue
		}
		if pg, _, ok := statOf(pid); ok {
			return pg
		}
	}
	return 0
}

// launchSession POSTs {"application": "wsbench"} to the launcher, as the
// wslink client does (no Content-Type), and returns the session id.
func launchSession(ctx context.Context, laddr string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+laddr+"/paraview/",
		bytes.NewReader([]byte(`{"application": "wsbench"}`)))
	if err != nil {
		return "", err
	}
	cl := &http.Client{Timeout: 40 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := cl.Do(req)
	if err != nil {
		return "", fmt.Errorf("launcher: %w", err)
	}
	defer resp.Body.Close()
	var ans struct {
		ID         string `json:"id"`
		SessionURL string `json:"sessionURL"`
		Error      string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&ans); err != nil || ans.ID == "" {
		return "", fmt.Errorf("launcher answered HTTP %d %s %v", resp.StatusCode, ans.Error, err)
	}
	return ans.ID, nil
}
