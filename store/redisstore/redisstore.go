// Package redisstore is the Store kept in Redis, for several gateway
// replicas sharing one state: jobs, the event history (a stream with one
// global sequence), and reservation records. It is used only when
// --state_db is a redis:// or rediss:// URL; the embedded SQLite store
// stays the default.
//
// Every key starts with a prefix ("wsg:" unless the URL's prefix
// parameter says otherwise), so several deployments can share one Redis.
// The reservation records are the ones the replica coordination (package
// replica) keeps; the key helpers here are the one place their layout is
// written down.
package redisstore

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"wsgateway/store"
)

// DefaultPrefix starts every key unless the URL gives another.
const DefaultPrefix = "wsg:"

// IsURL reports whether a --state_db value names Redis.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "redis://") || strings.HasPrefix(s, "rediss://")
}

// Store is the Redis Store.
type Store struct {
	c      *redis.Client
	prefix string
	log    zerolog.Logger
}

var _ store.Store = (*Store)(nil)

// Open connects to the Redis the URL names
// (redis://[user:password@]host:port/db[?prefix=p], rediss:// for TLS,
// where ca=/path/ca.pem trusts that PEM file's CAs instead of the
// system's) and checks that it answers.
func Open(ctx context.Context, rawURL string, log zerolog.Logger) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis URL: %w", err)
	}
	q := u.Query()
	prefix := DefaultPrefix
	if q.Has("prefix") {
		prefix = q.Get("prefix")
		q.Del("prefix")
		u.RawQuery = q.Encode()
	}
	ca, hasCA := q.Get("ca"), q.Has("ca")
	if hasCA {
		q.Del("ca")
		u.RawQuery = q.Encode()
	}
	opts, err := redis.ParseURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("redis URL %s: %w", Redact(rawURL), err)
	}
	if hasCA {
		if err := trustCA(opts, ca); err != nil {
			return nil, fmt.Errorf("redis URL %s: %w", Redact(rawURL), err)
		}
	}
	opts.DialTimeout = 5 * time.Second
	opts.ReadTimeout = 5 * time.Second
	opts.WriteTimeout = 5 * time.Second
	c := redis.NewClient(opts)
	s := &Store{c: c, prefix: prefix, log: log}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		c.Close()
		if ua := (x509.UnknownAuthorityError{}); errors.As(err, &ua) {
			return nil, fmt.Errorf("redis %s: %w (give its CA with ?ca=/path/ca.pem)", Redact(rawURL), err)
		}
		return nil, fmt.Errorf("redis %s: %w", Redact(rawURL), err)
	}
	return s, nil
}

// trustCA makes a rediss:// client trust the CA certificates of the PEM
// file path, and those alone.
func trustCA(opts *redis.Options, path string) error {
	if opts.TLSConfig == nil {
		return errors.New("ca= is for rediss:// (TLS) URLs")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return fmt.Errorf("ca: no PEM certificate in %s", path)
	}
	opts.TLSConfig.RootCAs = pool
	return nil
}

// Redact returns the URL without its password, for logs and errors.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "redis://…"
	}
	return u.Redacted()
}

// Client is the Redis client, for the replica coordination.
func (s *Store) Client() *redis.Client { return s.c }

// Key is the full name of a key.
func (s *Store) Key(name string) string { return s.prefix + name }

// Prefix is what every key starts with.
func (s *Store) Prefix() string { return s.prefix }

// Close closes the connections.
func (s *Store) Close() error { return s.c.Close() }

// Keys of the layout (after the prefix):
//
//	job:<id>            string, the job as JSON (queue_pos apart)
//	jobs                sorted set of job ids by Num
//	jobq                hash job id -> queue position
//	jobnum, jobqueue, jobsvc, jobrun, jobrunsvc: the shared queue (jobqueue.go)
//	evseq               the last event sequence number
//	events              stream; entry id <seq>-0, fields topic owner data time
//	res:<token>         hash, one reservation record (see ReservationFields)
//	tokens              set of every recorded token
//	slots:<service>     hash slot index -> token
//	owner:<owner>       set of the owner's tokens
//	expired:<token>     marks a token that expired (kept for a while)
//	deadlines           sorted set token -> unused reservation's deadline (ms)
const (
	keyJobs     = "jobs"
	keyJobQueue = "jobq"
	keyEvSeq    = "evseq"
	keyEvents   = "events"
	keyTokens   = "tokens"
)

