package session

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sort"
	"sync"
	"testing"
	"time"

	"wsgateway/reservation"
)

// slotModel is a Persister that checks, as the records arrive (in the
// order of the changes), that no slot index is ever recorded for two live
// reservations, and counts each token's deletes.
type slotModel struct {
	mu      sync.Mutex
	live    map[string]int // token -> index, between its first save and its delete
	deletes map[string]int
	errs    []string
}

func newSlotModel() *slotModel {
	return &slotModel{live: map[string]int{}, deletes: map[string]int{}}
}

func (s *slotModel) SaveReservation(r reservation.Reservation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deletes[r.Token] > 0 {
		s.errs = append(s.errs, fmt.Sprintf("%s… saved (%s) after its delete", reservation.TokenPrefix(r.Token), r.State))
	}
	for tok, idx := range s.live {
		if tok != r.Token && idx == r.Index {
			s.errs = append(s.errs, fmt.Sprintf("index %d recorded for %s… while %s… holds it",
				r.Index, reservation.TokenPrefix(r.Token), reservation.TokenPrefix(tok)))
		}
	}
	s.live[r.Token] = r.Index
}

func (s *slotModel) DeleteReservation(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deletes[tok]++
	delete(s.live, tok)
}

// spin yields a random number (below n) of times: a random tiny delay
// that needs no timer.
func spin(rng *rand.Rand, n int) {
	for i := rng.IntN(n); i > 0; i-- {
		runtime.Gosched()
	}
}

// launchProc is a process a fake start launched, and what became of it.
type launchProc struct {
	*fakeProc
	cleaned bool // the start was cancelled and stopped it itself
}

// fakeStart starts a fake service: it takes a random tiny time and
// honours ctx, stopping what it launched when ctx ends first.
func fakeStart(ctx context.Context, rng *rand.Rand) (*launchProc, error) {
	lp := &launchProc{fakeProc: newProc()}
	if rng.IntN(4) == 0 {
		d := time.Duration(rng.IntN(200)) * time.Microsecond
		tm := time.NewTimer(d)
		defer tm.Stop()
		select {
		case <-tm.C:
		case <-ctx.Done():
		}
	} else {
		spin(rng, 60)
	}
	if err := ctx.Err(); err != nil {
		lp.cleaned = true
		lp.exit()
		return lp, fmt.Errorf("starting the fake service: %w", err)
	}
	return lp, nil
}

