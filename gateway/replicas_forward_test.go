package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"wsgateway/reservation"
	"wsgateway/services"
	"wsgateway/session"
)

func TestReplicaAuth(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	a := newReplicaAuth([]byte("0123456789abcdef"))
	a.now = func() time.Time { return now }
	other := newReplicaAuth([]byte("0123456789abcdeX"))
	other.now = a.now
	good, err := a.sign("B", "tok", "relay")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(good)
	at := func(d time.Duration) string {
		// A header signed d away from now.
		b := newReplicaAuth(a.secret)
		b.now = func() time.Time { return now.Add(d) }
		h, _ := b.sign("B", "tok", "relay")
		return h
	}
	otherSigned, _ := other.sign("B", "tok", "relay")
	tests := []struct {
		name, header, tok, mode string
		want                    error
	}{
		{"good", good, "tok", "relay", nil},
		{"replayed", good, "tok", "relay", errReplicaStale},
		{"other token", at(0), "tok2", "relay", errReplicaAuth},
		{"other mode", at(0), "tok", "direct", errReplicaAuth},
		{"other sender", strings.Replace(at(0), " B ", " C ", 1), "tok", "relay", errReplicaAuth},
		{"other secret", otherSigned, "tok", "relay", errReplicaAuth},
		{"empty", "", "tok", "relay", errReplicaAuth},
		{"v2", "v2" + at(0)[2:], "tok", "relay", errReplicaAuth},
		{"four fields", strings.Join(f[:4], " "), "tok", "relay", errReplicaAuth},
		{"a minute old", at(-replicaClockSkew), "tok", "relay", nil},
		{"a minute ahead", at(replicaClockSkew), "tok", "relay", nil},
		{"too old", at(-replicaClockSkew - time.Second), "tok", "relay", errReplicaStale},
		{"too far ahead", at(replicaClockSkew + time.Second), "tok", "relay", errReplicaStale},
	}
	for _, tc := range tests {
		from, err := a.check(tc.header, tc.tok, tc.mode)
		if !errors.Is(err, tc.want) || (err == nil && from != "B") {
			t.Errorf("%s: %q %v, want %v", tc.name, from, err, tc.want)
		}
	}
	// A time that is not a number is refused even with a right MAC.
	ts := "x"
	bad := strings.Join([]string{"v1", "B", ts, "n1", a.mac("B", ts, "n1", "tok", "relay")}, " ")
	if _, err := a.check(bad, "tok", "relay"); !errors.Is(err, errReplicaAuth) {
		t.Errorf("bad time: %v", err)
	}
	// Nonces are forgotten once the time check refuses them anyway.
	if len(a.seen) == 0 {
		t.Fatal("no nonce remembered")
	}
	now = now.Add(2*replicaClockSkew + 2*time.Second)
	fresh, _ := a.sign("B", "tok", "relay")
	if _, err := a.check(fresh, "tok", "relay"); err != nil {
		t.Fatal(err)
	}
	if len(a.seen) != 1 {
		t.Fatalf("%d nonces remembered, want the fresh one only", len(a.seen))
	}
	if _, err := strconv.ParseInt(strings.Fields(fresh)[2], 10, 64); err != nil {
		t.Fatalf("signed time %q", fresh)
	}
}

func TestLoopbackAddr(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:5901", true},
		{"127.9.9.9:5901", true},
		{"[::1]:5901", true},
		{"localhost:5901", true},
		{"LOCALHOST:5901", true},
		{"0.0.0.0:5901", true},
		{"[::]:5901", true},
		{"no-port", true},
		{"10.0.0.5:5901", false},
		{"node12:5901", false},
		{"[2001:db8::1]:5901", false},
	} {
		if got := loopbackAddr(tc.addr); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.addr, got, tc.want)
		}
	}
}

