package services_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wsgateway/rfb"
	"wsgateway/services"
)

func TestSlurmConfig(t *testing.T) {
	dir := t.TempDir()
	node := writeFile(t, dir, "node.sh", "#!/bin/sh\necho hi\n", 0o755)
	notScript := writeFile(t, dir, "plain.txt", "echo hi\n", 0o644)
	for _, tc := range []struct {
		name    string
		entry   string
		wantKey string // "" when the entry is valid
		inMsg   string
	}{
		{"minimal", `{"kind": "slurm", "count": 2, "options": {}}`, "", ""},
		{"everything", `{"kind": "slurm", "count": 2, "options": {"geometry": "800x600"},
			"slurm": {"partition": "viz", "account": "proj_1", "time": "1-02:00:00", "constraint": "gpu&ib",
			          "sbatch_args": ["--mem=4G", "--gres=gpu:1"], "node_script": "node.sh", "poll_seconds": 0.5, "start_timeout": 60}}`, "", ""},
		{"absolute node script", fmt.Sprintf(`{"kind": "slurm", "count": 1, "options": {}, "slurm": {"node_script": %q}}`, node), "", ""},
		{"script is refused", `{"kind": "slurm", "script": "x.sh", "count": 1, "options": {}}`, "script", "node_script"},
		{"no count", `{"kind": "slurm", "options": {}}`, "count", "missing"},
		{"count 0", `{"kind": "slurm", "count": 0, "options": {}}`, "count", "1 to"},
		{"count too big", `{"kind": "slurm", "count": 10001, "options": {}}`, "count", "1 to"},
		{"count max", `{"kind": "slurm", "count": 10000, "options": {}}`, "", ""},
		{"no options", `{"kind": "slurm", "count": 1}`, "options", "missing"},
		{"unknown slurm key", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"queue": "x"}}`, "slurm", "partition"},
		{"partition with a space", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"partition": "a b"}}`, "slurm.partition", "not a Slurm"},
		{"partition as an option", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"partition": "-x"}}`, "slurm.partition", "not a Slurm"},
		{"account injection", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"account": "a;rm"}}`, "slurm.account", "not a Slurm"},
		{"arg not an option", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"sbatch_args": ["mem=4G"]}}`, "slurm.sbatch_args", "not an sbatch option"},
		{"arg sets the output", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"sbatch_args": ["--output=/tmp/x"]}}`, "slurm.sbatch_args", "set by the gateway"},
		{"arg sets the output short", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"sbatch_args": ["-o/tmp/x"]}}`, "slurm.sbatch_args", "set by the gateway"},
		{"arg sets the export", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"sbatch_args": ["--export=NONE"]}}`, "slurm.sbatch_args", "set by the gateway"},
		{"arg wraps", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"sbatch_args": ["--wrap"]}}`, "slurm.sbatch_args", "set by the gateway"},
		{"arg with a newline", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"sbatch_args": ["--mem=1\nG"]}}`, "slurm.sbatch_args", "not an sbatch option"},
		{"poll too slow", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"poll_seconds": 61}}`, "slurm.poll_seconds", "60"},
		{"poll at the bound", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"poll_seconds": 60}}`, "", ""},
		{"poll negative", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"poll_seconds": -1}}`, "slurm.poll_seconds", "60"},
		{"start timeout negative", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"start_timeout": -1}}`, "slurm.start_timeout", "negative"},
		{"missing node script", `{"kind": "slurm", "count": 1, "options": {}, "slurm": {"node_script": "nope.sh"}}`, "slurm.node_script", "cannot read"},
		{"node script without #!", fmt.Sprintf(`{"kind": "slurm", "count": 1, "options": {}, "slurm": {"node_script": %q}}`, notScript), "slurm.node_script", "#!"},
		{"slurm object on a script service", `{"script": "node.sh", "count": 1, "options": {}, "slurm": {}}`, "slurm", "only a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svcs, err := services.ParseConfig("services.json", dir, []byte(`{"Cluster": `+tc.entry+`}`))
			if tc.wantKey == "" {
				if err != nil {
					t.Fatalf("ParseConfig: %v", err)
				}
				if len(svcs) != 1 || svcs[0].Kind != services.KindSlurm || svcs[0].Slurm == nil {
					t.Fatalf("got %+v, want one slurm service", svcs)
				}
				return
			}
			var ce *services.ConfigError
			if !errors.As(err, &ce) || ce.Key != tc.wantKey || !strings.Contains(ce.Msg, tc.inMsg) {
				t.Fatalf("ParseConfig = %v, want a ConfigError on key %q saying %q", err, tc.wantKey, tc.inMsg)
			}
		})
	}
}

