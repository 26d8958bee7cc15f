// Package httperr is the one error type of the HTTP front ends (the
// gateway's REST API and the launcher's): an error that carries the
// status it is answered with, and the one way such answers are written
// (a JSON body {"error": "..."}).
package httperr

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// Error is an error with the HTTP status it is answered with.
type Error struct {
	Status int
	Msg    string
	Err    error
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// Errorf is an Error whose message is fmt.Errorf's; a %w operand is kept
// for errors.Is.
func Errorf(status int, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &Error{Status: status, Msg: err.Error(), Err: errors.Unwrap(err)}
}

// Status is the status err is answered with: its Error's, else 500.
func Status(err error) int {
	var he *Error
	if errors.As(err, &he) {
		return he.Status
	}
	return http.StatusInternalServerError
}

// WriteJSON answers v as indented JSON with status, not cached, not
// sniffed.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // served as application/json with nosniff
	enc.SetIndent("", "  ")
	b := []byte(`{"error": "internal error encoding the response"}` + "\n")
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
	} else {
		b = buf.Bytes()
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// Write answers err: {"error": err.Error()} with Status(err).
func Write(w http.ResponseWriter, err error) {
	WriteJSON(w, Status(err), map[string]string{"error": err.Error()})
}
