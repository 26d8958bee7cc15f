package launcher

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"wsgateway/reservation"
	"wsgateway/session"
)

// The expectations were produced by Python 3's
// string.Template(tmpl).safe_substitute(vars).
func TestSafeSubstitute(t *testing.T) {
	vars := map[string]any{"port": json.Number("9001"), "host": "localhost", "id": "abc", "x": "X", "x1": "X1",
		"_u": "U", "f": json.Number("1.5"), "b": true, "n": nil, "l": []any{"a", json.Number("1")},
		"big": json.Number("1e16"), "small": json.Number("0.00001"), "one": json.Number("1.0"), "i": 7,
		"x0": "X0v", "x9": "X9v"}
	cases := [][2]string{
		{"$port", "9001"},
		{"${port}", "9001"},
		{"$$port", "$port"},
		{"$$$port", "$9001"},
		{"${port}x", "9001x"},
		{"$portx", "$portx"},
		{"$x1", "X1"},
		{"$x0", "X0v"},
		{"$x9", "X9v"},
		{"${x0}", "X0v"},
		{"$x 1", "X 1"},
		{"${ x}", "${ x}"},
		{"$", "$"},
		{"$1", "$1"},
		{"a$", "a$"},
		{"$-", "$-"},
		{"${x", "${x"},
		{"${x}}", "X}"},
		{"$$", "$"},
		{"$$$", "$$"},
		{"${unknown}", "${unknown}"},
		{"$unknown", "$unknown"},
		{"${1x}", "${1x}"},
		{"$f", "1.5"},
		{"$b", "True"},
		{"$n", "None"},
		{"$l", "['a', 1]"},
		{"$big", "1e+16"},
		{"$small", "1e-05"},
		{"$one", "1.0"},
		{"$_u", "U"},
		{"$X", "$X"},
		{"${X}", "${X}"},
		{"café$x", "caféX"},
		{"$x$x", "XX"},
		{"${x}${x1}", "XX1"},
		{"$$${x}", "$X"},
		{"$i", "7"},
		{"", ""},
		{"no dollar", "no dollar"},
	}
	for _, c := range cases {
		if got := SafeSubstitute(c[0], vars); got != c[1] {
			t.Errorf("SafeSubstitute(%q) = %q, want %q", c[0], got, c[1])
		}
	}
}

func TestSubstitutePasses(t *testing.T) {
	// replaceVariables: one pass per mapping, each on the previous result,
	// so "$$" from the first pass is a "$" the second pass sees.
	first := map[string]any{"port": json.Number("9001"), "dataDir": "/client"}
	props := map[string]any{"dataDir": "/data", "python_exec": "/usr/bin/pvpython", "port": "no"}
	got := Substitute("${python_exec} --port $port --data ${dataDir} $$python_exec ${missing}", first, props)
	want := "/usr/bin/pvpython --port 9001 --data /client /usr/bin/pvpython ${missing}"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	v := substituteValue(map[string]any{"a": []any{"$port", json.Number("3")}, "b": true}, first)
	m := v.(map[string]any)
	if m["a"].([]any)[0] != "9001" || m["a"].([]any)[1] != json.Number("3") || m["b"] != true {
		t.Errorf("substituteValue: %v", v)
	}
}

