// Package replica keeps the state several gateway replicas share in
// Redis: slots, tokens and their records, which websocket holds a token,
// which replica runs each session (under a lease it renews), and the
// stop requests one replica sends the replica that runs a session. It
// implements session.Shared; every change of a record is one Lua script,
// so two replicas never both take a slot, both claim a token, or both
// expire a reservation.
//
// The key layout is package redisstore's: res:<token> (a hash),
// tokens, slots:<service>, owner:<owner>, expired:<token>, plus
// replica:<id> (the lease, holding the replica's internal address) and
// the pub/sub channel stop:<id>.
package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"wsgateway/reservation"
	"wsgateway/session"
	"wsgateway/store"
	"wsgateway/store/redisstore"
)

// Config sets up a Coordinator.
type Config struct {
	// ID names this replica; unique among the replicas (NewID gives one).
	ID string
	// Address is where other replicas reach this one (its replica
	// listener, host:port; "" when it has none).
	Address string
	// Lease is how long this replica's sessions outlive its last renewal
	// (default 15 s); it renews every third of it.
	Lease time.Duration
	// ExpiredMemory is how long an expired token is still told apart from
	// an unknown one (default 24 h).
	ExpiredMemory time.Duration
}

// Coordinator is the shared state of the replicas, in Redis.
type Coordinator struct {
	st  *redisstore.Store
	c   *redis.Client
	cfg Config
	log zerolog.Logger
}

var _ session.Shared = (*Coordinator)(nil)

// New returns the Coordinator of replica cfg.ID on st's Redis.
func New(st *redisstore.Store, cfg Config, log zerolog.Logger) *Coordinator {
	if cfg.Lease <= 0 {
		cfg.Lease = 15 * time.Second
	}
	if cfg.ExpiredMemory <= 0 {
		cfg.ExpiredMemory = 24 * time.Hour
	}
	return &Coordinator{st: st, c: st.Client(), cfg: cfg, log: log.With().Str("replica", cfg.ID).Logger()}
}

// NewID returns a fresh replica id: the host name and a random suffix.
func NewID(host string) (string, error) {
	tok, err := reservation.NewToken()
	if err != nil {
		return "", err
	}
	if host == "" {
		host = "gw"
	}
	return host + "-" + tok[:8], nil
}

// ID is this replica's id.
func (c *Coordinator) ID() string { return c.cfg.ID }

// unavailable wraps a Redis failure as session.ErrUnavailable.
func unavailable(what string, err error) error {
	return fmt.Errorf("%s: %w: %w", what, session.ErrUnavailable, err)
}

// lib is shared by the scripts: ending a record, once.
const lib = `
local P = ARGV[1]
local function endres(tok, expired, ttl)
  local k = P .. 'res:' .. tok
  local h = redis.call('HMGET', k, 'service', 'index', 'owner')
  if not h[1] then return 0 end
  redis.call('DEL', k)
  redis.call('SREM', P .. 'tokens', tok)
  local sk = P .. 'slots:' .. h[1]
  if redis.call('HGET', sk, h[2]) == tok then redis.call('HDEL', sk, h[2]) end
  if h[3] and h[3] ~= '' then redis.call('SREM', P .. 'owner:' .. h[3], tok) end
  if expired then redis.call('SET', P .. 'expired:' .. tok, '1', 'EX', ttl) end
  return 1
end
`

// reserve: ARGV prefix tok service count owner perUser then the record's
// fields. Returns the index, or -1 (no slot) / -2 (user limit) and a count.
var reserveScript = redis.NewScript(lib + `
local tok, svc, count, owner, perUser = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
if owner ~= '' and perUser > 0 then
  local n = redis.call('SCARD', P .. 'owner:' .. owner)
  if n >= perUser then return {-2, n} end
end
local sk = P .. 'slots:' .. svc
for i = 0, count - 1 do
  if redis.call('HSETNX', sk, tostring(i), tok) == 1 then
    local k = P .. 'res:' .. tok
    for j = 7, #ARGV, 2 do redis.call('HSET', k, ARGV[j], ARGV[j+1]) end
    redis.call('HSET', k, 'index', i, 'replica', '', 'connects', 0, 'last_claim', 0)
    redis.call('SADD', P .. 'tokens', tok)
    if owner ~= '' then redis.call('SADD', P .. 'owner:' .. owner, tok) end
    return {i, 0}
  end
end
return {-1, count}`)

