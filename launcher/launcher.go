// Package launcher is wsgateway's ParaViewWeb launcher: a drop-in
// replacement for the Python launcher of ParaViewWeb, VTK-Web and trame
// (wslink) together with the Apache front end those deployments put before
// it. It reads the Python launcher's launcher.config, speaks its REST API
// (POST /<endpoint> starts an application and answers with its sessionURL,
// id and secret; GET and DELETE /<endpoint>/<id>), hands out ports from
// the configured resources, runs each application in its own process
// group with its output in <log_dir>/<id>.txt, keeps Apache's proxy_file
// mapping up to date, serves the content directory and file uploads, and
// forwards the websockets itself: GET /proxy?sessionId=<id>&path=<p>
// reaches ws://<host>:<port>/<p> of that session.
//
// A Launcher is served on its own listener (Serve) or mounted on the
// gateway's HTTP port (Match and Handler); Close stops every session.
package launcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
	"wsgateway/reservation"
	"wsgateway/session"
	"wsgateway/wsframe"
)

// DefaultReconnectGrace is how long a session whose last /proxy websocket
// closed is kept for a reconnection before it is stopped.
const DefaultReconnectGrace = 5 * time.Minute

// forever stands for "no deadline" where the Manager wants a duration.
const forever = 100 * 365 * 24 * time.Hour

// HTTP timeouts of the launcher's own listener: the gateway's.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 60 * time.Second
	writeTimeout      = 5 * time.Minute
	idleTimeout       = 2 * time.Minute
)

// serverTimeouts are the launcher listener's http.Server timeouts.
type serverTimeouts struct {
	readHeader, read, write, idle time.Duration
}

// Launcher runs sessions of the applications of one launcher config. Each
// session is a session.Session of the Launcher's own session.Manager: a
// launch is reserve, claim, BeginStart, Started (or StartFailed); a /proxy
// websocket is Attach and Detach; DELETE is Release and Close is StopAll.
type Launcher struct {
	cfg            *Config
	log            zerolog.Logger
	audit          *auditLog
	endpoint       string
	timeout        time.Duration // for the ready line
	connectTimeout time.Duration // for the first /proxy websocket
	reconnectGrace time.Duration // after the last /proxy websocket
	stopGrace      time.Duration
	proxyFile      string
	content        *os.Root // nil without configuration.content
	upload         *os.Root // nil without configuration.upload_dir
	uploadMax      int64
	uploadReplace  bool
	timeouts       serverTimeouts

	baseCtx    context.Context
	baseCancel context.CancelFunc

	mgr  *session.Manager
	pool *pool

	mu       sync.Mutex // held before the Manager's lock, never after it
	sessions map[string]*appSession
	seq      uint64
	tunnels  int
	host     wsframe.Host // the gateway's tunnel rules (proxy.go), or nil
	closing  bool
	work     sync.WaitGroup // requests in flight, session watchers, the sweeper

	fileMu   sync.Mutex // serializes proxy_file rewrites
	upgrader websocket.Upgrader
	dialer   websocket.Dialer
	bufPool  sync.Pool
	handler  http.Handler
}

// appSession is what the launcher keeps of one launched application
// besides its session.Session, which owns its life.
type appSession struct {
	id      string
	app     string
	host    string
	port    int
	seq     uint64
	started time.Time
	logPath string
	proc    *process
	ss      *session.Session
	// data is the whole answer before the fields filter.
	data map[string]any
	// shareSecret: the answer carries the secret (the client sent it,
	// the command line uses it, or fields lists it).
	shareSecret bool
	// forgotten is closed once the launcher has forgotten the ended
	// session (its proxy_file line removed).
	forgotten chan struct{}

	// Guarded by Launcher.mu.
	ready     bool
	connected bool // a /proxy websocket was attached at least once
	endReason string

	// The session's websockets: the Tunnel the session sees is all of
	// them (Close and Bytes below).
	tmu      sync.Mutex
	tunnels  map[*tunnel]struct{}
	bytesIn  atomic.Int64 // of tunnels closed since the last attach
	bytesOut atomic.Int64
}

