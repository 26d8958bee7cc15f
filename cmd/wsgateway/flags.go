package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"wsgateway/proc"
)

// NoWSPort is Config.WSPort when ws_server_port is not given (allowed with
// --launcher_config): no websocket port is opened.
const NoWSPort = -1

// Config is the parsed command line.
type Config struct {
	WSPort              int // NoWSPort: none
	HTTPDirectory       string
	NovncDirectory      string
	HTTPPort            int
	Cert, Key           string
	SecurityToken       string
	RemoteSessionConfig string
	ClientHostname      string
	ClientPort          int
	Timeout             time.Duration
	LocalSessions       []LocalSession
	Verbose             int
	LogFile             string
	AllowedOrigins      []string
	StartTimeout        time.Duration
	StopGrace           time.Duration
	PassEnv             proc.Policy
	SessionDir          string
	BindAddress         string
	LauncherConfig      string
	ShowVersion         bool
	MaxMessageBytes     int64
	MaxTunnels          int
	Heartbeat           time.Duration
	RateLimit           float64
	AuthFailLimit       float64
	UsersFile           string
	TrustedProxies      []string
	TrustedProxyUsers   []string

	logMaxMB            int // the log file's rotation size (tests); 0: logMaxMB
	MaxUserTunnels      int
	MaxUserReservations int
	StateDB             string
	ReplicaID           string
	ReplicaLease        time.Duration
	ReplicaAddress      string // --replica_address: the replica listener
	ReplicaSecretFile   string // --replica_secret_file (else $WSGW_REPLICA_SECRET)
	ReplicaSecret       string
	MaxRPCPerAddress    int
	KeepJobs            int
	KeepJobsFor         time.Duration
}

// LocalSession is one --local_session NAME COUNT.
type LocalSession struct {
	Name  string
	Count int
}

// usageError is a bad command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

var errHelp = errors.New("help requested")

type option struct {
	name    string
	meta    string // argument names, space separated; "" for a switch
	help    string
	set     func(c *Config, args []string) error
	hasDefl bool
}