// Reserve takes the lowest free slot of r.Service.
func (c *Coordinator) Reserve(ctx context.Context, r reservation.Reservation, count, perUser int) (reservation.Reservation, error) {
	f, err := redisstore.ReservationFields(store.Reservation{Token: r.Token, Service: r.Service, Owner: r.Owner, Options: r.Options,
		State: r.State, Created: r.Created, Expires: r.Expires})
	if err != nil {
		return r, err
	}
	args := append([]any{c.st.Prefix(), r.Token, r.Service, count, r.Owner, perUser}, f...)
	res, err := reserveScript.Run(ctx, c.c, nil, args...).Int64Slice()
	if err != nil {
		return r, unavailable("reserving", err)
	}
	switch res[0] {
	case -1:
		return r, fmt.Errorf("%w: all %d slots of %q are in use", reservation.ErrNoSlot, res[1], r.Service)
	case -2:
		return r, fmt.Errorf("%w: %s holds %d (the limit)", reservation.ErrUserLimit, r.Owner, res[1])
	}
	r.Index = int(res[0])
	return r, nil
}

// get reads tok's record (nil map when there is none).
func (c *Coordinator) get(ctx context.Context, tok string) (map[string]string, error) {
	h, err := c.c.HGetAll(ctx, c.st.ReservationKey(tok)).Result()
	if err != nil {
		return nil, unavailable("reading a reservation", err)
	}
	if len(h) == 0 {
		return nil, nil
	}
	return h, nil
}

func parse(tok string, h map[string]string) (session.Record, error) {
	sr, err := redisstore.ParseReservation(tok, h)
	if err != nil {
		return session.Record{}, err
	}
	r := session.Record{Reservation: reservation.Reservation{Token: tok, Service: sr.Service, Index: sr.Index, Options: sr.Options,
		State: sr.State, Created: sr.Created, Expires: sr.Expires, Owner: sr.Owner}, Replica: h["replica"]}
	r.Connects, _ = strconv.Atoi(h["connects"])
	r.Target = session.Target{Network: h["target_net"], Address: h["target_addr"], Shared: h["target_shared"] == "1"}
	if n, _ := strconv.ParseInt(h["grace"], 10, 64); n > 0 {
		r.Target.Grace = time.Duration(n)
	}
	if n, _ := strconv.ParseInt(h["last_claim"], 10, 64); n > 0 {
		r.LastClaim = time.Unix(0, n).UTC()
	}
	return r, nil
}

// Get returns tok's record.
func (c *Coordinator) Get(ctx context.Context, tok string) (reservation.Reservation, error) {
	h, err := c.get(ctx, tok)
	if err != nil {
		return reservation.Reservation{}, err
	}
	if h == nil {
		return reservation.Reservation{}, c.missing(ctx, tok)
	}
	r, err := parse(tok, h)
	return r.Reservation, err
}

// missing tells an expired token from an unknown one.
func (c *Coordinator) missing(ctx context.Context, tok string) error {
	n, err := c.c.Exists(ctx, c.st.Key("expired:"+tok)).Result()
	if err != nil {
		return unavailable("reading a reservation", err)
	}
	if n > 0 {
		return reservation.ErrExpiredToken
	}
	return reservation.ErrUnknownToken
}

// claim: ARGV prefix tok me now maxUserTunnels expiredTTL. Returns
// {status, from, detail}.
var claimScript = redis.NewScript(lib + `
local tok, me, now, maxT, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local k = P .. 'res:' .. tok
local h = redis.call('HMGET', k, 'state', 'expires', 'replica', 'owner')
local st = h[1]
if not st then
  if redis.call('EXISTS', P .. 'expired:' .. tok) == 1 then return {'expired', '', ''} end
  return {'unknown', '', ''}
end
if st == 'claimed' or st == 'starting' or st == 'running' then return {'busy', st, ''} end
if st == 'stopping' or st == 'ended' then return {'ended', st, ''} end
if st == 'reserved' then
  if tonumber(h[2]) <= now then
    endres(tok, true, ttl)
    return {'expired', st, ''}
  end
elseif st == 'detached' then
  if h[3] ~= me then return {'elsewhere', st, h[3]} end
else
  return {'ended', st, ''}
end
local owner = h[4]
if maxT > 0 and owner and owner ~= '' then
  local n = 0
  for _, t in ipairs(redis.call('SMEMBERS', P .. 'owner:' .. owner)) do
    local s = redis.call('HGET', P .. 'res:' .. t, 'state')
    if s == 'claimed' or s == 'starting' or s == 'running' then n = n + 1 end
  end
  if n >= maxT then return {'tunnels', st, tostring(n)} end
end
redis.call('HSET', k, 'state', 'claimed', 'replica', me, 'last_claim', now)
redis.call('HINCRBY', k, 'connects', 1)
return {'ok', st, ''}`)

