package reservation

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// FuzzTokens: whatever a client sends as a token (a websocket's ?token=,
// /v1/release/<token>, the X-Wsgw-Token header), only the exact token of
// a live reservation finds it; anything else is ErrUnknownToken (or
// ErrExpiredToken for a token that expired), nothing panics, no state
// changes, and TokenPrefix, which is what the logs get, is at most 8
// bytes of the token's start.
//
//	go test -run='^$' -fuzz='^FuzzTokens$' -fuzztime=30s ./reservation
func FuzzTokens(f *testing.F) {
	f.Add("3f0c1a2b-0000-4000-8000-000000000000", uint8(0), byte('x'))
	f.Fuzz(func(t *testing.T, guess string, pos uint8, b byte) {
		now := time.Unix(1700000000, 0)
		m := New(Config{Counts: map[string]int{"S": 2}, Timeout: time.Minute, Now: func() time.Time { return now }})
		live, err := m.Reserve("S", map[string]string{"k": guess})
		if err != nil {
			t.Fatal(err)
		}
		old, err := m.Reserve("S", nil)
		if err != nil {
			t.Fatal(err)
		}
		// Expire old: it is remembered as expired, live is still fresh.
		now = now.Add(2 * time.Minute)
		m.mu.Lock()
		m.byToken[live.Token].Expires = now.Add(time.Minute)
		m.mu.Unlock()
		m.Sweep()

		// A near miss: the live token with one byte changed.
		near := []byte(live.Token)
		near[int(pos)%len(near)] = b
		for _, tok := range []string{guess, string(near), live.Token + guess, strings.ToUpper(live.Token)} {
			if p := TokenPrefix(tok); len(p) > 8 || !strings.HasPrefix(tok, p) {
				t.Fatalf("TokenPrefix(%q) = %q", tok, p)
			}
			want := ErrUnknownToken
			switch tok {
			case live.Token:
				want = nil
			case old.Token:
				want = ErrExpiredToken
			}
			if _, err := m.Get(tok); !errors.Is(err, want) && !(want == nil && err == nil) {
				t.Fatalf("Get(%q) = %v, want %v", tok, err, want)
			}
			if want != nil {
				if _, err := m.Claim(tok); !errors.Is(err, want) {
					t.Fatalf("Claim(%q) = %v, want %v", tok, err, want)
				}
				if m.MarkStopping(tok) {
					t.Fatalf("MarkStopping(%q) found a reservation", tok)
				}
				if _, err := m.End(tok); !errors.Is(err, want) {
					t.Fatalf("End(%q) = %v, want %v", tok, err, want)
				}
			}
		}
		r, err := m.Get(live.Token)
		if err != nil || r.State != Reserved || r.Options["k"] != guess {
			t.Fatalf("the live reservation changed: %+v %v", r, err)
		}
		if _, err := m.Claim(live.Token); err != nil {
			t.Fatalf("Claim(live) = %v", err)
		}
		if _, err := m.Claim(live.Token); !errors.Is(err, ErrBusy) {
			t.Fatalf("second Claim(live) = %v", err)
		}
	})
}
