package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
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

// setupLauncher loads --launcher_config and, when it shares the HTTP port,
// mounts it as a gateway extension (its content directory becoming the
// gateway's static directory). A config that cannot be used is a usage
// error naming the file and the line or key.
func setupLauncher(cfg *Config, g *gateway.Config, log zerolog.Logger) (*launcherRun, error) {
	if cfg.LauncherConfig == "" {
		return nil, nil
	}
	usage := func(format string, args ...any) error {
		return &usageError{"--launcher_config: " + fmt.Sprintf(format, args...)}
	}
	lc, err := launcher.Load(cfg.LauncherConfig)
	if err != nil {
		return nil, usage("%v", err)
	}
	lc.StopGrace = cfg.StopGrace
	lc.Supervisor = g.Supervisor
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
	if mounted && lc.Configuration.Content != "" {
		switch {
		case g.HTTPDirectory == "":
			g.HTTPDirectory = lc.Configuration.Content
		case filepath.Clean(g.HTTPDirectory) != filepath.Clean(lc.Configuration.Content):
			return nil, usage("%s: configuration.content %s and --http_directory %s would both be served on --http_port %d; keep one", lc.Path, lc.Configuration.Content, g.HTTPDirectory, port)
		}
	}
	llog := log.With().Str("component", "launcher").Logger()
	l, err := launcher.New(lc, llog)
	if err != nil {
		return nil, usage("%v", err)
	}
	lr := &launcherRun{l: l, cfg: lc, log: llog, mounted: mounted}
	if mounted {
		g.Extensions = append(g.Extensions, gateway.Extension{Name: "launcher", Match: l.Match, Handler: l.Handler()})
	}
	return lr, nil
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

// listen starts the launcher's own listener when it does not share the
// HTTP port; it is served until close.
func (lr *launcherRun) listen(ctx context.Context, tlsCfg *tls.Config) error {
	if lr == nil {
		return nil
	}
	if lr.mounted {
		lr.log.Info().Int("port", lr.cfg.Port()).Str("endpoint", "/"+lr.cfg.Endpoint()).Msg("launcher mounted on the HTTP port")
		return nil
	}
	addr := net.JoinHostPort(lr.cfg.Configuration.Host, strconv.Itoa(lr.cfg.Port()))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--launcher_config %s: listening on configuration.host:port %s: %w", lr.cfg.Path, addr, err)
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
	return nil
}

// close stops the listener and every launcher session (bounded).
func (lr *launcherRun) close() {
	if lr == nil {
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
