// Command wslinksrv is a small wslink server for wsgateway's launcher
// tests: what a ParaViewWeb, VTK-Web or trame process is to the launcher.
// It listens on 127.0.0.1:--port, prints "wslink: Starting factory"
// without a newline once it listens (as wslink does), and serves:
//
//   - /ws: the wslink 2.x protocol: binary frames, each a chunk of a
//     msgpack message with a 12-byte little-endian header [message id
//     u32][offset u32][total size u32]. "wslink.hello" checks the secret
//     (--authKey) and answers {clientID, maxMsgSize} or "Authentication
//     failed"; then "test.echo" answers its arguments and "test.info" the
//     server's port and pid.
//   - /echo: echoes text and binary messages; text commands "close CODE
//     REASON" and "ping DATA" make it close or ping (the pong is reported
//     as "pong DATA"); pings it gets are reported as "got-ping DATA", and
//     the close frames it gets are printed as "close CODE REASON" lines.
//   - "exit" on /echo makes the process exit at once.
//
// Options: --port P (required), --authKey S (default wslink-secret),
// --delay D (wait before listening), --no-ready (never print the ready
// line), --grandchild (start a "sleep 600" child first, and print
// "wslinksrv pid=P grandchild=C"), --args (print the arguments as JSON).
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	headerLen  = 12
	maxMsgSize = 4 << 20 // what the Python server announces by default
	maxTotal   = 64 << 20
)

var (
	out     sync.Mutex
	clients atomic.Int64
	secret  string
	port    int
)

func say(format string, args ...any) {
	out.Lock()
	defer out.Unlock()
	fmt.Fprintf(os.Stdout, format, args...)
}

func main() {
	fs := flag.NewFlagSet("wslinksrv", flag.ExitOnError)
	fs.IntVar(&port, "port", 0, "port to listen on (127.0.0.1)")
	fs.StringVar(&secret, "authKey", "wslink-secret", "the secret clients must send in wslink.hello")
	delay := fs.Duration("delay", 0, "wait this long before listening")
	noReady := fs.Bool("no-ready", false, "never print the ready line")
	grandchild := fs.Bool("grandchild", false, "start a sleeping child first")
	printArgs := fs.Bool("args", false, "print the arguments as a JSON line")
	_ = fs.Parse(os.Args[1:])
	if *printArgs {
		b, _ := json.Marshal(os.Args[1:])
		say("wslinksrv args %s\n", b)
	}
	if *grandchild {
		c := exec.Command("sleep", "600")
		if err := c.Start(); err != nil {
			say("wslinksrv: %v\n", err)
			os.Exit(1)
		}
		say("wslinksrv pid=%d grandchild=%d\n", os.Getpid(), c.Process.Pid)
	}
	if port == 0 {
		fmt.Fprintln(os.Stderr, "wslinksrv: --port is required")
		os.Exit(2)
	}
	time.Sleep(*delay)
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "wslinksrv:", err)
		os.Exit(1)
	}
	if !*noReady {
		say("wslink: Starting factory")
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", serveWslink)
	mux.HandleFunc("/echo", serveEcho)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	_ = srv.Serve(ln)
}

var upgrader = websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}

// serveWslink speaks the wslink protocol on one connection.
func serveWslink(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadLimit(maxTotal)
	clientID := ""
	pending := map[uint32][]byte{}
	var nextID uint32
	for {
		mt, p, err := c.ReadMessage()
		if err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				say("\nclose %d %s\n", ce.Code, ce.Text)
			}
			return
		}
		if mt != websocket.BinaryMessage || len(p) < headerLen {
			say("\nwslinksrv: ignored a non-wslink frame\n")
			continue
		}
		id := binary.LittleEndian.Uint32(p[0:])
		off := binary.LittleEndian.Uint32(p[4:])
		total := binary.LittleEndian.Uint32(p[8:])
		if total > maxTotal || uint64(off)+uint64(len(p)-headerLen) > uint64(total) {
			say("\nwslinksrv: bad chunk header\n")
			return
		}
		buf := pending[id]
		if buf == nil {
			buf = make([]byte, 0, total)
		}
		if int(off) != len(buf) {
			say("\nwslinksrv: chunk out of order\n")
			return
		}
		buf = append(buf, p[headerLen:]...)
		if uint32(len(buf)) < total {
			pending[id] = buf
			continue
		}
		delete(pending, id)
		v, err := decode(buf)
		if err != nil {
			say("\nwslinksrv: %v\n", err)
			return
		}
		msg, _ := v.(map[string]any)
		reply := handle(msg, &clientID)
		if reply == nil {
			continue
		}
		packed, err := encode(reply)
		if err != nil {
			say("\nwslinksrv: %v\n", err)
			return
		}
		nextID++
		if err := sendChunks(c, nextID, packed); err != nil {
			return
		}
	}
}