// Claim gives tok to a websocket of this replica.
func (c *Coordinator) Claim(ctx context.Context, tok string, maxUserTunnels int, now time.Time) (reservation.Reservation, session.State, error) {
	res, err := claimScript.Run(ctx, c.c, nil, c.st.Prefix(), tok, c.cfg.ID, now.UnixNano(), maxUserTunnels,
		int(c.cfg.ExpiredMemory.Seconds())).StringSlice()
	if err != nil {
		return reservation.Reservation{}, "", unavailable("claiming", err)
	}
	from := session.State(res[1])
	switch res[0] {
	case "ok":
	case "busy":
		return reservation.Reservation{}, from, reservation.ErrBusy
	case "ended":
		return reservation.Reservation{}, from, reservation.ErrEnded
	case "expired":
		return reservation.Reservation{}, from, reservation.ErrExpiredToken
	case "unknown":
		return reservation.Reservation{}, from, reservation.ErrUnknownToken
	case "elsewhere":
		return reservation.Reservation{}, from, fmt.Errorf("%w (%s)", session.ErrElsewhere, res[2])
	case "tunnels":
		return reservation.Reservation{}, from, fmt.Errorf("%w: the owner already has %s open sessions (the limit)", session.ErrUserTunnels, res[2])
	default:
		return reservation.Reservation{}, from, fmt.Errorf("claiming: unexpected answer %q", res[0])
	}
	h, err := c.get(ctx, tok)
	if err != nil || h == nil {
		return reservation.Reservation{}, from, fmt.Errorf("reading the claimed reservation: %w", errors.Join(err, reservation.ErrEnded))
	}
	r, err := parse(tok, h)
	return r.Reservation, from, err
}

// save: ARGV prefix tok me state expires connects. 1 when saved.
var saveScript = redis.NewScript(`
local k = ARGV[1] .. 'res:' .. ARGV[2]
if redis.call('HGET', k, 'replica') ~= ARGV[3] then return 0 end
redis.call('HSET', k, 'state', ARGV[4], 'expires', ARGV[5], 'connects', ARGV[6])
return 1`)

// Save records a change of a session this replica holds.
func (c *Coordinator) Save(ctx context.Context, r reservation.Reservation) (bool, error) {
	n, err := saveScript.Run(ctx, c.c, nil, c.st.Prefix(), r.Token, c.cfg.ID, r.State, r.Expires.UnixNano(), r.Connects).Int()
	if err != nil {
		c.log.Error().Err(err).Str("token", reservation.TokenPrefix(r.Token)).Msg("session change not shared")
		return true, unavailable("saving a session", err)
	}
	return n == 1, nil
}

var endScript = redis.NewScript(lib + `return endres(ARGV[2], false, 0)`)

// End forgets tok and frees its slot, once.
func (c *Coordinator) End(ctx context.Context, tok string) error {
	if err := endScript.Run(ctx, c.c, nil, c.st.Prefix(), tok).Err(); err != nil {
		c.log.Error().Err(err).Str("token", reservation.TokenPrefix(tok)).Msg("slot not freed in the shared state")
		return unavailable("ending a session", err)
	}
	return nil
}

// release: ARGV prefix tok. Ends an unused reservation at once
// ({'ended', ”}), else names the replica holding the session.
var releaseScript = redis.NewScript(lib + `
local k = P .. 'res:' .. ARGV[2]
local h = redis.call('HMGET', k, 'state', 'replica')
if not h[1] then return {'unknown', ''} end
if h[1] == 'reserved' or not h[2] or h[2] == '' then
  endres(ARGV[2], false, 0)
  return {'ended', ''}
end
return {'held', h[2]}`)

