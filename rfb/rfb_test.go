package rfb

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestReverseBits(t *testing.T) {
	for _, tc := range []struct{ in, want byte }{
		{0x00, 0x00}, {0x01, 0x80}, {0x80, 0x01}, {0x17, 0xe8}, {0x52, 0x4a}, {0xff, 0xff}, {0x0f, 0xf0}, {0x02, 0x40},
	} {
		if got := reverseBits(tc.in); got != tc.want {
			t.Errorf("reverseBits(%#02x) = %#02x, want %#02x", tc.in, got, tc.want)
		}
	}
}

// The obfuscation key as DES sees it is a constant published with every
// VNC password recovery tool: e84ad660c4721ae0.
func TestObfuscationKeyAsDESSeesIt(t *testing.T) {
	if got := hex.EncodeToString(vncKey(obfuscationKey)); got != "e84ad660c4721ae0" {
		t.Fatalf("obfuscation key = %s, want e84ad660c4721ae0", got)
	}
}

func TestVncKeyPadsAndTruncates(t *testing.T) {
	for _, tc := range []struct {
		pw   string
		want string
	}{
		{"", "0000000000000000"},
		{"\x01", "8000000000000000"},
		{"\x01\x02\x03\x04\x05\x06\x07\x08", "8040c020a060e010"},
		{"\x01\x02\x03\x04\x05\x06\x07\x08\x09", "8040c020a060e010"},
	} {
		if got := hex.EncodeToString(vncKey([]byte(tc.pw))); got != tc.want {
			t.Errorf("vncKey(%q) = %s, want %s", tc.pw, got, tc.want)
		}
	}
}

func TestObfuscateRoundTrip(t *testing.T) {
	for _, pw := range []string{"", "a", "secret", "exactly8", "longer than eight"} {
		file := ObfuscatePassword([]byte(pw))
		if len(file) != 8 {
			t.Fatalf("obfuscated %q is %d bytes, want 8", pw, len(file))
		}
		var clear [8]byte
		copy(clear[:], pw)
		if bytes.Equal(file, clear[:]) {
			t.Fatalf("obfuscated %q holds the password in clear", pw)
		}
		got, err := DeobfuscatePassword(file)
		if err != nil {
			t.Fatal(err)
		}
		want := pw
		if len(want) > 8 {
			want = want[:8]
		}
		if string(got) != want {
			t.Errorf("round trip of %q = %q, want %q", pw, got, want)
		}
	}
	if _, err := DeobfuscatePassword(make([]byte, 7)); err == nil {
		t.Fatal("a 7-byte password file was accepted")
	}
	if _, err := DeobfuscatePassword(make([]byte, 8)); err != nil {
		t.Fatalf("an 8-byte password file was refused: %v", err)
	}
}

