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
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
	"wsgateway/wsframe"
)

// Launcher runs sessions of the applications of one launcher config.
type Launcher struct {
	cfg       *Config
	log       zerolog.Logger
	audit     *auditLog
	endpoint  string
	timeout   time.Duration
	stopGrace time.Duration
	proxyFile string
	content   *os.Root // nil without configuration.content
	upload    *os.Root // nil without configuration.upload_dir
	uploadMax int64

	baseCtx    context.Context
	baseCancel context.CancelFunc

	mu       sync.Mutex
	pool     *pool
	sessions map[string]*session
	seq      uint64
	tunnels  int
	host     wsframe.Host // the gateway's tunnel rules (proxy.go), or nil
	closing  bool
	work     sync.WaitGroup // requests in flight and session watchers

	fileMu   sync.Mutex // serializes proxy_file rewrites
	upgrader websocket.Upgrader
	dialer   websocket.Dialer
	bufPool  sync.Pool
	handler  http.Handler
}

// session is one launched application.
type session struct {
	id      string
	app     string
	host    string
	port    int
	seq     uint64
	started time.Time
	logPath string
	proc    *process
	// data is the whole answer before the fields filter.
	data map[string]any
	// shareSecret: the answer carries the secret (the client sent it,
	// the command line uses it, or fields lists it).
	shareSecret bool

	ended    chan struct{}
	stopOnce sync.Once

	// Guarded by Launcher.mu.
	ready     bool
	gone      bool
	endReason string
	tunnels   map[*tunnel]struct{}
}

// New checks what the config points to (creating log_dir and upload_dir
// when missing), writes an empty proxy_file, and returns a Launcher.
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
	if err := os.MkdirAll(cf.LogDir, 0o755); err != nil {
		return nil, bad("configuration.log_dir", err)
	}
	audit, err := openAudit(filepath.Join(cf.LogDir, "launcherLog.log"))
	if err != nil {
		return nil, bad("configuration.log_dir", err)
	}
	l := &Launcher{
		cfg:       cfg,
		log:       log,
		audit:     audit,
		endpoint:  cfg.Endpoint(),
		timeout:   cfg.Timeout(),
		stopGrace: cfg.StopGrace,
		proxyFile: cf.ProxyFile,
		uploadMax: DefaultUploadMaxSize,
		pool:      newPool(cfg.Resources),
		sessions:  map[string]*session{},
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
		if err := os.MkdirAll(filepath.Dir(l.proxyFile), 0o755); err != nil {
			return fail(bad("configuration.proxy_file", err))
		}
		if err := l.writeProxyFile(); err != nil {
			return fail(bad("configuration.proxy_file", err))
		}
	}
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
	free, total := l.pool.counts()
	l.note(zerolog.InfoLevel, "launcher ready", "config", cfg.Path, "endpoint", "/"+l.endpoint,
		"apps", len(cfg.Apps), "ports", total, "free", free, "log_dir", cf.LogDir, "proxy_file", l.proxyFile)
	return l, nil
}

// note logs to the gateway's logger and to log_dir/launcherLog.log.
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
	list := make([]*session, 0, len(l.sessions))
	for _, s := range l.sessions {
		list = append(list, s)
	}
	l.mu.Unlock()
	l.baseCancel()
	l.note(zerolog.InfoLevel, "launcher stopping", "sessions", len(list))

	var wg sync.WaitGroup
	for _, s := range list {
		wg.Add(1)
		go func() { defer wg.Done(); l.stopSessionCtx(ctx, s, "launcher shutting down") }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); l.work.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("launcher: sessions still stopping: %w", ctx.Err())
	}
	if perr := l.writeProxyFile(); perr != nil && err == nil {
		err = perr
	}
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

