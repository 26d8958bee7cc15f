package reservation_test

import (
	"encoding/hex"
	"strings"
	"testing"

	"wsgateway/reservation"
)

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
