package gateway

import (
	"context"
	"time"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/reservation"
)

// The gateway's own API for other front ends in the same process (the
// JSON-RPC control plane): the same rules as the REST API, with the
// caller (auth.Policy's answer) given rather than read from a request.

// Reserve reserves a slot of service for c, waiting up to wait (at most
// 240 s) for a free one.
func (s *Server) Reserve(ctx context.Context, c auth.Caller, service string, opts map[string]string, wait time.Duration) (reservation.Reservation, error) {
	if wait > maxWait {
		wait = maxWait
	}
	return s.reserveAs(ctx, c, service, opts, wait)
}

// Release releases a reservation (stopping its service) for c:
// administrators release anything, users their own.
func (s *Server) Release(ctx context.Context, c auth.Caller, token string) (reservation.Reservation, error) {
	return s.releaseAs(ctx, c, token)
}

// StatusFor is /v1/status as c sees it.
func (s *Server) StatusFor(c auth.Caller) Status { return s.status(c) }

// HTTPStatus is the HTTP status the REST API answers err with (500 when
// it has none).
func HTTPStatus(err error) int { return httperr.Status(err) }

// publish hands an event to Config.Publish, when set.
func (s *Server) publish(topic, owner string, data map[string]any) {
	if s.cfg.Publish != nil {
		s.cfg.Publish(topic, owner, data)
	}
}