func TestSlurmConfigResolvesNodeScript(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "node.sh", "#!/bin/sh\n", 0o755)
	svcs, err := services.ParseConfig("s.json", dir, []byte(`{"C": {"kind": "slurm", "count": 3, "options": {"a": 1},
		"slurm": {"node_script": "node.sh", "partition": "p"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	s := svcs[0]
	if s.Slurm.NodeScript != filepath.Join(dir, "node.sh") || s.Slurm.Partition != "p" || s.Count != 3 || s.Script != "" {
		t.Fatalf("service %+v slurm %+v", s, s.Slurm)
	}
}

func TestShippedClusterConfig(t *testing.T) {
	svcs, err := services.LoadConfig(filepath.Join("..", "scripts", "slurm", "services.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 || svcs[0].Name != "Cluster Desktop" || svcs[0].Kind != services.KindSlurm {
		t.Fatalf("shipped config: %+v", svcs)
	}
}

func TestEntryKindSlurm(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want string
		ok   bool
	}{
		{`{"kind": "slurm"}`, services.KindSlurm, true},
		{`{"kind": "job"}`, services.KindJob, true},
		{`{}`, services.KindService, true},
		{`{"kind": "pbs"}`, "", false},
		{`{"kind": 3}`, "", false},
	} {
		got, err := services.EntryKind([]byte(tc.raw))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("EntryKind(%s) = %q, %v", tc.raw, got, err)
		}
	}
}

func TestClusterTag(t *testing.T) {
	a, b := services.ClusterTag("/srv/a/sessions"), services.ClusterTag("/srv/b/sessions")
	if a == b || !strings.HasPrefix(a, "wsgw:") || len(a) != len("wsgw:")+12 {
		t.Fatalf("tags %q %q", a, b)
	}
	if services.ClusterTag("/srv/a/sessions") != a {
		t.Fatal("the tag of one session root changed")
	}
}

func TestReadyLineVNCPassword(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "vnc.passwd")
	if err := rfb.WritePasswordFile(pwFile, []byte("filepw12")); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open.passwd")
	os.WriteFile(open, rfb.ObfuscatePassword([]byte("x")), 0o644)
	for _, tc := range []struct {
		line   string
		wantPW string
		inErr  string
	}{
		{`{"port": 5901, "vnc_password": "s3cret"}`, "s3cret", ""},
		{fmt.Sprintf(`{"port": 5901, "vnc_password_file": %q}`, pwFile), "filepw12", ""},
		{`{"port": 5901}`, "", ""},
		{`{"unix": "/run/x.sock", "vnc_password": "u"}`, "u", ""},
		{`{"port": 5901, "vnc_password_file": "rel/path"}`, "", "absolute"},
		{fmt.Sprintf(`{"port": 5901, "vnc_password_file": %q}`, open), "", "0600"},
		{fmt.Sprintf(`{"port": 5901, "vnc_password": "a", "vnc_password_file": %q}`, pwFile), "", "not both"},
		{`{"port": 5901, "vnc_password_file": "/nonexistent/pw"}`, "", "no such file"},
	} {
		ep, err := services.ParseReadyLine([]byte(tc.line))
		if tc.inErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.inErr) {
				t.Errorf("ParseReadyLine(%s) = %v, want an error saying %q", tc.line, err, tc.inErr)
			}
			continue
		}
		if err != nil || ep.VNCPassword != tc.wantPW {
			t.Errorf("ParseReadyLine(%s) = %+v, %v; want password %q", tc.line, ep, err, tc.wantPW)
		}
	}
}

// fakeVNC is a VNC server on 127.0.0.1 that requires password; after a
// successful handshake it expects ClientInit and sends "INIT".
func fakeVNC(t *testing.T, password string) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				c.Write([]byte("RFB 003.008\n"))
				v := make([]byte, 12)
				io.ReadFull(c, v)
				c.Write([]byte{1, rfb.SecVncAuth})
				ch := make([]byte, 1)
				io.ReadFull(c, ch)
				var chal [16]byte
				copy(chal[:], "0123456789abcdef")
				c.Write(chal[:])
				resp := make([]byte, 16)
				io.ReadFull(c, resp)
				want := rfb.Response([]byte(password), chal)
				if !bytes.Equal(resp, want[:]) {
					c.Write(binary.BigEndian.AppendUint32([]byte{0, 0, 0, 1}, 3))
					c.Write([]byte("bad"))
					return
				}
				c.Write([]byte{0, 0, 0, 0})
				ci := make([]byte, 1)
				io.ReadFull(c, ci)
				c.Write([]byte("INIT"))
				io.Copy(io.Discard, c)
			}(c)
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// A script service whose ready line carries the VNC password is dialled
// through the RFB adapter: the client sees security type None only, and
// a wrong password fails the dial.
func TestScriptServiceWithVNCPassword(t *testing.T) {
	port := fakeVNC(t, "right-pw")
	for _, tc := range []struct {
		pw string
		ok bool
	}{{"right-pw", true}, {"wrong-pw", false}} {
		t.Run(tc.pw, func(t *testing.T) {
			script := writeScript(t, fmt.Sprintf("printf '%%s\\n' '{\"hostname\": \"127.0.0.1\", \"port\": %d, \"vnc_password\": \"%s\"}'\nexec sleep 60\n", port, tc.pw))
			inst := start(t, newSpec(t, script))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := inst.Dial(ctx)
			if !tc.ok {
				if !errors.Is(err, services.ErrDial) || !errors.Is(err, rfb.ErrAuthFailed) {
					t.Fatalf("Dial with a wrong password = %v, want ErrDial wrapping ErrAuthFailed", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			got := make([]byte, 12)
			io.ReadFull(c, got)
			c.Write([]byte("RFB 003.008\n"))
			types := make([]byte, 2)
			io.ReadFull(c, types)
			if !bytes.Equal(types, []byte{1, rfb.SecNone}) {
				t.Fatalf("types %v, want [1 1]", types)
			}
			c.Write([]byte{rfb.SecNone})
			res := make([]byte, 4)
			io.ReadFull(c, res)
			c.Write([]byte{1})
			init := make([]byte, 4)
			if _, err := io.ReadFull(c, init); err != nil || string(init) != "INIT" {
				t.Fatalf("after the handshake: %q %v", init, err)
			}
		})
	}
}
