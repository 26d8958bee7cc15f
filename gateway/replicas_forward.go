package gateway

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/internal/httperr"
	"wsgateway/reservation"
	"wsgateway/services"
	"wsgateway/session"
	"wsgateway/wsframe"
)

// Sessions across replicas. The replica whose websocket started a
// session's service owns it; it records the service's target in the
// shared state (Describe). A websocket for the session that lands on
// another replica is joined to it through the owner's replica listener
// (ReplicaHandler), on a websocket authenticated with the replicas'
// shared secret:
//
//   - relay: the owner dials its service and splices it to that
//     websocket, as it would a client's; the other replica splices its
//     client to it. This reaches a target only the owner can (a Unix
//     socket, a loopback port).
//   - direct: a target every replica reaches (Target.Shared) is dialled
//     by the replica the client is on; the websocket to the owner only
//     carries the session's life (the owner's stop closes it with its
//     code and reason, its close detaches the session).
//
// When the owner dies, another replica adopts its sessions with a shared
// target (Config.Adopt): it dials the target itself from then on.

// replicaPath is the replica listener's one route.
const replicaPath = "/replica/v1/attach"

// replicaAuthHeader carries "v1 <from> <unix seconds> <nonce> <hex HMAC>".
const replicaAuthHeader = "X-Wsgw-Replica-Auth"

// replicaClockSkew is how far a signed request's time may be from ours.
const replicaClockSkew = time.Minute

// replicaAuth signs and checks replica-to-replica requests with the
// replicas' shared secret: an HMAC-SHA256 of the sender, the time, a
// nonce, the token and the mode. A nonce is accepted once.
type replicaAuth struct {
	secret []byte
	now    func() time.Time

	mu   sync.Mutex
	seen map[string]time.Time // nonce -> when it may be forgotten
}

func newReplicaAuth(secret []byte) *replicaAuth {
	return &replicaAuth{secret: secret, now: time.Now, seen: map[string]time.Time{}}
}

func (a *replicaAuth) mac(from, ts, nonce, tok, mode string) string {
	m := hmac.New(sha256.New, a.secret)
	for _, f := range []string{"wsgw-replica-v1", from, ts, nonce, tok, mode} {
		m.Write([]byte(f))
		m.Write([]byte{0})
	}
	return hex.EncodeToString(m.Sum(nil))
}

// sign returns the header value for a request of replica from.
func (a *replicaAuth) sign(from, tok, mode string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("replica request nonce: %w", err)
	}
	nonce := hex.EncodeToString(b[:])
	ts := strconv.FormatInt(a.now().Unix(), 10)
	return strings.Join([]string{"v1", from, ts, nonce, a.mac(from, ts, nonce, tok, mode)}, " "), nil
}

// Errors of replicaAuth.check.
var (
	errReplicaAuth  = errors.New("replica request not signed with the replicas' secret")
	errReplicaStale = errors.New("replica request too old, from the future or replayed")
)

// check verifies a header value for tok and mode and returns the sender.
func (a *replicaAuth) check(header, tok, mode string) (string, error) {
	f := strings.Fields(header)
	if len(f) != 5 || f[0] != "v1" {
		return "", errReplicaAuth
	}
	from, ts, nonce, got := f[1], f[2], f[3], f[4]
	if !hmac.Equal([]byte(got), []byte(a.mac(from, ts, nonce, tok, mode))) {
		return "", errReplicaAuth
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", errReplicaAuth
	}
	now := a.now()
	if d := now.Sub(time.Unix(sec, 0)); d > replicaClockSkew || d < -replicaClockSkew {
		return "", errReplicaStale
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for n, until := range a.seen {
		if now.After(until) {
			delete(a.seen, n)
		}
	}
	if _, dup := a.seen[nonce]; dup {
		return "", errReplicaStale
	}
	// Past twice the skew the time check refuses it anyway.
	a.seen[nonce] = now.Add(2*replicaClockSkew + time.Second)
	return from, nil
}

// ReplicaHandler serves the replica listener (--replica_address): other
// replicas join their clients' websockets to the sessions this replica
// owns. Every request must be signed with the replicas' secret.
func (s *Server) ReplicaHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(replicaPath, s.serveReplicaAttach)
	return mux
}