func options() []option {
	return []option{
		{name: "http_directory", meta: "http_directory", help: "Directory to serve up files from via http. It enables HTTP services.",
			set: func(c *Config, a []string) error { c.HTTPDirectory = a[0]; return nil }},
		{name: "http_port", meta: "http_server_port", help: "Port to support http file serving and the REST API on. Default:9090",
			set: func(c *Config, a []string) error { return parsePort(a[0], &c.HTTPPort) }},
		{name: "cert", meta: "ssl_certificate_filename", help: "Filename of the ssl certificate (PEM); serves https and wss on every listener",
			set: func(c *Config, a []string) error { c.Cert = a[0]; return nil }},
		{name: "key", meta: "ssl_key_filename", help: "Filename of the ssl key (PEM)",
			set: func(c *Config, a []string) error { c.Key = a[0]; return nil }},
		{name: "security_token", meta: "security_token", help: "Token every REST call must carry (?security_token= or Authorization: Bearer). Default: $WEBSOCKETSERVER_SECURITY_TOKEN",
			set: func(c *Config, a []string) error {
				if strings.TrimSpace(a[0]) == "" {
					return errors.New("must not be empty")
				}
				c.SecurityToken = a[0]
				return nil
			}},
		{name: "remote_session_config", meta: "remote_config.json", help: "Name of the remote session configuration file",
			set: func(c *Config, a []string) error { c.RemoteSessionConfig = a[0]; return nil }},
		{name: "client_hostname", meta: "client_hostname", help: "Hostname of the socket to serve using the websocket protocol on ws_server_port",
			set: func(c *Config, a []string) error { c.ClientHostname = a[0]; return nil }},
		{name: "client_port", meta: "client_port", help: "Port number of the socket to serve using the websocket protocol on ws_server_port",
			set: func(c *Config, a []string) error { return parsePort(a[0], &c.ClientPort) }},
		{name: "timeout", meta: "timeout_seconds", help: "Number of seconds before an unused reservation is reclaimed. Default:300",
			set: func(c *Config, a []string) error { return parseSeconds(a[0], &c.Timeout) }},
		{name: "local_session", meta: "appname count", help: "Specify some number of locally executed, built-in sessions, in the form 'appname count' where appname is 'desktop'. The count is the maximum number of instances of that application the gateway may have reserved/running simultaneously. This argument may be repeated.",
			set: func(c *Config, a []string) error {
				n, err := strconv.Atoi(a[1])
				if err != nil || n < 1 || n > 10000 {
					return fmt.Errorf("count %q must be a whole number from 1 to 10000", a[1])
				}
				for _, ls := range c.LocalSessions {
					if ls.Name == a[0] {
						return fmt.Errorf("%q is given twice", a[0])
					}
				}
				c.LocalSessions = append(c.LocalSessions, LocalSession{Name: a[0], Count: n})
				return nil
			}},
		{name: "verbose", meta: "verbose_level", help: "0 warnings, 1 info, 2 debug, 3 per-frame traffic. Default:1",
			set: func(c *Config, a []string) error {
				n, err := strconv.Atoi(a[0])
				if err != nil || n < 0 || n > 3 {
					return fmt.Errorf("%q must be 0, 1, 2 or 3", a[0])
				}
				c.Verbose = n
				return nil
			}},
		{name: "log_file", meta: "log_filename", help: "Save program output to the named log file instead of stderr (rotated at 100 MB, 5 kept, compressed); its directory must exist. One line on stderr still says where the log goes and the URL to open",
			set: func(c *Config, a []string) error { c.LogFile = a[0]; return nil }},
		{name: "allowed_origins", meta: "origins", help: "Comma-separated websocket Origins allowed besides the gateway's own host, e.g. https://app.example.org ('*' allows any). Repeatable",
			set: func(c *Config, a []string) error {
				for _, o := range strings.Split(a[0], ",") {
					o = strings.TrimSpace(o)
					if o == "" {
						continue
					}
					if o != "*" && !strings.Contains(o, "://") {
						return fmt.Errorf("%q is not an origin; write it as scheme://host[:port]", o)
					}
					c.AllowedOrigins = append(c.AllowedOrigins, strings.TrimRight(o, "/"))
				}
				return nil
			}},
		{name: "start_timeout", meta: "seconds", help: "Seconds a service may take to print its ready line and accept a connection. Default:30",
			set: func(c *Config, a []string) error { return parseSeconds(a[0], &c.StartTimeout) }},
		{name: "stop_grace", meta: "seconds", help: "Seconds between SIGTERM and SIGKILL when a service is stopped. Default:5",
			set: func(c *Config, a []string) error { return parseSeconds(a[0], &c.StopGrace) }},
		{name: "pass_env", meta: "list", help: "More variables of the gateway's environment that started services, launcher applications and jobs inherit, comma-separated; NAME* is a prefix (PYTHONPATH,PV_*,CUDA_VISIBLE_DEVICES). The security token never passes. Default: none",
			set: func(c *Config, a []string) error {
				p, err := proc.ParsePolicy(a[0])
				if err != nil {
					return err
				}
				c.PassEnv = p
				return nil
			}},
		{name: "session_dir", meta: "directory", help: "Where each launched session gets its working directory and log. Default: $TMPDIR/wsgateway-<uid>/sessions",
			set: func(c *Config, a []string) error { c.SessionDir = a[0]; return nil }},
		{name: "bind_address", meta: "address", help: "Address to listen on (e.g. 127.0.0.1). Default: all interfaces",
			set: func(c *Config, a []string) error { c.BindAddress = a[0]; return nil }},
		{name: "novnc_directory", meta: "directory", help: "noVNC to serve under /wsgw/novnc/ for the viewer page. Default: node_modules/@novnc/novnc (npm) in the working directory or above the binary's (bin/..), else /usr/share/novnc (Debian)",
			set: func(c *Config, a []string) error {
				if _, err := os.Stat(filepath.Join(a[0], "core", "rfb.js")); err != nil {
					return fmt.Errorf("%s does not hold noVNC (no core/rfb.js)", a[0])
				}
				c.NovncDirectory = a[0]
				return nil
			}},
		{name: "max_message_bytes", meta: "bytes", help: "Largest websocket message a client may send; larger ones close the websocket with 1009. Default: 16777216 (16 MiB)",
			set: func(c *Config, a []string) error {
				n, err := strconv.ParseInt(a[0], 10, 64)
				if err != nil || n < 1024 {
					return fmt.Errorf("%q must be a whole number of bytes, at least 1024", a[0])
				}
				c.MaxMessageBytes = n
				return nil
			}},
		{name: "max_tunnels", meta: "count", help: "Most websockets served at once; more get 503. 0 means no cap. Default: what the open-file limit leaves room for (two descriptors per websocket, after 320 for the rest)",
			set: func(c *Config, a []string) error {
				n, err := strconv.Atoi(a[0])
				if err != nil || n < 0 {
					return fmt.Errorf("%q must be a whole number, 0 for no cap", a[0])
				}
				c.MaxTunnels = n
				return nil
			}},
		{name: "heartbeat", meta: "seconds", help: "Ping every websocket client this often; one that for two periods neither answers nor takes any data is closed with 1001 (a client that reads, however slowly, is alive). 0 turns it off. Default: 30",
			set: func(c *Config, a []string) error { return parseSecondsOrZero(a[0], &c.Heartbeat) }},
		{name: "rate_limit", meta: "per_second", help: "Reservations (REST and RPC), launches and job submissions per second per client address, each its own bucket (bursts of twice as many); more get 429 or -32005. 0 turns it off. Default: 20",
			set: func(c *Config, a []string) error { return parseRate(a[0], &c.RateLimit) }},
		{name: "auth_fail_limit", meta: "per_minute", help: "Failed authentications (wrong security token, unknown reservation token) per minute per client address before 429. 0 turns it off. Default: 30",
			set: func(c *Config, a []string) error { return parseRate(a[0], &c.AuthFailLimit) }},
		{name: "launcher_config", meta: "launcher.config", help: "ParaViewWeb launcher config: serve its REST API (on --http_port when configuration.port is the same, else on configuration.host:port), launch its apps and forward their websockets at /proxy. 'wsgateway --launcher_config launcher.config' alone runs the launcher, as 'python -m wslink.launcher launcher.config' does",
			set: func(c *Config, a []string) error { c.LauncherConfig = a[0]; return nil }},
		{name: "users", meta: "users.json", help: "Users and groups: {\"users\": {\"alice\": {\"password_bcrypt\": …, \"api_keys\": […], \"groups\": [\"viz\", \"admin\"]}}}; reloaded when it changes or on SIGHUP. Make hashes with: wsgateway hash-password",
			set: func(c *Config, a []string) error { c.UsersFile = a[0]; return nil }},
		{name: "trusted_proxy", meta: "cidr", help: "Believe X-Forwarded-User and X-Forwarded-Groups from this network (a reverse proxy that authenticates). Repeatable",
			set: func(c *Config, a []string) error { c.TrustedProxies = append(c.TrustedProxies, a[0]); return nil }},
		{name: "trusted_proxy_user", meta: "user", help: "The local user a --trusted_proxy on this machine runs as (e.g. www-data); required when a --trusted_proxy network holds a loopback address, since every local account can connect from there. Repeatable",
			set: func(c *Config, a []string) error { c.TrustedProxyUsers = append(c.TrustedProxyUsers, a[0]); return nil }},
		{name: "max_user_tunnels", meta: "count", help: "Open sessions one user may have at once; more get 429. 0 means no cap. Default: 10",
			set: func(c *Config, a []string) error { return parseCount(a[0], &c.MaxUserTunnels) }},
		{name: "max_user_reservations", meta: "count", help: "Reservations one user may hold at once; more get 429. 0 means no cap. Default: 10",
			set: func(c *Config, a []string) error { return parseCount(a[0], &c.MaxUserReservations) }},
		{name: "state_db", meta: "file|url", help: "SQLite file holding what survives a restart: jobs, their queue, the event history and reservations (job logs go beside it, in <file>.jobs/). Default: wsgateway-state.db in the working directory when the services config has jobs, else state is kept in memory. A redis://[user:password@]host:port/db URL (rediss:// for TLS) shares reservations, sessions and events with the other gateway replicas on that Redis (see docs/replicas.md)",
			set: func(c *Config, a []string) error { c.StateDB = a[0]; return nil }},
		{name: "replica_id", meta: "name", help: "This replica's name among those sharing a --state_db redis://… (unique; default: the host name and a random suffix)",
			set: func(c *Config, a []string) error {
				if a[0] == "" || len(a[0]) > 64 || strings.ContainsAny(a[0], " \t\r\n:*?[]") {
					return fmt.Errorf("%q must be 1 to 64 characters without spaces, ':' or glob characters", a[0])
				}
				c.ReplicaID = a[0]
				return nil
			}},
		{name: "replica_lease", meta: "seconds", help: "With --state_db redis://…: how long this replica's sessions outlive it when it dies without a word (another replica then frees their slots). Default: 15",
			set: func(c *Config, a []string) error {
				f, err := strconv.ParseFloat(a[0], 64)
				if err != nil || f < 0.3 || f > 3600 {
					return fmt.Errorf("%q must be a number of seconds from 0.3 to 3600", a[0])
				}
				c.ReplicaLease = time.Duration(f * float64(time.Second))
				return nil
			}},
		{name: "replica_address", meta: "host:port", help: "With --state_db redis://…: listen here for the other replicas, which join their clients to the sessions this replica runs (a reconnect that lands on another replica reaches the same service), and tell them this address. Give an address they reach (port 0 picks a free one). Needs --replica_secret_file or WSGW_REPLICA_SECRET",
			set: func(c *Config, a []string) error {
				host, port, err := net.SplitHostPort(a[0])
				if err != nil || port == "" {
					return fmt.Errorf("%q must be host:port", a[0])
				}
				if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
					return fmt.Errorf("%q: give the address the other replicas reach, not a wildcard", a[0])
				}
				c.ReplicaAddress = a[0]
				return nil
			}},
		{name: "replica_secret_file", meta: "file", help: "The secret (at least 16 bytes, the same on every replica) that signs requests between replicas; the environment variable WSGW_REPLICA_SECRET is used when this is not given",
			set: func(c *Config, a []string) error { c.ReplicaSecretFile = a[0]; return nil }},
		{name: "max_rpc_per_address", meta: "count", help: "JSON-RPC (/v1/rpc) connections one client address may hold open; more get 429. They count against --max_tunnels too. 0 means no cap. Default: 32",
			set: func(c *Config, a []string) error { return parseCount(a[0], &c.MaxRPCPerAddress) }},
		{name: "keep_jobs", meta: "count", help: "Finished jobs kept (the newest); older ones are removed with their logs and directories. 0 keeps all. Default: 1000",
			set: func(c *Config, a []string) error { return parseCount(a[0], &c.KeepJobs) }},
		{name: "keep_jobs_days", meta: "days", help: "Days a finished job is kept after it ended; then it is removed with its log and directory. 0 keeps jobs until --keep_jobs removes them. Default: 30",
			set: func(c *Config, a []string) error {
				f, err := strconv.ParseFloat(a[0], 64)
				if err != nil || f < 0 || f > 36500 {
					return fmt.Errorf("%q must be a number of days from 0 to 36500", a[0])
				}
				c.KeepJobsFor = time.Duration(f * 24 * float64(time.Hour))
				return nil
			}},
		{name: "version", help: "Print the version and exit",
			set: func(c *Config, a []string) error { c.ShowVersion = true; return nil }},
	}
}

