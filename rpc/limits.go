package rpc

import (
	"bytes"
	"encoding/json"
	"net/http"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/jobs"
)

// Limits are the gateway's per-client limits, the same ones its REST API
// applies (gateway.Server implements them in one place; LateGateway
// forwards to it).
type Limits interface {
	// Authenticate asks the trust policy who made r, under the
	// failed-authentication limit (--auth_fail_limit).
	Authenticate(r *http.Request) (auth.Caller, error)
	// AdmitControl counts a connection from remote against
	// --max_tunnels and the per-address cap; release gives it back.
	AdmitControl(remote string) (release func(), err error)
	// AllowSubmit takes one job submission from remote's --rate_limit.
	AllowSubmit(remote string) error
}

// unlimited is Limits for a server without a gateway (tests): the access
// policy alone, nothing counted.
type unlimited struct{ a *auth.Policy }

func (u unlimited) Authenticate(r *http.Request) (auth.Caller, error) {
	c, err := u.a.Caller(r)
	if err != nil || (c.ID == nil && u.a.Required()) {
		return c, httperr.Errorf(http.StatusUnauthorized, "missing or wrong credentials")
	}
	return c, nil
}

func (unlimited) AdmitControl(string) (func(), error) { return func() {}, nil }
func (unlimited) AllowSubmit(string) error            { return nil }

// Defaults of the output and batch limits.
const (
	// DefaultMaxAnswerBytes bounds one answer (a response, or a batch's
	// array of responses).
	DefaultMaxAnswerBytes = 4 << 20
	// DefaultMaxQueuedBytes bounds the output waiting for one client.
	DefaultMaxQueuedBytes = 8 << 20
	// DefaultMaxTotalQueuedBytes bounds the output waiting for every
	// client together.
	DefaultMaxTotalQueuedBytes = 64 << 20
	// DefaultMaxBatchCost bounds what one batch may ask for (batchCost).
	DefaultMaxBatchCost = 8192
	// DefaultMaxHeavy is how many costly messages (heavyCost or more)
	// run at once, gateway-wide.
	DefaultMaxHeavy = 4
	// heavyCost is the cost from which a message is costly: 64 jobs
	// listed or 64 KiB of log read.
	heavyCost = 64
)

// messageCost is a message's cost: a batch's, or one call's.
func messageCost(msg []byte) int {
	if len(msg) > 0 && msg[0] == '[' {
		var items []json.RawMessage
		if json.Unmarshal(msg, &items) != nil {
			return 1
		}
		return batchCost(items)
	}
	return callCost(msg)
}

// callCost is what one call of a batch may cost, known before it runs:
// 1, plus the jobs jobs.list may return, plus the KiB logs.read may
// return, plus a list's worth for queue.list and sessions.list.
func callCost(raw json.RawMessage) int {
	var req struct {
		Method string `json:"method"`
		Params struct {
			Limit json.Number `json:"limit"`
		} `json:"params"`
	}
	if json.Unmarshal(raw, &req) != nil {
		return 1
	}
	limit, err := req.Params.Limit.Int64()
	if err != nil || limit < 0 {
		limit = 0
	}
	switch req.Method {
	case "jobs.list":
		if limit == 0 || limit > 1000 {
			limit = 100 // the default, or refused as out of range
		}
		return 1 + int(limit)
	case "logs.read":
		if limit == 0 || limit > jobs.MaxLogRead {
			limit = jobs.MaxLogRead
		}
		return 1 + int((limit+1023)/1024)
	case "queue.list", "sessions.list":
		return 1 + 100
	}
	return 1
}

// batchCost is the sum of its calls' costs.
func batchCost(items []json.RawMessage) int {
	n := 0
	for _, it := range items {
		n += callCost(it)
	}
	return n
}

// skipped is the answer to a call of a batch that was not run; reply is
// false for a notification.
func (c *conn) skipped(raw json.RawMessage) (response, bool) {
	resp := response{JSONRPC: "2.0", ID: json.RawMessage("null"),
		Error: rpcErr(CodeLimit, "answer_too_large", "not run: the batch's answer would pass its limit of %d bytes; send this call again in a smaller batch", c.s.cfg.MaxAnswerBytes)}
	var fields map[string]json.RawMessage
	if json.Unmarshal(raw, &fields) != nil {
		return resp, true
	}
	id, ok := fields["id"]
	if !ok {
		return resp, false
	}
	if t := bytes.TrimSpace(id); len(t) > 0 && (t[0] == '"' || t[0] == '-' || (t[0] >= '0' && t[0] <= '9') || string(t) == "null") {
		resp.ID = t
	}
	return resp, true
}