func TestPasswordFileChecks(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := WritePasswordFile(good, []byte("s3cret")); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(good)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("password file mode %04o, want 0600", st.Mode().Perm())
	}
	if err := WritePasswordFile(good, []byte("other")); err == nil {
		t.Fatal("WritePasswordFile replaced an existing file")
	}
	pw, err := ReadPasswordFile(good)
	if err != nil || string(pw) != "s3cret" {
		t.Fatalf("ReadPasswordFile = %q, %v", pw, err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620, 0o602} {
		p := filepath.Join(dir, "m"+strconv.FormatUint(uint64(mode), 8))
		if err := os.WriteFile(p, ObfuscatePassword([]byte("x")), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadPasswordFile(p); err == nil || !strings.Contains(err.Error(), "0600") {
			t.Errorf("mode %04o: err = %v, want a refusal asking for 0600", mode, err)
		}
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPasswordFile(link); err == nil {
		t.Fatal("a symbolic link to a password file was followed")
	}
	if _, err := ReadPasswordFile(dir); err == nil {
		t.Fatal("a directory was read as a password file")
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("1234567"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadPasswordFile(short); err == nil {
		t.Fatal("a 7-byte password file was read")
	}
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want version
		ok   bool
	}{
		{"RFB 003.003\n", v33, true},
		{"RFB 003.006\n", v33, true},
		{"RFB 003.007\n", v37, true},
		{"RFB 003.008\n", v38, true},
		{"RFB 003.889\n", v38, true},
		{"RFB 004.000\n", v38, true},
		{"RFB 002.009\n", 0, false},
		{"RFB 003.008", 0, false},
		{"RFB 003,008\n", 0, false},
		{"XYZ 003.008\n", 0, false},
		{"RFB 003.00x\n", 0, false},
		{"RFB 003.008\r", 0, false},
	} {
		got, err := parseVersion([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseVersion(%q) = %v, %v; want %v ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrProtocol) {
			t.Errorf("parseVersion(%q) error %v is not ErrProtocol", tc.in, err)
		}
	}
}

// fakeServer plays a VNC server's side of the handshake on a pipe.
type fakeServer struct {
	version  string
	types    []byte // nil: 3.3 style, securityType33 is sent
	type33   uint32
	reason   string // sent after a zero count or type
	password string // the password it accepts
	result   func(ok bool) []byte
}

func (f fakeServer) run(c net.Conn) error {
	defer c.Close()
	if _, err := c.Write([]byte(f.version)); err != nil {
		return err
	}
	var cv [12]byte
	if _, err := io.ReadFull(c, cv[:]); err != nil {
		return err
	}
	reason := binary.BigEndian.AppendUint32(nil, uint32(len(f.reason)))
	reason = append(reason, f.reason...)
	if f.types == nil {
		c.Write(binary.BigEndian.AppendUint32(nil, f.type33))
		if f.type33 == 0 {
			c.Write(reason)
			return nil
		}
		if f.type33 != SecVncAuth {
			return nil
		}
	} else {
		c.Write(append([]byte{byte(len(f.types))}, f.types...))
		if len(f.types) == 0 {
			c.Write(reason)
			return nil
		}
		var choice [1]byte
		if _, err := io.ReadFull(c, choice[:]); err != nil {
			return err
		}
		if choice[0] != SecVncAuth {
			return fmt.Errorf("client chose %d", choice[0])
		}
	}
	ch := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	c.Write(ch[:])
	var resp [16]byte
	if _, err := io.ReadFull(c, resp[:]); err != nil {
		return err
	}
	want := Response([]byte(f.password), ch)
	c.Write(f.result(resp == want))
	// Expect ClientInit when accepted.
	var ci [1]byte
	_, _ = io.ReadFull(c, ci[:])
	return nil
}

func okOrFail(reason string) func(bool) []byte {
	return func(ok bool) []byte {
		if ok {
			return []byte{0, 0, 0, 0}
		}
		b := []byte{0, 0, 0, 1}
		if reason != "" {
			b = binary.BigEndian.AppendUint32(b, uint32(len(reason)))
			b = append(b, reason...)
		}
		return b
	}
}

func TestAuthenticateAgainstFakeServers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		srv     fakeServer
		pw      string
		wantErr error
		inErr   string
	}{
		{"3.8 ok", fakeServer{version: "RFB 003.008\n", types: []byte{2}, password: "pw", result: okOrFail("")}, "pw", nil, ""},
		{"3.8 several types", fakeServer{version: "RFB 003.008\n", types: []byte{16, 2, 19}, password: "pw", result: okOrFail("")}, "pw", nil, ""},
		{"3.7 ok", fakeServer{version: "RFB 003.007\n", types: []byte{2}, password: "pw", result: okOrFail("")}, "pw", nil, ""},
		{"3.3 ok", fakeServer{version: "RFB 003.003\n", type33: 2, password: "pw", result: okOrFail("")}, "pw", nil, ""},
		{"3.8 wrong password", fakeServer{version: "RFB 003.008\n", types: []byte{2}, password: "pw", result: okOrFail("Authentication failed")}, "nope", ErrAuthFailed, "Authentication failed"},
		{"3.7 wrong password", fakeServer{version: "RFB 003.007\n", types: []byte{2}, password: "pw", result: okOrFail("")}, "nope", ErrAuthFailed, ""},
		{"3.8 None only", fakeServer{version: "RFB 003.008\n", types: []byte{1}}, "pw", ErrNoVncAuth, "[1]"},
		{"3.8 refused", fakeServer{version: "RFB 003.008\n", types: []byte{}, reason: "too many"}, "pw", ErrProtocol, "too many"},
		{"3.3 refused", fakeServer{version: "RFB 003.003\n", type33: 0, reason: "go away"}, "pw", ErrProtocol, "go away"},
		{"3.3 None", fakeServer{version: "RFB 003.003\n", type33: 1}, "pw", ErrNoVncAuth, "type 1"},
		{"not RFB", fakeServer{version: "HTTP/1.1 400\n"}, "pw", ErrProtocol, "version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			srvErr := make(chan error, 1)
			go func() { srvErr <- tc.srv.run(b) }()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := Authenticate(ctx, a, []byte(tc.pw))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Authenticate: %v", err)
				}
				a.Write([]byte{1}) // ClientInit
			} else if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.inErr) {
				t.Fatalf("Authenticate = %v, want %v containing %q", err, tc.wantErr, tc.inErr)
			}
			a.Close()
			<-srvErr
		})
	}
}