var _ session.Tunnel = (*appSession)(nil)

// Close closes every websocket of the session with code and reason.
func (s *appSession) Close(code int, reason string) {
	s.tmu.Lock()
	list := make([]*tunnel, 0, len(s.tunnels))
	for t := range s.tunnels {
		list = append(list, t)
	}
	s.tmu.Unlock()
	for _, t := range list {
		t.Close(code, reason)
	}
}

// Bytes is what went through the session's websockets since it was last
// attached, each way.
func (s *appSession) Bytes() (in, out int64) {
	in, out = s.bytesIn.Load(), s.bytesOut.Load()
	s.tmu.Lock()
	defer s.tmu.Unlock()
	for t := range s.tunnels {
		i, o := t.Bytes()
		in += i
		out += o
	}
	return in, out
}

// New checks what the config points to (creating log_dir and upload_dir
// when missing, log_dir and proxy_file readable by the gateway's user
// only), writes an empty proxy_file, and returns a Launcher.
func New(cfg *Config, log zerolog.Logger) (*Launcher, error) {
	cf := cfg.Configuration
	bad := func(key string, err error) error {
		return &ConfigError{File: cfg.Path, Key: key, Msg: err.Error(), Err: err}
	}
	// Check what must exist before creating anything.
	if cf.Content != "" {
		st, err := os.Stat(cf.Content)
		if err == nil && !st.IsDir() {
			err = fmt.Errorf("%s is not a directory", cf.Content)
		}
		if err != nil {
			return nil, bad("configuration.content", err)
		}
	}
	var notes []string
	fixed, err := privateDir(cf.LogDir)
	if err != nil {
		return nil, bad("configuration.log_dir", err)
	}
	if fixed != "" {
		notes = append(notes, fixed)
	}
	audit, fixed, err := openAudit(filepath.Join(cf.LogDir, "launcherLog.log"))
	if err != nil {
		return nil, bad("configuration.log_dir", err)
	}
	if fixed != "" {
		notes = append(notes, fixed)
	}
	l := &Launcher{
		cfg:            cfg,
		log:            log,
		audit:          audit,
		endpoint:       cfg.Endpoint(),
		timeout:        cfg.Timeout(),
		connectTimeout: cfg.ConnectTimeout(),
		reconnectGrace: DefaultReconnectGrace,
		stopGrace:      cfg.StopGrace,
		proxyFile:      cf.ProxyFile,
		uploadMax:      DefaultUploadMaxSize,
		uploadReplace:  cf.UploadReplace,
		pool:           newPool(cfg.Resources),
		sessions:       map[string]*appSession{},
		timeouts:       serverTimeouts{readHeaderTimeout, readTimeout, writeTimeout, idleTimeout},
	}
	if l.stopGrace <= 0 {
		l.stopGrace = DefaultStopGrace
	}
	if cf.UploadMaxSize != nil {
		l.uploadMax = *cf.UploadMaxSize
	}
	fail := func(err error) (*Launcher, error) {
		l.closeFiles()
		return nil, err
	}
	if cf.Content != "" {
		if l.content, err = os.OpenRoot(cf.Content); err != nil {
			return fail(bad("configuration.content", err))
		}
	}
	if cf.UploadDir != "" {
		if err := os.MkdirAll(cf.UploadDir, 0o755); err != nil {
			return fail(bad("configuration.upload_dir", err))
		}
		if l.upload, err = os.OpenRoot(cf.UploadDir); err != nil {
			return fail(bad("configuration.upload_dir", err))
		}
	}
	if l.proxyFile != "" {
		if err := os.MkdirAll(filepath.Dir(l.proxyFile), 0o700); err != nil {
			return fail(bad("configuration.proxy_file", err))
		}
		if err := l.writeProxyFile(); err != nil {
			return fail(bad("configuration.proxy_file", err))
		}
	}
	l.mgr = session.New(session.Config{
		Counts:      l.pool.counts(),
		Timeout:     l.timeout,
		StopTimeout: l.stopGrace + 15*time.Second,
	})
	l.baseCtx, l.baseCancel = context.WithCancel(context.Background())
	l.bufPool.New = func() any { b := make([]byte, copyBuf); return &b }
	l.upgrader = websocket.Upgrader{
		ReadBufferSize:   copyBuf,
		WriteBufferSize:  copyBuf,
		WriteBufferPool:  &sync.Pool{},
		HandshakeTimeout: 10 * time.Second,
		// The Origin is checked before Upgrade; the subprotocol is the
		// one the session chose, set in the response header.
		CheckOrigin: func(*http.Request) bool { return true },
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			l.writeError(w, r, httperr.Errorf(status, "websocket handshake failed: %v", reason))
		},
	}
	l.dialer = websocket.Dialer{
		HandshakeTimeout: 10 * time.Second,
		ReadBufferSize:   copyBuf,
		WriteBufferSize:  copyBuf,
		WriteBufferPool:  &sync.Pool{},
	}
	l.handler = l.routes()
	for _, w := range cfg.Warnings {
		l.note(zerolog.WarnLevel, "launcher config: "+w, "config", cfg.Path)
	}
	for _, n := range notes {
		l.note(zerolog.WarnLevel, n, "config", cfg.Path)
	}
	if l.proxyFile != "" && cf.ConnectTimeout == nil {
		l.note(zerolog.InfoLevel, "sessions not connected through /proxy within connect_timeout are stopped; set configuration.connect_timeout to 0 if a front end forwards websockets to the sessions' ports directly",
			"connect_timeout_s", l.connectTimeout.Seconds())
	}
	l.work.Add(1)
	go l.sweep()
	l.note(zerolog.InfoLevel, "launcher ready", "config", cfg.Path, "endpoint", "/"+l.endpoint,
		"apps", len(cfg.Apps), "ports", l.pool.total(), "free", l.freePorts(), "log_dir", cf.LogDir, "proxy_file", l.proxyFile)
	return l, nil
}