// serveReplicaAttach joins another replica's websocket to a session of
// this replica.
func (s *Server) serveReplicaAttach(w http.ResponseWriter, r *http.Request) {
	tok, mode := r.URL.Query().Get("token"), r.URL.Query().Get("mode")
	if s.replicaAuth == nil {
		s.writeError(w, r, httperr.Errorf(http.StatusNotFound, "this replica has no replica secret"))
		return
	}
	from, err := s.replicaAuth.check(r.Header.Get(replicaAuthHeader), tok, mode)
	if err != nil {
		s.log.Warn().Err(err).Str("remote", r.RemoteAddr).Msg("replica request refused")
		s.writeError(w, r, &httperr.Error{Status: http.StatusUnauthorized, Msg: err.Error(), Err: err})
		return
	}
	if (mode != "relay" && mode != "direct") || !websocket.IsWebSocketUpgrade(r) {
		s.writeError(w, r, httperr.Errorf(http.StatusBadRequest, "a websocket with mode relay or direct"))
		return
	}
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.work.Add(1)
	}
	s.mu.Unlock()
	if closing {
		s.writeError(w, r, httperr.Errorf(http.StatusServiceUnavailable, "the gateway is shutting down"))
		return
	}
	remote := "replica " + from
	if c := r.Header.Get("X-Wsgw-Client"); c != "" {
		remote += " for " + c
	}
	log := s.log.With().Uint64("conn", s.connID.Add(1)).Str("remote", remote).Str("mode", mode).Logger()
	splice := s.attachForReplica(w, r, tok, mode, remote, log)
	if splice == nil {
		s.work.Done()
		return
	}
	go func() {
		defer s.work.Done()
		splice()
	}()
}

// attachForReplica claims tok's session (detached here) for another
// replica's client and returns what keeps it attached.
func (s *Server) attachForReplica(w http.ResponseWriter, r *http.Request, tok, mode, remote string, log zerolog.Logger) func() {
	ss, err := s.sessions.Claim(tok, s.cfg.MaxUserTunnels)
	if err != nil {
		s.writeError(w, r, tokenError(err, tok))
		return nil
	}
	svc := s.svcs[ss.Service()]
	grace := reconnectGrace(svc)
	log = log.With().Str("service", ss.Service()).Int("index", ss.Index()).Str("token", reservation.TokenPrefix(tok)).Logger()
	d, ok := ss.Process().(dialer)
	if !ok {
		ss.Detach(nil, grace)
		s.writeError(w, r, httperr.Errorf(http.StatusConflict, "the session of %s… has no running service here", reservation.TokenPrefix(tok)))
		return nil
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Debug().Err(err).Msg("replica upgrade failed")
		ss.Detach(nil, grace)
		return nil
	}
	if mode == "direct" {
		ct := &controlTunnel{ws: ws}
		if err := ss.Attach(ct, remote); err != nil {
			closeWS(ws, websocket.CloseNormalClosure, "reservation released")
			return nil
		}
		log.Info().Msg("session attached to another replica's client (direct)")
		return func() {
			// The other replica closes it when its client is gone.
			for {
				if _, _, err := ws.NextReader(); err != nil {
					break
				}
			}
			ws.Close()
			ss.Detach(ct, grace)
		}
	}
	c, err := d.Dial(ss.Context())
	if err != nil {
		closeWS(ws, websocket.CloseInternalServerErr, "cannot connect to the service: "+unwrapNetErr(err).Error())
		ss.Detach(nil, grace)
		return nil
	}
	return s.spliceSession(ws, c, ss, svc, grace, remote, log)
}

