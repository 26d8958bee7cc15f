// Command wsgateway puts interactive back-end programs (VNC desktops,
// visualisation servers) in front of browsers: it reserves counted service
// slots, launches a service when its token connects, and splices the
// websocket to the service's socket. Its command line follows the Nexus
// websocketserver's.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"gopkg.in/natefinch/lumberjack.v2"

	"wsgateway/auth"
	"wsgateway/gateway"
	"wsgateway/proc"
	"wsgateway/services"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == proc.SuperviseArg {
		// This process is a service supervisor, not the gateway.
		os.Exit(proc.Supervise(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == "hash-password" {
		if err := hashPassword(os.Stdin, os.Stdout, os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "wsgateway hash-password: %v\n", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var ue *usageError
	switch {
	case err == nil:
	case errors.Is(err, errHelp):
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "wsgateway: %v\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "wsgateway: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseArgs(args, os.Getenv)
	if errors.Is(err, errHelp) {
		printUsage(stdout)
		return err
	}
	if err != nil {
		return err
	}
	if cfg.ShowVersion {
		fmt.Fprintf(stdout, "wsgateway %s\n", version)
		return nil
	}
	if cfg.MaxTunnels == autoMaxTunnels {
		nofile, err := openFileLimit()
		if err != nil {
			return err
		}
		cfg.MaxTunnels = defaultMaxTunnels(nofile)
	}
	gcfg, err := buildGatewayConfig(cfg)
	if err != nil {
		return err
	}
	lr, err := loadLauncher(cfg, &gcfg)
	if err != nil {
		return err
	}
	// The ports before anything is set up: one in use is the first thing said.
	httpOn := cfg.HTTPDirectory != "" || cfg.RemoteSessionConfig != "" || len(cfg.LocalSessions) > 0 || lr.mountedOnHTTP()
	lns, err := openListeners(cfg, lr, httpOn)
	if err != nil {
		return err
	}
	defer lns.close()
	log, closeLog := newLogger(cfg, stderr)
	defer closeLog()
	announce(log, cfg, &gcfg, lr, lns, stderr)
	if err := addBuiltins(cfg, &gcfg); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding the gateway's own binary for the service supervisor: %w", err)
	}
	sup, err := proc.NewSupervisor(exe)
	if err != nil {
		return err
	}
	// Closing the lifeline (here, or by the kernel if the gateway is
	// killed) makes every supervisor stop its service.
	defer sup.Close()
	gcfg.Supervisor = sup
	if err := lr.start(&gcfg, log); err != nil {
		return err
	}
	defer lr.close()
	jr, err := setupJobs(ctx, cfg, &gcfg, sup, log)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			// A SIGTERM while the state was being read: a stop, not a
			// failure of the state database (any other error, such as a
			// database in use, is still said).
			log.Info().Msg("stopped during start-up")
			return nil
		}
		return err
	}
	defer jr.close()
	srv, err := gateway.New(gcfg, log)
	if err != nil {
		return err
	}
	jr.gw.Bind(srv)
	jr.serveReplicas(srv)
	lr.bind(srv)

	lr.serve(ctx, lns.launcher, gcfg.TLS)
	if gcfg.Users != nil {
		go watchUsers(ctx, gcfg.Users, log)
	}
	log.Debug().Str("version", version).Int("services", len(gcfg.Services)).Str("basic_target", gcfg.ClientAddr).
		Str("session_dir", gcfg.SessionRoot).Bool("tls", gcfg.TLS != nil).Msg("wsgateway starting")
	return srv.Serve(ctx, lns.ws, lns.http)
}

func buildGatewayConfig(cfg *Config) (gateway.Config, error) {
	g := gateway.Config{
		HTTPDirectory:        cfg.HTTPDirectory,
		NovncDirectory:       cfg.NovncDirectory,
		SecurityToken:        cfg.SecurityToken,
		Timeout:              cfg.Timeout,
		StartTimeout:         cfg.StartTimeout,
		StopGrace:            cfg.StopGrace,
		EnvPolicy:            cfg.PassEnv,
		AllowedOrigins:       cfg.AllowedOrigins,
		SessionRoot:          cfg.SessionDir,
		MaxMessageBytes:      cfg.MaxMessageBytes,
		MaxTunnels:           cfg.MaxTunnels,
		MaxControlPerAddress: cfg.MaxRPCPerAddress,
		Heartbeat:            cfg.Heartbeat,
		RateLimit:            cfg.RateLimit,
		AuthFailLimit:        cfg.AuthFailLimit,
		Version:              version,
	}
	if g.NovncDirectory == "" {
		g.NovncDirectory = findNovnc()
	}
	if g.SessionRoot == "" {
		g.SessionRoot = filepath.Join(os.TempDir(), fmt.Sprintf("wsgateway-%d", os.Getuid()), "sessions")
	}
	if cfg.ClientHostname != "" {
		g.ClientAddr = net.JoinHostPort(cfg.ClientHostname, strconv.Itoa(cfg.ClientPort))
	}
	if cfg.RemoteSessionConfig != "" {
		svcs, err := services.LoadConfig(cfg.RemoteSessionConfig)
		if err != nil {
			return g, &usageError{fmt.Sprintf("--remote_session_config: %v", err)}
		}
		g.Services = append(g.Services, svcs...)
	}
	for _, ls := range cfg.LocalSessions {
		if !slices.Contains(services.BuiltInNames(), ls.Name) {
			// BuiltIn refuses an unknown name, listing the built-ins,
			// before it writes anything.
			_, err := services.BuiltIn(ls.Name, ls.Count, "")
			return g, &usageError{fmt.Sprintf("--local_session: %v", err)}
		}
	}
	if cfg.UsersFile != "" {
		users, err := auth.LoadUsers(cfg.UsersFile)
		if err != nil {
			return g, &usageError{fmt.Sprintf("--users: %v", err)}
		}
		g.Users = users
	}
	if len(cfg.TrustedProxies) > 0 {
		tp, err := auth.ParseCIDRs(cfg.TrustedProxies)
		if err != nil {
			return g, &usageError{fmt.Sprintf("--trusted_proxy: %v", err)}
		}
		g.TrustedProxies = tp
		for _, name := range cfg.TrustedProxyUsers {
			uid, err := lookupUID(name)
			if err != nil {
				return g, &usageError{fmt.Sprintf("--trusted_proxy_user %q: %v", name, err)}
			}
			g.ProxyUIDs = append(g.ProxyUIDs, uid)
		}
		if tp.HasLoopback() && len(g.ProxyUIDs) == 0 {
			return g, &usageError{"--trusted_proxy names a loopback address, from which every account on this machine can connect and assert any user: add --trusted_proxy_user with the user the proxy runs as (www-data for Debian's nginx and Apache)"}
		}
	} else if len(cfg.TrustedProxyUsers) > 0 {
		return g, &usageError{"--trusted_proxy_user is for a --trusted_proxy on this machine: give --trusted_proxy too"}
	}
	g.MaxUserTunnels = cfg.MaxUserTunnels
	g.MaxUserReservations = cfg.MaxUserReservations
	if cfg.Cert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return g, &usageError{fmt.Sprintf("--cert/--key: %v", err)}
		}
		g.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	return g, nil
}

// addBuiltins adds the --local_session services, writing their scripts
// beside the session directory.
func addBuiltins(cfg *Config, g *gateway.Config) error {
	builtinDir := filepath.Join(filepath.Dir(g.SessionRoot), "builtin")
	for _, ls := range cfg.LocalSessions {
		svc, err := services.BuiltIn(ls.Name, ls.Count, builtinDir)
		if err != nil {
			return &usageError{fmt.Sprintf("--local_session: %v", err)}
		}
		g.Services = append(g.Services, svc)
	}
	return nil
}

// The log file is rotated at logMaxMB megabytes, logBackups kept
// (compressed), as --log_file's help says.
const (
	logMaxMB   = 100
	logBackups = 5
)

// newLogger builds the zerolog logger: --verbose sets the level,
// --log_file sends it to a rotated file, otherwise stderr (readable text
// on a terminal, JSON lines elsewhere).
func newLogger(cfg *Config, stderr io.Writer) (zerolog.Logger, func()) {
	level := map[int]zerolog.Level{0: zerolog.WarnLevel, 1: zerolog.InfoLevel, 2: zerolog.DebugLevel, 3: zerolog.TraceLevel}[cfg.Verbose]
	var w io.Writer = stderr
	closer := func() {}
	if cfg.LogFile != "" {
		maxMB := cfg.logMaxMB
		if maxMB <= 0 {
			maxMB = logMaxMB
		}
		lj := &lumberjack.Logger{Filename: cfg.LogFile, MaxSize: maxMB, MaxBackups: logBackups, MaxAge: 30, Compress: true}
		w = &fallbackWriter{primary: lj, fallback: stderr, name: cfg.LogFile}
		closer = func() { _ = lj.Close() }
	} else if f, ok := stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			w = zerolog.ConsoleWriter{Out: f, TimeFormat: time.TimeOnly}
		}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger(), closer
}