type stopMsg struct {
	Token  string `json:"token"`
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// Release ends tok's reservation, or has the replica holding its session
// stop it and waits until its slot is free.
func (c *Coordinator) Release(ctx context.Context, tok string, code int, reason string) (reservation.Reservation, error) {
	h, err := c.get(ctx, tok)
	if err != nil {
		return reservation.Reservation{}, err
	}
	if h == nil {
		return reservation.Reservation{}, c.missing(ctx, tok)
	}
	rec, err := parse(tok, h)
	if err != nil {
		return reservation.Reservation{}, err
	}
	res, err := releaseScript.Run(ctx, c.c, nil, c.st.Prefix(), tok).StringSlice()
	if err != nil {
		return rec.Reservation, unavailable("releasing", err)
	}
	switch res[0] {
	case "unknown":
		return rec.Reservation, c.missing(ctx, tok)
	case "ended":
		return rec.Reservation, nil
	}
	b, _ := json.Marshal(stopMsg{Token: tok, Code: code, Reason: reason})
	if err := c.c.Publish(ctx, c.st.Key("stop:"+res[1]), b).Err(); err != nil {
		return rec.Reservation, unavailable("asking the replica that holds the session", err)
	}
	// Wait for its slot to be free: polling, bounded by ctx.
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		n, err := c.c.Exists(ctx, c.st.ReservationKey(tok)).Result()
		if err == nil && n == 0 {
			return rec.Reservation, nil
		}
		select {
		case <-ctx.Done():
			return rec.Reservation, fmt.Errorf("the session of %s… is still stopping on replica %s: %w", reservation.TokenPrefix(tok), res[1], ctx.Err())
		case <-t.C:
		}
	}
}

// expire: ARGV prefix now expiredTTL me. Ends unused reservations past
// their deadline and sessions whose replica's lease is gone, but adopts
// those of the latter that any replica can reach (a shared target, a
// grace, running or detached): they become this replica's, detached for
// the grace. Returns {token, kind, service, index, owner, replica, ...}.
var expireScript = redis.NewScript(lib + `
local now, ttl, me = tonumber(ARGV[2]), ARGV[3], ARGV[4]
local out = {}
local function add(tok, kind, h) 
  for _, v in ipairs({tok, kind, h[4], h[5], h[6] or '', h[3] or ''}) do table.insert(out, v) end
end
for _, tok in ipairs(redis.call('SMEMBERS', P .. 'tokens')) do
  local k = P .. 'res:' .. tok
  local h = redis.call('HMGET', k, 'state', 'expires', 'replica', 'service', 'index', 'owner', 'target_shared', 'grace')
  if not h[1] then
    redis.call('SREM', P .. 'tokens', tok)
  elseif h[1] == 'reserved' and tonumber(h[2]) <= now then
    endres(tok, true, ttl)
    add(tok, 'reserved', h)
  elseif h[3] and h[3] ~= '' and redis.call('EXISTS', P .. 'replica:' .. h[3]) == 0 then
    local grace = tonumber(h[8] or '0') or 0
    if h[3] ~= me and h[7] == '1' and grace > 0 and (h[1] == 'running' or h[1] == 'detached') then
      redis.call('HSET', k, 'replica', me, 'state', 'detached', 'expires', string.format('%.0f', now + grace))
      add(tok, 'adopted', h)
    else
      endres(tok, false, 0)
      add(tok, 'interrupted', h)
    end
  end
end
return out`)

// Expire ends what expired, and adopts what a dead replica left that
// this one can reach, once across replicas.
func (c *Coordinator) Expire(ctx context.Context, now time.Time) ([]session.Record, error) {
	res, err := expireScript.Run(ctx, c.c, nil, c.st.Prefix(), now.UnixNano(), int(c.cfg.ExpiredMemory.Seconds()), c.cfg.ID).StringSlice()
	if err != nil {
		return nil, unavailable("expiring reservations", err)
	}
	var out []session.Record
	for i := 0; i+5 < len(res); i += 6 {
		idx, _ := strconv.Atoi(res[i+3])
		out = append(out, session.Record{Reservation: reservation.Reservation{Token: res[i], State: res[i+1], Service: res[i+2], Index: idx, Owner: res[i+4]},
			Replica: res[i+5]})
	}
	return out, nil
}

// Lookup returns tok's record with its replica and target.
func (c *Coordinator) Lookup(ctx context.Context, tok string) (session.Record, error) {
	h, err := c.get(ctx, tok)
	if err != nil {
		return session.Record{}, err
	}
	if h == nil {
		return session.Record{}, c.missing(ctx, tok)
	}
	return parse(tok, h)
}

