package rpc

import (
	"net/http"

	"wsgateway/auth"
	"wsgateway/internal/origin"
)

// Access decides who may use the API: the gateway's own policy (the same
// rules as the REST API) and its websocket Origin check.
type Access struct {
	auth.Policy
	AllowedOrigins []string
}

// OriginAllowed is the gateway's Origin check (same host, or
// --allowed_origins).
func (a *Access) OriginAllowed(r *http.Request) bool { return origin.Allowed(r, a.AllowedOrigins) }
