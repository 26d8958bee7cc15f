package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"wsgateway/auth"
	"wsgateway/internal/httperr"
	"wsgateway/reservation"
)

// rateLimiter is a token bucket per client address, bounded in the number
// of addresses it remembers (the least recently seen are forgotten).
type rateLimiter struct {
	mu      sync.Mutex
	rate    float64 // tokens per second
	burst   float64
	max     int
	buckets map[string]*bucket
	now     func() time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(perSecond float64, burst int) *rateLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst < 1 {
		burst = 1
	}
	return &rateLimiter{rate: perSecond, burst: float64(burst), max: 10000, buckets: map[string]*bucket{}, now: time.Now}
}

// allow takes one token for the client at remote; nil allows everything.
func (l *rateLimiter) allow(remote string) bool {
	if l == nil {
		return true
	}
	key := clientKey(remote)
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.max {
			l.evict(now)
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens += now.Sub(b.last).Seconds() * l.rate
	if b.tokens > l.burst {
		b.tokens = l.burst
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// evict forgets full buckets (clients that have been quiet), or, if none
// is full, the stalest half.
func (l *rateLimiter) evict(now time.Time) {
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
	if len(l.buckets) < l.max {
		return
	}
	var oldest time.Time
	for _, b := range l.buckets {
		if oldest.IsZero() || b.last.Before(oldest) {
			oldest = b.last
		}
	}
	cut := oldest.Add(now.Sub(oldest) / 2)
	for k, b := range l.buckets {
		if !b.last.After(cut) {
			delete(l.buckets, k)
		}
	}
}

// clientKey is the address a limit applies to: the IP, with IPv6 grouped
// by /64 so one host cannot dodge the limit by rotating addresses.
func clientKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String()
	}
	return ip.String()
}

// exhausted reports whether the client at remote has no token left,
// without taking one.
func (l *rateLimiter) exhausted(remote string) bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[clientKey(remote)]
	if b == nil {
		return false
	}
	tokens := b.tokens + l.now().Sub(b.last).Seconds()*l.rate
	return tokens < 1
}

// Per-client limits shared by every front end: the REST API and
// websocket upgrades of this package, and the JSON-RPC control plane
// (package rpc), which calls the exported methods below. A limit lives
// here once; no front end keeps a copy of its own.

// Refusals by a limit; they come wrapped in an httperr.Error that carries
// the HTTP status (429 or 503) and a message for the client.
var (
	// ErrRateLimited: the client's address used up its --rate_limit.
	ErrRateLimited = errors.New("rate limited")
	// ErrAuthFailures: the address failed to authenticate too often
	// (--auth_fail_limit).
	ErrAuthFailures = errors.New("too many failed authentications")
	// ErrCapacity: the gateway serves its maximum of websockets
	// (--max_tunnels).
	ErrCapacity = errors.New("at capacity")
	// ErrAddressLimit: the address holds as many control connections or
	// waiting reservations as one address may.
	ErrAddressLimit = errors.New("per-address limit")
)

// MaxWaitersPerAddress bounds the reservations one client address may
// have waiting for a slot (?wait= and reservations.create with wait), so
// that one client cannot fill a service's wait queue (maxWaiters).
const MaxWaitersPerAddress = 32

// addrLimits counts, per client address (clientKey), the control-plane
// connections open and the reservations waiting for a slot, and holds
// the job submission rate.
type addrLimits struct {
	submit   *rateLimiter
	maxConns int // control connections per address (0: no cap)

	mu      sync.Mutex
	conns   map[string]int
	waiting map[string]int
}

func newAddrLimits(rate float64, maxConns int) *addrLimits {
	return &addrLimits{submit: newRateLimiter(rate, int(2*rate)), maxConns: maxConns,
		conns: map[string]int{}, waiting: map[string]int{}}
}

// take adds one to m[key] unless it is at max (0: no cap); it reports
// whether it did.
func (a *addrLimits) take(m map[string]int, key string, max int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if max > 0 && m[key] >= max {
		return false
	}
	m[key]++
	return true
}

// put undoes one take.
func (a *addrLimits) put(m map[string]int, key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m[key] <= 1 {
		delete(m, key)
		return
	}
	m[key]--
}

