package gateway

import (
	"errors"
	"net/http"
	"strings"

	"wsgateway/internal/httperr"
)

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
	var he *httperr.Error
	if errors.As(err, &he) {
		status = he.Status
	}
	if status >= 500 {
		s.log.Warn().Err(err).Str("path", redactPath(r.URL.Path)).Str("remote", r.RemoteAddr).Int("status", status).Msg("request failed")
	} else {
		s.log.Debug().Err(err).Str("path", redactPath(r.URL.Path)).Str("remote", r.RemoteAddr).Int("status", status).Msg("request refused")
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) { httperr.WriteJSON(w, status, v) }

// redactPath keeps whole reservation tokens out of the log: the token in
// /v1/release/<token> is cut to its first 8 characters.
func redactPath(p string) string {
	const release = "/v1/release/"
	if strings.HasPrefix(p, release) && len(p) > len(release)+8 {
		return p[:len(release)+8] + "…"
	}
	return p
}
