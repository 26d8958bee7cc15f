package services_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
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

// fakeSlurm is a cluster of three shell scripts, sbatch, squeue and
// scancel, put first on PATH. Each reads and writes files in dir, whose
// name reaches it as $FAKE_SLURM (through the session's environment):
//
//   - sbatch keeps its arguments (sbatch.args) and its standard input
//     (sbatch.stdin), then prints sbatch.out, or prints sbatch.fail on
//     stderr and fails when that file exists.
//   - squeue -j pops the first line of states (the last line stays) and
//     answers it. A line is "STATE|Reason|Node;pending ids;output": the
//     first part is printed as squeue's "%T|%r|%N", the pending ids are
//     what the next squeue -t PD prints (the partition's pending jobs in
//     order), and the output, when present, is appended to the job's
//     output file (the node script's ready line, say). The line "INVALID"
//     fails as squeue does for a job it no longer knows, "ERROR" fails as
//     a controller that does not answer, and an empty line prints nothing.
//   - scancel appends its arguments to scancel.log and makes the job
//     CANCELLED, or fails with scancel.fail when that file exists.
type fakeSlurm struct {
	dir string
}

const fakeSbatch = `#!/bin/sh
d="$FAKE_SLURM"
printf '%s\n' "$@" > "$d/sbatch.args"
cat > "$d/sbatch.stdin"
if [ -f "$d/sbatch.fail" ]; then cat "$d/sbatch.fail" >&2; exit 1; fi
cat "$d/sbatch.out"
`

const fakeSqueue = `#!/bin/sh
d="$FAKE_SLURM"
echo "$*" >> "$d/squeue.log"
case " $* " in
*" -t PD "*) tr ' ' '\n' < "$d/pending" 2>/dev/null; exit 0 ;;
esac
line=$(head -n 1 "$d/states")
if [ "$(wc -l < "$d/states")" -gt 1 ]; then
	tail -n +2 "$d/states" > "$d/states.tmp" && mv -f "$d/states.tmp" "$d/states"
fi
case "$line" in
INVALID) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
ERROR) echo "slurm_load_jobs error: Socket timed out on send/recv operation" >&2; exit 1 ;;
esac
rest="${line#*;}"
[ "$rest" = "$line" ] && rest=""
printf '%s\n' "${rest%%;*}" > "$d/pending"
out="${rest#*;}"
[ "$out" = "$rest" ] && out=""
[ -n "$out" ] && printf '%s\n' "$out" >> "$WSGW_SESSION_DIR/job.out"
printf '%s\n' "${line%%;*}"
`

const fakeScancel = `#!/bin/sh
d="$FAKE_SLURM"
echo "$*" >> "$d/scancel.log"
if [ -f "$d/scancel.fail" ]; then cat "$d/scancel.fail" >&2; exit 1; fi
if [ -f "$d/scancel.ignored" ]; then exit 0; fi
echo 'CANCELLED|None|' > "$d/states.tmp" && mv -f "$d/states.tmp" "$d/states"
`

// newFakeSlurm puts the fake Slurm commands first on PATH for the test
// (which therefore does not run in parallel) with sbatch printing
// sbatchOut and squeue answering states in turn.
func newFakeSlurm(t *testing.T, sbatchOut string, states ...string) *fakeSlurm {
	t.Helper()
	f := &fakeSlurm{dir: t.TempDir()}
	writeFile(t, f.dir, "sbatch", fakeSbatch, 0o755)
	writeFile(t, f.dir, "squeue", fakeSqueue, 0o755)
	writeFile(t, f.dir, "scancel", fakeScancel, 0o755)
	f.set(t, "sbatch.out", sbatchOut)
	f.set(t, "states", strings.Join(states, "\n")+"\n")
	t.Setenv("PATH", f.dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return f
}

// set replaces one of the fake's files at once (squeue may be reading).
func (f *fakeSlurm) set(t *testing.T, name, data string) {
	t.Helper()
	tmp := filepath.Join(f.dir, name+".new")
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(f.dir, name)); err != nil {
		t.Fatal(err)
	}
}

// read is one of the fake's files ("" when absent).
func (f *fakeSlurm) read(name string) string {
	b, _ := os.ReadFile(filepath.Join(f.dir, name))
	return string(b)
}