// Authenticate is the one check of a caller's credentials, with the
// failed-authentication limit around it (--auth_fail_limit, per client
// address): while the address is over the limit every attempt gets 429,
// right credentials too; wrong credentials (caller's error, or a
// security token or bearer key that identifies nobody) count as a
// failure. caller says who r is (nil: anonymous). The REST API and the
// JSON-RPC upgrade both go through it.
func (s *Server) Authenticate(r *http.Request) (auth.Caller, error) {
	required := s.authRequired()
	// The limit is checked before the credentials are: a client over it
	// costs no password hash check (bcrypt), however many it sends.
	if client := s.policy.Client(r); required && s.authLimit.exhausted(client) {
		s.metrics.limited.WithLabelValues("auth_failures").Inc()
		return auth.Caller{Client: client}, &httperr.Error{Status: http.StatusTooManyRequests, Err: ErrAuthFailures,
			Msg: "too many failed authentications from your address; wait a minute"}
	}
	c, err := s.policy.Caller(r)
	if err != nil {
		s.authLimit.allow(c.Client)
		return c, httperr.Errorf(http.StatusUnauthorized, "wrong user name, password, API key, security token or session; log in again")
	}
	if c.ID == nil && required {
		if s.cfg.Users != nil {
			return c, httperr.Errorf(http.StatusUnauthorized, "log in first: HTTP Basic, Authorization: Bearer <api key>, or the dashboard's login page %slogin.html", PagesPrefix)
		}
		return c, httperr.Errorf(http.StatusUnauthorized, "missing security token: add ?security_token=<token> or the header Authorization: Bearer <token>")
	}
	return c, nil
}

// AdmitControl admits a control-plane connection (a JSON-RPC websocket)
// from remote: it counts against --max_tunnels like every websocket
// (503 when the gateway is full) and against the per-address cap
// (429). release, called once when the connection ends, gives both back.
func (s *Server) AdmitControl(remote string) (release func(), err error) {
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "the gateway is shutting down")
	}
	if n := s.active.Add(1); s.cfg.MaxTunnels > 0 && n > int64(s.cfg.MaxTunnels) {
		s.active.Add(-1)
		s.metrics.limited.WithLabelValues("max_tunnels").Inc()
		return nil, &httperr.Error{Status: http.StatusServiceUnavailable, Err: ErrCapacity,
			Msg: fmt.Sprintf("the gateway is serving its maximum of %d websockets; try again later", s.cfg.MaxTunnels)}
	}
	key := clientKey(remote)
	if !s.addr.take(s.addr.conns, key, s.addr.maxConns) {
		s.active.Add(-1)
		s.metrics.limited.WithLabelValues("address_connections").Inc()
		return nil, &httperr.Error{Status: http.StatusTooManyRequests, Err: ErrAddressLimit,
			Msg: fmt.Sprintf("your address holds its maximum of %d control connections (--max_rpc_per_address); close one first", s.addr.maxConns)}
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			s.addr.put(s.addr.conns, key)
			s.active.Add(-1)
		})
	}, nil
}

// AllowSubmit takes one job submission from remote's --rate_limit
// budget (a bucket of its own, filled at the rate reservations are).
func (s *Server) AllowSubmit(remote string) error {
	if !s.addr.submit.allow(remote) {
		s.metrics.limited.WithLabelValues("rate_submit").Inc()
		return &httperr.Error{Status: http.StatusTooManyRequests, Err: ErrRateLimited,
			Msg: "too many job submissions from your address; slow down"}
	}
	return nil
}

// ReserveFrom is a reservation made by a client at remote, with every
// limit GET /v1/reserve has: the --rate_limit, the per-address bound on
// waiting reservations, and then the wait queue's own bound, groups and
// per-user limits (reserveAs). crossSite callers are never group
// members.
func (s *Server) ReserveFrom(ctx context.Context, c auth.Caller, service string, opts map[string]string, wait time.Duration) (reservation.Reservation, error) {
	remote := c.Client
	if !s.reserveLimit.allow(remote) {
		s.metrics.limited.WithLabelValues("rate_reserve").Inc()
		return reservation.Reservation{}, &httperr.Error{Status: http.StatusTooManyRequests, Err: ErrRateLimited,
			Msg: "too many reservations from your address; slow down"}
	}
	if wait > maxWait {
		wait = maxWait
	}
	if wait > 0 {
		key := clientKey(remote)
		if !s.addr.take(s.addr.waiting, key, MaxWaitersPerAddress) {
			s.metrics.limited.WithLabelValues("wait_queue").Inc()
			return reservation.Reservation{}, &httperr.Error{Status: http.StatusTooManyRequests, Err: ErrAddressLimit,
				Msg: fmt.Sprintf("your address has %d reservations waiting for a slot already; wait for them or cancel one", MaxWaitersPerAddress)}
		}
		defer s.addr.put(s.addr.waiting, key)
	}
	return s.reserveAs(ctx, c, service, opts, wait)
}
