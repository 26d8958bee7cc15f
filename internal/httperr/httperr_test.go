package httperr

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

var errSentinel = errors.New("sentinel")

func TestErrorfKeepsStatusMessageAndCause(t *testing.T) {
	err := Errorf(http.StatusConflict, "token %s is busy: %w", "abc", errSentinel)
	if got := Status(err); got != http.StatusConflict {
		t.Errorf("Status = %d, want 409", got)
	}
	if err.Error() != "token abc is busy: sentinel" {
		t.Errorf("message %q", err)
	}
	if !errors.Is(err, errSentinel) {
		t.Error("the %w operand is lost")
	}
	if !errors.Is(fmt.Errorf("wrapped: %w", err), errSentinel) || Status(fmt.Errorf("wrapped: %w", err)) != http.StatusConflict {
		t.Error("a wrapped Error loses its status or cause")
	}
	if got := Status(errors.New("plain")); got != http.StatusInternalServerError {
		t.Errorf("plain error: %d, want 500", got)
	}
}

func TestWrite(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, Errorf(http.StatusTooManyRequests, "slow down <now>"))
	if rec.Code != http.StatusTooManyRequests {
		t.Errorf("status %d", rec.Code)
	}
	for k, want := range map[string]string{"Content-Type": "application/json; charset=utf-8", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"} {
		if got := rec.Header().Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body["error"] != "slow down <now>" {
		t.Errorf("body %q (%v)", rec.Body.String(), err)
	}
	// Not HTML-escaped: the body is JSON served as JSON.
	if want := `"slow down <now>"`; !json.Valid(rec.Body.Bytes()) || !strings.Contains(rec.Body.String(), want) {
		t.Errorf("body %q does not hold %s verbatim", rec.Body.String(), want)
	}

	rec = httptest.NewRecorder()
	WriteJSON(rec, http.StatusOK, map[string]any{"bad": func() {}})
	if rec.Code != http.StatusInternalServerError || !json.Valid(rec.Body.Bytes()) {
		t.Errorf("unencodable value: %d %q", rec.Code, rec.Body.String())
	}
}
