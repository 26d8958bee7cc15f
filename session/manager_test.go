package reservation_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"wsgateway/reservation"
)

// fakeClock is a manual clock for Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

const testTimeout = 10 * time.Second

func newManager(t *testing.T, counts map[string]int) (*reservation.Manager, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	m := reservation.New(reservation.Config{Counts: counts, Timeout: testTimeout, Now: clk.Now})
	return m, clk
}

func mustReserve(t *testing.T, m *reservation.Manager, service string) reservation.Reservation {
	t.Helper()
	r, err := m.Reserve(service, nil)
	if err != nil {
		t.Fatalf("Reserve(%q): %v", service, err)
	}
	return r
}

func mustClaim(t *testing.T, m *reservation.Manager, tok string) reservation.Reservation {
	t.Helper()
	r, err := m.Claim(tok)
	if err != nil {
		t.Fatalf("Claim(%s): %v", reservation.TokenPrefix(tok), err)
	}
	return r
}

func freeSlots(t *testing.T, m *reservation.Manager, service string) int {
	t.Helper()
	svcs, _ := m.Snapshot()
	for _, s := range svcs {
		if s.Name == service {
			return s.Free
		}
	}
	t.Fatalf("service %q not in snapshot %+v", service, svcs)
	return -1
}

func wantErr(t *testing.T, what string, got, want error) {
	t.Helper()
	if !errors.Is(got, want) {
		t.Fatalf("%s: error = %v, want %v", what, got, want)
	}
}

func TestNewTokenIsUUIDv4(t *testing.T) {
	const n = 5000
	seen := make(map[string]bool, n)
	for i := 0; i < n; i++ {
		tok, err := reservation.NewToken()
		if err != nil {
			t.Fatalf("NewToken: %v", err)
		}
		if len(tok) != 36 {
			t.Fatalf("token %q has length %d, want 36", tok, len(tok))
		}
		for j, c := range tok {
			switch j {
			case 8, 13, 18, 23:
				if c != '-' {
					t.Fatalf("token %q: byte %d is %q, want '-'", tok, j, c)
				}
			default:
				if !strings.ContainsRune("0123456789abcdef", c) {
					t.Fatalf("token %q: byte %d is %q, want lower-case hex", tok, j, c)
				}
			}
		}
		raw, err := hex.DecodeString(strings.ReplaceAll(tok, "-", ""))
		if err != nil || len(raw) != 16 {
			t.Fatalf("token %q does not decode to 16 bytes: %v", tok, err)
		}
		if v := raw[6] >> 4; v != 4 {
			t.Fatalf("token %q: version %d, want 4", tok, v)
		}
		if v := raw[8] >> 6; v != 0b10 {
			t.Fatalf("token %q: variant bits %02b, want 10 (RFC 4122)", tok, v)
		}
		if seen[tok] {
			t.Fatalf("token %q issued twice in %d calls", tok, i+1)
		}
		seen[tok] = true
	}
}

func TestTokenPrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"abc", "abc"},
		{"12345678", "12345678"},
		{"123456789", "12345678"},
		{"0f1e2d3c-4b5a-4987-8654-3210fedcba98", "0f1e2d3c"},
	}
	for _, tt := range tests {
		if got := reservation.TokenPrefix(tt.in); got != tt.want {
			t.Errorf("TokenPrefix(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestReserveHandsOutUniqueIndexes(t *testing.T) {
	m, clk := newManager(t, map[string]int{"viz": 3, "desk": 1})

	idx := map[int]bool{}
	toks := map[string]bool{}
	for i := 0; i < 3; i++ {
		opts := map[string]string{"geometry": fmt.Sprintf("%dx100", i)}
		r, err := m.Reserve("viz", opts)
		if err != nil {
			t.Fatalf("Reserve #%d: %v", i, err)
		}
		if r.Index < 0 || r.Index >= 3 {
			t.Fatalf("Reserve #%d: index %d out of 0..2", i, r.Index)
		}
		if idx[r.Index] {
			t.Fatalf("Reserve #%d: index %d handed out twice", i, r.Index)
		}
		idx[r.Index] = true
		if toks[r.Token] {
			t.Fatalf("Reserve #%d: token reused", i)
		}
		toks[r.Token] = true
		if r.Service != "viz" || r.State != reservation.Reserved || r.Connects != 0 {
			t.Errorf("Reserve #%d = %+v, want service viz, state reserved, 0 connects", i, r)
		}
		if !r.Created.Equal(clk.Now()) || !r.Expires.Equal(clk.Now().Add(testTimeout)) {
			t.Errorf("Reserve #%d: created %v expires %v, want %v and +%v", i, r.Created, r.Expires, clk.Now(), testTimeout)
		}
		if r.Options["geometry"] != opts["geometry"] {
			t.Errorf("Reserve #%d: options %v, want %v", i, r.Options, opts)
		}
	}

	_, err := m.Reserve("viz", nil)
	wantErr(t, "Reserve on a full service", err, reservation.ErrNoSlot)
	if !strings.Contains(err.Error(), "viz") {
		t.Errorf("ErrNoSlot message %q does not name the service", err)
	}

	// Another service has its own slots.
	d := mustReserve(t, m, "desk")
	if d.Index != 0 {
		t.Errorf("first desk index = %d, want 0", d.Index)
	}
	_, err = m.Reserve("desk", nil)
	wantErr(t, "second desk Reserve", err, reservation.ErrNoSlot)

	_, err = m.Reserve("nope", nil)
	wantErr(t, "Reserve of an unknown service", err, reservation.ErrUnknownService)
	if !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("ErrUnknownService message %q does not name the service", err)
	}
	if errors.Is(err, reservation.ErrNoSlot) {
		t.Errorf("unknown service also matches ErrNoSlot: %v", err)
	}
}

func TestReserveZeroCountService(t *testing.T) {
	m, _ := newManager(t, map[string]int{"none": 0})
	_, err := m.Reserve("none", nil)
	wantErr(t, "Reserve with count 0", err, reservation.ErrNoSlot)
}

func TestEndFreesSlotAndIndexIsReused(t *testing.T) {
	m, _ := newManager(t, map[string]int{"viz": 3})
	var rs [3]reservation.Reservation
	for i := range rs {
		rs[i] = mustReserve(t, m, "viz")
	}
	if got := freeSlots(t, m, "viz"); got != 0 {
		t.Fatalf("free = %d, want 0", got)
	}
	var mid reservation.Reservation
	for _, r := range rs {
		if r.Index == 1 {
			mid = r
		}
	}
	mustClaim(t, m, mid.Token)

	ended, err := m.End(mid.Token)
	if err != nil {
		t.Fatalf("End: %v", err)
	}
	if ended.Token != mid.Token || ended.Index != 1 || ended.State != reservation.Active {
		t.Errorf("End returned %+v, want the active reservation at index 1", ended)
	}
	if got := freeSlots(t, m, "viz"); got != 1 {
		t.Fatalf("free after End = %d, want 1", got)
	}

	_, err = m.End(mid.Token)
	wantErr(t, "second End", err, reservation.ErrUnknownToken)
	_, err = m.Claim(mid.Token)
	wantErr(t, "Claim after End", err, reservation.ErrUnknownToken)
	_, err = m.Get(mid.Token)
	wantErr(t, "Get after End", err, reservation.ErrUnknownToken)

	again := mustReserve(t, m, "viz")
	if again.Index != 1 {
		t.Errorf("index after End = %d, want the freed index 1", again.Index)
	}
	if again.Token == mid.Token {
		t.Errorf("a new reservation reused the ended token")
	}
	_, err = m.Reserve("viz", nil)
	wantErr(t, "Reserve when full again", err, reservation.ErrNoSlot)
}

func TestClaim(t *testing.T) {
	m, clk := newManager(t, map[string]int{"viz": 2})
	r := mustReserve(t, m, "viz")
	clk.Advance(time.Second)

	c := mustClaim(t, m, r.Token)
	if c.State != reservation.Active || c.Connects != 1 || !c.LastClaim.Equal(clk.Now()) {
		t.Errorf("Claim = %+v, want active, 1 connect, last claim %v", c, clk.Now())
	}
	if g, err := m.Get(r.Token); err != nil || g.State != reservation.Active {
		t.Errorf("Get after Claim = %+v, %v; want active", g, err)
	}

	_, err := m.Claim(r.Token)
	wantErr(t, "second Claim", err, reservation.ErrBusy)

	for _, tok := range []string{"", "not-a-token", r.Token[:35], r.Token + "0", strings.ToUpper(r.Token)} {
		_, err := m.Claim(tok)
		wantErr(t, fmt.Sprintf("Claim(%q)", tok), err, reservation.ErrUnknownToken)
	}

	// An active reservation is never reclaimed, however long it runs.
	clk.Advance(10 * testTimeout)
	if gone := m.Sweep(); len(gone) != 0 {
		t.Errorf("Sweep reclaimed an active reservation: %+v", gone)
	}
	_, err = m.Claim(r.Token)
	wantErr(t, "Claim of a long-active token", err, reservation.ErrBusy)
}

func TestClaimAtExpiry(t *testing.T) {
	tests := []struct {
		name    string
		elapsed time.Duration
		wantErr error
	}{
		{"just in time", testTimeout - time.Millisecond, nil},
		{"at the deadline", testTimeout, reservation.ErrExpiredToken},
		{"long after", 5 * testTimeout, reservation.ErrExpiredToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, clk := newManager(t, map[string]int{"viz": 1})
			r := mustReserve(t, m, "viz")
			clk.Advance(tt.elapsed)
			_, err := m.Claim(r.Token)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Claim: %v", err)
				}
				return
			}
			wantErr(t, "Claim", err, tt.wantErr)
			// The slot is free and the token stays known as expired.
			if got := freeSlots(t, m, "viz"); got != 1 {
				t.Errorf("free after expired Claim = %d, want 1", got)
			}
			_, err = m.Claim(r.Token)
			wantErr(t, "Claim again", err, reservation.ErrExpiredToken)
			_, err = m.Get(r.Token)
			wantErr(t, "Get", err, reservation.ErrExpiredToken)
			if m.MarkStopping(r.Token) {
				t.Errorf("MarkStopping of an expired token reported true")
			}
		})
	}
}