// setTarget: ARGV prefix tok me net addr shared grace. 1 when set.
var setTargetScript = redis.NewScript(`
local k = ARGV[1] .. 'res:' .. ARGV[2]
if redis.call('HGET', k, 'replica') ~= ARGV[3] then return 0 end
redis.call('HSET', k, 'target_net', ARGV[4], 'target_addr', ARGV[5], 'target_shared', ARGV[6], 'grace', ARGV[7])
return 1`)

// SetTarget records where the service of a session of this replica
// listens.
func (c *Coordinator) SetTarget(ctx context.Context, tok string, t session.Target) (bool, error) {
	shared := "0"
	if t.Shared {
		shared = "1"
	}
	n, err := setTargetScript.Run(ctx, c.c, nil, c.st.Prefix(), tok, c.cfg.ID, t.Network, t.Address, shared, int64(t.Grace)).Int()
	if err != nil {
		c.log.Error().Err(err).Str("token", reservation.TokenPrefix(tok)).Msg("session target not shared")
		return false, unavailable("recording a session's target", err)
	}
	return n == 1, nil
}

// ReplicaAddress is where other replicas reach replica id.
func (c *Coordinator) ReplicaAddress(ctx context.Context, id string) (string, error) {
	addr, err := c.c.Get(ctx, c.st.Key("replica:"+id)).Result()
	if errors.Is(err, redis.Nil) {
		return "", fmt.Errorf("%w: %s", session.ErrReplicaGone, id)
	}
	if err != nil {
		return "", unavailable("reading a replica's address", err)
	}
	if addr == "-" {
		addr = ""
	}
	return addr, nil
}

// List returns every record.
func (c *Coordinator) List(ctx context.Context) ([]session.Record, error) {
	toks, err := c.c.SMembers(ctx, c.st.Key("tokens")).Result()
	if err != nil {
		return nil, unavailable("listing reservations", err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(toks))
	if _, err := c.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range toks {
			cmds[i] = p.HGetAll(ctx, c.st.ReservationKey(t))
		}
		return nil
	}); err != nil {
		return nil, unavailable("listing reservations", err)
	}
	out := make([]session.Record, 0, len(toks))
	for i, cmd := range cmds {
		if len(cmd.Val()) == 0 {
			continue
		}
		r, err := parse(toks[i], cmd.Val())
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Replicas returns the live replicas' ids and addresses.
func (c *Coordinator) Replicas(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	iter := c.c.Scan(ctx, 0, c.st.Key("replica:*"), 100).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		addr, err := c.c.Get(ctx, k).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, unavailable("listing replicas", err)
		}
		out[k[len(c.st.Key("replica:")):]] = addr
	}
	if err := iter.Err(); err != nil {
		return nil, unavailable("listing replicas", err)
	}
	return out, nil
}

// Run keeps the lease and serves stop requests until ctx ends; then it
// gives the lease up.
func (c *Coordinator) Run(ctx context.Context, stop func(tok string, code int, reason string)) {
	go c.keepLease(ctx)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		sub := c.c.Subscribe(ctx, c.st.Key("stop:"+c.cfg.ID))
		if _, err := sub.Receive(ctx); err != nil {
			sub.Close()
			if ctx.Err() != nil {
				break
			}
			c.log.Warn().Err(err).Dur("retry_in", backoff).Msg("shared state: cannot subscribe to stop requests")
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		ch := sub.Channel()
		for open := true; open; {
			select {
			case <-ctx.Done():
				open = false
			case m, ok := <-ch:
				if !ok {
					open = false
					break
				}
				var sm stopMsg
				if err := json.Unmarshal([]byte(m.Payload), &sm); err != nil || sm.Token == "" {
					continue
				}
				stop(sm.Token, sm.Code, sm.Reason)
			}
		}
		sub.Close()
	}
	ctx2, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.c.Del(ctx2, c.st.Key("replica:"+c.cfg.ID)).Err()
}

// Renew renews the lease once.
func (c *Coordinator) Renew(ctx context.Context) error {
	addr := c.cfg.Address
	if addr == "" {
		addr = "-"
	}
	if err := c.c.Set(ctx, c.st.Key("replica:"+c.cfg.ID), addr, c.cfg.Lease).Err(); err != nil {
		return unavailable("renewing the lease", err)
	}
	return nil
}

func (c *Coordinator) keepLease(ctx context.Context) {
	t := time.NewTicker(c.cfg.Lease / 3)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.Lease/3)
		if err := c.Renew(rctx); err != nil && ctx.Err() == nil {
			c.log.Warn().Err(err).Msg("lease not renewed")
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// HostPort joins a host and port for Config.Address.
func HostPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }
