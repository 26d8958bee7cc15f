package text

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCut(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"", 3, ""},
		{"abc", 3, "abc"},
		{"abcd", 3, "abc…"},
		{"abcd", 0, "…"},
		{"abcd", -1, "…"},
		{"héllo", 2, "h…"}, // é is 2 bytes: never half of it
		{"héllo", 3, "hé…"},
		{"日本語", 4, "日…"},
	}
	for _, tt := range tests {
		if got := Cut(tt.in, tt.n); got != tt.want {
			t.Errorf("Cut(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func FuzzCut(f *testing.F) {
	f.Add("héllo wörld", 5)
	f.Fuzz(func(t *testing.T, s string, n int) {
		if n > 1<<16 || n < -1<<16 {
			return
		}
		got := Cut(s, n)
		if len(s) <= n {
			if got != s {
				t.Fatalf("short string changed: %q -> %q", s, got)
			}
			return
		}
		body, ok := strings.CutSuffix(got, "…")
		if !ok || !strings.HasPrefix(s, body) || len(body) > max(n, 0) {
			t.Fatalf("Cut(%q, %d) = %q: not a prefix of at most %d bytes plus …", s, n, got, n)
		}
		if utf8.ValidString(s) && !utf8.ValidString(body) {
			t.Fatalf("Cut(%q, %d) = %q splits a character", s, n, got)
		}
		// Never more cut than the one partial character.
		if len(body) < max(n, 0)-utf8.UTFMax+1 {
			t.Fatalf("Cut(%q, %d) = %q cut too much", s, n, got)
		}
	})
}