func TestSweepReclaimsUnusedReservations(t *testing.T) {
	m, clk := newManager(t, map[string]int{"viz": 3})
	var expired []reservation.Reservation
	var mu sync.Mutex
	m.OnExpire(func(r reservation.Reservation) {
		mu.Lock()
		expired = append(expired, r)
		mu.Unlock()
	})

	unused := mustReserve(t, m, "viz")
	used := mustReserve(t, m, "viz")
	mustClaim(t, m, used.Token)
	clk.Advance(testTimeout / 2)
	later := mustReserve(t, m, "viz") // expires half a timeout after the others

	if gone := m.Sweep(); len(gone) != 0 {
		t.Fatalf("Sweep before any deadline reclaimed %+v", gone)
	}

	clk.Advance(testTimeout / 2)
	gone := m.Sweep()
	if len(gone) != 1 || gone[0].Token != unused.Token || gone[0].State != reservation.Reserved {
		t.Fatalf("Sweep = %+v, want only the unused reservation", gone)
	}
	mu.Lock()
	if len(expired) != 1 || expired[0].Token != unused.Token {
		t.Errorf("OnExpire saw %+v, want the unused reservation", expired)
	}
	mu.Unlock()
	if got := freeSlots(t, m, "viz"); got != 1 {
		t.Errorf("free after Sweep = %d, want 1", got)
	}
	_, err := m.Claim(unused.Token)
	wantErr(t, "Claim of a swept token", err, reservation.ErrExpiredToken)
	_, err = m.End(unused.Token)
	wantErr(t, "End of a swept token", err, reservation.ErrExpiredToken)
	if _, err := m.Get(later.Token); err != nil {
		t.Errorf("the later reservation was reclaimed early: %v", err)
	}
	if gone := m.Sweep(); len(gone) != 0 {
		t.Errorf("second Sweep reclaimed %+v", gone)
	}

	clk.Advance(testTimeout / 2)
	gone = m.Sweep()
	if len(gone) != 1 || gone[0].Token != later.Token {
		t.Fatalf("third Sweep = %+v, want the later reservation", gone)
	}
	_, err = m.Claim(later.Token)
	wantErr(t, "Claim of the later token", err, reservation.ErrExpiredToken)
	if _, err := m.Get(used.Token); err != nil {
		t.Errorf("the claimed reservation was reclaimed: %v", err)
	}
}