func TestAuthenticateHonoursContext(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- Authenticate(ctx, a, []byte("pw")) }()
	cancel() // the server never speaks
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Authenticate = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Authenticate did not return after its context was cancelled")
	}
}

// server is the far side of a NoneConn: what the client sends through
// after the handshake.
func TestNoneConnHandshakes(t *testing.T) {
	for _, tc := range []struct {
		name      string
		writes    []string // what the client writes, in pieces
		wantRead  string   // what the client reads before the server's bytes
		passed    string   // what reaches the server
		wantFail  bool
		failWrite int // the index of the write that fails
	}{
		{"3.8", []string{"RFB 003.008\n", "\x01", "\x01"}, "RFB 003.008\n\x01\x01\x00\x00\x00\x00", "\x01", false, 0},
		{"3.8 byte by byte", splitBytes("RFB 003.008\n\x01\x00"), "RFB 003.008\n\x01\x01\x00\x00\x00\x00", "\x00", false, 0},
		{"3.8 choice and init together", []string{"RFB 003.008\n", "\x01\x01rest"}, "RFB 003.008\n\x01\x01\x00\x00\x00\x00", "\x01rest", false, 0},
		{"3.889", []string{"RFB 003.889\n", "\x01", "\x01"}, "RFB 003.008\n\x01\x01\x00\x00\x00\x00", "\x01", false, 0},
		{"3.7: no SecurityResult for None", []string{"RFB 003.007\n", "\x01", "\x01"}, "RFB 003.008\n\x01\x01", "\x01", false, 0},
		{"3.3: the server names None", []string{"RFB 003.003\n", "\x01"}, "RFB 003.008\n\x00\x00\x00\x01", "\x01", false, 0},
		{"3.8 chooses VncAuth", []string{"RFB 003.008\n", "\x02"}, "RFB 003.008\n\x01\x01\x00\x00\x00\x01\x00\x00\x00\x26only security type None (1) is offered", "", true, 1},
		{"3.7 chooses VncAuth", []string{"RFB 003.007\n", "\x02"}, "RFB 003.008\n\x01\x01", "", true, 1},
		{"garbage version", []string{"GET / HTTP/1.1\r\n"}, "RFB 003.008\n", "", true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			nc := NewNoneConn(client)
			got := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(server)
				got <- b
			}()
			var read bytes.Buffer
			readDone := make(chan error, 1)
			go func() {
				buf := make([]byte, 3)
				for read.Len() < len(tc.wantRead) {
					n, err := nc.Read(buf)
					read.Write(buf[:n])
					if err != nil {
						readDone <- err
						return
					}
				}
				readDone <- nil
			}()
			var werr error
			for i, w := range tc.writes {
				n, err := nc.Write([]byte(w))
				if err != nil {
					if !tc.wantFail || i != tc.failWrite {
						t.Fatalf("write %d: %v", i, err)
					}
					werr = err
					break
				}
				if n != len(w) {
					t.Fatalf("write %d wrote %d of %d", i, n, len(w))
				}
			}
			if tc.wantFail && !errors.Is(werr, ErrProtocol) {
				t.Fatalf("the handshake did not fail with ErrProtocol: %v", werr)
			}
			select {
			case err := <-readDone:
				if err != nil {
					t.Fatalf("read: %v (read %q)", err, read.String())
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("read only %q", read.String())
			}
			if read.String() != tc.wantRead {
				t.Fatalf("client read %q, want %q", read.String(), tc.wantRead)
			}
			if tc.wantFail {
				if n, err := nc.Read(make([]byte, 10)); n != 0 || !errors.Is(err, ErrProtocol) {
					t.Fatalf("Read after a failed handshake = %d, %v", n, err)
				}
			}
			nc.Close()
			if b := <-got; string(b) != tc.passed {
				t.Fatalf("server got %q, want %q", b, tc.passed)
			}
		})
	}
}

func splitBytes(s string) []string {
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i : i+1]
	}
	return out
}

func TestNoneConnPassesServerBytesAfterHandshake(t *testing.T) {
	client, server := net.Pipe()
	nc := NewNoneConn(client)
	go func() {
		var init [1]byte
		io.ReadFull(server, init[:])
		server.Write([]byte("SERVERINIT"))
		server.Close()
	}()
	buf := make([]byte, 64)
	var read bytes.Buffer
	if _, err := nc.Write([]byte("RFB 003.008\n")); err != nil {
		t.Fatal(err)
	}
	for read.Len() < 14 {
		n, err := nc.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		read.Write(buf[:n])
	}
	if _, err := nc.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Write([]byte{1}); err != nil { // ClientInit
		t.Fatal(err)
	}
	rest, err := io.ReadAll(nc)
	if err != nil {
		t.Fatal(err)
	}
	read.Write(rest)
	if want := "RFB 003.008\n\x01\x01\x00\x00\x00\x00SERVERINIT"; read.String() != want {
		t.Fatalf("client read %q, want %q", read.String(), want)
	}
}