func parsePort(s string, dst *int) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q is not a port number (0-65535; 0 picks a free port)", s)
	}
	*dst = n
	return nil
}

func parseSeconds(s string, dst *time.Duration) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 366*24*3600 {
		return fmt.Errorf("%q is not a positive number of seconds", s)
	}
	*dst = time.Duration(f * float64(time.Second))
	return nil
}

func parseSecondsOrZero(s string, dst *time.Duration) error {
	if s == "0" {
		*dst = 0
		return nil
	}
	return parseSeconds(s, dst)
}

func parseCount(s string, dst *int) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%q must be a whole number, 0 for no cap", s)
	}
	*dst = n
	return nil
}

func parseRate(s string, dst *float64) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 1e6 {
		return fmt.Errorf("%q must be a number from 0 to 1000000", s)
	}
	*dst = f
	return nil
}

// parseArgs reads the command line in the Nexus websocketserver style:
// options with underscores, one positional ws_server_port.
func parseArgs(args []string, getenv func(string) string) (*Config, error) {
	c := &Config{
		HTTPPort:            9090,
		Timeout:             300 * time.Second,
		Verbose:             1,
		StartTimeout:        30 * time.Second,
		StopGrace:           5 * time.Second,
		SecurityToken:       getenv("WEBSOCKETSERVER_SECURITY_TOKEN"),
		ReplicaSecret:       getenv("WSGW_REPLICA_SECRET"),
		MaxMessageBytes:     16 << 20,
		MaxTunnels:          autoMaxTunnels,
		Heartbeat:           30 * time.Second,
		RateLimit:           20,
		AuthFailLimit:       30,
		MaxUserTunnels:      10,
		MaxUserReservations: 10,
		MaxRPCPerAddress:    32,
		KeepJobs:            1000,
		KeepJobsFor:         30 * 24 * time.Hour,
	}
	opts := map[string]option{}
	for _, o := range options() {
		opts[o.name] = o
	}
	var positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			positional = append(positional, args[i+1:]...)
			break
		}
		if a == "-h" || a == "--help" || a == "-help" {
			return nil, errHelp
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			positional = append(positional, a)
			continue
		}
		name := strings.TrimLeft(a, "-")
		var inline *string
		if k, v, ok := strings.Cut(name, "="); ok {
			name, inline = k, &v
		}
		o, ok := opts[name]
		if !ok {
			if alt, ok2 := opts[strings.ReplaceAll(name, "-", "_")]; ok2 {
				return nil, &usageError{fmt.Sprintf("unknown option %s; did you mean --%s?", a, alt.name)}
			}
			return nil, &usageError{fmt.Sprintf("unknown option %s (see wsgateway -h)", a)}
		}
		nargs := 0
		if o.meta != "" {
			nargs = len(strings.Fields(o.meta))
		}
		var vals []string
		switch {
		case inline != nil && nargs == 1:
			vals = []string{*inline}
		case inline != nil:
			return nil, &usageError{fmt.Sprintf("--%s takes %d value(s): --%s %s", o.name, nargs, o.name, o.meta)}
		default:
			if i+nargs >= len(args) {
				return nil, &usageError{fmt.Sprintf("--%s needs %s", o.name, o.meta)}
			}
			vals = args[i+1 : i+1+nargs]
			for _, v := range vals {
				if strings.HasPrefix(v, "--") {
					return nil, &usageError{fmt.Sprintf("--%s needs %s, got %s", o.name, o.meta, v)}
				}
			}
			i += nargs
		}
		if err := o.set(c, vals); err != nil {
			return nil, &usageError{fmt.Sprintf("--%s: %v", o.name, err)}
		}
	}
	if c.ShowVersion {
		return c, nil
	}
	switch len(positional) {
	case 0:
		if c.LauncherConfig == "" || c.ClientHostname != "" {
			return nil, &usageError{"missing ws_server_port: the port the gateway accepts websocket connections on, e.g. wsgateway --client_hostname localhost --client_port 5900 8081"}
		}
		// The launcher alone, as python -m wslink.launcher launcher.config:
		// it listens on its own configuration.host:port.
		c.WSPort = NoWSPort
	case 1:
		if err := parsePort(positional[0], &c.WSPort); err != nil {
			return nil, &usageError{fmt.Sprintf("ws_server_port: %v", err)}
		}
	default:
		return nil, &usageError{fmt.Sprintf("too many arguments %q: only ws_server_port is positional (does an option have too many values?)", positional)}
	}
	if (c.ClientHostname == "") != (c.ClientPort == 0) {
		return nil, &usageError{"--client_hostname and --client_port go together: give both for basic mode, or neither"}
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, &usageError{"--cert and --key go together: give both to serve https/wss, or neither"}
	}
	if c.HTTPDirectory != "" {
		st, err := os.Stat(c.HTTPDirectory)
		if err != nil {
			return nil, &usageError{fmt.Sprintf("--http_directory: %v", err)}
		}
		if !st.IsDir() {
			return nil, &usageError{fmt.Sprintf("--http_directory: %s is not a directory", c.HTTPDirectory)}
		}
	}
	if c.LogFile != "" {
		if err := checkLogDir(c.LogFile); err != nil {
			return nil, &usageError{fmt.Sprintf("--log_file %s: %v", c.LogFile, err)}
		}
	}
	if c.ClientHostname == "" && c.RemoteSessionConfig == "" && len(c.LocalSessions) == 0 && c.LauncherConfig == "" {
		return nil, &usageError{"nothing to serve: give --client_hostname/--client_port (basic mode), --remote_session_config FILE, --local_session NAME COUNT, or --launcher_config FILE"}
	}
	return c, nil
}

