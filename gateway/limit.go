package gateway

import (
	"net"
	"sync"
	"time"
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