func TestPyStr(t *testing.T) {
	cases := []struct {
		in   any
		want string
	}{
		{json.Number("1e16"), "1e+16"},
		{json.Number("0.0001"), "0.0001"},
		{json.Number("1e-5"), "1e-05"},
		{json.Number("123456789012345678.0"), "1.2345678901234568e+17"},
		{json.Number("1.5e300"), "1.5e+300"},
		{json.Number("-0.5"), "-0.5"},
		{json.Number("42"), "42"},
		{[]any{"a", "b'c", `d"e`, `q'"`}, `['a', "b'c", 'd"e', 'q\'"']`},
		{map[string]any{"b": json.Number("1"), "a": "x"}, "{'a': 'x', 'b': 1}"},
		{false, "False"},
		{"plain", "plain"},
		// Python's repr of these strings; a space and "é" stay as they are.
		{[]any{"a b\x01\x1f\x7f\t\n\r\\", "é"}, `['a b\x01\x1f\x7f\t\n\r\\', 'é']`},
		{[]string{"x", "y'"}, `['x', "y'"]`},
		{[]any{"'a", `"a'`}, `["'a", '"a\'']`}, // the quotes first
		// A Go float64 without a fraction came from an integer; below
		// 1e15 it is printed as one, from 1e15 on as Python's float.
		{float64(3), "3"},
		{float64(-3), "-3"},
		{float64(2.5), "2.5"},
		{float64(999999999999999), "999999999999999"},
		{float64(1e15), "1000000000000000.0"},
		{float64(-1e15), "-1000000000000000.0"},
		{float64(1e16), "1e+16"},
		{math.Inf(1), "inf"},
		{math.Inf(-1), "-inf"},
		{math.NaN(), "nan"},
	}
	for _, c := range cases {
		if got := PyStr(c.in); got != c.want {
			t.Errorf("PyStr(%#v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestJSONEqual(t *testing.T) {
	if !jsonEqual(json.Number("1"), json.Number("1.0")) || jsonEqual("1", json.Number("1")) ||
		!jsonEqual([]any{"a"}, []any{"a"}) || jsonEqual(nil, false) || !jsonEqual(true, true) {
		t.Error("jsonEqual")
	}
}

// TestPool: the resources as the Manager's services, and the order in
// which a launch takes ports: the host with the most free ports (the
// first in config order on a tie), its lowest free port; a released port
// is the next one taken; with every port held the answer is ErrNoSlot.
func TestPool(t *testing.T) {
	p := newPool([]Resource{{Host: "a", PortRange: []int{5, 5}}, {Host: "b", PortRange: []int{10, 12}}, {Host: "a", PortRange: []int{1, 2}}})
	if total := p.total(); total != 6 {
		t.Fatalf("total %d", total)
	}
	if c := p.counts(); len(c) != 2 || c["a"] != 3 || c["b"] != 3 {
		t.Fatalf("counts %v", c)
	}
	for _, c := range []struct {
		host string
		idx  int
		port int
		ok   bool
	}{{"a", 0, 1, true}, {"a", 2, 5, true}, {"a", 3, 0, false}, {"a", -1, 0, false}, {"b", 2, 12, true}, {"c", 0, 0, false}} {
		if port, ok := p.port(c.host, c.idx); port != c.port || ok != c.ok {
			t.Errorf("port(%s, %d) = %d %v, want %d %v", c.host, c.idx, port, ok, c.port, c.ok)
		}
	}
	if got := join(p.order(map[string]int{"a": 1, "b": 2})); got != "b a" {
		t.Errorf("order with b freer: %q", got)
	}
	if got := join(p.order(map[string]int{"a": 0, "b": 1})); got != "b" {
		t.Errorf("order with a full: %q", got)
	}
	mgr := session.New(session.Config{Counts: p.counts(), Timeout: time.Minute})
	defer mgr.Close()
	l := &Launcher{mgr: mgr, pool: p}
	var got []string
	tokens := map[string]string{}
	for {
		r, err := l.reserve()
		if err != nil {
			if !errors.Is(err, reservation.ErrNoSlot) {
				t.Fatalf("reserve: %v", err)
			}
			break
		}
		port, _ := p.port(r.Service, r.Index)
		hp := r.Service + ":" + itoa(port)
		got = append(got, hp)
		tokens[hp] = r.Token
	}
	want := "a:1 b:10 a:2 b:11 a:5 b:12"
	if s := join(got); s != want {
		t.Errorf("order %q, want %q", s, want)
	}
	if l.freePorts() != 0 {
		t.Errorf("free ports %d with all taken", l.freePorts())
	}
	if _, err := mgr.Release(context.Background(), tokens["b:11"], 1001, "test"); err != nil {
		t.Fatal(err)
	}
	if l.freePorts() != 1 {
		t.Errorf("free ports %d after a release", l.freePorts())
	}
	r, err := l.reserve()
	if port, _ := p.port(r.Service, r.Index); err != nil || r.Service != "b" || port != 11 {
		t.Errorf("after release: %s %d %v", r.Service, port, err)
	}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}

// TestSubstituteValuesAreData is finding 9: a value put in by a pass is
// never read by a later pass, while the template's own text still goes
// through every pass as Python's replaceVariables does.
func TestSubstituteValuesAreData(t *testing.T) {
	props := map[string]any{"licenseKey": "LICENSE-VALUE", "python_exec": "/usr/bin/pvpython", "dir": "/data"}
	cases := []struct {
		tmpl string
		vars map[string]any
		want string
	}{
		// The attack: a client value naming a property comes out as sent.
		{"${user}", map[string]any{"user": "${licenseKey}"}, "${licenseKey}"},
		{"$user", map[string]any{"user": "$licenseKey"}, "$licenseKey"},
		{"--u=${user}", map[string]any{"user": "$${licenseKey}"}, "--u=$${licenseKey}"},
		{"${a}${b}", map[string]any{"a": "$", "b": "{licenseKey}"}, "${licenseKey}"},
		{"$${a}", map[string]any{"a": "licenseKey"}, "${a}"},
		{"$$$a", map[string]any{"a": "licenseKey"}, "$licenseKey"},
		{"$${$a}", map[string]any{"a": "licenseKey"}, "${licenseKey}"},
		// The template's own text: two passes, as in Python.
		{"${python_exec} --data ${dir}/${file}", map[string]any{"file": "can.ex2"}, "/usr/bin/pvpython --data /data/can.ex2"},
		{"$$licenseKey", nil, "LICENSE-VALUE"},
		{"$${licenseKey}", nil, "LICENSE-VALUE"},
		{"$$$$literal", nil, "$literal"},
		{"$$$$$$$$", nil, "$$"},
		{"${unknown} $", nil, "${unknown} $"},
		{"", nil, ""},
		{"${file}", map[string]any{"file": ""}, ""},
		{"a${file}b$$dir", map[string]any{"file": ""}, "a" + "b/data"},
	}
	for _, c := range cases {
		if got := Substitute(c.tmpl, c.vars, props); got != c.want {
			t.Errorf("Substitute(%q, %v) = %q, want %q", c.tmpl, c.vars, got, c.want)
		}
	}
	// substituteValue: the same inside lists and objects.
	v := substituteValue(map[string]any{"who": []any{"${user}"}}, map[string]any{"user": "${licenseKey}"}, props)
	if got := v.(map[string]any)["who"].([]any)[0]; got != "${licenseKey}" {
		t.Errorf("substituteValue: %v", got)
	}
	// One pass alone is Python's safe_substitute.
	if got := SafeSubstitute("$$x ${y}$z $", map[string]any{"y": "$z", "z": "Z"}); got != "$x $zZ $" {
		t.Errorf("SafeSubstitute: %q", got)
	}
}

// TestLaunchNeverLeaksProperties is finding 9 end to end: a client value
// naming a property reaches neither argv, nor sessionData, nor the answer.
func TestLaunchNeverLeaksProperties(t *testing.T) {
	e := newEnv(t, map[string]any{
		"configuration": map[string]any{"sessionURL": "ws://h/${id}?u=${user}"},
		"properties":    map[string]any{"licenseKey": "LICENSE-VALUE-42"},
		"sessionData":   map[string]any{"who": "${user}", "nested": map[string]any{"l": []any{"$user"}}},
		"apps": map[string]any{
			"args": map[string]any{"cmd": []string{"/bin/sh", "-c", `for a in "$@"; do echo "ARG $a"; done; echo READY; exec sleep 60`, "sh",
				"${user}", "$user", "--key=$${user}"},
				"ready_line": "READY"},
		},
	})
	for _, v := range []string{"${licenseKey}", "$licenseKey", "$${licenseKey}", "$$$licenseKey"} {
		js, _ := json.Marshal(v)
		m := e.launch("args", `, "user": `+string(js))
		id := m["id"].(string)
		b, _ := os.ReadFile(filepath.Join(e.cfg.Configuration.LogDir, id+".txt"))
		ans, _ := json.Marshal(m)
		_, g := e.call("GET", "/paraview/"+id, "")
		again, _ := json.Marshal(g)
		for what, s := range map[string]string{"argv": string(b), "answer": string(ans), "GET": string(again)} {
			if strings.Contains(s, "LICENSE-VALUE") {
				t.Errorf("user %q: the property's value is in the %s: %s", v, what, s)
			}
		}
		if !strings.Contains(string(b), "ARG "+v+"\n") || m["who"] != v {
			t.Errorf("user %q not passed as sent: argv %q, who %v", v, b, m["who"])
		}
		e.call("DELETE", "/paraview/"+id, "")
	}
}