// launch starts the application named in payload and waits until it is
// ready. The error carries the HTTP status to answer with.
func (l *Launcher) launch(ctx context.Context, payload map[string]any) (*session, error) {
	appName, _ := payload["application"].(string)
	app, ok := l.cfg.Apps[appName]
	if !ok {
		return nil, httperr.Errorf(http.StatusNotFound, "Unknown application %q; this launcher has %s", appName, strings.Join(l.appNames(), ", "))
	}
	l.sanitize(payload)

	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "The launcher is shutting down")
	}
	host, port, ok := l.pool.take()
	l.seq++
	seq := l.seq
	l.mu.Unlock()
	if !ok {
		l.note(zerolog.WarnLevel, "no free resource", "application", appName)
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "All the resources are currently taken")
	}
	release := func() {
		l.mu.Lock()
		_ = l.pool.put(host, port)
		l.mu.Unlock()
	}

	id := newID()
	s := &session{id: id, app: appName, host: host, port: port, seq: seq, started: time.Now(),
		ended: make(chan struct{}), tunnels: map[*tunnel]struct{}{},
		logPath: filepath.Join(l.cfg.Configuration.LogDir, id+".txt")}
	secret, clientSecret := payload["secret"]
	if !clientSecret || secret == nil || secret == "" {
		secret = newSecret()
		clientSecret = false
	}

	// First pass: the client's payload and what the launcher assigns; a
	// payload key that names a property is ignored there unless a
	// sanitize rule vetted it, so a client cannot swap a property such as
	// the program's path. Second pass: the properties.
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
		release()
		return nil, httperr.Errorf(http.StatusInternalServerError, "cannot create the session log: %w", err)
	}
	proc, err := startProcess(argv, logFile, l.cfg.Supervisor, l.cfg.StopGrace, l.cfg.EnvPolicy)
	if err != nil {
		fmt.Fprintf(logFile, "wsgateway launcher: cannot start %q: %v\n", argv[0], err)
		logFile.Close()
		release()
		l.note(zerolog.ErrorLevel, "session failed to start", "id", id, "application", appName, "error", err.Error(), "log", s.logPath)
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "The process did not properly start: %v. Check session logs.", err)
	}
	logFile.Close() // the child has its own copy
	s.proc = proc
	l.work.Add(1) // the caller has entered, so the count is positive
	go func() {
		defer l.work.Done()
		<-proc.exited
		l.endSession(s)
	}()
	l.mu.Lock()
	l.sessions[id] = s
	closing := l.closing
	l.mu.Unlock()
	l.note(zerolog.InfoLevel, "session starting", "id", id, "application", appName, "host", host, "port", port,
		"pid", proc.pgid, "log", s.logPath)
	if closing {
		l.stopSession(s, "launcher shutting down")
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "The launcher is shutting down")
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(l.baseCtx, cancel)
	defer stop()
	err = waitReady(wctx, s.logPath, app.ReadyLine, proc.exited, l.timeout)
	if err == nil {
		l.mu.Lock()
		ok := !s.gone
		if ok {
			s.ready = true
		}
		l.mu.Unlock()
		if !ok {
			err = ErrExited
		}
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
		l.stopSession(s, "not ready before timeout")
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "Session did not start before timeout expired. Check session logs.")
	case errors.Is(err, ErrExited):
		<-s.ended
		status := proc.status()
		l.note(zerolog.WarnLevel, "session exited before it was ready", "id", id, "application", appName,
			"status", status, "log", s.logPath)
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "Session did not start: the process ended (%s) before it was ready. Check session logs.", status)
	default:
		reason := "launch abandoned: the client went away"
		if l.baseCtx.Err() != nil {
			reason = "launcher shutting down"
		}
		l.stopSession(s, reason)
		return nil, httperr.Errorf(http.StatusServiceUnavailable, "Session did not start: %s", reason)
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
func (l *Launcher) answer(s *session) map[string]any {
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

// liveSession is a ready session by id.
func (l *Launcher) liveSession(id string) *session {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.sessions[id]
	if s == nil || !s.ready {
		return nil
	}
	return s
}

// stopSession stops the session's process group and waits until the
// session has ended (its port free, its websockets closed), bounded by
// the stop grace and a margin.
func (l *Launcher) stopSession(s *session, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), l.stopGrace+15*time.Second)
	defer cancel()
	l.stopSessionCtx(ctx, s, reason)
}

// stopSessionCtx is stopSession bounded by ctx: when ctx ends first, the
// session's group gets SIGKILL at once and the wait ends.
func (l *Launcher) stopSessionCtx(ctx context.Context, s *session, reason string) {
	s.stopOnce.Do(func() {
		l.mu.Lock()
		if s.endReason == "" {
			s.endReason = reason
		}
		l.mu.Unlock()
		l.note(zerolog.InfoLevel, "stopping session", "id", s.id, "application", s.app, "reason", reason)
		if err := s.proc.stop(ctx); err != nil {
			l.note(zerolog.ErrorLevel, "session process group not stopped in time", "id", s.id, "pid", s.proc.pgid, "error", err.Error())
		}
	})
	select {
	case <-s.ended:
	case <-ctx.Done():
		s.proc.p.Kill()
		l.note(zerolog.ErrorLevel, "session did not end in time", "id", s.id, "pid", s.proc.pgid)
	}
}

// endSession runs once the session's process has exited: the port goes
// back to the pool at once, the proxy_file is rewritten and the proxied
// websockets are closed.
func (l *Launcher) endSession(s *session) {
	l.mu.Lock()
	delete(l.sessions, s.id)
	if err := l.pool.put(s.host, s.port); err != nil {
		l.log.Error().Err(err).Str("id", s.id).Msg("returning a port")
	}
	wasReady := s.ready
	s.ready, s.gone = false, true
	reason := s.endReason
	if reason == "" {
		reason = "session ended"
	}
	tunnels := make([]*tunnel, 0, len(s.tunnels))
	for t := range s.tunnels {
		tunnels = append(tunnels, t)
	}
	l.mu.Unlock()
	if wasReady {
		if err := l.writeProxyFile(); err != nil {
			l.note(zerolog.ErrorLevel, "cannot write the proxy file", "file", l.proxyFile, "error", err.Error())
		}
	}
	for _, t := range tunnels {
		t.Close(websocket.CloseGoingAway, reason)
	}
	l.note(zerolog.InfoLevel, "session ended", "id", s.id, "application", s.app, "host", s.host, "port", s.port,
		"status", s.proc.status(), "reason", reason, "duration_s", time.Since(s.started).Seconds())
	close(s.ended)
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
	live := make([]*session, 0, len(l.sessions))
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
		werr = tmp.Chmod(0o644)
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

// auditLog is log_dir/launcherLog.log: one text line per event.
type auditLog struct {
	mu sync.Mutex
	f  *os.File
}

func openAudit(path string) (*auditLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &auditLog{f: f}, nil
}

func (a *auditLog) write(level zerolog.Level, msg string, kv []any) {
	var b strings.Builder
	b.WriteString(time.Now().Format("2006-01-02 15:04:05.000"))
	b.WriteByte(' ')
	b.WriteString(strings.ToUpper(level.String()))
	b.WriteByte(' ')
	b.WriteString(msg)
	for i := 0; i+1 < len(kv); i += 2 {
		v := fmt.Sprint(kv[i+1])
		if strings.ContainsAny(v, " \"\n") || v == "" {
			v = fmt.Sprintf("%q", v)
		}
		fmt.Fprintf(&b, " %v=%s", kv[i], v)
	}
	b.WriteByte('\n')
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		_, _ = a.f.WriteString(b.String())
	}
}

func (a *auditLog) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f != nil {
		a.f.Close()
		a.f = nil
	}
}
