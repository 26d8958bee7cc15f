package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"wsgateway/events"
	"wsgateway/internal/text"
	"wsgateway/jobs"
)

// method runs a call; after, when not nil, runs once the response has
// been queued (events.subscribe replays history then).
type method func(ctx context.Context, c *conn, params json.RawMessage) (result any, after func(), err error)

// decode reads params into dst, refusing unknown names.
func decode(params json.RawMessage, dst any) error {
	d := json.NewDecoder(bytes.NewReader(params))
	d.DisallowUnknownFields()
	if err := d.Decode(dst); err != nil {
		return rpcErr(CodeInvalidParams, "invalid_params", "invalid params: %v", err)
	}
	return nil
}

func typed[P any](f func(ctx context.Context, c *conn, p P) (any, error)) method {
	return func(ctx context.Context, c *conn, raw json.RawMessage) (any, func(), error) {
		var p P
		if err := decode(raw, &p); err != nil {
			return nil, nil, err
		}
		r, err := f(ctx, c, p)
		return r, nil, err
	}
}

func need(cond bool, format string, args ...any) error {
	if cond {
		return nil
	}
	return rpcErr(CodeInvalidParams, "invalid_params", "invalid params: "+format, args...)
}

func (s *Server) registry() map[string]method {
	m := map[string]method{
		"server.info":          typed(s.serverInfo),
		"services.list":        typed(s.servicesList),
		"jobs.submit":          typed(s.jobsSubmit),
		"jobs.list":            typed(s.jobsList),
		"jobs.get":             typed(s.jobsGet),
		"jobs.stop":            typed(s.jobsStop),
		"jobs.remove":          typed(s.jobsRemove),
		"queue.list":           typed(s.queueList),
		"queue.move":           typed(s.queueMove),
		"logs.read":            typed(s.logsRead),
		"events.subscribe":     s.eventsSubscribe,
		"events.unsubscribe":   typed(s.eventsUnsubscribe),
		"reservations.create":  typed(s.reservationsCreate),
		"reservations.release": typed(s.reservationsRelease),
		"sessions.list":        typed(s.sessionsList),
		"sessions.stop":        typed(s.sessionsStop),
		"shares.create":        typed(s.sharesCreate),
		"shares.list":          typed(s.sharesList),
		"shares.revoke":        typed(s.sharesRevoke),
	}
	return m
}

// jobErr maps job manager errors to JSON-RPC errors.
func jobErr(err error) error {
	var pe *jobs.ParamError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &pe):
		return rpcErr(CodeInvalidParams, "invalid_job_params", "invalid params: %s", pe.Msg)
	case errors.Is(err, jobs.ErrNotFound):
		return rpcErr(CodeNotFound, "not_found", "%v", err)
	case errors.Is(err, jobs.ErrUnknownService):
		return rpcErr(CodeNotFound, "unknown_service", "%v", err)
	case errors.Is(err, jobs.ErrNotFinished):
		return rpcErr(CodeConflict, "not_finished", "%v", err)
	case errors.Is(err, jobs.ErrNotQueued):
		return rpcErr(CodeConflict, "not_queued", "%v", err)
	case errors.Is(err, jobs.ErrQueueFull):
		return rpcErr(CodeLimit, "queue_full", "%v; try again later", err)
	case errors.Is(err, jobs.ErrClosed):
		return rpcErr(CodeServer, "shutting_down", "%v", err)
	case errors.Is(err, jobs.ErrReplicaGone):
		return rpcErr(CodeNotAvailable, "replica_unreachable", "%v", err)
	}
	return err
}

// visible: administrators see every job; others their own.
func (c *conn) visible(owner string) bool { return isAdmin(c.id) || owner == name(c.id) }