// privateDir creates dir (0700) when missing. An existing dir that other
// users may read or enter is made 0700 when the gateway's user owns it
// (the returned note says so) and refused otherwise.
func privateDir(dir string) (note string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	st, err := os.Stat(dir)
	if err != nil {
		return "", err
	}
	if !st.IsDir() {
		return "", fmt.Errorf("%s is not a directory", dir)
	}
	return fixMode(dir, st, 0o700)
}

// fixMode makes a file or directory that others may use mode want (its
// owner's bits only), when the gateway's user owns it; otherwise it is
// refused with a message saying what to do.
func fixMode(path string, st os.FileInfo, want os.FileMode) (string, error) {
	if st.Mode().Perm()&0o077 == 0 {
		return "", nil
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return "", fmt.Errorf("%s has mode %04o and belongs to uid %d, not to this user: it would show session ids to other users; make it %04o (chmod go= %s) or choose another path",
			path, st.Mode().Perm(), sys.Uid, want, path)
	}
	if err := os.Chmod(path, want); err != nil {
		return "", fmt.Errorf("%s has mode %04o, readable by other users, and cannot be made %04o: %w", path, st.Mode().Perm(), want, err)
	}
	return fmt.Sprintf("%s had mode %04o, readable by other users; it is now %04o", path, st.Mode().Perm(), want), nil
}

// note logs to the gateway's logger and to log_dir/launcherLog.log. The
// message is a constant; what came from a request goes in kv, where both
// logs escape it.
func (l *Launcher) note(level zerolog.Level, msg string, kv ...any) {
	l.log.WithLevel(level).Fields(kv).Msg(msg)
	l.audit.write(level, msg, kv)
}

// enter registers a request that must finish before Close returns; false
// once Close has started.
func (l *Launcher) enter() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.work.Add(1)
	return true
}

// freePorts is the number of ports no session holds.
func (l *Launcher) freePorts() int {
	svcs, _ := l.mgr.Snapshot()
	n := 0
	for _, s := range svcs {
		n += s.Free
	}
	return n
}

