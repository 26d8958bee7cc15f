package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// maskedFrame builds a client frame the way RFC 6455 §5.2 lays it out,
// independently of the proxy's parser.
func maskedFrame(op byte, payload []byte, key [4]byte) []byte {
	f := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n < 65536:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	default:
		f = append(f, 0x80|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	f = append(f, key[:]...)
	for i, b := range payload {
		f = append(f, b^key[i%4])
	}
	return f
}

// TestBareParserAcrossReads feeds frames of every length class, data and
// control, cut at random places, and checks that exactly the data
// payloads come out, in order, and that a close frame ends the stream.
func TestBareParserAcrossReads(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		var stream, want []byte
		for i := 0; i < 1+rng.IntN(6); i++ {
			n := []int{0, 1, 125, 126, 127, 65535, 65536, 70000}[rng.IntN(8)]
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			key := [4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}
			op := byte(0x2)
			if rng.IntN(5) == 0 {
				op, p = 0x9, p[:min(len(p), 125)] // a ping: not forwarded
			} else {
				want = append(want, p...)
			}
			stream = append(stream, maskedFrame(op, p, key)...)
		}
		stream = append(stream, maskedFrame(0x8, []byte{0x03, 0xe8}, [4]byte{9, 8, 7, 6})...)
		stream = append(stream, "after the close"...)
		var p bareParser
		var got []byte
		closed := false
		for len(stream) > 0 && !closed {
			k := min(len(stream), 1+rng.IntN(5000))
			chunk := append([]byte(nil), stream[:k]...)
			stream = stream[k:]
			out, c, err := p.feed(chunk)
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			got = append(got, out...)
			closed = c
		}
		if !closed {
			t.Fatalf("round %d: the close frame did not end the stream", round)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: %d bytes out, want %d (first difference at %d)", round, len(got), len(want), firstDiff(got, want))
		}
	}
}

func TestBareParserRefusesUnmaskedFrames(t *testing.T) {
	var p bareParser
	if _, _, err := p.feed([]byte{0x82, 0x01, 'x'}); err == nil {
		t.Fatal("an unmasked client frame was accepted")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestBareProxyEchoesByteExact runs the bare proxy in front of an echo
// server and checks messages of every length class both ways, then the
// close handshake that wsbench's set-up test relies on.
func TestBareProxyEchoesByteExact(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- bareServe(ctx, ln, echo.Addr().String()) }()

	ws, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+ln.Addr().String()+"/anything", nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = ws.SetReadDeadline(time.Now().Add(20 * time.Second))
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 125, 126, 65535, 65536, 300000} {
		msg := make([]byte, n)
		for i := range msg {
			msg[i] = byte(rng.Uint32())
		}
		if err := ws.WriteMessage(websocket.BinaryMessage, msg); err != nil {
			t.Fatal(err)
		}
		// The proxy frames each read of the service as one message: read
		// messages until n bytes are back.
		var got []byte
		for len(got) < n {
			mt, p, err := ws.ReadMessage()
			if err != nil {
				t.Fatalf("%d bytes: after %d back: %v", n, len(got), err)
			}
			if mt != websocket.BinaryMessage {
				t.Fatalf("message type %d", mt)
			}
			got = append(got, p...)
		}
		if !bytes.Equal(got, msg) {
			t.Fatalf("%d bytes: echo differs at %d", n, firstDiff(got, msg))
		}
	}
	if err := ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	_, _, err = ws.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("after our close: %v, want the close frame 1000 back", err)
	}
	ws.Close()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("the proxy stopped with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy did not stop with its context")
	}
}

// TestBareParserEmptyClose: a close frame without a payload ends the
// stream too.
func TestBareParserEmptyClose(t *testing.T) {
	var p bareParser
	in := append(maskedFrame(0x2, []byte("abc"), [4]byte{1, 2, 3, 4}), maskedFrame(0x8, nil, [4]byte{5, 6, 7, 8})...)
	in = append(in, "trailing"...)
	out, closed, err := p.feed(in)
	if err != nil || !closed || string(out) != "abc" {
		t.Fatalf("out %q closed %v err %v", out, closed, err)
	}
}

// TestBareHandshake: the key is found in a head split over reads; a head
// without a key, or over 4 KiB, is refused; what follows the head is
// kept; a backend that is down gets the client a 502.
func TestBareHandshake(t *testing.T) {
	head := "GET /x HTTP/1.1\r\nHost: a\r\nsec-websocket-key:  dGhlIHNhbXBsZSBub25jZQ== \r\n\r\n"
	cases := []struct {
		name     string
		parts    []string
		key, err string
		rest     string
	}{
		{"split", []string{head[:10], head[10:40], head[40:], "\x82"}, "dGhlIHNhbXBsZSBub25jZQ==", "", ""},
		{"data after the head", []string{head + "\x82\x80"}, "dGhlIHNhbXBsZSBub25jZQ==", "", "\x82\x80"},
		{"no key", []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n"}, "", "no Sec-WebSocket-Key", ""},
		{"too long", []string{"GET / HTTP/1.1\r\nX: " + strings.Repeat("a", 5000)}, "", "too long", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, s := net.Pipe()
			defer c.Close()
			defer s.Close()
			go func() {
				for _, p := range tc.parts {
					if _, err := c.Write([]byte(p)); err != nil {
						return
					}
				}
			}()
			key, rest, err := bareHandshake(s)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || key != tc.key || string(rest) != tc.rest {
				t.Fatalf("key %q rest %q err %v", key, rest, err)
			}
		})
	}
	// The backend is down: 502.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = bareServe(ctx, ln, deadAddr) }()
	_, resp, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+ln.Addr().String()+"/", nil)
	if err == nil || resp == nil || resp.StatusCode != 502 {
		t.Fatalf("backend down: %v %v", resp, err)
	}
}