// ReservationKey is the key of tok's record.
func (s *Store) ReservationKey(tok string) string { return s.prefix + "res:" + tok }

func (s *Store) jobKey(id string) string { return s.prefix + "job:" + id }

// SaveJob inserts or replaces j.
func (s *Store) SaveJob(ctx context.Context, j store.Job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("encoding job %s: %w", j.ID, err)
	}
	_, err = s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, s.jobKey(j.ID), b, 0)
		p.ZAdd(ctx, s.Key(keyJobs), redis.Z{Score: float64(j.Num), Member: j.ID})
		p.HSet(ctx, s.Key(keyJobQueue), j.ID, j.QueuePos)
		return nil
	})
	if err != nil {
		return fmt.Errorf("saving job %s: %w", j.ID, err)
	}
	return nil
}

// GetJob returns one job, or store.ErrNotFound.
func (s *Store) GetJob(ctx context.Context, id string) (store.Job, error) {
	jobs, err := s.getJobs(ctx, []string{id})
	if err != nil {
		return store.Job{}, err
	}
	if len(jobs) == 0 {
		return store.Job{}, fmt.Errorf("job %q: %w", id, store.ErrNotFound)
	}
	return jobs[0], nil
}

// getJobs reads the jobs of ids that exist, in the order of ids.
func (s *Store) getJobs(ctx context.Context, ids []string) ([]store.Job, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = s.jobKey(id)
	}
	vals, err := s.c.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("reading jobs: %w", err)
	}
	pos, err := s.c.HMGet(ctx, s.Key(keyJobQueue), ids...).Result()
	if err != nil {
		return nil, fmt.Errorf("reading the job queue: %w", err)
	}
	out := make([]store.Job, 0, len(ids))
	for i, v := range vals {
		str, ok := v.(string)
		if !ok {
			continue
		}
		var j store.Job
		if err := json.Unmarshal([]byte(str), &j); err != nil {
			return nil, fmt.Errorf("job %s: %w", ids[i], err)
		}
		if p, ok := pos[i].(string); ok {
			j.QueuePos, _ = strconv.ParseInt(p, 10, 64)
		}
		out = append(out, j)
	}
	return out, nil
}

// ListJobs returns the jobs f selects, newest first; queued jobs listed
// by state alone come in queue order.
func (s *Store) ListJobs(ctx context.Context, f store.JobFilter) ([]store.Job, error) {
	ids, err := s.c.ZRevRange(ctx, s.Key(keyJobs), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	all, err := s.getJobs(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("listing jobs: %w", err)
	}
	var out []store.Job
	for _, j := range all {
		if len(f.States) > 0 && !contains(f.States, j.State) {
			continue
		}
		if f.Service != "" && j.Service != f.Service {
			continue
		}
		if f.Owner != nil && j.Owner != *f.Owner {
			continue
		}
		out = append(out, j)
	}
	if len(f.States) == 1 && f.States[0] == "queued" {
		sort.SliceStable(out, func(a, b int) bool {
			if out[a].QueuePos != out[b].QueuePos {
				return out[a].QueuePos < out[b].QueuePos
			}
			return out[a].Num < out[b].Num
		})
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// DeleteJob removes a job record (store.ErrNotFound when there is none).
func (s *Store) DeleteJob(ctx context.Context, id string) error {
	var del *redis.IntCmd
	_, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		del = p.Del(ctx, s.jobKey(id))
		p.ZRem(ctx, s.Key(keyJobs), id)
		p.HDel(ctx, s.Key(keyJobQueue), id)
		p.LRem(ctx, s.Key(keyJobList), 0, id)
		p.HDel(ctx, s.Key(keyJobSvc), id)
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting job %s: %w", id, err)
	}
	if del.Val() == 0 {
		return fmt.Errorf("job %q: %w", id, store.ErrNotFound)
	}
	return nil
}

// SetQueue numbers the queued jobs ids in order, in one transaction.
func (s *Store) SetQueue(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	vals := make([]any, 0, 2*len(ids))
	for i, id := range ids {
		vals = append(vals, id, i+1)
	}
	if err := s.c.HSet(ctx, s.Key(keyJobQueue), vals...).Err(); err != nil {
		return fmt.Errorf("saving queue order: %w", err)
	}
	return nil
}

// MaxJobNum returns the largest job number stored.
func (s *Store) MaxJobNum(ctx context.Context) (int64, error) {
	zs, err := s.c.ZRevRangeWithScores(ctx, s.Key(keyJobs), 0, 0).Result()
	if err != nil {
		return 0, fmt.Errorf("reading job numbers: %w", err)
	}
	if len(zs) == 0 {
		return 0, nil
	}
	return int64(zs[0].Score), nil
}

// appendEvent numbers the event and adds it to the stream in one step, so
// the stream's order is the sequence's.
var appendEvent = redis.NewScript(`
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], seq .. '-0', 'topic', ARGV[1], 'owner', ARGV[2], 'data', ARGV[3], 'time', ARGV[4])
return seq`)

// AppendEvent stores an event under the next global sequence number.
func (s *Store) AppendEvent(ctx context.Context, topic, owner string, data []byte) (store.Event, error) {
	now := time.Now().UTC()
	seq, err := appendEvent.Run(ctx, s.c, []string{s.Key(keyEvSeq), s.Key(keyEvents)},
		topic, owner, string(data), now.UnixNano()).Int64()
	if err != nil {
		return store.Event{}, fmt.Errorf("storing event %s: %w", topic, err)
	}
	return store.Event{Seq: seq, Topic: topic, Owner: owner, Data: data, Time: now}, nil
}

// EventsSince returns up to limit events with Seq > since, oldest first.
func (s *Store) EventsSince(ctx context.Context, since int64, limit int) ([]store.Event, error) {
	if limit <= 0 {
		limit = 1000
	}
	if since < 0 {
		since = 0
	}
	msgs, err := s.c.XRangeN(ctx, s.Key(keyEvents), strconv.FormatInt(since+1, 10)+"-0", "+", int64(limit)).Result()
	if err != nil {
		return nil, fmt.Errorf("reading events: %w", err)
	}
	return decodeEvents(msgs)
}

// ReadEvents waits, bounded by block and ctx, for events with Seq >
// since and returns up to limit of them (none when block runs out).
func (s *Store) ReadEvents(ctx context.Context, since int64, limit int, block time.Duration) ([]store.Event, error) {
	res, err := s.c.XRead(ctx, &redis.XReadArgs{Streams: []string{s.Key(keyEvents), strconv.FormatInt(since, 10) + "-0"},
		Count: int64(limit), Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("waiting for events: %w", err)
	}
	if len(res) == 0 {
		return nil, nil
	}
	return decodeEvents(res[0].Messages)
}

func decodeEvents(msgs []redis.XMessage) ([]store.Event, error) {
	out := make([]store.Event, 0, len(msgs))
	for _, m := range msgs {
		seq, err := streamSeq(m.ID)
		if err != nil {
			return nil, err
		}
		e := store.Event{Seq: seq}
		e.Topic, _ = m.Values["topic"].(string)
		e.Owner, _ = m.Values["owner"].(string)
		d, _ := m.Values["data"].(string)
		e.Data = []byte(d)
		ts, _ := m.Values["time"].(string)
		n, _ := strconv.ParseInt(ts, 10, 64)
		e.Time = time.Unix(0, n).UTC()
		out = append(out, e)
	}
	return out, nil
}

func streamSeq(id string) (int64, error) {
	ms, _, _ := strings.Cut(id, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("event id %q: %w", id, err)
	}
	return n, nil
}

// EventBounds returns the first and last stored sequence numbers.
func (s *Store) EventBounds(ctx context.Context) (int64, int64, error) {
	first, err := s.c.XRangeN(ctx, s.Key(keyEvents), "-", "+", 1).Result()
	if err != nil {
		return 0, 0, fmt.Errorf("reading event bounds: %w", err)
	}
	last, err := s.c.XRevRangeN(ctx, s.Key(keyEvents), "+", "-", 1).Result()
	if err != nil {
		return 0, 0, fmt.Errorf("reading event bounds: %w", err)
	}
	if len(first) == 0 || len(last) == 0 {
		return 0, 0, nil
	}
	lo, err := streamSeq(first[0].ID)
	if err != nil {
		return 0, 0, err
	}
	hi, err := streamSeq(last[0].ID)
	if err != nil {
		return 0, 0, err
	}
	return lo, hi, nil
}

// PruneEvents keeps the newest keep events (at least one, so sequence
// numbers never restart).
func (s *Store) PruneEvents(ctx context.Context, keep int) error {
	if keep < 1 {
		keep = 1
	}
	if err := s.c.XTrimMaxLen(ctx, s.Key(keyEvents), int64(keep)).Err(); err != nil {
		return fmt.Errorf("pruning events: %w", err)
	}
	return nil
}

// ReservationFields is a reservation record as hash fields.
func ReservationFields(r store.Reservation) ([]any, error) {
	opts, err := json.Marshal(r.Options)
	if err != nil {
		return nil, fmt.Errorf("encoding reservation options: %w", err)
	}
	return []any{"service", r.Service, "index", r.Index, "owner", r.Owner, "options", string(opts),
		"state", r.State, "created", nanos(r.Created), "expires", nanos(r.Expires)}, nil
}

// ParseReservation reads a record's hash fields.
func ParseReservation(tok string, h map[string]string) (store.Reservation, error) {
	r := store.Reservation{Token: tok, Service: h["service"], Owner: h["owner"], State: h["state"]}
	var err error
	if r.Index, err = strconv.Atoi(h["index"]); err != nil {
		return r, fmt.Errorf("reservation %s…: index: %w", tok[:min(8, len(tok))], err)
	}
	if o := h["options"]; o != "" && o != "null" {
		if err := json.Unmarshal([]byte(o), &r.Options); err != nil {
			return r, fmt.Errorf("reservation %s…: options: %w", tok[:min(8, len(tok))], err)
		}
	}
	r.Created, r.Expires = fromNanos(h["created"]), fromNanos(h["expires"])
	return r, nil
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(s string) time.Time {
	n, _ := strconv.ParseInt(s, 10, 64)
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// SaveReservation inserts or replaces r.
func (s *Store) SaveReservation(ctx context.Context, r store.Reservation) error {
	f, err := ReservationFields(r)
	if err != nil {
		return err
	}
	_, err = s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.ReservationKey(r.Token), f...)
		p.SAdd(ctx, s.Key(keyTokens), r.Token)
		return nil
	})
	if err != nil {
		return fmt.Errorf("saving reservation: %w", err)
	}
	return nil
}

// DeleteReservation forgets a record (no error when it is unknown).
func (s *Store) DeleteReservation(ctx context.Context, token string) error {
	_, err := s.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.ReservationKey(token))
		p.SRem(ctx, s.Key(keyTokens), token)
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting reservation: %w", err)
	}
	return nil
}

// ListReservations returns every stored reservation, oldest first.
func (s *Store) ListReservations(ctx context.Context) ([]store.Reservation, error) {
	toks, err := s.c.SMembers(ctx, s.Key(keyTokens)).Result()
	if err != nil {
		return nil, fmt.Errorf("listing reservations: %w", err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(toks))
	_, err = s.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range toks {
			cmds[i] = p.HGetAll(ctx, s.ReservationKey(t))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing reservations: %w", err)
	}
	var out []store.Reservation
	for i, c := range cmds {
		h := c.Val()
		if len(h) == 0 {
			continue // ended meanwhile
		}
		r, err := ParseReservation(toks[i], h)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Created.Before(out[b].Created) })
	return out, nil
}