// sweep expires, through the Manager, the sessions whose first /proxy
// websocket did not come within connect_timeout and those left without a
// websocket for the reconnect grace, until Close.
func (l *Launcher) sweep() {
	defer l.work.Done()
	every := min(max(l.connectTimeout/4, 50*time.Millisecond), time.Second)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-l.baseCtx.Done():
			return
		case <-tick.C:
		}
		gone := l.mgr.Sweep()
		if len(gone) == 0 {
			continue
		}
		l.mu.Lock()
		for _, r := range gone {
			for _, s := range l.sessions {
				if s.ss.Token() != r.Token || s.endReason != "" {
					continue
				}
				if s.connected {
					s.endReason = "no websocket within the reconnect grace"
				} else {
					s.endReason = "not connected within connect_timeout"
				}
				l.note(zerolog.InfoLevel, "stopping session", "id", s.id, "application", s.app, "reason", s.endReason)
			}
		}
		l.mu.Unlock()
	}
}

// Close stops every session in parallel (SIGTERM, then SIGKILL of each
// process group after the stop grace, or at once when ctx ends), closes
// the proxied websockets with 1001, empties the proxy_file and waits for
// requests in flight, bounded by ctx.
func (l *Launcher) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return nil
	}
	l.closing = true
	for _, s := range l.sessions {
		if s.endReason == "" {
			s.endReason = "launcher shutting down"
		}
	}
	n := len(l.sessions)
	l.mu.Unlock()
	l.baseCancel()
	l.note(zerolog.InfoLevel, "launcher stopping", "sessions", n)

	err := l.mgr.StopAll(ctx, websocket.CloseGoingAway, "launcher shutting down")
	if err != nil {
		// Out of time: every group left gets SIGKILL now.
		l.mu.Lock()
		for _, s := range l.sessions {
			s.proc.p.Kill()
			l.note(zerolog.ErrorLevel, "session did not end in time", "id", s.id, "pid", s.proc.pgid)
		}
		l.mu.Unlock()
		err = fmt.Errorf("launcher: sessions still stopping: %w", err)
	}
	done := make(chan struct{})
	go func() { l.work.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = fmt.Errorf("launcher: requests still in flight: %w", ctx.Err())
		}
	}
	if perr := l.writeProxyFile(); perr != nil && err == nil {
		err = perr
	}
	l.mgr.Close()
	l.note(zerolog.InfoLevel, "launcher stopped")
	l.closeFiles()
	return err
}

func (l *Launcher) closeFiles() {
	if l.content != nil {
		l.content.Close()
	}
	if l.upload != nil {
		l.upload.Close()
	}
	l.audit.close()
}

// reserve takes the lowest free port of the host with the most free ports.
func (l *Launcher) reserve() (reservation.Reservation, error) {
	svcs, _ := l.mgr.Snapshot()
	free := make(map[string]int, len(svcs))
	for _, s := range svcs {
		free[s.Name] = s.Free
	}
	for _, host := range l.pool.order(free) {
		r, err := l.mgr.Reserve(host, nil)
		if errors.Is(err, reservation.ErrNoSlot) {
			continue // taken meanwhile: the next host
		}
		return r, err
	}
	return reservation.Reservation{}, reservation.ErrNoSlot
}

var errShuttingDown = httperr.Errorf(http.StatusServiceUnavailable, "The launcher is shutting down")

