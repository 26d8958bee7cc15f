package reservation

import (
	"errors"
	"testing"
	"time"
)

func TestCheckSaysWhatClaimWouldWithoutClaiming(t *testing.T) {
	now := time.Unix(1000, 0)
	m := New(Config{Counts: map[string]int{"s": 2}, Timeout: time.Minute, Now: func() time.Time { return now }})
	r, _ := m.Reserve("s", nil)
	if _, err := m.Check(r.Token); err != nil {
		t.Fatalf("fresh: %v", err)
	}
	if got, _ := m.Get(r.Token); got.State != Reserved {
		t.Fatalf("Check claimed the token: %s", got.State)
	}
	m.Claim(r.Token)
	if _, err := m.Check(r.Token); !errors.Is(err, ErrBusy) {
		t.Fatalf("claimed: %v", err)
	}
	if _, err := m.Check("nope"); !errors.Is(err, ErrUnknownToken) {
		t.Fatalf("unknown: %v", err)
	}
	r2, _ := m.Reserve("s", nil)
	now = now.Add(2 * time.Minute)
	if _, err := m.Check(r2.Token); !errors.Is(err, ErrExpiredToken) {
		t.Fatalf("expired: %v", err)
	}
	m.MarkStopping(r.Token)
	if _, err := m.Check(r.Token); !errors.Is(err, ErrEnded) {
		t.Fatalf("stopping: %v", err)
	}
}