// dialer is a started service the gateway can connect to.
type dialer interface {
	Dial(ctx context.Context) (net.Conn, error)
}

// spliceSession attaches ws, spliced to c, to ss and returns the splice.
func (s *Server) spliceSession(ws *websocket.Conn, c net.Conn, ss *session.Session, svc *services.Service, grace time.Duration, remote string, log zerolog.Logger) func() {
	t := s.newTunnel(ws, c, log)
	if t == nil {
		ss.Detach(nil, 0)
		return nil
	}
	if svc != nil {
		t.idleTimeout = svc.Seconds("idle_timeout")
		t.maxDuration = svc.Seconds("max_duration")
	}
	t.onPolicy = func(reason string) { ss.Stop(websocket.ClosePolicyViolation, reason) }
	if err := ss.Attach(t, remote); err != nil {
		t.closeWith(websocket.CloseNormalClosure, "reservation released")
	}
	return func() {
		t.run()
		s.dropTunnel(t)
		ss.Detach(t, grace)
	}
}

// controlTunnel is the session's tunnel on its owner while another
// replica carries the bytes (direct mode): closing it closes the other
// replica's websocket with the code and reason.
type controlTunnel struct {
	ws   *websocket.Conn
	once sync.Once
}

func (c *controlTunnel) Close(code int, reason string) {
	c.once.Do(func() {
		if code == 0 {
			code = websocket.CloseNormalClosure
		}
		_ = c.ws.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(code, wsframe.TruncateReason(reason, wsframe.MaxControlPayload-2)), time.Now().Add(wsframe.CloseTimeout))
		// The reader sees the other side's answer or the deadline.
		_ = c.ws.NetConn().SetReadDeadline(time.Now().Add(wsframe.CloseTimeout))
	})
}

func (c *controlTunnel) Bytes() (in, out int64) { return 0, 0 }

// forward joins a websocket for a session another replica owns to it
// (see the top of this file). handled is false when there is no way
// (no replica secret, an owner without a replica address): the caller
// refuses as before.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, tok string, log zerolog.Logger) (splice func(), handled bool) {
	sh := s.cfg.Shared
	if sh == nil || s.replicaAuth == nil {
		return nil, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	rec, err := sh.Lookup(ctx, tok)
	if err != nil || rec.Replica == "" || rec.Replica == s.cfg.ReplicaID {
		return nil, false
	}
	addr, err := sh.ReplicaAddress(ctx, rec.Replica)
	if err != nil || addr == "" {
		return nil, false
	}
	log = log.With().Str("service", rec.Service).Int("index", rec.Index).Str("token", reservation.TokenPrefix(tok)).
		Str("owner_replica", rec.Replica).Logger()
	mode := "relay"
	var target net.Conn
	if rec.Target.Shared && rec.Target.Network == "tcp" {
		var d net.Dialer
		dctx, dcancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
		target, err = d.DialContext(dctx, "tcp", rec.Target.Address)
		dcancel()
		if err == nil {
			mode = "direct"
		} else {
			log.Info().Err(err).Str("target", rec.Target.Address).Msg("shared target not reachable from here; relaying through its replica")
		}
	}
	peer, err := s.dialReplica(ctx, addr, tok, mode, r.RemoteAddr)
	if err != nil {
		if target != nil {
			target.Close()
		}
		var he *httperr.Error
		if !errors.As(err, &he) {
			s.metrics.failures.WithLabelValues("replica").Inc()
			log.Warn().Err(err).Str("replica_address", addr).Msg("cannot reach the replica that owns the session")
			he = &httperr.Error{Status: http.StatusBadGateway, Msg: fmt.Sprintf("cannot reach gateway replica %s, which runs this session", rec.Replica), Err: err}
		}
		s.refuse(w, r, he)
		return nil, true
	}
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		if target != nil {
			target.Close()
		}
		peer.Close()
		return nil, true
	}
	if mode == "relay" {
		target = &wsStream{ws: peer}
	}
	t := s.newTunnel(ws, target, log)
	if t == nil {
		peer.Close()
		return nil, true
	}
	if svc := s.svcs[rec.Service]; svc != nil {
		t.idleTimeout = svc.Seconds("idle_timeout")
		t.maxDuration = svc.Seconds("max_duration")
	}
	if mode == "relay" {
		// The owner's close (a release, its shutdown) reaches the client
		// with its code and reason.
		target.(*wsStream).onClose = t.closeWith
	} else {
		go func() {
			code, reason := websocket.CloseInternalServerErr, "the gateway replica running the session went away"
			for {
				if _, _, err := peer.NextReader(); err != nil {
					var ce *websocket.CloseError
					if errors.As(err, &ce) {
						code, reason = ce.Code, ce.Text
					}
					break
				}
			}
			t.closeWith(code, reason)
		}()
	}
	log.Info().Str("mode", mode).Msg("websocket joined to a session of another replica")
	return func() {
		t.run()
		s.dropTunnel(t)
		if mode == "direct" {
			_ = peer.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "client gone"),
				time.Now().Add(wsframe.CloseTimeout))
		}
		peer.Close()
	}, true
}