// launch starts the application named in payload and waits until it is
// ready. The error carries the HTTP status to answer with.
func (l *Launcher) launch(ctx context.Context, payload map[string]any) (*appSession, error) {
	appName, _ := payload["application"].(string)
	app, ok := l.cfg.Apps[appName]
	if !ok {
		return nil, httperr.Errorf(http.StatusNotFound, "Unknown application %q; this launcher has %s", text.Cut(appName, 200), strings.Join(l.appNames(), ", "))
	}
	l.sanitize(payload)

	l.mu.Lock()
	closing := l.closing
	l.seq++
	seq := l.seq
	l.mu.Unlock()
	if closing {
		return nil, errShuttingDown
	}
	r, err := l.reserve()
	switch {
	case errors.Is(err, reservation.ErrNoSlot):
		l.note(zerolog.WarnLevel, "no free resource", "application", appName)
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "All the resources are currently taken")
	case err != nil:
		return nil, errShuttingDown
	}
	ss, err := l.mgr.Claim(r.Token, 0)
	if err != nil {
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, _ = l.mgr.Release(rctx, r.Token, websocket.CloseGoingAway, "launcher shutting down")
		cancel()
		return nil, errShuttingDown
	}
	startCtx, err := ss.BeginStart()
	if err != nil {
		return nil, errShuttingDown // released meanwhile: it has ended
	}
	host := r.Service
	port, _ := l.pool.port(host, r.Index)

	id := newID()
	s := &appSession{id: id, app: appName, host: host, port: port, seq: seq, started: time.Now(), ss: ss,
		forgotten: make(chan struct{}), tunnels: map[*tunnel]struct{}{},
		logPath: filepath.Join(l.cfg.Configuration.LogDir, id+".txt")}
	secret, clientSecret := payload["secret"]
	if !clientSecret || secret == nil || secret == "" {
		secret = newSecret()
		clientSecret = false
	}

	// First pass: the client's payload and what the launcher assigns; a
	// payload key that names a property is ignored there unless a
	// sanitize rule vetted it, so a client cannot swap a property such as
	// the program's path. Second pass: the properties, on the template's
	// own text only (Substitute: a value is never substituted again).
	vars := make(map[string]any, len(payload)+6)
	for k, v := range payload {
		if _, isProp := l.cfg.Properties[k]; isProp {
			if _, vetted := l.cfg.Sanitize[k]; !vetted {
				l.log.Warn().Str("key", k).Str("application", appName).Msg("client value for a property ignored in substitution (add a sanitize rule to allow it)")
				continue
			}
		}
		vars[k] = v
	}
	vars["id"], vars["host"], vars["port"], vars["secret"] = id, host, port, secret
	vars["application"] = appName
	props := l.cfg.Properties
	sessionURL := Substitute(l.cfg.Configuration.SessionURL, vars, props)
	vars["sessionURL"] = sessionURL
	argv := make([]string, len(app.Cmd))
	for i, a := range app.Cmd {
		argv[i] = Substitute(a, vars, props)
	}
	data := make(map[string]any, len(payload)+len(l.cfg.SessionData)+5)
	for k, v := range payload {
		data[k] = v
	}
	data["id"], data["host"], data["port"], data["secret"], data["sessionURL"] = id, host, port, secret, sessionURL
	for k, v := range l.cfg.SessionData {
		data[k] = substituteValue(v, vars, props)
	}
	s.data = data
	s.shareSecret = clientSecret || containsField(l.cfg.Configuration.Fields, "secret")
	if ss := PyStr(secret); !s.shareSecret && ss != "" {
		for _, a := range argv {
			if strings.Contains(a, ss) {
				s.shareSecret = true
				break
			}
		}
	}

	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		ss.StartFailed("cannot create the session log")
		return nil, httperr.Errorf(http.StatusInternalServerError, "cannot create the session log: %w", err)
	}
	proc, err := startProcess(argv, logFile, l.cfg.Supervisor, l.cfg.StopGrace, l.cfg.EnvPolicy)
	if err != nil {
		fmt.Fprintf(logFile, "wsgateway launcher: cannot start %q: %v\n", argv[0], err)
		logFile.Close()
		ss.StartFailed("the process did not start")
		l.note(zerolog.ErrorLevel, "session failed to start", "id", id, "application", appName, "error", err.Error(), "log", s.logPath)
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "The process did not properly start: %v. Check session logs.", err)
	}
	logFile.Close() // the child has its own copy
	s.proc = proc
	l.mu.Lock()
	l.sessions[id] = s
	l.mu.Unlock()
	l.work.Add(1) // the caller has entered, so the count is positive
	go l.watch(s)
	l.note(zerolog.InfoLevel, "session starting", "id", id, "application", appName, "host", host, "port", port,
		"pid", proc.pgid, "log", s.logPath)
	if err := ss.Started(unlisting{proc, func() { l.unlist(s) }}); err != nil {
		// Ended during the start: the process exited at once (watch
		// stopped the session), or the launcher is closing (the Manager
		// stops the process).
		l.waitForgotten(s)
		select {
		case <-proc.exited:
			if l.baseCtx.Err() == nil {
				status := proc.status()
				l.note(zerolog.WarnLevel, "session exited before it was ready", "id", id, "application", appName,
					"status", status, "log", s.logPath)
				return nil, httperr.Errorf(http.StatusServiceUnavailable, "Session did not start: the process ended (%s) before it was ready. Check session logs.", status)
			}
		default:
		}
		return nil, errShuttingDown
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopBase := context.AfterFunc(l.baseCtx, cancel)
	defer stopBase()
	stopSess := context.AfterFunc(startCtx, cancel)
	defer stopSess()
	err = waitReady(wctx, s.logPath, app.ReadyLine, proc.exited, l.timeout)
	if err == nil {
		l.mu.Lock()
		if st := ss.State(); st == session.Starting {
			s.ready = true
			// The first /proxy websocket must come within connect_timeout:
			// until then the session waits, detached, and the Manager
			// expires it.
			ss.Detach(nil, l.connectTimeout)
		} else {
			err = ErrExited
		}
		l.mu.Unlock()
	}
	switch {
	case err == nil:
		if perr := l.writeProxyFile(); perr != nil {
			l.note(zerolog.ErrorLevel, "cannot write the proxy file", "file", l.proxyFile, "error", perr.Error())
		}
		l.note(zerolog.InfoLevel, "session ready", "id", id, "application", appName, "host", host, "port", port,
			"took_ms", time.Since(s.started).Milliseconds())
		return s, nil
	case errors.Is(err, ErrNotReady):
		l.note(zerolog.WarnLevel, "session not ready before timeout", "id", id, "application", appName,
			"timeout_s", l.timeout.Seconds(), "log", s.logPath)
		l.stopAndWait(s, "not ready before timeout")
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "Session did not start before timeout expired. Check session logs.")
	case errors.Is(err, ErrExited) && l.baseCtx.Err() == nil:
		l.waitForgotten(s)
		status := proc.status()
		l.note(zerolog.WarnLevel, "session exited before it was ready", "id", id, "application", appName,
			"status", status, "log", s.logPath)
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "Session did not start: the process ended (%s) before it was ready. Check session logs.", status)
	default:
		reason := "launch abandoned: the client went away"
		if l.baseCtx.Err() != nil {
			reason = "launcher shutting down"
		}
		l.stopAndWait(s, reason)
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "Session did not start: %s", reason)
	}
}