// slurmSpec is a session of a Slurm service in partition "viz" that
// polls squeue every 20 ms.
func slurmSpec(t *testing.T, f *fakeSlurm, o services.SlurmOptions) services.Spec {
	t.Helper()
	if o.PollSeconds == 0 {
		o.PollSeconds = 0.02
	}
	return services.Spec{
		Service:      &services.Service{Name: "Cluster Desktop", Kind: services.KindSlurm, Count: 4, Slurm: &o},
		Index:        3,
		Options:      []byte(`{}`),
		SessionDir:   filepath.Join(t.TempDir(), "session"),
		StartTimeout: 60 * time.Second,
		ExtraEnv:     []string{"FAKE_SLURM=" + f.dir},
	}
}

// submit submits spec's job and stops it when the test ends.
func submit(t *testing.T, spec services.Spec) *services.SlurmJob {
	t.Helper()
	j, err := services.SubmitSlurm(context.Background(), spec, "wsgw:0123456789ab", testLogger(t))
	if err != nil {
		t.Fatalf("SubmitSlurm: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = j.Stop(ctx)
	})
	return j
}

// TestSubmitSlurm: sbatch gets the job's options and the node script,
// and the job id is what --parsable printed; anything else is refused,
// and a refusal says what Slurm said.
func TestSubmitSlurm(t *testing.T) {
	node := writeFile(t, t.TempDir(), "node.sh", "#!/bin/sh\necho node script\n", 0o755)
	for _, tc := range []struct {
		name   string
		out    string
		fail   string // sbatch's stderr when it fails
		wantID string // "" when refused
		inErr  string
	}{
		{"parsable id", "4242\n", "", "4242", ""},
		{"id and cluster", "4242;cluster1\n", "", "4242", ""},
		{"id with spaces", "  4242  \n", "", "4242", ""},
		{"human form", "Submitted batch job 4242\n", "", "", "not a job id"},
		{"nothing", "", "", "", "not a job id"},
		{"negative", "-4242\n", "", "", "not a job id"},
		{"words", "sbatch: warning: whatever\n", "", "", "not a job id"},
		{"refused", "", "sbatch: error: Batch job submission failed: Invalid partition name specified\n", "",
			"Slurm refused the job: sbatch: Invalid partition name specified ("},
		{"refused silently", "", "", "", "Slurm refused the job: sbatch: exit status 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSlurm(t, tc.out, "RUNNING|None|node1")
			if tc.fail != "" || tc.name == "refused silently" {
				f.set(t, "sbatch.fail", tc.fail)
			}
			spec := slurmSpec(t, f, services.SlurmOptions{Partition: "viz", Account: "proj_1", Time: "1:00:00",
				SbatchArgs: []string{"--mem=1G"}, NodeScript: node})
			j, err := services.SubmitSlurm(context.Background(), spec, "wsgw:0123456789ab", testLogger(t))
			recFile := filepath.Join(spec.SessionDir, services.SlurmJobFile)
			if tc.wantID == "" {
				if err == nil || !errors.Is(err, services.ErrStartFailed) || !strings.Contains(err.Error(), tc.inErr) {
					t.Fatalf("SubmitSlurm = %v, %v; want ErrStartFailed saying %q", j, err, tc.inErr)
				}
				if _, err := os.Stat(recFile); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("a refused job left a record: %v", err)
				}
				if log := f.read("scancel.log"); log != "" {
					t.Errorf("scancel ran for a job that has no id: %q", log)
				}
				return
			}
			if err != nil {
				t.Fatalf("SubmitSlurm: %v", err)
			}
			t.Cleanup(func() { _ = j.Stop(context.Background()) })
			if j.ID() != tc.wantID {
				t.Errorf("job id %q, want %q", j.ID(), tc.wantID)
			}
			var rec map[string]any
			if b, err := os.ReadFile(recFile); err != nil || json.Unmarshal(b, &rec) != nil || rec["job_id"] != tc.wantID {
				t.Errorf("job record %s: %v %v", b, rec, err)
			}
			args := strings.Split(strings.TrimSpace(f.read("sbatch.args")), "\n")
			for _, want := range []string{"--parsable", "--job-name=wsgw-Cluster_Desktop-3", "--comment=wsgw:0123456789ab",
				"--chdir=" + spec.SessionDir, "--output=" + filepath.Join(spec.SessionDir, services.SlurmOutputFile),
				"--export=ALL", "--partition=viz", "--account=proj_1", "--time=1:00:00", "--mem=1G"} {
				if !slices.Contains(args, want) {
					t.Errorf("sbatch arguments %q lack %q", args, want)
				}
			}
			if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--constraint") }) {
				t.Errorf("sbatch got a --constraint that was not configured: %q", args)
			}
			if got := f.read("sbatch.stdin"); got != "#!/bin/sh\necho node script\n" {
				t.Errorf("sbatch's batch script %q, want the node script", got)
			}
		})
	}
}

