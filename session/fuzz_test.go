package session

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"wsgateway/reservation"
)

// FuzzTokens: whatever a client sends as a token (a websocket's ?token=,
// /v1/release/<token>, the X-Wsgw-Token header), only the exact token of
// a live reservation finds it; anything else is ErrUnknownToken (or
// ErrExpiredToken for a token that expired), nothing panics, no state
// changes, and TokenPrefix, which is what the logs get, is at most 8
// bytes of the token's start. The expectations come from comparing the
// strings themselves, not from the Manager.
//
//	go test -run='^$' -fuzz='^FuzzTokens$' -fuzztime=30s ./session
func FuzzTokens(f *testing.F) {
	f.Add("3f0c1a2b-0000-4000-8000-000000000000", uint8(0), byte('x'))
	f.Fuzz(func(t *testing.T, guess string, pos uint8, b byte) {
		now := time.Unix(1700000000, 0)
		m := New(Config{Counts: map[string]int{"S": 2}, Timeout: time.Minute, Now: func() time.Time { return now }})
		defer m.Close()
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
		m.byToken[live.Token].rec.Expires = now.Add(time.Minute)
		m.mu.Unlock()
		if gone := m.Sweep(); len(gone) != 1 || gone[0].Token != old.Token {
			t.Fatalf("Sweep = %+v, want the old reservation", gone)
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// A near miss: the live token with one byte changed.
		near := []byte(live.Token)
		near[int(pos)%len(near)] = b
		for _, tok := range []string{guess, string(near), live.Token + guess, strings.ToUpper(live.Token)} {
			if p := reservation.TokenPrefix(tok); len(p) > 8 || !strings.HasPrefix(tok, p) || (len(tok) >= 8 && len(p) != 8) {
				t.Fatalf("TokenPrefix(%q) = %q", tok, p)
			}
			want := reservation.ErrUnknownToken
			switch tok {
			case live.Token:
				want = nil
			case old.Token:
				want = reservation.ErrExpiredToken
			}
			if _, err := m.Get(tok); !errors.Is(err, want) {
				t.Fatalf("Get(%q) = %v, want %v", tok, err, want)
			}
			if want == nil {
				continue
			}
			if _, err := m.Check(tok); !errors.Is(err, want) {
				t.Fatalf("Check(%q) = %v, want %v", tok, err, want)
			}
			if ss, err := m.lookup(tok); ss != nil || !errors.Is(err, want) {
				t.Fatalf("Lookup(%q) = %v, %v, want %v", tok, ss, err, want)
			}
			if _, err := m.Claim(tok, 0); !errors.Is(err, want) {
				t.Fatalf("Claim(%q) = %v, want %v", tok, err, want)
			}
			if _, err := m.Release(ctx, tok, 1000, ""); !errors.Is(err, want) {
				t.Fatalf("Release(%q) = %v, want %v", tok, err, want)
			}
		}
		r, err := m.Get(live.Token)
		if err != nil || r.State != string(Reserved) || r.Options["k"] != guess || r.Connects != 0 {
			t.Fatalf("the live reservation changed: %+v %v", r, err)
		}
		if toks := m.tokens(); len(toks) != 1 || toks[0] != live.Token {
			t.Fatalf("Tokens = %v, want only the live token", toks)
		}
		if _, err := m.Claim(live.Token, 0); err != nil {
			t.Fatalf("Claim(live) = %v", err)
		}
		if _, err := m.Claim(live.Token, 0); !errors.Is(err, reservation.ErrBusy) {
			t.Fatalf("second Claim(live) = %v", err)
		}
	})
}