func TestUnclaimGraceThenSweepStops(t *testing.T) {
	m, clk := newManager(t, map[string]int{"viz": 1})
	var calls atomic.Int32
	m.OnExpire(func(reservation.Reservation) { calls.Add(1) })
	r := mustReserve(t, m, "viz")
	mustClaim(t, m, r.Token)

	const grace = 30 * time.Second
	if ended := m.Unclaim(r.Token, grace); ended {
		t.Fatalf("Unclaim with grace reported ended")
	}
	g, err := m.Get(r.Token)
	if err != nil || g.State != reservation.Idle || !g.Expires.Equal(clk.Now().Add(grace)) {
		t.Fatalf("after Unclaim: %+v, %v; want idle until now+%v", g, err, grace)
	}

	// Reconnect within the grace.
	clk.Advance(grace / 2)
	c := mustClaim(t, m, r.Token)
	if c.State != reservation.Active || c.Connects != 2 {
		t.Errorf("reconnect Claim = %+v, want active with 2 connects", c)
	}
	if m.Unclaim(r.Token, grace) {
		t.Fatalf("second Unclaim reported ended")
	}

	clk.Advance(grace - time.Millisecond)
	if gone := m.Sweep(); len(gone) != 0 {
		t.Fatalf("Sweep within grace = %+v", gone)
	}
	clk.Advance(time.Millisecond)
	gone := m.Sweep()
	if len(gone) != 1 || gone[0].Token != r.Token || gone[0].State != reservation.Stopping {
		t.Fatalf("Sweep after grace = %+v, want the token in state stopping", gone)
	}
	if calls.Load() != 1 {
		t.Errorf("OnExpire called %d times, want 1", calls.Load())
	}
	// The service is still being stopped: the slot is held until End.
	if got := freeSlots(t, m, "viz"); got != 0 {
		t.Errorf("free while stopping = %d, want 0", got)
	}
	_, err = m.Reserve("viz", nil)
	wantErr(t, "Reserve while stopping", err, reservation.ErrNoSlot)
	_, err = m.Claim(r.Token)
	wantErr(t, "Claim while stopping", err, reservation.ErrEnded)
	if gone := m.Sweep(); len(gone) != 0 {
		t.Errorf("Sweep reported a stopping reservation again: %+v", gone)
	}

	ended, err := m.End(r.Token)
	if err != nil || ended.State != reservation.Stopping {
		t.Fatalf("End = %+v, %v; want the stopping reservation", ended, err)
	}
	if got := freeSlots(t, m, "viz"); got != 1 {
		t.Errorf("free after End = %d, want 1", got)
	}
	_, err = m.Claim(r.Token)
	wantErr(t, "Claim after End", err, reservation.ErrUnknownToken)
}

func TestUnclaimWithoutGraceEnds(t *testing.T) {
	for _, grace := range []time.Duration{0, -time.Second} {
		t.Run(grace.String(), func(t *testing.T) {
			m, _ := newManager(t, map[string]int{"viz": 1})
			r := mustReserve(t, m, "viz")
			mustClaim(t, m, r.Token)
			if !m.Unclaim(r.Token, grace) {
				t.Fatalf("Unclaim(%v) did not report ended", grace)
			}
			if got := freeSlots(t, m, "viz"); got != 1 {
				t.Errorf("free = %d, want 1", got)
			}
			_, err := m.Claim(r.Token)
			wantErr(t, "Claim after Unclaim(0)", err, reservation.ErrUnknownToken)
		})
	}
	m, _ := newManager(t, map[string]int{"viz": 1})
	if !m.Unclaim("unknown", time.Minute) {
		t.Errorf("Unclaim of an unknown token did not report ended")
	}
}