// TestSlurmWaitReady: WaitReady follows the job through squeue to its
// ready line, reports each change of pending reason, queue position and
// node once, and gives up (cancelling the job) when Slurm says the job
// cannot start, ended or vanished, or it runs without a ready line.
func TestSlurmWaitReady(t *testing.T) {
	const ready = `{"hostname": "127.0.0.1", "port": 5999}`
	pending := func(reason string, pos int) services.JobStatus {
		return services.JobStatus{State: "PENDING", Reason: reason, Position: pos}
	}
	for _, tc := range []struct {
		name         string
		opts         services.SlurmOptions
		states       []string
		wantErr      error  // nil: ready
		inErr        string // what the error says
		wantProgress []services.JobStatus
	}{
		{name: "pending then ready", states: []string{
			"PENDING|Priority|;7 4242 9;", "PENDING|Priority|;7 4242 9;", "PENDING|Resources|;4242;",
			"RUNNING|None|node7;;starting Xvnc", "RUNNING|None|node7;;" + ready},
			wantProgress: []services.JobStatus{pending("Priority", 2), pending("Resources", 1), {State: "RUNNING", Reason: "None", Node: "node7"}}},
		{name: "not in the pending list", states: []string{"PENDING|Priority|;7 9;", "RUNNING|None|n1;;" + ready},
			wantProgress: []services.JobStatus{pending("Priority", 0), {State: "RUNNING", Reason: "None", Node: "n1"}}},
		{name: "a reason it may recover from", states: []string{"PENDING|ReqNodeNotAvail|;4242;", "PENDING|NodeDown|;4242;", "RUNNING|None|n1;;" + ready},
			wantProgress: []services.JobStatus{pending("ReqNodeNotAvail", 1), pending("NodeDown", 1), {State: "RUNNING", Reason: "None", Node: "n1"}}},
		{name: "squeue fails once", states: []string{"ERROR", "RUNNING|None|n1;;" + ready},
			wantProgress: []services.JobStatus{{State: "RUNNING", Reason: "None", Node: "n1"}}},
		{name: "suspended, then ready", states: []string{"SUSPENDED|None|n1", "RUNNING|None|n1;;" + ready},
			wantProgress: []services.JobStatus{{State: "RUNNING", Reason: "None", Node: "n1"}}},
		{name: "cannot start", states: []string{"PENDING|Priority|;4242;", "PENDING|PartitionConfig|;4242;"},
			wantErr: services.ErrStartFailed, inErr: "cluster job 4242 cannot start: Slurm says PartitionConfig",
			wantProgress: []services.JobStatus{pending("Priority", 1)}},
		{name: "fails before it is ready", states: []string{"RUNNING|None|node7;;Xvnc: command not found", "FAILED|NonZeroExitCode|node7"},
			wantErr: services.ErrStartFailed, inErr: "cluster job 4242 ended before it was ready: FAILED (Slurm: NonZeroExitCode): Xvnc: command not found",
			wantProgress: []services.JobStatus{{State: "RUNNING", Reason: "None", Node: "node7"}}},
		{name: "vanishes while pending", states: []string{"PENDING|Priority|;4242;", ""},
			wantErr: services.ErrStartFailed, inErr: "cluster job 4242 ended before it was ready: Slurm no longer knows it",
			wantProgress: []services.JobStatus{pending("Priority", 1)}},
		{name: "invalid job id", states: []string{"INVALID"},
			wantErr: services.ErrStartFailed, inErr: "ended before it was ready: Slurm no longer knows it"},
		{name: "a unix socket", states: []string{`RUNNING|None|n1;;{"unix": "/run/x.sock"}`},
			wantErr: services.ErrStartFailed, inErr: "names a TCP hostname and port, not unix",
			wantProgress: []services.JobStatus{{State: "RUNNING", Reason: "None", Node: "n1"}}},
		{name: "runs without a ready line", opts: services.SlurmOptions{StartTimeout: 0.2}, states: []string{"RUNNING|None|n1"},
			wantErr: services.ErrStartTimeout, inErr: "cluster job 4242 runs on n1 but printed no ready line within 200ms",
			wantProgress: []services.JobStatus{{State: "RUNNING", Reason: "None", Node: "n1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSlurm(t, "4242\n", tc.states...)
			o := tc.opts
			o.Partition = "viz"
			spec := slurmSpec(t, f, o)
			j := submit(t, spec)
			var got []services.JobStatus
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err := j.WaitReady(ctx, func(st services.JobStatus) { got = append(got, st) })
			if !slices.Equal(got, tc.wantProgress) {
				t.Errorf("progress %+v, want %+v", got, tc.wantProgress)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.inErr) {
					t.Fatalf("WaitReady = %v, want %v saying %q", err, tc.wantErr, tc.inErr)
				}
				if log := f.read("scancel.log"); log != "4242\n" {
					t.Errorf("scancel ran with %q, want the job cancelled once", log)
				}
				return
			}
			if err != nil {
				t.Fatalf("WaitReady: %v\nsqueue calls:\n%s", err, f.read("squeue.log"))
			}
			if ep := j.Endpoint(); ep.Network != "tcp" || ep.Address != "127.0.0.1:5999" {
				t.Errorf("endpoint %+v, want tcp 127.0.0.1:5999", ep)
			}
			var rec map[string]any
			b, _ := os.ReadFile(filepath.Join(spec.SessionDir, services.SlurmJobFile))
			if json.Unmarshal(b, &rec) != nil || rec["job_id"] != "4242" || rec["hostname"] != "127.0.0.1" || rec["port"] != 5999.0 {
				t.Errorf("job record %s, want the job's node and port", b)
			}
			if log := f.read("scancel.log"); log != "" {
				t.Errorf("a ready job was cancelled: %q", log)
			}
			if strings.Contains(f.read("squeue.log"), "-t PD") && !strings.Contains(f.read("squeue.log"), "-t PD -o %i --sort=-p,i -p viz") {
				t.Errorf("the queue position was not asked of the job's partition:\n%s", f.read("squeue.log"))
			}
		})
	}
}