// handle answers one wslink message; nil sends nothing.
func handle(msg map[string]any, clientID *string) map[string]any {
	rpcID, _ := msg["id"].(string)
	method, _ := msg["method"].(string)
	args, _ := msg["args"].([]any)
	fail := func(code int, text string) map[string]any {
		return map[string]any{"wslink": "1.0", "id": rpcID, "error": map[string]any{"code": code, "message": text}}
	}
	ok := func(result any) map[string]any {
		return map[string]any{"wslink": "1.0", "id": rpcID, "result": result}
	}
	if method == "wslink.hello" {
		var got string
		if len(args) > 0 {
			if a, isMap := args[0].(map[string]any); isMap {
				got, _ = a["secret"].(string)
			}
		}
		if got != secret {
			say("\nwslinksrv: authentication failed\n")
			return fail(-32000, "Authentication failed")
		}
		*clientID = fmt.Sprintf("c%d", clients.Add(1))
		say("\nwslinksrv: authenticated %s\n", *clientID)
		return ok(map[string]any{"clientID": *clientID, "maxMsgSize": maxMsgSize})
	}
	if *clientID == "" {
		return fail(-32000, "Authentication required")
	}
	switch method {
	case "test.echo":
		if args == nil {
			args = []any{}
		}
		return ok(args)
	case "test.info":
		return ok(map[string]any{"port": port, "pid": os.Getpid()})
	case "application.exit.later":
		return ok(nil)
	}
	return fail(-32601, "Unregistered method called: "+method)
}

// sendChunks sends one packed message in chunks of at most maxMsgSize.
func sendChunks(c *websocket.Conn, id uint32, msg []byte) error {
	step := maxMsgSize - headerLen
	for off := 0; off < len(msg) || off == 0; off += step {
		end := off + step
		if end > len(msg) {
			end = len(msg)
		}
		frame := make([]byte, headerLen, headerLen+end-off)
		binary.LittleEndian.PutUint32(frame[0:], id)
		binary.LittleEndian.PutUint32(frame[4:], uint32(off))
		binary.LittleEndian.PutUint32(frame[8:], uint32(len(msg)))
		frame = append(frame, msg[off:end]...)
		if err := c.WriteMessage(websocket.BinaryMessage, frame); err != nil {
			return err
		}
		if end == len(msg) {
			break
		}
	}
	return nil
}

// serveEcho echoes, and obeys the text commands.
func serveEcho(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetReadLimit(maxTotal)
	dl := func() time.Time { return time.Now().Add(5 * time.Second) }
	// Handlers run inside ReadMessage: this goroutine is the only writer.
	c.SetPingHandler(func(d string) error {
		_ = c.WriteMessage(websocket.TextMessage, []byte("got-ping "+d))
		return c.WriteControl(websocket.PongMessage, []byte(d), dl())
	})
	c.SetPongHandler(func(d string) error { return c.WriteMessage(websocket.TextMessage, []byte("pong "+d)) })
	c.SetCloseHandler(func(code int, text string) error {
		say("\nclose %d %s\n", code, text)
		return c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), dl())
	})
	for {
		mt, p, err := c.ReadMessage()
		if err != nil {
			return
		}
		s := string(p)
		switch {
		case mt == websocket.TextMessage && s == "exit":
			say("\nwslinksrv: exiting\n")
			os.Exit(0)
		case mt == websocket.TextMessage && strings.HasPrefix(s, "close "):
			f := strings.SplitN(s+" ", " ", 3)
			code, _ := strconv.Atoi(f[1])
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, strings.TrimSpace(f[2])), dl())
		case mt == websocket.TextMessage && strings.HasPrefix(s, "ping "):
			_ = c.WriteControl(websocket.PingMessage, []byte(strings.TrimPrefix(s, "ping ")), dl())
		default:
			if err := c.WriteMessage(mt, p); err != nil {
				return
			}
		}
	}
}
