// Package text holds the one way the gateway shortens client-supplied
// text before it goes into a message or a log line.
package text

import "unicode/utf8"

// Cut returns s when it is at most n bytes long; otherwise its first n
// bytes or fewer, cut on a UTF-8 boundary, followed by "…".
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n < 0 {
		n = 0
	}
	// Back off to the start of the character that straddles the cut.
	for i := 0; i < utf8.UTFMax-1 && n > 0 && !utf8.RuneStart(s[n]); i++ {
		n--
	}
	return s[:n] + "…"
}