// TestSlurmJobEnds: once ready, a job that ends by itself or vanishes
// ends the session, and the reason says what Slurm said.
func TestSlurmJobEnds(t *testing.T) {
	const ready = `RUNNING|None|node7;;{"hostname": "127.0.0.1", "port": 5999}`
	for _, tc := range []struct {
		name  string
		after []string // squeue's answers once the job is ready
		want  string
	}{
		{"time limit", []string{"RUNNING|None|node7", "TIMEOUT|TimeLimit|node7"}, "job 4242 reached its time limit (Slurm: TimeLimit)"},
		{"program failed", []string{"RUNNING|None|node7", "FAILED|NonZeroExitCode|node7"},
			"job 4242 failed: the program on the node exited with an error (Slurm: NonZeroExitCode)"},
		{"node failure", []string{"NODE_FAIL|None|node7"}, "job 4242 lost its node (node failure)"},
		{"completing, then cancelled", []string{"COMPLETING|None|node7", "COMPLETING|None|node7", "CANCELLED|None|node7"},
			"job 4242 was cancelled outside the gateway (scancel)"},
		{"suspended, then preempted", []string{"SUSPENDED|None|node7", "PREEMPTED|None|node7"}, "job 4242 was preempted by another job"},
		{"a state without words", []string{"SPECIAL_EXIT|None|node7"}, "job 4242 is SPECIAL_EXIT"},
		{"vanished", []string{""}, "job 4242 is gone: Slurm no longer knows it"},
		{"invalid job id", []string{"INVALID"}, "job 4242 is gone: Slurm no longer knows it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSlurm(t, "4242\n", append([]string{ready}, tc.after...)...)
			j := submit(t, slurmSpec(t, f, services.SlurmOptions{}))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := j.WaitReady(ctx, nil); err != nil {
				t.Fatalf("WaitReady: %v", err)
			}
			select {
			case <-j.Exited():
			case <-ctx.Done():
				t.Fatalf("the job's end was not noticed; squeue calls:\n%s", f.read("squeue.log"))
			}
			err := j.ExitErr()
			if !errors.Is(err, services.ErrJobEnded) || err.Error() != services.ErrJobEnded.Error()+": "+tc.want {
				t.Errorf("ExitErr = %v, want ErrJobEnded: %s", err, tc.want)
			}
			if got := j.CrashReason(0); got != services.ErrJobEnded.Error()+": "+tc.want {
				t.Errorf("CrashReason = %q, want the same reason", got)
			}
			if log := f.read("scancel.log"); log != "" {
				t.Errorf("a job that ended by itself was cancelled: %q", log)
			}
		})
	}
}