func TestUnclaimLeavesStoppingAlone(t *testing.T) {
	for _, grace := range []time.Duration{0, time.Minute} {
		t.Run(grace.String(), func(t *testing.T) {
			m, _ := newManager(t, map[string]int{"viz": 1})
			r := mustReserve(t, m, "viz")
			mustClaim(t, m, r.Token)
			if !m.MarkStopping(r.Token) {
				t.Fatal("MarkStopping reported an unknown token")
			}
			if !m.Unclaim(r.Token, grace) {
				t.Errorf("Unclaim of a stopping reservation did not report ended")
			}
			g, err := m.Get(r.Token)
			if err != nil || g.State != reservation.Stopping {
				t.Fatalf("after Unclaim: %+v, %v; want still stopping", g, err)
			}
			_, err = m.Claim(r.Token)
			wantErr(t, "Claim", err, reservation.ErrEnded)
			if got := freeSlots(t, m, "viz"); got != 0 {
				t.Errorf("free before End = %d, want 0", got)
			}
		})
	}
}

func TestMarkStopping(t *testing.T) {
	m, clk := newManager(t, map[string]int{"viz": 2})
	if m.MarkStopping("unknown") {
		t.Errorf("MarkStopping of an unknown token reported true")
	}
	reserved := mustReserve(t, m, "viz")
	active := mustReserve(t, m, "viz")
	mustClaim(t, m, active.Token)

	for _, tok := range []string{reserved.Token, active.Token} {
		if !m.MarkStopping(tok) {
			t.Fatalf("MarkStopping(%s) reported unknown", reservation.TokenPrefix(tok))
		}
		if !m.MarkStopping(tok) {
			t.Errorf("second MarkStopping reported unknown")
		}
		g, err := m.Get(tok)
		if err != nil || g.State != reservation.Stopping {
			t.Errorf("Get = %+v, %v; want stopping", g, err)
		}
		_, err = m.Claim(tok)
		wantErr(t, "Claim of a stopping token", err, reservation.ErrEnded)
	}

	// A stopping reservation is not reclaimed by Sweep: its slot frees on End.
	clk.Advance(2 * testTimeout)
	if gone := m.Sweep(); len(gone) != 0 {
		t.Errorf("Sweep reclaimed stopping reservations: %+v", gone)
	}
	if got := freeSlots(t, m, "viz"); got != 0 {
		t.Errorf("free = %d, want 0", got)
	}
	for _, tok := range []string{reserved.Token, active.Token} {
		if _, err := m.End(tok); err != nil {
			t.Errorf("End: %v", err)
		}
	}
	if got := freeSlots(t, m, "viz"); got != 2 {
		t.Errorf("free after End = %d, want 2", got)
	}
}