func TestNoneConnCloseWakesReader(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	nc := NewNoneConn(client)
	buf := make([]byte, 12)
	if n, err := io.ReadFull(nc, buf); n != 12 || err != nil {
		t.Fatalf("greeting: %d %v", n, err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := nc.Read(buf)
		errc <- err
	}()
	nc.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read after Close = %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not wake a waiting Read")
	}
}

// xvnc starts a real TigerVNC server on 127.0.0.1 that requires VNC
// authentication with the password in a file written by WritePasswordFile.
func xvnc(t *testing.T, password string) string {
	t.Helper()
	bin, err := exec.LookPath("Xvnc")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("Xvnc is missing (Debian package tigervnc-standalone-server)")
		}
		t.Skip("Xvnc is missing (Debian package tigervnc-standalone-server)")
	}
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "passwd")
	if err := WritePasswordFile(pwFile, []byte(password)); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; attempt < 5; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		dfile, err := os.Create(filepath.Join(dir, "display"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "-displayfd", "3", "-geometry", "320x200", "-depth", "24",
			"-rfbport", strconv.Itoa(port), "-interface", "127.0.0.1",
			"-SecurityTypes", "VncAuth", "-PasswordFile", pwFile, "-nolisten", "tcp")
		cmd.ExtraFiles = []*os.File{dfile}
		cmd.Stderr = io.Discard
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		dfile.Close()
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				return addr
			}
			select {
			case <-exited:
				deadline = time.Time{}
			case <-time.After(20 * time.Millisecond):
			}
		}
		cmd.Process.Kill()
	}
	t.Fatal("Xvnc did not start")
	return ""
}

func TestAgainstXvnc(t *testing.T) {
	addr := xvnc(t, "Pa55w0rd")
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("offers only VncAuth", func(t *testing.T) {
		c := dial()
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		var v [12]byte
		if _, err := io.ReadFull(c, v[:]); err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("RFB 003.008\n"))
		var n [1]byte
		io.ReadFull(c, n[:])
		types := make([]byte, n[0])
		io.ReadFull(c, types)
		if !bytes.Equal(types, []byte{SecVncAuth}) {
			t.Fatalf("Xvnc offers %v, want only [2]", types)
		}
		// Choosing None anyway is refused.
		c.Write([]byte{SecNone})
		rest, _ := io.ReadAll(c)
		if len(rest) >= 4 && binary.BigEndian.Uint32(rest[:4]) == 0 {
			t.Fatalf("Xvnc accepted security type None: %q", rest)
		}
	})
	t.Run("right password", func(t *testing.T) {
		c := dial()
		defer c.Close()
		if err := Authenticate(ctx, c, []byte("Pa55w0rd")); err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		// Through the None presentation, a client gets ServerInit.
		nc := NewNoneConn(c)
		cl, srv := net.Pipe()
		go func() {
			defer srv.Close()
			go io.Copy(nc, srv)
			io.Copy(srv, nc)
		}()
		_ = cl.SetDeadline(time.Now().Add(10 * time.Second))
		var v [12]byte
		io.ReadFull(cl, v[:])
		if string(v[:]) != "RFB 003.008\n" {
			t.Fatalf("greeting %q", v)
		}
		cl.Write([]byte("RFB 003.008\n"))
		var types [2]byte
		io.ReadFull(cl, types[:])
		if types != [2]byte{1, SecNone} {
			t.Fatalf("security types %v, want [1 1]", types)
		}
		cl.Write([]byte{SecNone})
		var res [4]byte
		io.ReadFull(cl, res[:])
		if res != [4]byte{} {
			t.Fatalf("security result %v", res)
		}
		cl.Write([]byte{1}) // ClientInit, shared
		var si [24]byte
		if _, err := io.ReadFull(cl, si[:]); err != nil {
			t.Fatalf("ServerInit: %v", err)
		}
		w, h := binary.BigEndian.Uint16(si[0:2]), binary.BigEndian.Uint16(si[2:4])
		if w != 320 || h != 200 {
			t.Fatalf("ServerInit says %dx%d, want 320x200", w, h)
		}
		cl.Close()
		nc.Close()
	})
	t.Run("wrong password", func(t *testing.T) {
		c := dial()
		defer c.Close()
		err := Authenticate(ctx, c, []byte("Pa55w0rx"))
		if !errors.Is(err, ErrAuthFailed) {
			t.Fatalf("Authenticate with a wrong password = %v, want ErrAuthFailed", err)
		}
	})
}
