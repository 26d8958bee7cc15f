package rpc

import (
	"context"
	"time"

	"wsgateway/auth"
	"wsgateway/gateway"
)

// ShareAPI is what the shares.* methods need from the gateway
// (gateway.Server and LateGateway implement it): the same calls, and
// the same owner-or-administrator rule, as /v1/share/<token>.
type ShareAPI interface {
	CreateShare(c auth.Caller, token, mode string, ttl time.Duration) (gateway.ShareInfo, error)
	Shares(c auth.Caller, token string) ([]gateway.ShareInfo, error)
	RevokeShare(c auth.Caller, token, share string) error
}

// CreateShare implements ShareAPI.
func (l *LateGateway) CreateShare(c auth.Caller, token, mode string, ttl time.Duration) (gateway.ShareInfo, error) {
	g, err := l.get()
	if err != nil {
		return gateway.ShareInfo{}, err
	}
	return g.CreateShare(c, token, mode, ttl)
}

// Shares implements ShareAPI.
func (l *LateGateway) Shares(c auth.Caller, token string) ([]gateway.ShareInfo, error) {
	g, err := l.get()
	if err != nil {
		return nil, err
	}
	return g.Shares(c, token)
}

// RevokeShare implements ShareAPI.
func (l *LateGateway) RevokeShare(c auth.Caller, token, share string) error {
	g, err := l.get()
	if err != nil {
		return err
	}
	return g.RevokeShare(c, token, share)
}

func (s *Server) shareAPI() (ShareAPI, error) {
	if err := s.needGateway(); err != nil {
		return nil, err
	}
	sa, ok := s.cfg.Gateway.(ShareAPI)
	if !ok {
		return nil, rpcErr(CodeNotAvailable, "not_available", "this gateway does not share sessions")
	}
	return sa, nil
}

type shareCreateParams struct {
	Token     string  `json:"token"`
	Mode      string  `json:"mode"`
	ExpiresIn float64 `json:"expires_in"`
}

// sharesCreate makes a share link of a running session: mode "view"
// (the default) or "control", expires_in seconds (0: with the session).
func (s *Server) sharesCreate(_ context.Context, c *conn, p shareCreateParams) (any, error) {
	sa, err := s.shareAPI()
	if err != nil {
		return nil, err
	}
	if err := need(p.Token != "", "token is required"); err != nil {
		return nil, err
	}
	if err := need(p.ExpiresIn >= 0 && p.ExpiresIn <= 7*24*3600, "expires_in must be 0 to %d seconds", 7*24*3600); err != nil {
		return nil, err
	}
	info, err := sa.CreateShare(c.caller, p.Token, p.Mode, time.Duration(p.ExpiresIn*float64(time.Second)))
	if err != nil {
		return nil, gatewayErr(err)
	}
	return info, nil
}

// sharesList lists a session's live shares and their viewers.
func (s *Server) sharesList(_ context.Context, c *conn, p tokenParams) (any, error) {
	sa, err := s.shareAPI()
	if err != nil {
		return nil, err
	}
	if err := need(p.Token != "", "token is required"); err != nil {
		return nil, err
	}
	list, err := sa.Shares(c.caller, p.Token)
	if err != nil {
		return nil, gatewayErr(err)
	}
	return map[string]any{"shares": list}, nil
}

type shareRevokeParams struct {
	Token string `json:"token"`
	Share string `json:"share"`
}

// sharesRevoke ends a share; its viewers are closed at once.
func (s *Server) sharesRevoke(_ context.Context, c *conn, p shareRevokeParams) (any, error) {
	sa, err := s.shareAPI()
	if err != nil {
		return nil, err
	}
	if err := need(p.Token != "" && p.Share != "", "token and share are required"); err != nil {
		return nil, err
	}
	if err := sa.RevokeShare(c.caller, p.Token, p.Share); err != nil {
		return nil, gatewayErr(err)
	}
	return map[string]any{"revoked": true}, nil
}
