package rpc

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	"wsgateway/auth"
	"wsgateway/gateway"
	"wsgateway/internal/httperr"
	"wsgateway/reservation"
)

// GatewayAPI is what the JSON-RPC reservations.* and sessions.* methods
// need from the gateway (gateway.Server implements it).
type GatewayAPI interface {
	// ReserveFrom reserves for c under the limits of GET /v1/reserve
	// (rate, waiting reservations per address, the wait queue's bound).
	ReserveFrom(ctx context.Context, c auth.Caller, service string, opts map[string]string, wait time.Duration) (reservation.Reservation, error)
	Release(ctx context.Context, c auth.Caller, token string) (reservation.Reservation, error)
	StatusFor(c auth.Caller) gateway.Status
}

// LateGateway is a GatewayAPI bound after the RPC server is built (the
// gateway is made last). Until Bind, its methods answer "starting".
type LateGateway struct {
	g atomic.Pointer[gateway.Server]
}

// Bind sets the gateway.
func (l *LateGateway) Bind(g *gateway.Server) { l.g.Store(g) }

func (l *LateGateway) get() (*gateway.Server, error) {
	g := l.g.Load()
	if g == nil {
		return nil, rpcErr(CodeServer, "starting", "the gateway is still starting; try again")
	}
	return g, nil
}

// ReserveFrom implements GatewayAPI.
func (l *LateGateway) ReserveFrom(ctx context.Context, c auth.Caller, service string, opts map[string]string, wait time.Duration) (reservation.Reservation, error) {
	g, err := l.get()
	if err != nil {
		return reservation.Reservation{}, err
	}
	return g.ReserveFrom(ctx, c, service, opts, wait)
}

// errStarting answers connections that come before Bind.
var errStarting = httperr.Errorf(http.StatusServiceUnavailable, "the gateway is still starting; try again")

// Authenticate implements Limits.
func (l *LateGateway) Authenticate(r *http.Request) (auth.Caller, error) {
	g := l.g.Load()
	if g == nil {
		return auth.Caller{}, errStarting
	}
	return g.Authenticate(r)
}

// AdmitControl implements Limits.
func (l *LateGateway) AdmitControl(remote string) (func(), error) {
	g := l.g.Load()
	if g == nil {
		return nil, errStarting
	}
	return g.AdmitControl(remote)
}

// AllowSubmit implements Limits.
func (l *LateGateway) AllowSubmit(remote string) error {
	g := l.g.Load()
	if g == nil {
		return errStarting
	}
	return g.AllowSubmit(remote)
}

// Release implements GatewayAPI.
func (l *LateGateway) Release(ctx context.Context, c auth.Caller, token string) (reservation.Reservation, error) {
	g, err := l.get()
	if err != nil {
		return reservation.Reservation{}, err
	}
	return g.Release(ctx, c, token)
}

// StatusFor implements GatewayAPI.
func (l *LateGateway) StatusFor(c auth.Caller) gateway.Status {
	g := l.g.Load()
	if g == nil {
		return gateway.Status{}
	}
	return g.StatusFor(c)
}

// gatewayErr maps a gateway error (an HTTP status underneath) to JSON-RPC.
func gatewayErr(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*Error); ok {
		return err
	}
	switch {
	case errors.Is(err, gateway.ErrRateLimited):
		return rpcErr(CodeLimit, "rate_limited", "%v", err)
	case errors.Is(err, gateway.ErrAddressLimit):
		return rpcErr(CodeLimit, "address_limit", "%v", err)
	case errors.Is(err, reservation.ErrQueueFull):
		return rpcErr(CodeLimit, "queue_full", "%v", err)
	}
	switch gateway.HTTPStatus(err) {
	case http.StatusBadRequest:
		return rpcErr(CodeInvalidParams, "invalid_params", "invalid params: %v", err)
	case http.StatusNotFound:
		return rpcErr(CodeNotFound, "not_found", "%v", err)
	case http.StatusForbidden, http.StatusUnauthorized:
		return rpcErr(CodeForbidden, "forbidden", "%v", err)
	case http.StatusConflict:
		return rpcErr(CodeConflict, "conflict", "%v", err)
	case http.StatusTooManyRequests:
		return rpcErr(CodeLimit, "limit", "%v", err)
	case http.StatusServiceUnavailable:
		return rpcErr(CodeLimit, "no_free_slot", "%v", err)
	}
	return rpcErr(CodeServer, "gateway_error", "%v", err)
}

func (s *Server) needGateway() error {
	if s.cfg.Gateway == nil {
		return rpcErr(CodeNotAvailable, "not_available", "this gateway has no websocket services")
	}
	return nil
}

type reserveParams struct {
	Service string            `json:"service"`
	Options map[string]string `json:"options"`
	Wait    float64           `json:"wait"`
}

func (s *Server) reservationsCreate(ctx context.Context, c *conn, p reserveParams) (any, error) {
	if err := s.needGateway(); err != nil {
		return nil, err
	}
	if err := need(p.Service != "", "service is required"); err != nil {
		return nil, err
	}
	if err := need(p.Wait >= 0 && p.Wait <= 240, "wait must be 0 to 240 seconds"); err != nil {
		return nil, err
	}
	res, err := s.cfg.Gateway.ReserveFrom(ctx, c.caller, p.Service, p.Options, time.Duration(p.Wait*float64(time.Second)))
	if err != nil {
		return nil, gatewayErr(err)
	}
	return map[string]any{
		"token": res.Token, "service": res.Service, "index": res.Index,
		"expires": res.Expires.UTC().Format(time.RFC3339), "options": res.Options,
		"path": "websockify?token=" + res.Token,
	}, nil
}

type tokenParams struct {
	Token string `json:"token"`
}

func (s *Server) reservationsRelease(ctx context.Context, c *conn, p tokenParams) (any, error) {
	if err := s.needGateway(); err != nil {
		return nil, err
	}
	if err := need(p.Token != "", "token is required"); err != nil {
		return nil, err
	}
	res, err := s.cfg.Gateway.Release(ctx, c.caller, p.Token)
	if err != nil {
		return nil, gatewayErr(err)
	}
	return map[string]any{"released": true, "service": res.Service, "index": res.Index}, nil
}

func (s *Server) sessionsList(_ context.Context, c *conn, _ struct{}) (any, error) {
	if err := s.needGateway(); err != nil {
		return nil, err
	}
	st := s.cfg.Gateway.StatusFor(c.caller)
	return map[string]any{"sessions": st.Sessions, "reservations": st.Reservations}, nil
}

type sessionStopParams struct {
	ID string `json:"id"`
}

// sessionsStop stops a session; its id is the reservation token (which
// sessions.list shows to its owner and to administrators).
func (s *Server) sessionsStop(ctx context.Context, c *conn, p sessionStopParams) (any, error) {
	return s.reservationsRelease(ctx, c, tokenParams{Token: p.ID})
}