// watch stops the session when its process exits by itself, and forgets
// it once it has ended.
func (l *Launcher) watch(s *appSession) {
	defer l.work.Done()
	select {
	case <-s.proc.exited:
		s.ss.Stop(websocket.CloseGoingAway, "session ended")
	case <-s.ss.Done():
	}
	<-s.ss.Done()
	l.forget(s)
}

// unlisting is a session's process as the session Manager holds it: its
// Stop, which the Manager calls on every end before it frees the port,
// first takes the session's line out of proxy_file. The port is thus
// never free, and given to a new session, while the file still sends
// the old session id to it.
type unlisting struct {
	*process
	unlist func()
}

func (u unlisting) Stop(ctx context.Context) error {
	u.unlist()
	return u.process.Stop(ctx)
}

// unlist takes s out of proxy_file (it is no longer ready).
func (l *Launcher) unlist(s *appSession) {
	l.mu.Lock()
	was := s.ready
	s.ready = false
	l.mu.Unlock()
	if was {
		if err := l.writeProxyFile(); err != nil {
			l.note(zerolog.ErrorLevel, "cannot write the proxy file", "file", l.proxyFile, "error", err.Error())
		}
	}
}

// forget runs once the session has ended (its port is free): its
// proxy_file line is gone (unlist, unless the session never reached
// Stop) and its end is logged.
func (l *Launcher) forget(s *appSession) {
	l.mu.Lock()
	delete(l.sessions, s.id)
	wasReady := s.ready
	s.ready = false
	reason := s.endReason
	l.mu.Unlock()
	if reason == "" {
		reason = "session ended"
	}
	if wasReady {
		if err := l.writeProxyFile(); err != nil {
			l.note(zerolog.ErrorLevel, "cannot write the proxy file", "file", l.proxyFile, "error", err.Error())
		}
	}
	l.note(zerolog.InfoLevel, "session ended", "id", s.id, "application", s.app, "host", s.host, "port", s.port,
		"status", s.proc.status(), "reason", reason, "duration_s", time.Since(s.started).Seconds())
	close(s.forgotten)
}