// dialReplica opens the signed websocket to the replica at addr. A
// refusal of the replica comes back as an *httperr.Error with its status
// and message.
func (s *Server) dialReplica(ctx context.Context, addr, tok, mode, client string) (*websocket.Conn, error) {
	auth, err := s.replicaAuth.sign(s.cfg.ReplicaID, tok, mode)
	if err != nil {
		return nil, err
	}
	u := url.URL{Scheme: "ws", Host: addr, Path: replicaPath, RawQuery: url.Values{"token": {tok}, "mode": {mode}}.Encode()}
	h := http.Header{replicaAuthHeader: {auth}, "X-Wsgw-Client": {client}}
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second, Subprotocols: []string{"binary"}}
	ws, resp, err := d.DialContext(ctx, u.String(), h)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			defer resp.Body.Close()
			var body struct {
				Error string `json:"error"`
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			msg := strings.TrimSpace(string(b))
			if jsonErr := json.Unmarshal(b, &body); jsonErr == nil && body.Error != "" {
				msg = body.Error
			}
			return nil, &httperr.Error{Status: resp.StatusCode, Msg: msg, Err: err}
		}
		return nil, fmt.Errorf("replica %s: %w", addr, err)
	}
	return ws, nil
}

// wsStream is a websocket to another replica seen as a byte stream:
// what is written goes as binary messages, what its messages carry is
// read. A close frame from the other side is handed to onClose before
// the reader sees the end.
type wsStream struct {
	ws      *websocket.Conn
	r       io.Reader
	onClose func(code int, reason string)
	wmu     sync.Mutex
}

func (c *wsStream) Read(p []byte) (int, error) {
	for {
		if c.r == nil {
			_, r, err := c.ws.NextReader()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					if c.onClose != nil {
						c.onClose(ce.Code, ce.Text)
					}
					return 0, io.EOF
				}
				return 0, err
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

func (c *wsStream) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsStream) Close() error {
	_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""),
		time.Now().Add(time.Second))
	return c.ws.Close()
}

func (c *wsStream) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *wsStream) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *wsStream) SetDeadline(t time.Time) error      { return c.ws.NetConn().SetDeadline(t) }
func (c *wsStream) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsStream) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }

// describeTarget is session.Config.Describe: where a started service
// listens, and whether every replica reaches it.
func (s *Server) describeTarget(p session.Process, r reservation.Reservation) (session.Target, bool) {
	e, ok := p.(interface{ Endpoint() services.Endpoint })
	if !ok {
		return session.Target{}, false
	}
	ep := e.Endpoint()
	t := session.Target{Network: ep.Network, Address: ep.Address}
	svc := s.svcs[r.Service]
	if svc != nil {
		t.Grace = reconnectGrace(svc)
	}
	t.Shared = ep.Network == "tcp" && (boolOption(svc, "replica_reachable") || !loopbackAddr(ep.Address))
	return t, true
}