func TestSnapshotAndTokens(t *testing.T) {
	m, _ := newManager(t, map[string]int{"b": 2, "a": 3, "c": 1})
	a0 := mustReserve(t, m, "a")
	a1 := mustReserve(t, m, "a")
	b0 := mustReserve(t, m, "b")
	mustClaim(t, m, a1.Token)
	if _, err := m.End(a0.Token); err != nil {
		t.Fatal(err)
	}
	a0b := mustReserve(t, m, "a") // takes index 0 again

	svcs, res := m.Snapshot()
	wantSvcs := []reservation.ServiceSlots{
		{Name: "a", Count: 3, Free: 1},
		{Name: "b", Count: 2, Free: 1},
		{Name: "c", Count: 1, Free: 1},
	}
	if fmt.Sprint(svcs) != fmt.Sprint(wantSvcs) {
		t.Errorf("Snapshot services = %+v, want %+v", svcs, wantSvcs)
	}
	type key struct {
		svc string
		idx int
		tok string
		st  reservation.State
	}
	var got []key
	for _, r := range res {
		got = append(got, key{r.Service, r.Index, r.Token, r.State})
	}
	want := []key{
		{"a", 0, a0b.Token, reservation.Reserved},
		{"a", 1, a1.Token, reservation.Active},
		{"b", 0, b0.Token, reservation.Reserved},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Snapshot reservations = %v, want %v", got, want)
	}

	toks := m.Tokens()
	if len(toks) != 3 {
		t.Fatalf("Tokens = %v, want 3 tokens", toks)
	}
	live := map[string]bool{a0b.Token: true, a1.Token: true, b0.Token: true}
	for _, tok := range toks {
		if !live[tok] {
			t.Errorf("Tokens has %s, not a live token", reservation.TokenPrefix(tok))
		}
	}

	empty := reservation.New(reservation.Config{})
	svcs, res = empty.Snapshot()
	if len(svcs) != 0 || len(res) != 0 || len(empty.Tokens()) != 0 {
		t.Errorf("empty manager: %+v %+v %v", svcs, res, empty.Tokens())
	}
}

func TestReturnedReservationsAreCopies(t *testing.T) {
	m, _ := newManager(t, map[string]int{"viz": 2})
	r := mustReserve(t, m, "viz")
	tok := r.Token
	r.State = reservation.Stopping
	r.Index = 99
	r.Token = "changed"
	g, err := m.Get(tok)
	if err != nil {
		t.Fatal(err)
	}
	if g.State != reservation.Reserved || g.Index != 0 {
		t.Errorf("changing a returned value changed the manager: %+v", g)
	}
	_, res := m.Snapshot()
	res[0].State = reservation.Active
	if g2, _ := m.Get(g.Token); g2.State != reservation.Reserved {
		t.Errorf("changing a snapshot changed the manager: %+v", g2)
	}
}

// expireOne reserves a slot and lets it expire through Claim, so that
// tokens expire in a known order.
func expireOne(t *testing.T, m *reservation.Manager, clk *fakeClock) string {
	t.Helper()
	r := mustReserve(t, m, "viz")
	clk.Advance(testTimeout)
	if _, err := m.Claim(r.Token); !errors.Is(err, reservation.ErrExpiredToken) {
		t.Fatalf("Claim after timeout: %v, want ErrExpiredToken", err)
	}
	return r.Token
}

func TestExpiredMemoryIsBounded(t *testing.T) {
	clk := newFakeClock()
	m := reservation.New(reservation.Config{
		Counts: map[string]int{"viz": 1}, Timeout: testTimeout, Now: clk.Now, ExpiredMemory: 2,
	})
	t1 := expireOne(t, m, clk)
	t2 := expireOne(t, m, clk)
	_, err := m.Claim(t1)
	wantErr(t, "oldest of two", err, reservation.ErrExpiredToken)
	t3 := expireOne(t, m, clk)

	_, err = m.Claim(t1)
	wantErr(t, "forgotten expired token", err, reservation.ErrUnknownToken)
	for _, tok := range []string{t2, t3} {
		_, err := m.Claim(tok)
		wantErr(t, "remembered expired token", err, reservation.ErrExpiredToken)
	}

	// Tokens reclaimed by Sweep count against the same memory.
	r := mustReserve(t, m, "viz")
	clk.Advance(testTimeout)
	if gone := m.Sweep(); len(gone) != 1 {
		t.Fatalf("Sweep = %+v", gone)
	}
	_, err = m.Claim(t2)
	wantErr(t, "expired token pushed out by Sweep", err, reservation.ErrUnknownToken)
	for _, tok := range []string{t3, r.Token} {
		_, err := m.Claim(tok)
		wantErr(t, "remembered expired token", err, reservation.ErrExpiredToken)
	}
}