// stopAndWait stops the session (its websockets closed with 1001 and
// reason) and waits until it is forgotten, bounded by the stop grace and
// a margin.
func (l *Launcher) stopAndWait(s *appSession, reason string) {
	l.mu.Lock()
	if s.endReason == "" {
		s.endReason = reason
	}
	l.mu.Unlock()
	l.note(zerolog.InfoLevel, "stopping session", "id", s.id, "application", s.app, "reason", reason)
	s.ss.Stop(websocket.CloseGoingAway, reason)
	l.waitForgotten(s)
}

// release is DELETE: the session is released through the Manager, and
// the call returns once it is forgotten (bounded).
func (l *Launcher) release(s *appSession, reason string) {
	l.mu.Lock()
	if s.endReason == "" {
		s.endReason = reason
	}
	l.mu.Unlock()
	l.note(zerolog.InfoLevel, "stopping session", "id", s.id, "application", s.app, "reason", reason)
	ctx, cancel := context.WithTimeout(context.Background(), l.stopGrace+15*time.Second)
	defer cancel()
	if _, err := l.mgr.Release(ctx, s.ss.Token(), websocket.CloseGoingAway, reason); err != nil && !errors.Is(err, reservation.ErrUnknownToken) {
		l.note(zerolog.ErrorLevel, "session not stopped in time", "id", s.id, "pid", s.proc.pgid, "error", err.Error())
	}
	l.waitForgotten(s)
}

func (l *Launcher) waitForgotten(s *appSession) {
	t := time.NewTimer(l.stopGrace + 15*time.Second)
	defer t.Stop()
	select {
	case <-s.forgotten:
	case <-t.C:
		s.proc.p.Kill()
		l.note(zerolog.ErrorLevel, "session did not end in time", "id", s.id, "pid", s.proc.pgid)
	}
}

func (l *Launcher) appNames() []string {
	names := make([]string, 0, len(l.cfg.Apps))
	for n := range l.cfg.Apps {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// sanitize replaces the payload values that fail their rule with the
// rule's default.
func (l *Launcher) sanitize(payload map[string]any) {
	for key, rule := range l.cfg.Sanitize {
		v, ok := payload[key]
		if !ok {
			continue
		}
		pass := false
		switch rule.Type {
		case "inList":
			for _, allowed := range rule.List {
				if jsonEqual(v, allowed) {
					pass = true
					break
				}
			}
		case "regexp":
			s, isStr := v.(string)
			pass = isStr && rule.re.MatchString(s)
		}
		if !pass {
			l.note(zerolog.WarnLevel, "sanitize: value replaced by the default", "key", key, "value", text.Cut(PyStr(v), 200))
			payload[key] = rule.Default
		}
	}
}

// answer is the session's data filtered by configuration.fields.
func (l *Launcher) answer(s *appSession) map[string]any {
	fields := l.cfg.Configuration.Fields
	out := make(map[string]any, len(s.data))
	for k, v := range s.data {
		switch {
		case k == "secret":
			if !s.shareSecret {
				continue
			}
		case k == "id" || k == "sessionURL" || k == "sessionManagerURL":
		case fields != nil && !containsField(fields, k):
			continue
		}
		out[k] = v
	}
	return out
}

func containsField(fields []string, k string) bool {
	for _, f := range fields {
		if f == k {
			return true
		}
	}
	return false
}

// liveSession is a ready session by id that has not started to stop.
func (l *Launcher) liveSession(id string) *appSession {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sessions[id]
	if s == nil || !s.ready {
		return nil
	}
	if st := s.ss.State(); st == session.Stopping || st == session.Ended {
		return nil
	}
	return s
}

// writeProxyFile rewrites proxy_file with one "<id> <host>:<port>" line
// per ready session, through a temporary file renamed over it, so a
// reader (Apache's RewriteMap) never sees a partial file.
func (l *Launcher) writeProxyFile() error {
	if l.proxyFile == "" {
		return nil
	}
	l.fileMu.Lock()
	defer l.fileMu.Unlock()
	l.mu.Lock()
	live := make([]*appSession, 0, len(l.sessions))
	for _, s := range l.sessions {
		if s.ready {
			live = append(live, s)
		}
	}
	l.mu.Unlock()
	sort.Slice(live, func(i, j int) bool { return live[i].seq < live[j].seq })
	var b strings.Builder
	for _, s := range live {
		fmt.Fprintf(&b, "%s %s:%d\n", s.id, s.host, s.port)
	}
	dir, base := filepath.Split(l.proxyFile)
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("proxy file: %w", err)
	}
	_, werr := tmp.WriteString(b.String())
	if werr == nil {
		// It maps session ids to ports, and GET /<endpoint>/<id> answers
		// a session's secret: for the gateway's user only.
		werr = tmp.Chmod(0o600)
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), l.proxyFile)
	}
	if werr != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("proxy file: %w", werr)
	}
	return nil
}

