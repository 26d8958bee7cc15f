// Package reservation holds what a reservation is, independent of who
// keeps it: the random tokens that name reservations, the record of one
// (what is stored and shown), and the errors a token can meet. The
// session package owns reservations and drives each one's life.
package reservation

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors; match them with errors.Is.
var (
	ErrUnknownService = errors.New("unknown service")
	ErrNoSlot         = errors.New("no free slot")
	ErrUnknownToken   = errors.New("unknown token")
	ErrExpiredToken   = errors.New("reservation expired")
	ErrBusy           = errors.New("token already in use by another websocket")
	ErrEnded          = errors.New("reservation has ended")
	// ErrUserLimit is a user holding as many reservations as allowed.
	ErrUserLimit = errors.New("too many reservations for this user")
	// ErrQueueFull is a wait queue at its bound.
	ErrQueueFull = errors.New("too many reservations are already waiting")
)

// Reservation is the record of one held slot: what is stored, restored
// after a restart and shown in the status. State is the name of its
// session's state (see package session).
type Reservation struct {
	Token     string            `json:"token"`
	Service   string            `json:"service"`
	Index     int               `json:"index"`
	Options   map[string]string `json:"options,omitempty"`
	State     string            `json:"state"`
	Created   time.Time         `json:"created"`
	Expires   time.Time         `json:"expires"`
	Connects  int               `json:"connects"`
	LastClaim time.Time         `json:"last_claim,omitempty"`
	// Owner is the user who reserved ("" for an anonymous caller).
	Owner string `json:"owner,omitempty"`
}

// TokenPrefix is the part of a token that may appear in logs.
func TokenPrefix(tok string) string {
	return tok[:min(len(tok), 8)]
}

// NewToken returns a random UUID version 4 string (122 random bits from
// crypto/rand).
func NewToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random token: %w", err)
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:]), nil
}