// raceRound runs one launch (goroutine A) against one release (goroutine
// B), optionally with a reservation waiting for the slot, and checks the
// invariants once both are done. It returns what A got to.
func raceRound(t *testing.T, seed uint64, how string, withWaiter bool) string {
	clk := newFakeClock()
	model := newSlotModel()
	m := New(Config{Counts: map[string]int{"viz": 1}, Timeout: testTimeout, Now: clk.Now, Persist: model})
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()

	r, err := m.Reserve("viz", nil)
	if err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	ss0, err := m.lookup(r.Token)
	if err != nil {
		t.Fatalf("Lookup: %v", err)
	}

	var wg, waiting sync.WaitGroup
	var waiterErr error
	if withWaiter {
		waiting.Add(1)
		go func() {
			defer waiting.Done()
			wr, err := m.ReserveWait(ctx, "viz", "w", 0, 10, nil)
			if err != nil {
				waiterErr = fmt.Errorf("waiter: %w", err)
				return
			}
			if wr.Index != r.Index {
				waiterErr = fmt.Errorf("waiter got index %d of a 1-slot service", wr.Index)
				return
			}
			// A sweep after the grant may have reclaimed it.
			if _, err := m.Release(ctx, wr.Token, 1000, ""); err != nil && !errors.Is(err, reservation.ErrExpiredToken) {
				waiterErr = fmt.Errorf("releasing the waiter's grant: %w", err)
			}
		}()
		for m.Waiting()["viz"] != 1 {
			if ctx.Err() != nil {
				t.Fatal("the waiter never queued")
			}
			runtime.Gosched()
		}
	}

	rngA := rand.New(rand.NewPCG(seed, 1))
	rngB := rand.New(rand.NewPCG(seed, 2))
	var (
		outcome string
		procs   []*launchProc
		tun     *fakeTun
		aErr    error
	)
	wg.Add(2)
	go func() { // A: the launch
		defer wg.Done()
		fail := func(what string, err error, want error) {
			outcome = what
			if !errors.Is(err, want) {
				aErr = fmt.Errorf("%s: %v, want %v", what, err, want)
			}
		}
		ss, err := m.Claim(r.Token, 0)
		if err != nil {
			if !errors.Is(err, reservation.ErrUnknownToken) {
				fail("claim refused", err, reservation.ErrExpiredToken)
			} else {
				outcome = "claim refused"
			}
			return
		}
		if ss != ss0 {
			aErr = errors.New("Claim returned another session")
			return
		}
		spin(rngA, 20)
		sctx, err := ss.BeginStart()
		if err != nil {
			fail("start refused", err, ErrReleased)
			return
		}
		lp, err := fakeStart(sctx, rngA)
		procs = append(procs, lp)
		if err != nil {
			outcome = "start aborted"
			ss.StartFailed(err.Error())
			return
		}
		if err := ss.Started(lp); err != nil {
			fail("process refused", err, ErrReleased)
			return
		}
		spin(rngA, 20)
		t := &fakeTun{}
		if err := ss.Attach(t, "127.0.0.1:1"); err != nil {
			fail("attach refused", err, ErrReleased)
			ss.Detach(nil, time.Minute) // the websocket ends; the session is already stopping
			return
		}
		tun = t
		outcome = "attached"
		spin(rngA, 40)
		grace := time.Duration(0)
		if rngA.IntN(2) == 0 {
			grace = testTimeout / 2
		}
		ss.Detach(t, grace)
	}()
	var bErr error
	go func() { // B: the release
		defer wg.Done()
		if rngB.IntN(4) == 0 {
			spin(rngB, 8) // early: before or at the claim
		} else {
			spin(rngB, 150)
		}
		switch how {
		case "release":
			_, err := m.Release(ctx, r.Token, 1001, "released")
			switch {
			case err == nil:
				if !isDone(ss0) {
					bErr = errors.New("Release returned before the session ended")
				}
			case !errors.Is(err, reservation.ErrUnknownToken):
				bErr = fmt.Errorf("Release: %w", err)
			}
		case "stop":
			ss0.Stop(1001, "released")
		case "sweep":
			clk.Advance(2 * testTimeout)
			m.Sweep()
		}
	}()
	wg.Wait()

	// Whatever is left (a session a sweep did not reclaim) is released,
	// which lets the waiter in; then everything must be over.
	if _, err := m.Release(ctx, r.Token, 1000, "end of round"); err == nil && !isDone(ss0) {
		t.Errorf("seed %d: the final Release returned before the session ended", seed)
	}
	waiting.Wait()
	select {
	case <-ss0.Done():
	case <-ctx.Done():
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("seed %d (%s, waiter %v): the session never ended; A got to %q, state %s\n%s", seed, how, withWaiter, outcome, ss0.State(), buf)
	}
	for _, e := range []error{aErr, bErr, waiterErr} {
		if e != nil {
			t.Errorf("seed %d (%s, waiter %v, A got to %q): %v", seed, how, withWaiter, outcome, e)
		}
	}
	if st := ss0.State(); st != Ended {
		t.Errorf("seed %d: state %s after Done", seed, st)
	}
	m.Sync()
	for _, lp := range procs {
		select {
		case <-lp.Exited():
		default:
			t.Errorf("seed %d (%s, A got to %q): a started process was left running", seed, how, outcome)
		}
		if n := lp.stops.Load(); n > 1 || lp.cleaned && n != 0 {
			t.Errorf("seed %d: a process stopped %d times (cleaned by its start: %v)", seed, n, lp.cleaned)
		}
	}
	if tun != nil && len(tun.closed()) > 1 {
		t.Errorf("seed %d: tunnel closed %v", seed, tun.closed())
	}
	model.mu.Lock()
	if n := model.deletes[r.Token]; n != 1 {
		t.Errorf("seed %d (%s, A got to %q): the slot was freed %d times, want once", seed, how, outcome, n)
	}
	for _, e := range model.errs {
		t.Errorf("seed %d: %s", seed, e)
	}
	if len(model.live) != 0 {
		t.Errorf("seed %d: records left %v", seed, model.live)
	}
	model.mu.Unlock()
	if svcs, infos := m.Snapshot(); svcs[0].Free != 1 || len(infos) != 0 {
		t.Errorf("seed %d: %d of 1 slot free, %d sessions left", seed, svcs[0].Free, len(infos))
	}
	return outcome
}

var raceSeed = flag.Uint64("race_seed", 0, "first seed of TestReleaseRacesLaunch (0: from the clock)")

// TestReleaseRacesLaunch races a release (Release, Stop, or Sweep after
// the clock moved) against every moment of a launch, thousands of times:
// either the release wins (the launch is aborted and nothing is left
// running) or it comes after (the service is stopped); the slot is freed
// exactly once and never held twice, also with a reservation waiting for
// it.
func TestReleaseRacesLaunch(t *testing.T) {
	rounds := 10000
	if testing.Short() {
		rounds = 1000
	}
	seed := *raceSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d", seed)
	hows := []string{"release", "stop", "sweep"}
	seen := map[string]int{}
	for i := 0; i < rounds && !t.Failed(); i++ {
		how := hows[i%len(hows)]
		withWaiter := i%2 == 1
		seen[how+"/"+raceRound(t, seed+uint64(i), how, withWaiter)]++
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("%-30s %d", k, seen[k])
	}
}