// loopbackAddr reports a host:port only this host reaches.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return true
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// boolOption reads a service option that is true or "true".
func boolOption(svc *services.Service, key string) bool {
	if svc == nil {
		return false
	}
	raw, ok := svc.Options[key]
	if !ok {
		return false
	}
	v := strings.Trim(strings.TrimSpace(string(raw)), `"`)
	return v == "true" || v == "1"
}

// adoptSession is session.Config.Adopt: a dead replica's session whose
// target every replica reaches is dialled from here from now on.
func (s *Server) adoptSession(r session.Record) session.Process {
	if r.Target.Network != "tcp" || !r.Target.Shared || r.Target.Address == "" {
		return nil
	}
	s.log.Info().Str("service", r.Service).Int("index", r.Index).Str("token", reservation.TokenPrefix(r.Token)).
		Str("from_replica", r.Replica).Str("target", r.Target.Address).Msg("taking over a session from a replica whose lease ran out")
	return &remoteService{ep: services.Endpoint{Network: r.Target.Network, Address: r.Target.Address},
		timeout: s.cfg.DialTimeout, exited: make(chan struct{})}
}

// remoteService is an adopted session's service: it runs elsewhere (its
// start process died with the replica that launched it), so stopping it
// here only forgets it; its own end (a job's time limit, a scheduler's
// cancel) is the service's business.
type remoteService struct {
	ep      services.Endpoint
	timeout time.Duration
	once    sync.Once
	exited  chan struct{}
}

func (p *remoteService) Stop(context.Context) error {
	p.once.Do(func() { close(p.exited) })
	return nil
}
func (p *remoteService) Exited() <-chan struct{}     { return p.exited }
func (p *remoteService) Detached() bool              { return false }
func (p *remoteService) Endpoint() services.Endpoint { return p.ep }

func (p *remoteService) Dial(ctx context.Context) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, p.ep.Network, p.ep.Address)
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %w", services.ErrDial, p.ep.Address, err)
	}
	return c, nil
}

// serveAdopted reattaches a websocket to a session this replica adopted
// (ok false for any other session: the caller carries on).
func (s *Server) serveAdopted(w http.ResponseWriter, r *http.Request, ss *session.Session, log zerolog.Logger) (splice func(), ok bool) {
	rs, ok := ss.Process().(*remoteService)
	if !ok {
		return nil, false
	}
	svc := s.svcs[ss.Service()]
	grace := reconnectGrace(svc)
	log = log.With().Str("service", ss.Service()).Int("index", ss.Index()).Str("token", reservation.TokenPrefix(ss.Token())).Logger()
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		ss.Detach(nil, grace)
		return nil, true
	}
	c, err := rs.Dial(ss.Context())
	if err != nil {
		log.Warn().Err(err).Msg("cannot connect to the adopted session's service")
		s.metrics.failures.WithLabelValues("dial").Inc()
		closeWS(ws, websocket.CloseInternalServerErr, "cannot connect to the service: "+unwrapNetErr(err).Error())
		ss.Detach(nil, grace)
		return nil, true
	}
	return s.spliceSession(ws, c, ss, svc, grace, r.RemoteAddr, log), true
}

// sweptShared logs what the shared sweep did with a dead replica's
// session (false for anything else).
func (s *Server) sweptShared(r reservation.Reservation) bool {
	ev := s.log.Warn().Str("service", r.Service).Int("index", r.Index).Str("token", reservation.TokenPrefix(r.Token))
	switch r.State {
	case "interrupted":
		ev.Msg("session interrupted: the replica running it stopped renewing its lease; slot freed")
	case "adopted":
		ev.Msg("session adopted: the replica running it stopped renewing its lease; its target is reached from here")
	default:
		return false
	}
	return true
}
