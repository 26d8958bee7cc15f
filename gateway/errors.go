package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// httpError is an error with the HTTP status it should be answered with.
type httpError struct {
	status int
	msg    string
	err    error
}

func (e *httpError) Error() string { return e.msg }
func (e *httpError) Unwrap() error { return e.err }

func errorf(status int, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	return &httpError{status: status, msg: err.Error(), err: errors.Unwrap(err)}
}

// handlerFunc is an HTTP handler that returns an error; serveJSONErr
// renders it.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (s *Server) handle(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

// writeError is the one place errors become responses: a JSON body
// {"error": "..."} with the error's status (500 when it has none).
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var he *httpError
	if errors.As(err, &he) {
		status = he.status
	}
	if status >= 500 {
		s.log.Warn().Err(err).Str("path", redactPath(r.URL.Path)).Str("remote", r.RemoteAddr).Int("status", status).Msg("request failed")
	} else {
		s.log.Debug().Err(err).Str("path", redactPath(r.URL.Path)).Str("remote", r.RemoteAddr).Int("status", status).Msg("request refused")
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // served as application/json with nosniff
	enc.SetIndent("", "  ")
	b := buf.Bytes()
	if err := enc.Encode(v); err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error": "internal error encoding the response"}` + "\n")
	} else {
		b = buf.Bytes()
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// redactPath keeps whole reservation tokens out of the log: the token in
// /v1/release/<token> is cut to its first 8 characters.
func redactPath(p string) string {
	const release = "/v1/release/"
	if strings.HasPrefix(p, release) && len(p) > len(release)+8 {
		return p[:len(release)+8] + "…"
	}
	return p
}
