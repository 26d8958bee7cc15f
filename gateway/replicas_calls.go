package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"wsgateway/internal/httperr"
)

// Calls between replicas: a replica asks another for something only that
// one can do (read a job's log from its disk, stop the job's process) on
// its replica listener, GET /replica/v1/call?kind=…&id=…&<arguments>,
// signed as the attach requests are (replicaAuth) with the id as the
// token and "call <kind>?<the other arguments, encoded in order>" as the
// mode: a signature is good for one call, its arguments and its
// minute, once.

// replicaCallPath is the calls' route on the replica listener.
const replicaCallPath = "/replica/v1/call"

// ReplicaCall answers one kind of call for the object id (a job) with
// the call's other arguments. An *httperr.Error's status goes back to the
// caller with its message; any other error is a 500.
type ReplicaCall func(ctx context.Context, id string, args url.Values) (any, error)

// ErrNoReplicaLink is returned by CallReplica when this replica cannot
// sign (no replica secret) or the other gave no --replica_address.
var ErrNoReplicaLink = errors.New("no replica link")

// callMode is what a call signs besides its id.
func callMode(kind string, args url.Values) string { return "call " + kind + "?" + args.Encode() }

// ReplicaCallHandler serves the calls of calls on the replica listener
// (mount it at /replica/v1/call next to ReplicaHandler).
func (s *Server) ReplicaCallHandler(calls map[string]ReplicaCall) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		kind, id := q.Get("kind"), q.Get("id")
		q.Del("kind")
		q.Del("id")
		if s.replicaAuth == nil {
			s.writeError(w, r, httperr.Errorf(http.StatusNotFound, "this replica has no replica secret"))
			return
		}
		from, err := s.replicaAuth.check(r.Header.Get(replicaAuthHeader), id, callMode(kind, q))
		if err != nil {
			s.log.Warn().Err(err).Str("remote", r.RemoteAddr).Str("kind", kind).Msg("replica call refused")
			s.writeError(w, r, &httperr.Error{Status: http.StatusUnauthorized, Msg: err.Error(), Err: err})
			return
		}
		call := calls[kind]
		if call == nil || r.Method != http.MethodGet {
			s.writeError(w, r, httperr.Errorf(http.StatusNotFound, "no replica call %q", kind))
			return
		}
		s.log.Debug().Str("from_replica", from).Str("kind", kind).Str("id", id).Msg("replica call")
		v, err := call(r.Context(), id, q)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// CallReplica makes a call of kind on replica for id, signed with the
// replicas' secret, and decodes its answer into out. The other replica's
// refusal comes back as an *httperr.Error with its status and message; a
// replica whose lease ran out as session.ErrReplicaGone; no way to reach
// it as ErrNoReplicaLink.
func (s *Server) CallReplica(ctx context.Context, replica, kind, id string, args url.Values, out any) error {
	sh := s.cfg.Shared
	if sh == nil || s.replicaAuth == nil {
		return fmt.Errorf("%w: this replica has no replica secret", ErrNoReplicaLink)
	}
	addr, err := sh.ReplicaAddress(ctx, replica)
	if err != nil {
		return err
	}
	if addr == "" {
		return fmt.Errorf("%w: replica %s has no --replica_address", ErrNoReplicaLink, replica)
	}
	if args == nil {
		args = url.Values{}
	}
	auth, err := s.replicaAuth.sign(s.cfg.ReplicaID, id, callMode(kind, args))
	if err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range args {
		q[k] = v
	}
	q.Set("kind", kind)
	q.Set("id", id)
	u := url.URL{Scheme: "http", Host: addr, Path: replicaCallPath, RawQuery: q.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("replica %s: %w", replica, err)
	}
	req.Header.Set(replicaAuthHeader, auth)
	c := http.Client{Timeout: 2 * time.Minute}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("replica %s at %s: %w", replica, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return fmt.Errorf("replica %s: %w", replica, err)
	}
	if resp.StatusCode != http.StatusOK {
		var body struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &body) == nil && body.Error != "" {
			msg = body.Error
		}
		return &httperr.Error{Status: resp.StatusCode, Msg: msg}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("replica %s: answer: %w", replica, err)
		}
	}
	return nil
}