// queueView shows a subscriber a reservation wait queue's change (one
// event for everyone, with the owners in order) as it may see it: its own
// position (from 1; absent when it does not wait), the queue's length,
// and the owners' names only to administrators.
func (c *conn) queueView(data json.RawMessage) json.RawMessage {
	var d map[string]any
	if json.Unmarshal(data, &d) != nil {
		return data
	}
	q, ok := d["queue"].([]any)
	if !ok || d["kind"] != "reservations" {
		return data
	}
	me := c.caller.Owner() // the queue's owners are reservation owners (auth.Identity.Key)
	for i, o := range q {
		if o == me {
			d["position"] = i + 1
			break
		}
	}
	if !isAdmin(c.id) {
		delete(d, "queue")
	}
	b, err := json.Marshal(d)
	if err != nil {
		return data
	}
	return b
}

func (s *Server) serverInfo(_ context.Context, c *conn, _ struct{}) (any, error) {
	names := make([]string, 0, len(s.methods))
	for n := range s.methods {
		names = append(names, n)
	}
	sort.Strings(names)
	var last int64
	if s.cfg.Hub != nil {
		last = s.cfg.Hub.Last()
	}
	return map[string]any{
		"name": "wsgateway", "version": s.cfg.Version, "protocol": "jsonrpc-2.0",
		"time": time.Now().UTC(), "uptime_seconds": int64(time.Since(s.started).Seconds()),
		"methods": names, "topics": events.Topics, "last_seq": last,
		"user": name(c.id), "admin": isAdmin(c.id),
		"limits": map[string]any{"max_message_bytes": s.cfg.MaxMessageBytes, "max_batch": maxBatch, "max_log_read": jobs.MaxLogRead,
			"max_answer_bytes": s.cfg.MaxAnswerBytes, "max_batch_cost": s.cfg.MaxBatchCost, "max_queued_bytes": s.cfg.MaxQueuedBytes},
	}, nil
}

type serviceInfo struct {
	Name   string                 `json:"name"`
	Kind   string                 `json:"kind"`
	Count  int                    `json:"count"`
	Group  string                 `json:"group,omitempty"`
	Params map[string]*jobs.Param `json:"params,omitempty"`
}

func (s *Server) servicesList(context.Context, *conn, struct{}) (any, error) {
	out := []serviceInfo{}
	for _, sv := range s.cfg.Services {
		out = append(out, serviceInfo{Name: sv.Name, Kind: "service", Count: sv.Count, Group: sv.StringOption("group")})
	}
	if s.cfg.Jobs != nil {
		for _, j := range s.cfg.Jobs.Services() {
			out = append(out, serviceInfo{Name: j.Name, Kind: "job", Count: j.Count, Group: j.Group, Params: j.Params})
		}
	}
	return map[string]any{"services": out}, nil
}

func (s *Server) jobs() (*jobs.Manager, error) {
	if s.cfg.Jobs == nil {
		return nil, rpcErr(CodeNotAvailable, "no_jobs", "this gateway runs no jobs (no \"kind\": \"job\" service in --remote_session_config)")
	}
	return s.cfg.Jobs, nil
}

type submitParams struct {
	Service string                     `json:"service"`
	Params  map[string]json.RawMessage `json:"params"`
}

func (s *Server) jobsSubmit(ctx context.Context, c *conn, p submitParams) (any, error) {
	m, err := s.jobs()
	if err != nil {
		return nil, err
	}
	if err := need(p.Service != "", `"service" is required`); err != nil {
		return nil, err
	}
	// The same --rate_limit as reservations, per client address.
	if err := s.cfg.Limits.AllowSubmit(c.caller.Client); err != nil {
		return nil, rpcErr(CodeLimit, "rate_limited", "%v", err)
	}
	svc := m.Service(p.Service)
	if svc == nil {
		return nil, jobErr(fmt.Errorf("%w %q", jobs.ErrUnknownService, p.Service))
	}
	if svc.Group != "" && !c.id.InGroup(svc.Group) {
		return nil, rpcErr(CodeForbidden, "forbidden", "job service %q is restricted to group %q", p.Service, svc.Group)
	}
	j, err := m.Submit(ctx, p.Service, name(c.id), p.Params)
	if err != nil {
		return nil, jobErr(err)
	}
	return j, nil
}

type listParams struct {
	State   []string `json:"state"`
	Service string   `json:"service"`
	Owner   *string  `json:"owner"`
	Limit   int      `json:"limit"`
}