// newID is a session id: 32 hex digits from crypto/rand (the Python
// launcher uses uuid1 without dashes, also 32 hex digits).
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

const secretAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// SecretLength is the length of a generated secret.
const SecretLength = 24

// newSecret is SecretLength random alphanumerics from crypto/rand.
func newSecret() string {
	out := make([]byte, 0, SecretLength)
	var buf [64]byte
	for len(out) < SecretLength {
		_, _ = rand.Read(buf[:])
		for _, c := range buf {
			// 248 = 4*62: reject the bytes that would bias the choice.
			if c < 248 && len(out) < SecretLength {
				out = append(out, secretAlphabet[int(c)%len(secretAlphabet)])
			}
		}
	}
	return string(out)
}

// auditLog is log_dir/launcherLog.log: one text line per event, its
// values escaped (logValue), so nothing a client sends can start a line,
// move the cursor or colour a terminal that shows the file.
type auditLog struct {
	mu sync.Mutex
	f  *os.File
}

// openAudit opens (or creates, 0600) the audit log. An existing one that
// others may read is made 0600 when the gateway's user owns it (the note
// says so) and refused otherwise.
func openAudit(path string) (*auditLog, string, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, "", err
	}
	note, err := fixMode(path, st, 0o600)
	if err != nil {
		f.Close()
		return nil, "", err
	}
	return &auditLog{f: f}, note, nil
}

func (a *auditLog) write(level zerolog.Level, msg string, kv []any) {
	var b strings.Builder
	b.WriteString(time.Now().Format("2006-01-02 15:04:05.000"))
	b.WriteByte(' ')
	b.WriteString(strings.ToUpper(level.String()))
	b.WriteByte(' ')
	b.WriteString(logMessage(msg))
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, " %s=%s", logValue(fmt.Sprint(kv[i])), logValue(fmt.Sprint(kv[i+1])))
	}
	b.WriteByte('\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		_, _ = a.f.WriteString(b.String())
	}
}

// logMessage is msg as it goes into launcherLog.log: as it is when every
// character is printable, quoted otherwise.
func logMessage(msg string) string {
	for _, r := range msg {
		if r == utf8.RuneError || !strconv.IsPrint(r) {
			return strconv.Quote(msg)
		}
	}
	return msg
}

// logValue is v as it goes into launcherLog.log: as it is when it is
// printable ASCII with no space, quote, backslash or "=", otherwise (or
// when empty) quoted by strconv.Quote, which escapes every control
// character (CR, LF, ESC, C1 controls) and every invalid UTF-8 byte.
func logValue(v string) string {
	plain := v != "" && utf8.ValidString(v)
	for i := 0; plain && i < len(v); i++ {
		c := v[i]
		plain = c > ' ' && c < 0x7f && c != '"' && c != '\\' && c != '='
	}
	if plain {
		return v
	}
	return strconv.Quote(v)
}

func (a *auditLog) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		a.f.Close()
		a.f = nil
	}
}
