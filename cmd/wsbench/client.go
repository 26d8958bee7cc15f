package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
)

// target is one thing the client measures: the backend itself (direct),
// or a websocket proxy in front of it.
type target struct {
	name   string // "direct TCP", "bare proxy", "wsgateway", "websockify"
	kind   string // "direct", "bare", "wsgateway", "websockify"
	addr   string // host:port
	ws     bool   // websocket (else a plain stream)
	tls    *tls.Config
	proc   *proc  // the proxy process (nil for direct)
	wsPath string // path of the websocket URL
	// ackSink: the sink is a websocket backend in another process that
	// answers a text message with its byte count (the /proxy table).
	ackSink bool
	// Process groups whose CPU is the proxy's, and the backend's when the
	// backend is a process of its own (the /proxy table).
	proxyPG, backendPG []int
}

// stream is a byte stream over a TCP connection or a websocket: Send
// writes one websocket message (or does one write), Recv reads the next
// bytes whatever the message boundaries.
type stream interface {
	Send(p []byte) error
	Recv(p []byte) (int, error)
	SetDeadline(t time.Time)
	// Close ends the connection cleanly (websocket close handshake).
	Close() error
	// Abort drops the connection.
	Abort()
}

// dial opens a stream to t. big selects 64 KiB websocket buffers (bulk
// transfers); otherwise 4 KiB, as thousands of connections are opened.
func (t *target) dial(ctx context.Context, big bool) (stream, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !t.ws {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", t.addr)
		if err != nil {
			return nil, err
		}
		if t.tls != nil {
			tc := tls.Client(c, t.tls)
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, err
			}
			return &tcpStream{Conn: tc}, nil
		}
		return &tcpStream{Conn: c}, nil
	}
	bs := 4 << 10
	if big {
		bs = chunk
	}
	d := websocket.Dialer{
		Proxy:            nil,
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   bs,
		WriteBufferSize:  bs,
		TLSClientConfig:  t.tls,
	}
	scheme := "ws"
	if t.tls != nil {
		scheme = "wss"
	}
	ws, resp, err := d.DialContext(ctx, scheme+"://"+t.addr+t.wsPath, nil)
	if err != nil {
		if resp != nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
			return nil, fmt.Errorf("%w: HTTP %d %s", err, resp.StatusCode, b)
		}
		return nil, err
	}
	ws.SetReadLimit(-1)
	return &wsStream{ws: ws}, nil
}

type tcpStream struct{ net.Conn }

func (s *tcpStream) Send(p []byte) error {
	_, err := s.Conn.Write(p)
	return err
}

func (s *tcpStream) Recv(p []byte) (int, error) { return s.Conn.Read(p) }

func (s *tcpStream) SetDeadline(t time.Time) { _ = s.Conn.SetDeadline(t) }

func (s *tcpStream) Close() error { return s.Conn.Close() }

func (s *tcpStream) Abort() { _ = s.Conn.Close() }

type wsStream struct {
	ws *websocket.Conn
	r  io.Reader // the message being read
}

func (s *wsStream) Send(p []byte) error { return s.ws.WriteMessage(websocket.BinaryMessage, p) }

// ackCount asks a websocket sink how many payload bytes it has received:
// it answers a text message once everything sent before has arrived.
func (s *wsStream) ackCount() (int64, error) {
	if err := s.ws.WriteMessage(websocket.TextMessage, []byte("count?")); err != nil {
		return 0, err
	}
	for {
		mt, msg, err := s.ws.ReadMessage()
		if err != nil {
			return 0, err
		}
		if mt == websocket.TextMessage {
			return strconv.ParseInt(string(msg), 10, 64)
		}
	}
}

func (s *wsStream) Recv(p []byte) (int, error) {
	for {
		if s.r == nil {
			_, r, err := s.ws.NextReader()
			if err != nil {
				return 0, err
			}
			s.r = r
		}
		n, err := s.r.Read(p)
		if err == io.EOF {
			s.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (s *wsStream) SetDeadline(t time.Time) {
	_ = s.ws.SetReadDeadline(t)
	_ = s.ws.SetWriteDeadline(t)
}

func (s *wsStream) Close() error {
	err := s.ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(2*time.Second))
	if err == nil {
		// Wait for the answering close frame (the clean end), bounded.
		_ = s.ws.SetReadDeadline(time.Now().Add(2 * time.Second))
		for {
			if _, _, err := s.ws.NextReader(); err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) {
					err = fmt.Errorf("no close frame back: %w", err)
				} else {
					err = nil
				}
				s.ws.Close()
				return err
			}
		}
	}
	s.ws.Close()
	return err
}

func (s *wsStream) Abort() { _ = s.ws.NetConn().Close() }

// recvFull reads exactly len(p) bytes.
func recvFull(s stream, p []byte) error {
	for got := 0; got < len(p); {
		n, err := s.Recv(p[got:])
		got += n
		if err != nil {
			if got == len(p) {
				return nil
			}
			return err
		}
	}
	return nil
}

// abortOnCancel drops s when ctx ends, so that no read outlives an
// interrupt; the returned function stops the watch.
func abortOnCancel(ctx context.Context, s stream) func() bool {
	return context.AfterFunc(ctx, s.Abort)
}

// plainHTTP is the client for the gateway's REST API: no proxy.
var plainHTTP = &http.Client{
	Timeout:   10 * time.Second,
	Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4},
}
