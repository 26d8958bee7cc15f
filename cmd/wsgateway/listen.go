package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/rs/zerolog"

	"wsgateway/gateway"
)

// listeners are the gateway's ports, opened before anything else is set
// up so that a port in use is the first thing said. A nil field is a port
// not opened.
type listeners struct {
	ws, http, launcher net.Listener
}

// openListeners opens ws_server_port, --http_port when something is
// served over HTTP, and the launcher's own configuration.host:port. A port
// that cannot be taken is a usage error naming the port and its option.
func openListeners(cfg *Config, lr *launcherRun, httpOn bool) (*listeners, error) {
	l := &listeners{}
	var err error
	if cfg.WSPort != NoWSPort {
		if l.ws, err = listen(cfg.BindAddress, cfg.WSPort, "ws_server_port"); err != nil {
			return nil, err
		}
	}
	if httpOn {
		if l.ws != nil && cfg.HTTPPort == cfg.WSPort && cfg.WSPort != 0 {
			// One port for everything: the HTTP handler takes websockets too.
			l.http, l.ws = l.ws, nil
		} else if l.http, err = listen(cfg.BindAddress, cfg.HTTPPort, "--http_port"); err != nil {
			l.close()
			return nil, err
		}
	}
	if lr.ownListener() {
		ln, err := net.Listen("tcp", lr.addr())
		if err != nil {
			l.close()
			return nil, launcherUsage("%s: configuration.host:port %s: %s", lr.cfg.Path, lr.addr(), listenProblem(err))
		}
		l.launcher = ln
	}
	return l, nil
}

func listen(bind string, port int, option string) (net.Listener, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(bind, strconv.Itoa(port)))
	if err != nil {
		return nil, &usageError{fmt.Sprintf("%s %d: %s", option, port, listenProblem(err))}
	}
	return ln, nil
}

// listenProblem says in plain words why a port could not be taken.
func listenProblem(err error) string {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return "that port is already in use by another program; stop it or choose another port"
	case errors.Is(err, syscall.EACCES):
		return "permission denied (ports below 1024 need privileges); choose a port from 1024 up"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Sprintf("the address is not one of this machine's (%v); check --bind_address", err)
	}
	return err.Error()
}

// close closes every listener that was opened (the gateway's Serve owns
// them once it runs; closing twice is harmless).
func (l *listeners) close() {
	for _, ln := range []net.Listener{l.ws, l.http, l.launcher} {
		if ln != nil {
			_ = ln.Close()
		}
	}
}

// served is one thing the gateway serves, for the first log lines.
type served struct {
	what, url string
}

// plan says what the gateway serves on its listeners and the URL a person
// should open (or point a client at) first.
func plan(cfg *Config, g *gateway.Config, lr *launcherRun, l *listeners) ([]served, string) {
	tls := g.TLS != nil
	scheme := func(s string) string {
		if tls {
			return s + "s"
		}
		return s
	}
	// --local_session services are added after the ports are taken.
	hasServices := len(g.Services) > 0 || len(cfg.LocalSessions) > 0
	var out []served
	start := ""
	if l.ws != nil {
		what := "websockets with a reservation token, spliced to their service"
		switch {
		case g.ClientAddr != "" && hasServices:
			what = "websockets: with a reservation token to their service, without one to " + g.ClientAddr + " (basic mode)"
		case g.ClientAddr != "":
			what = "websockets, each spliced to " + g.ClientAddr + " (basic mode)"
		}
		u := scheme("ws") + "://" + urlHost(cfg.BindAddress, l.ws) + "/"
		out = append(out, served{what, u})
		start = u
	}
	if l.http != nil {
		var parts []string
		if cfg.HTTPDirectory != "" {
			parts = append(parts, "the files of "+cfg.HTTPDirectory)
		}
		if hasServices || cfg.HTTPDirectory == "" {
			parts = append(parts, "the dashboard and REST API")
		} else {
			parts = append(parts, "the REST API")
		}
		if lr.mountedOnHTTP() {
			parts = append(parts, "the ParaViewWeb launcher at /"+lr.cfg.Endpoint())
		}
		if l.ws == nil {
			parts = append(parts, "websockets")
		}
		base := scheme("http") + "://" + urlHost(cfg.BindAddress, l.http)
		out = append(out, served{strings.Join(parts, ", "), base + "/"})
		switch {
		case cfg.HTTPDirectory != "" && l.ws != nil && g.ClientAddr != "" && fileExists(filepath.Join(cfg.HTTPDirectory, "vnc_lite.html")):
			// noVNC's page, told where the websocket port is.
			h, p, _ := net.SplitHostPort(urlHost(cfg.BindAddress, l.ws))
			start = base + "/vnc_lite.html?" + url.Values{"host": {strings.Trim(h, "[]")}, "port": {p}}.Encode()
		case cfg.HTTPDirectory != "" && hasServices:
			start = base + gateway.PagesPrefix
		default:
			start = base + "/"
		}
	}
	if l.launcher != nil {
		u := scheme("http") + "://" + urlHost(lr.cfg.Configuration.Host, l.launcher) + "/" + lr.cfg.Endpoint()
		out = append(out, served{"the ParaViewWeb launcher (POST a session request; its websockets at /proxy)", u})
		if start == "" {
			start = u
		}
	}
	return out, start
}

// announce logs, first of all, what is served and the URL to start from;
// when the log goes to a file, one line on the terminal says where it goes
// and that URL.
func announce(log zerolog.Logger, cfg *Config, g *gateway.Config, lr *launcherRun, l *listeners, stderr io.Writer) {
	what, start := plan(cfg, g, lr, l)
	for _, s := range what {
		log.Info().Str("url", s.url).Str("serves", s.what).Msg("serving")
	}
	log.Info().Str("url", start).Str("version", version).Msg("start here")
	if cfg.LogFile != "" {
		abs, err := filepath.Abs(cfg.LogFile)
		if err != nil {
			abs = cfg.LogFile
		}
		fmt.Fprintf(stderr, "wsgateway: logging to %s; start here: %s\n", abs, start)
	}
}

// urlHost is the host:port to put in a URL for a listener bound to bind:
// localhost for every interface, else the bound address.
func urlHost(bind string, ln net.Listener) string {
	port := "0"
	if a, ok := ln.Addr().(*net.TCPAddr); ok {
		port = strconv.Itoa(a.Port)
	}
	host := bind
	if ip := net.ParseIP(strings.Trim(bind, "[]")); bind == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return net.JoinHostPort(strings.Trim(host, "[]"), port)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