// findNovnc looks for noVNC where make deps (npm) or Debian put it.
func findNovnc() string {
	var cands []string
	if wd, err := os.Getwd(); err == nil {
		cands = append(cands, filepath.Join(wd, "node_modules", "@novnc", "novnc"))
	}
	if exe, err := os.Executable(); err == nil {
		cands = append(cands, filepath.Join(filepath.Dir(filepath.Dir(exe)), "node_modules", "@novnc", "novnc"))
	}
	cands = append(cands, "/usr/share/novnc")
	for _, c := range cands {
		if _, err := os.Stat(filepath.Join(c, "core", "rfb.js")); err == nil {
			return c
		}
	}
	return ""
}

// watchUsers reloads the users file when it changes (checked every two
// seconds) or on SIGHUP; a broken file keeps the previous users.
func watchUsers(ctx context.Context, u *auth.Users, log zerolog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-tick.C:
			if !u.Changed() {
				continue
			}
		}
		if err := u.Reload(); err != nil {
			log.Error().Err(err).Msg("users file not reloaded; the previous users stay in force")
			continue
		}
		log.Info().Str("file", u.Path()).Int("users", u.Count()).Msg("users reloaded")
	}
}

// hashPassword reads a password (one line) and prints its bcrypt hash for
// the users file.
func hashPassword(in io.Reader, out, errw io.Writer) error {
	if f, ok := in.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			fmt.Fprint(errw, "password (shown as you type; pipe it in to hide it): ")
		}
	}
	line, err := bufio.NewReader(io.LimitReader(in, 4096)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading the password: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	h, err := auth.HashPassword(pw)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, h)
	return nil
}

// fallbackWriter writes to the log file; when that fails it says so once
// on stderr and sends the rest there, so nothing is silently lost.
type fallbackWriter struct {
	mu       sync.Mutex
	primary  io.Writer
	fallback io.Writer
	name     string
	failed   bool
}

func (f *fallbackWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.failed {
		n, err := f.primary.Write(p)
		if err == nil {
			return n, nil
		}
		f.failed = true
		fmt.Fprintf(f.fallback, "wsgateway: cannot write --log_file %s (%v); logging to stderr instead\n", f.name, err)
	}
	return f.fallback.Write(p)
}

// lookupUID resolves a user name (or a number) to its uid.
func lookupUID(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil && n >= 0 {
		return n, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, fmt.Errorf("no such user on this machine: %w", err)
	}
	return strconv.Atoi(u.Uid)
}