func TestExpiredMemoryDefault(t *testing.T) {
	const def = 4096
	clk := newFakeClock()
	m := reservation.New(reservation.Config{Counts: map[string]int{"viz": 1}, Timeout: testTimeout, Now: clk.Now})
	toks := make([]string, 0, def+1)
	for i := 0; i < def+1; i++ {
		toks = append(toks, expireOne(t, m, clk))
	}
	_, err := m.Claim(toks[0])
	wantErr(t, "token beyond the default memory", err, reservation.ErrUnknownToken)
	_, err = m.Claim(toks[1])
	wantErr(t, "oldest remembered token", err, reservation.ErrExpiredToken)
	_, err = m.Claim(toks[def])
	wantErr(t, "newest token", err, reservation.ErrExpiredToken)
}

func TestDefaultClockIsRealTime(t *testing.T) {
	m := reservation.New(reservation.Config{Counts: map[string]int{"viz": 1}, Timeout: time.Hour})
	before := time.Now()
	r := mustReserve(t, m, "viz")
	after := time.Now()
	if r.Created.Before(before) || r.Created.After(after) {
		t.Errorf("Created %v not between %v and %v", r.Created, before, after)
	}
	mustClaim(t, m, r.Token)
}

func TestConcurrentReserveEndNeverCollides(t *testing.T) {
	counts := map[string]int{"a": 4, "b": 2, "c": 7}
	m := reservation.New(reservation.Config{Counts: counts, Timeout: time.Hour})
	holders := map[string][]atomic.Int32{}
	for name, n := range counts {
		holders[name] = make([]atomic.Int32, n)
	}
	names := []string{"a", "b", "c"}

	const workers = 32
	const rounds = 300
	var wg sync.WaitGroup
	var got, full atomic.Int64
	stop := make(chan struct{})

	// Readers running alongside: Sweep, Snapshot, Tokens, Get.
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			m.Sweep()
			svcs, res := m.Snapshot()
			for _, s := range svcs {
				if s.Free < 0 || s.Free > s.Count {
					t.Errorf("snapshot free %d of %d", s.Free, s.Count)
				}
			}
			for _, r := range res {
				_, _ = m.Get(r.Token)
			}
			_ = m.Tokens()
			runtime.Gosched()
		}
	}()

	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				svc := names[(w+i)%len(names)]
				r, err := m.Reserve(svc, nil)
				if errors.Is(err, reservation.ErrNoSlot) {
					full.Add(1)
					runtime.Gosched()
					continue
				}
				if err != nil {
					t.Errorf("Reserve(%s): %v", svc, err)
					return
				}
				if r.Index < 0 || r.Index >= counts[svc] {
					t.Errorf("%s index %d out of range", svc, r.Index)
					return
				}
				h := &holders[svc][r.Index]
				if !h.CompareAndSwap(0, 1) {
					t.Errorf("%s index %d handed to two live reservations", svc, r.Index)
					return
				}
				got.Add(1)
				if _, err := m.Claim(r.Token); err != nil {
					t.Errorf("Claim: %v", err)
				}
				if i%3 == 0 {
					// Take the idle/reconnect path too.
					if m.Unclaim(r.Token, time.Hour) {
						t.Errorf("Unclaim with grace reported ended")
					}
					if _, err := m.Claim(r.Token); err != nil {
						t.Errorf("reconnect Claim: %v", err)
					}
				}
				runtime.Gosched()
				// Release our mark before the slot frees, so that the
				// next holder never sees it.
				h.Store(0)
				if i%2 == 0 {
					if _, err := m.End(r.Token); err != nil {
						t.Errorf("End: %v", err)
					}
				} else if !m.Unclaim(r.Token, 0) {
					t.Errorf("Unclaim(0) did not end")
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	readers.Wait()

	if got.Load() == 0 {
		t.Fatal("no reservation succeeded")
	}
	t.Logf("%d reservations, %d refused as full", got.Load(), full.Load())
	svcs, res := m.Snapshot()
	for _, s := range svcs {
		if s.Free != s.Count {
			t.Errorf("service %s: %d of %d free after all ended", s.Name, s.Free, s.Count)
		}
	}
	if len(res) != 0 {
		t.Errorf("reservations left: %+v", res)
	}
}