func TestDescribeTarget(t *testing.T) {
	svc := func(opts map[string]any) *services.Service {
		s := &services.Service{Name: "s", Options: map[string]json.RawMessage{}}
		for k, v := range opts {
			b, _ := json.Marshal(v)
			s.Options[k] = b
		}
		return s
	}
	tests := []struct {
		name   string
		svc    *services.Service
		ep     services.Endpoint
		shared bool
		grace  time.Duration
	}{
		{"remote tcp", svc(map[string]any{"reconnect_grace": 30}), services.Endpoint{Network: "tcp", Address: "10.0.0.5:5901"}, true, 30 * time.Second},
		{"loopback", svc(nil), services.Endpoint{Network: "tcp", Address: "127.0.0.1:5901"}, false, 0},
		{"loopback declared reachable", svc(map[string]any{"replica_reachable": true}), services.Endpoint{Network: "tcp", Address: "127.0.0.1:5901"}, true, 0},
		{"declared as a string", svc(map[string]any{"replica_reachable": "true"}), services.Endpoint{Network: "tcp", Address: "127.0.0.1:5901"}, true, 0},
		{"declared false", svc(map[string]any{"replica_reachable": false}), services.Endpoint{Network: "tcp", Address: "127.0.0.1:5901"}, false, 0},
		{"unix", svc(map[string]any{"replica_reachable": true}), services.Endpoint{Network: "unix", Address: "/run/x.sock"}, false, 0},
		{"unknown service", nil, services.Endpoint{Network: "tcp", Address: "10.0.0.5:1"}, true, 0},
	}
	for _, tc := range tests {
		s := &Server{svcs: map[string]*services.Service{}}
		if tc.svc != nil {
			s.svcs["s"] = tc.svc
		}
		got, ok := s.describeTarget(&remoteService{ep: tc.ep}, reservationOf("s"))
		if !ok || got.Network != tc.ep.Network || got.Address != tc.ep.Address || got.Shared != tc.shared || got.Grace != tc.grace {
			t.Errorf("%s: %+v %v", tc.name, got, ok)
		}
	}
	s := &Server{svcs: map[string]*services.Service{}}
	if _, ok := s.describeTarget(nil, reservationOf("s")); ok {
		t.Error("a process without an endpoint was described")
	}
}

func reservationOf(service string) reservation.Reservation {
	return reservation.Reservation{Token: "t", Service: service}
}

// fakeShared answers List and Replicas from fixed figures (or err).
type fakeShared struct {
	session.Shared
	recs []session.Record
	live map[string]string
	err  error
}

func (f *fakeShared) List(context.Context) ([]session.Record, error) { return f.recs, f.err }
func (f *fakeShared) Replicas(context.Context) (map[string]string, error) {
	return f.live, nil
}
func (f *fakeShared) Run(ctx context.Context, _ func(string, int, string)) { <-ctx.Done() }

func TestSharedCollector(t *testing.T) {
	rec := func(svc, state, rep string) session.Record {
		return session.Record{Reservation: reservation.Reservation{Service: svc, State: state}, Replica: rep}
	}
	collect := func(f *fakeShared) map[string]float64 {
		m := session.New(session.Config{Counts: map[string]int{"desk": 4, "idle": 1}, Shared: f})
		defer m.Close()
		s := &Server{sessions: m, cfg: Config{Shared: f}, baseCtx: context.Background(),
			svcs: map[string]*services.Service{"desk": {Name: "desk"}, "idle": {Name: "idle"}}}
		reg := prometheus.NewRegistry()
		reg.MustRegister(&sharedCollector{s: s})
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, mf := range mfs {
			for _, mt := range mf.GetMetric() {
				k := mf.GetName()
				for _, l := range mt.GetLabel() {
					k += "," + l.GetName() + "=" + l.GetValue()
				}
				out[k] = mt.GetGauge().GetValue()
			}
		}
		return out
	}
	got := collect(&fakeShared{recs: []session.Record{rec("desk", "reserved", ""), rec("desk", "running", "A"), rec("desk", "detached", "A"),
		rec("desk", "running", "B")}, live: map[string]string{"A": "", "B": ""}})
	want := map[string]float64{
		"wsgateway_shared_state_up":                                 1,
		"wsgateway_shared_replicas":                                 2,
		"wsgateway_shared_slots_used,service=desk":                  4,
		"wsgateway_shared_slots_used,service=idle":                  0,
		"wsgateway_shared_reservations,service=desk,state=reserved": 1,
		"wsgateway_shared_reservations,service=desk,state=running":  2,
		"wsgateway_shared_reservations,service=desk,state=detached": 1,
		"wsgateway_shared_sessions,replica=A,service=desk":          2,
		"wsgateway_shared_sessions,replica=B,service=desk":          1,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	got = collect(&fakeShared{err: errors.New("redis down")})
	if fmt.Sprint(got) != fmt.Sprint(map[string]float64{"wsgateway_shared_state_up": 0}) {
		t.Fatalf("with the shared state down: %v", got)
	}
}