// checkLogDir refuses a log file whose directory does not exist, so that
// nothing is created in a mistyped place. A log file that cannot be
// written for another reason is said on stderr when the first line fails,
// and the log goes to stderr instead (fallbackWriter).
func checkLogDir(file string) error {
	dir := filepath.Dir(file)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("directory %s does not exist; create it first or choose another file", dir)
	}
	return nil
}

func printUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString("usage: wsgateway [-h]")
	line := len("usage: wsgateway [-h]")
	indent := strings.Repeat(" ", len("usage: wsgateway "))
	for _, o := range options() {
		item := fmt.Sprintf(" [--%s", o.name)
		if o.meta != "" {
			item += " " + o.meta
		}
		item += "]"
		if line+len(item) > 78 {
			b.WriteString("\n" + indent)
			line = len(indent)
			item = item[1:]
		}
		b.WriteString(item)
		line += len(item)
	}
	b.WriteString("\n" + indent + "[ws_server_port]\n")
	b.WriteString("wsgateway: websocket gateway for VNC desktops, visualisation servers and jobs\n\n")
	b.WriteString("positional arguments:\n")
	b.WriteString(helpEntry("ws_server_port", "The port the server accepts incoming websocket connection requests over. Optional with --launcher_config, which alone is a complete command (the launcher listens on its configuration.host:port)"))
	b.WriteString("\noptional arguments:\n")
	b.WriteString(helpEntry("-h, --help", "show this help message and exit"))
	for _, o := range options() {
		head := "--" + o.name
		if o.meta != "" {
			head += " " + o.meta
		}
		b.WriteString(helpEntry(head, o.help))
	}
	b.WriteString("\ncommands:\n")
	b.WriteString(helpEntry("hash-password", "wsgateway hash-password reads a password on standard input and prints its bcrypt hash, for the password_bcrypt of a user in --users"))
	fmt.Fprint(w, b.String())
}

func helpEntry(head, help string) string {
	var b strings.Builder
	const col = 24
	b.WriteString("  " + head)
	pad := col - 2 - len(head)
	words := strings.Fields(help)
	width := 0
	if pad < 2 {
		b.WriteString("\n" + strings.Repeat(" ", col))
	} else {
		b.WriteString(strings.Repeat(" ", pad))
	}
	for _, w := range words {
		if width > 0 && width+1+len(w) > 54 {
			b.WriteString("\n" + strings.Repeat(" ", col))
			width = 0
		}
		if width > 0 {
			b.WriteString(" ")
			width++
		}
		b.WriteString(w)
		width += len(w)
	}
	b.WriteString("\n")
	return b.String()
}
