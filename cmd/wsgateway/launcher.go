package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/gateway"
	"wsgateway/launcher"
)

// launcherRun is the ParaViewWeb launcher of --launcher_config: mounted on
// the gateway's HTTP port when configuration.port is --http_port, else on
// a listener of its own. A nil *launcherRun (no --launcher_config) does
// nothing.
type launcherRun struct {
	l       *launcher.Launcher
	cfg     *launcher.Config
	log     zerolog.Logger
	mounted bool
	cancel  context.CancelFunc
	served  chan struct{}
}

// launcherUsage is a --launcher_config that cannot be used: exit status 2.
func launcherUsage(format string, args ...any) error {
	return &usageError{"--launcher_config: " + fmt.Sprintf(format, args...)}
}

// loadLauncher reads --launcher_config and checks it against the command
// line, creating nothing: a config that cannot be used is a usage error
// naming the file and the line or key. When the launcher shares the HTTP
// port, its content directory becomes the gateway's static directory.
func loadLauncher(cfg *Config, g *gateway.Config) (*launcherRun, error) {
	if cfg.LauncherConfig == "" {
		return nil, nil
	}
	usage := launcherUsage
	lc, err := launcher.Load(cfg.LauncherConfig)
	if err != nil {
		return nil, usage("%v", err)
	}
	lc.StopGrace = cfg.StopGrace
	lc.EnvPolicy = cfg.PassEnv
	lc.AllowedOrigins = cfg.AllowedOrigins
	port := lc.Port()
	mounted := port == cfg.HTTPPort
	host := lc.Configuration.Host
	switch {
	case !mounted && port != 0 && port == cfg.WSPort:
		return nil, usage("%s: configuration.port %d is ws_server_port; give --http_port %d to serve the launcher on the gateway's HTTP port, or choose another port", lc.Path, port, port)
	case mounted && !hostCompatible(host, cfg.BindAddress):
		return nil, usage("%s: configuration.port %d is --http_port, but configuration.host %q is not the address the gateway binds (--bind_address %q)", lc.Path, port, host, cfg.BindAddress)
	}
	if first, _, _ := strings.Cut(lc.Endpoint(), "/"); mounted && (first == "v1" || first == strings.Trim(gateway.PagesPrefix, "/")) {
		return nil, usage("%s: configuration.endpoint %q would hide the gateway's own %s on --http_port; choose another", lc.Path, lc.Endpoint(), "/"+first+"/")
	}
	if c := lc.Configuration.Content; c != "" {
		// Checked before any port is taken (launcher.New checks it too).
		st, err := os.Stat(c)
		if err == nil && !st.IsDir() {
			err = fmt.Errorf("%s is not a directory", c)
		}
		if err != nil {
			return nil, usage("%v", &launcher.ConfigError{File: lc.Path, Key: "configuration.content", Msg: err.Error(), Err: err})
		}
	}
	if mounted && lc.Configuration.Content != "" {
		switch {
		case g.HTTPDirectory == "":
			g.HTTPDirectory = lc.Configuration.Content
		case filepath.Clean(g.HTTPDirectory) != filepath.Clean(lc.Configuration.Content):
			return nil, usage("%s: configuration.content %s and --http_directory %s would both be served on --http_port %d; keep one", lc.Path, lc.Configuration.Content, g.HTTPDirectory, port)
		}
	}
	return &launcherRun{cfg: lc, mounted: mounted}, nil
}

// start creates the launcher (its log, upload and proxy-file directories),
// mounts it as a gateway extension when it shares the HTTP port, and puts
// it under the gateway's shutdown.
func (lr *launcherRun) start(g *gateway.Config, log zerolog.Logger) error {
	if lr == nil {
		return nil
	}
	lr.cfg.Supervisor = g.Supervisor
	lr.log = log.With().Str("component", "launcher").Logger()
	l, err := launcher.New(lr.cfg, lr.log)
	if err != nil {
		return launcherUsage("%v", err)
	}
	lr.l = l
	if lr.mounted {
		g.Extensions = append(g.Extensions, gateway.Extension{Name: "launcher", Match: l.Match, Handler: l.Handler()})
	}
	// The gateway's one shutdown stops the launcher's own listener and its
	// applications too.
	g.StopAccepting = append(g.StopAccepting, lr.stopServing)
	g.Stoppers = append(g.Stoppers, l.Close)
	return nil
}

// stopServing stops the launcher's own listener, when it has one.
func (lr *launcherRun) stopServing() {
	if lr.cancel != nil {
		lr.cancel()
	}
}

// hostCompatible reports whether a launcher host can be served by a
// listener bound to bind ("" is every interface).
func hostCompatible(host, bind string) bool {
	if bind == "" || host == "" || strings.EqualFold(host, bind) {
		return true
	}
	loop := func(h string) bool {
		if strings.EqualFold(h, "localhost") {
			return true
		}
		ip := net.ParseIP(strings.Trim(h, "[]"))
		return ip != nil && ip.IsLoopback()
	}
	return loop(host) && loop(bind)
}

// bind puts the launcher's /proxy tunnels under the gateway's rules
// (--max_tunnels, --heartbeat, --max_message_bytes, status and metrics).
func (lr *launcherRun) bind(srv *gateway.Server) {
	if lr != nil {
		lr.l.SetTunnelHost(srv.TunnelHost())
	}
}

func (lr *launcherRun) mountedOnHTTP() bool { return lr != nil && lr.mounted }

// ownListener reports whether the launcher listens on a port of its own.
func (lr *launcherRun) ownListener() bool { return lr != nil && !lr.mounted }

// addr is the launcher's own configuration.host:port.
func (lr *launcherRun) addr() string {
	return net.JoinHostPort(lr.cfg.Configuration.Host, strconv.Itoa(lr.cfg.Port()))
}

// serve serves the launcher on ln (its own listener, nil when it shares
// the HTTP port) until close.
func (lr *launcherRun) serve(ctx context.Context, ln net.Listener, tlsCfg *tls.Config) {
	if lr == nil {
		return
	}
	if ln == nil {
		lr.log.Info().Int("port", lr.cfg.Port()).Str("endpoint", "/"+lr.cfg.Endpoint()).Msg("launcher mounted on the HTTP port")
		return
	}
	scheme := "http"
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
		scheme = "https"
	}
	lr.log.Info().Str("listener", "launcher").Str("address", ln.Addr().String()).Str("scheme", scheme).
		Str("endpoint", "/"+lr.cfg.Endpoint()).Msg("listening")
	sctx, cancel := context.WithCancel(ctx)
	lr.cancel = cancel
	lr.served = make(chan struct{})
	go func() {
		defer close(lr.served)
		if err := lr.l.Serve(sctx, ln); err != nil {
			lr.log.Error().Err(err).Msg("launcher listener failed")
		}
	}()
}

// close stops the listener and every launcher session (bounded).
func (lr *launcherRun) close() {
	if lr == nil || lr.l == nil {
		return
	}
	if lr.cancel != nil {
		lr.cancel()
		<-lr.served
	}
	ctx, cancel := context.WithTimeout(context.Background(), lr.cfg.StopGrace+15*time.Second)
	defer cancel()
	if err := lr.l.Close(ctx); err != nil {
		lr.log.Warn().Err(err).Msg("launcher shutdown")
	}
}