func (s *Server) jobsList(ctx context.Context, c *conn, p listParams) (any, error) {
	m, err := s.jobs()
	if err != nil {
		return nil, err
	}
	if err := need(p.Limit >= 0 && p.Limit <= 1000, `"limit" must be 0 to 1000`); err != nil {
		return nil, err
	}
	for _, st := range p.State {
		if err := need(st == jobs.StateQueued || st == jobs.StateStarting || st == jobs.StateRunning || jobs.Finished(st), "unknown state %q", st); err != nil {
			return nil, err
		}
	}
	owner := p.Owner
	if !isAdmin(c.id) {
		n := name(c.id)
		owner = &n
	}
	js, err := m.List(ctx, jobs.Filter{States: p.State, Service: p.Service, Owner: owner, Limit: p.Limit})
	if err != nil {
		return nil, err
	}
	if js == nil {
		js = []jobs.Job{}
	}
	return map[string]any{"jobs": js}, nil
}

type idParams struct {
	ID string `json:"id"`
}

// job returns a job the caller may see, or not_found.
func (s *Server) job(ctx context.Context, c *conn, id string) (jobs.Job, error) {
	m, err := s.jobs()
	if err != nil {
		return jobs.Job{}, err
	}
	if err := need(id != "", `"id" is required`); err != nil {
		return jobs.Job{}, err
	}
	j, err := m.Get(ctx, id)
	if err != nil {
		return j, jobErr(err)
	}
	if !c.visible(j.Owner) {
		return j, jobErr(fmt.Errorf("%w %q", jobs.ErrNotFound, id))
	}
	return j, nil
}

func (s *Server) jobsGet(ctx context.Context, c *conn, p idParams) (any, error) {
	return s.job(ctx, c, p.ID)
}

func (s *Server) jobsStop(ctx context.Context, c *conn, p idParams) (any, error) {
	if _, err := s.job(ctx, c, p.ID); err != nil {
		return nil, err
	}
	who := name(c.id)
	if who == "" {
		who = "a client"
	}
	j, err := s.cfg.Jobs.Stop(ctx, p.ID, who)
	if err != nil {
		return nil, jobErr(err)
	}
	return j, nil
}

func (s *Server) jobsRemove(ctx context.Context, c *conn, p idParams) (any, error) {
	if _, err := s.job(ctx, c, p.ID); err != nil {
		return nil, err
	}
	if err := s.cfg.Jobs.Remove(ctx, p.ID); err != nil {
		return nil, jobErr(err)
	}
	return map[string]any{"id": p.ID, "removed": true}, nil
}

func (s *Server) queueView(c *conn, q []jobs.Job) map[string]any {
	out := []jobs.Job{}
	for _, j := range q {
		if c.visible(j.Owner) {
			out = append(out, j)
		}
	}
	return map[string]any{"queue": out, "length": len(q)}
}

func (s *Server) queueList(_ context.Context, c *conn, _ struct{}) (any, error) {
	m, err := s.jobs()
	if err != nil {
		return nil, err
	}
	return s.queueView(c, m.Queue()), nil
}

type moveParams struct {
	ID       string `json:"id"`
	Position int    `json:"position"`
}

func (s *Server) queueMove(ctx context.Context, c *conn, p moveParams) (any, error) {
	if _, err := s.job(ctx, c, p.ID); err != nil {
		return nil, err
	}
	if err := need(p.Position >= 1, `"position" must be 1 (next to start) or more`); err != nil {
		return nil, err
	}
	if !isAdmin(c.id) {
		return nil, rpcErr(CodeForbidden, "forbidden", "reordering the queue is for administrators")
	}
	q, err := s.cfg.Jobs.Move(p.ID, p.Position)
	if err != nil {
		return nil, jobErr(err)
	}
	return s.queueView(c, q), nil
}

type logParams struct {
	ID     string `json:"id"`
	Offset int64  `json:"offset"`
	Limit  int64  `json:"limit"`
}