// TestSlurmJobStop: Stop runs scancel once, however often it is called,
// forgets the job record and ends the session as cancelled by the
// gateway; a job Slurm no longer knows stops without an error, and any
// other scancel failure is returned.
func TestSlurmJobStop(t *testing.T) {
	const ready = `RUNNING|None|node7;;{"hostname": "127.0.0.1", "port": 5999}`
	for _, tc := range []struct {
		name    string
		fail    string // scancel's stderr when it fails
		wantErr string // "" for none
	}{
		{"running", "", ""},
		{"already gone", "scancel: error: Kill job error on job id 4242: Invalid job id specified\n", ""},
		{"refused", "scancel: error: Kill job error on job id 4242: Access/permission denied\n", "cancelling cluster job 4242: scancel: Kill job error on job id 4242: Access/permission denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeSlurm(t, "4242\n", ready, "RUNNING|None|node7")
			spec := slurmSpec(t, f, services.SlurmOptions{})
			j := submit(t, spec)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := j.WaitReady(ctx, nil); err != nil {
				t.Fatalf("WaitReady: %v", err)
			}
			if tc.fail != "" {
				f.set(t, "scancel.fail", tc.fail)
				// Slurm has let the job go (or never will: then the
				// error must come back before the wait).
				f.set(t, "states", "\n")
			}
			err := j.Stop(ctx)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Stop = %v, want error %q", err, tc.wantErr)
			}
			if err := j.Stop(ctx); (err == nil) != (tc.wantErr == "") {
				t.Errorf("Stop again = %v, want the first answer", err)
			}
			if log := f.read("scancel.log"); log != "4242\n" {
				t.Errorf("scancel ran with %q, want job 4242 once", log)
			}
			select {
			case <-j.Exited():
			default:
				t.Fatal("Exited is open after Stop")
			}
			if err := j.ExitErr(); !errors.Is(err, services.ErrJobEnded) || !strings.Contains(err.Error(), "job 4242 was cancelled by the gateway") {
				t.Errorf("ExitErr = %v, want cancelled by the gateway", err)
			}
			if _, err := os.Stat(filepath.Join(spec.SessionDir, services.SlurmJobFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the job record survived Stop: %v", err)
			}
		})
	}
}

// TestSlurmFailedStartCancelIsBounded: when a start fails and Slurm keeps
// listing the job as running after scancel (a busy controller, a node
// that does not answer), WaitReady still returns, after the stop grace
// (at least a second), instead of waiting for the job forever.
func TestSlurmFailedStartCancelIsBounded(t *testing.T) {
	f := newFakeSlurm(t, "4242\n", "RUNNING|None|n1")
	spec := slurmSpec(t, f, services.SlurmOptions{Partition: "viz", StartTimeout: 0.2})
	j := submit(t, spec)
	f.set(t, "scancel.ignored", "")
	t.Cleanup(func() { _ = os.Remove(filepath.Join(f.dir, "scancel.ignored")) }) // before submit's Stop
	done := make(chan error, 1)
	go func() { done <- j.WaitReady(context.Background(), func(services.JobStatus) {}) }()
	select {
	case err := <-done:
		if !errors.Is(err, services.ErrStartTimeout) {
			t.Fatalf("WaitReady = %v, want ErrStartTimeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("WaitReady did not return while Slurm kept listing the cancelled job")
	}
	if log := f.read("scancel.log"); !strings.Contains(log, "4242") {
		t.Fatalf("scancel was not run for the job: %q", log)
	}
}