func (s *Server) logsRead(ctx context.Context, c *conn, p logParams) (any, error) {
	if _, err := s.job(ctx, c, p.ID); err != nil {
		return nil, err
	}
	if err := need(p.Offset >= 0, `"offset" must be 0 or more`); err != nil {
		return nil, err
	}
	if err := need(p.Limit >= 0 && p.Limit <= jobs.MaxLogRead, `"limit" must be 1 to %d bytes (0: the most)`, jobs.MaxLogRead); err != nil {
		return nil, err
	}
	ch, err := s.cfg.Jobs.ReadLog(ctx, p.ID, p.Offset, p.Limit)
	if err != nil {
		return nil, jobErr(err)
	}
	return ch, nil
}

type subscribeParams struct {
	Topics []string `json:"topics"`
	Since  *int64   `json:"since"`
}

// eventParams is what an event notification carries.
type eventParams struct {
	Seq  int64           `json:"seq"`
	Time time.Time       `json:"time"`
	Data json.RawMessage `json:"data"`
}

func (s *Server) eventsSubscribe(ctx context.Context, c *conn, raw json.RawMessage) (any, func(), error) {
	var p subscribeParams
	if err := decode(raw, &p); err != nil {
		return nil, nil, err
	}
	if s.cfg.Hub == nil {
		return nil, nil, rpcErr(CodeNotAvailable, "no_events", "events are not available")
	}
	topics := map[string]bool{}
	for _, t := range p.Topics {
		known := t == "*"
		for _, k := range events.Topics {
			known = known || k == t
		}
		if !known {
			return nil, nil, rpcErr(CodeInvalidParams, "unknown_topic", "invalid params: unknown topic %q; topics are %s (or \"*\")", t, strings.Join(events.Topics, ", "))
		}
		topics[t] = true
	}
	if len(topics) == 0 {
		topics["*"] = true
	}
	since := int64(-1)
	if p.Since != nil {
		if err := need(*p.Since >= 0, `"since" must be a sequence number (0: all kept history)`); err != nil {
			return nil, nil, err
		}
		since = *p.Since
	}
	filter := func(ev events.Event) bool {
		return (topics["*"] || topics[ev.Topic]) && (ev.Owner == "" || c.visible(ev.Owner))
	}
	var replaying atomic.Bool
	replaying.Store(true)
	deliver := func(ev events.Event) bool {
		if ev.Topic == "queue.changed" {
			ev.Data = c.queueView(ev.Data)
		}
		b, err := json.Marshal(notification{JSONRPC: "2.0", Method: ev.Topic, Params: eventParams{Seq: ev.Seq, Time: ev.Time, Data: ev.Data}})
		if err != nil {
			return true
		}
		if replaying.Load() {
			// History may be longer than the send queue: wait for the
			// writer rather than drop a client that reads.
			return c.sendWaiting(b)
		}
		return c.trySend(b)
	}
	list := make([]string, 0, len(topics))
	for t := range topics {
		list = append(list, t)
	}
	sort.Strings(list)
	after := func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.sub.Close()
		c.sub = nil
		if c.ctx.Err() != nil {
			return
		}
		sctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		defer cancel()
		sub, _, err := s.cfg.Hub.Subscribe(sctx, since, filter, deliver)
		replaying.Store(false)
		var gone *events.ErrHistoryGone
		switch {
		case errors.As(err, &gone):
			// The subscriber was told with an events.gap notification.
		case err != nil:
			s.log.Warn().Err(err).Msg("events subscription failed")
			c.closeWith(1011, "events subscription failed: "+text.Cut(err.Error(), 80))
		}
		c.sub = sub
	}
	return map[string]any{"topics": list, "since": p.Since, "last_seq": s.cfg.Hub.Last()}, after, nil
}

func (s *Server) eventsUnsubscribe(_ context.Context, c *conn, _ struct{}) (any, error) {
	c.mu.Lock()
	had := c.sub != nil
	c.sub.Close()
	c.sub = nil
	c.mu.Unlock()
	return map[string]any{"unsubscribed": had}, nil
}
