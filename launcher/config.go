package launcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"wsgateway/proc"
	"wsgateway/services"
)

// MaxConfigSize bounds a launcher config file.
const MaxConfigSize = 4 << 20

// Defaults for keys the Python launcher requires or leaves implicit.
const (
	DefaultHost          = "localhost"
	DefaultTimeout       = 25 * time.Second
	DefaultUploadMaxSize = 1 << 30
	DefaultStopGrace     = 5 * time.Second
)

// Config is a ParaViewWeb launcher config (launcher.config).
type Config struct {
	Configuration Configuration           `json:"configuration"`
	Resources     []Resource              `json:"resources"`
	Properties    map[string]any          `json:"properties"`
	Apps          map[string]App          `json:"apps"`
	SessionData   map[string]any          `json:"sessionData"`
	Sanitize      map[string]SanitizeRule `json:"sanitize"`

	// Path is the file the config came from. Relative paths in the file
	// (log_dir, content, proxy_file, upload_dir) are made absolute
	// against its directory by Load.
	Path string `json:"-"`
	// Warnings lists what Load ignored, such as unknown keys (the Python
	// launcher ignores them too).
	Warnings []string `json:"-"`

	// StopGrace is the time between SIGTERM and SIGKILL when a session is
	// stopped (not in the file; the gateway's --stop_grace).
	StopGrace time.Duration `json:"-"`
	// EnvPolicy is what applications inherit of the gateway's
	// environment besides the built-in allowlist.
	EnvPolicy proc.Policy `json:"-"`
	// AllowedOrigins are browser Origins allowed on /proxy besides the
	// request's own host ("*" allows any); the gateway's --allowed_origins.
	AllowedOrigins []string `json:"-"`
	// Supervisor, when set, runs each application under the gateway's
	// service supervisor, so its whole process group dies with the
	// gateway even if the gateway is killed with SIGKILL.
	Supervisor *services.Supervisor `json:"-"`
}

// Configuration is the "configuration" section.
type Configuration struct {
	Host       string   `json:"host"`
	Port       *int     `json:"port"`
	Endpoint   string   `json:"endpoint"`
	Content    string   `json:"content"`
	ProxyFile  string   `json:"proxy_file"`
	SessionURL string   `json:"sessionURL"`
	Timeout    *float64 `json:"timeout"`
	LogDir     string   `json:"log_dir"`
	UploadDir  string   `json:"upload_dir"`
	// UploadMaxSize bounds one upload request in bytes (a wsgateway
	// addition; default 1 GiB).
	UploadMaxSize *int64 `json:"upload_max_size"`
	// UploadReplace lets an upload replace an existing file (a wsgateway
	// addition; default false: 409).
	UploadReplace bool `json:"upload_replace"`
	// ConnectTimeout is how long, in seconds, a ready session waits for
	// its first /proxy websocket before it is stopped (a wsgateway
	// addition; default timeout; 0: no limit).
	ConnectTimeout *float64 `json:"connect_timeout"`
	// Fields filters the answer to a launch; nil means no filter.
	Fields []string `json:"fields"`
	// Sanitize is where the Python launcher reads the rules; a top-level
	// "sanitize" section is accepted too.
	Sanitize map[string]SanitizeRule `json:"sanitize"`
}

// Resource is one entry of "resources": a host and an inclusive port range.
type Resource struct {
	Host      string `json:"host"`
	PortRange []int  `json:"port_range"`
}

// App is one entry of "apps".
type App struct {
	Cmd       []string `json:"cmd"`
	ReadyLine string   `json:"ready_line"`
}

// SanitizeRule checks one key of the client's payload; a value that fails
// is replaced by Default.
type SanitizeRule struct {
	Type    string `json:"type"` // "inList" or "regexp"
	List    []any  `json:"list"`
	Regexp  string `json:"regexp"`
	Default any    `json:"default"`

	re *regexp.Regexp
}

// Port is configuration.port.
func (c *Config) Port() int {
	if c.Configuration.Port == nil {
		return 0
	}
	return *c.Configuration.Port
}

// Endpoint is configuration.endpoint without surrounding slashes.
func (c *Config) Endpoint() string { return strings.Trim(c.Configuration.Endpoint, "/") }

// Timeout is configuration.timeout as a duration.
func (c *Config) Timeout() time.Duration {
	if c.Configuration.Timeout == nil {
		return DefaultTimeout
	}
	return time.Duration(*c.Configuration.Timeout * float64(time.Second))
}

// ConnectTimeout is configuration.connect_timeout as a duration: how long
// a ready session waits for its first /proxy websocket (Timeout when the
// key is missing, no limit when it is 0).
func (c *Config) ConnectTimeout() time.Duration {
	ct := c.Configuration.ConnectTimeout
	if ct == nil {
		return c.Timeout()
	}
	if *ct == 0 {
		return forever
	}
	return time.Duration(*ct * float64(time.Second))
}

// ConfigError is a config that cannot be used; its message names the file
// and the line or the key.
type ConfigError struct {
	File string
	Line int    // 0 when the error is about a key
	Key  string // dotted path, "" when the error is about a line
	Msg  string
	Err  error
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, " line %d", e.Line)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": key %s", e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

func (e *ConfigError) Unwrap() error { return e.Err }

// Load reads, strips comments from, decodes and checks a launcher config.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("launcher config: %w", err)
	}
	defer f.Close()
	src, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("launcher config %s: %w", path, err)
	}
	if len(src) > MaxConfigSize {
		return nil, &ConfigError{File: path, Msg: fmt.Sprintf("larger than %d bytes", MaxConfigSize)}
	}
	c, err := Parse(src, path)
	if err != nil {
		return nil, err
	}
	c.resolvePaths()
	return c, nil
}

// Parse decodes and checks a launcher config held in memory; name is used
// in errors. Relative paths are left as they are.
func Parse(src []byte, name string) (*Config, error) {
	clean, err := StripComments(src)
	if err != nil {
		var se *stripError
		if errors.As(err, &se) {
			return nil, &ConfigError{File: name, Line: se.line, Msg: se.msg, Err: err}
		}
		return nil, err
	}
	if len(bytes.TrimSpace(clean)) == 0 {
		return nil, &ConfigError{File: name, Msg: "the file is empty; it must hold one JSON object"}
	}
	c := &Config{Path: name}
	dec := json.NewDecoder(bytes.NewReader(clean))
	dec.UseNumber()
	if err := dec.Decode(c); err != nil {
		return nil, decodeError(name, clean, err)
	}
	if tok, err := dec.Token(); err != io.EOF {
		off := dec.InputOffset()
		msg := fmt.Sprintf("unexpected %v after the config object", tok)
		if err != nil {
			msg = err.Error()
		}
		return nil, &ConfigError{File: name, Line: lineOf(clean, off), Msg: msg}
	}
	var raw map[string]any
	if err := json.Unmarshal(clean, &raw); err != nil {
		return nil, decodeError(name, clean, err)
	}
	c.Warnings = unknownKeys(raw)
	if err := c.check(name); err != nil {
		return nil, err
	}
	return c, nil
}

func decodeError(name string, src []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	if errors.As(err, &se) {
		// Offset is just past the character that is wrong.
		line, col := lineCol(src, se.Offset-1)
		return &ConfigError{File: name, Line: line, Msg: fmt.Sprintf("column %d: %v", col, se), Err: err}
	}
	if errors.As(err, &te) {
		key := te.Field
		if key == "" {
			key = "(top level)"
		}
		return &ConfigError{File: name, Line: lineOf(src, te.Offset), Key: key,
			Msg: fmt.Sprintf("expected %s, got a JSON %s", typeName(te.Type.String()), te.Value), Err: err}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &ConfigError{File: name, Line: lineOf(src, int64(len(src))), Msg: "the file ends inside the JSON object (a missing } or ]?)", Err: err}
	}
	return &ConfigError{File: name, Msg: err.Error(), Err: err}
}

func typeName(goType string) string {
	if goType == "string" {
		return "a string"
	}
	if goType == "int" || goType == "*int" || goType == "int64" || goType == "*int64" {
		return "a whole number"
	}
	if goType == "*float64" || goType == "float64" {
		return "a number"
	}
	if strings.HasPrefix(goType, "[]") {
		return "a list"
	}
	if strings.HasPrefix(goType, "map[") || strings.HasPrefix(goType, "launcher.") {
		return "an object"
	}
	return goType
}

func lineOf(src []byte, off int64) int {
	l, _ := lineCol(src, off)
	return l
}

func lineCol(src []byte, off int64) (int, int) {
	if off > int64(len(src)) {
		off = int64(len(src))
	}
	if off < 0 {
		off = 0
	}
	before := src[:off]
	line := bytes.Count(before, []byte{'\n'}) + 1
	col := int(off) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

var knownKeys = map[string][]string{
	"":              {"configuration", "resources", "properties", "apps", "sessionData", "sanitize"},
	"configuration": {"host", "port", "endpoint", "content", "proxy_file", "sessionURL", "timeout", "log_dir", "upload_dir", "upload_max_size", "upload_replace", "connect_timeout", "fields", "sanitize"},
	"app":           {"cmd", "ready_line"},
	"resource":      {"host", "port_range"},
	"sanitize":      {"type", "list", "regexp", "default"},
}

func unknownKeys(raw map[string]any) []string {
	var out []string
	check := func(path, kind string, m any) {
		obj, ok := m.(map[string]any)
		if !ok {
			return
		}
		for k := range obj {
			found := false
			for _, kk := range knownKeys[kind] {
				if k == kk {
					found = true
					break
				}
			}
			if !found {
				key := k
				if path != "" {
					key = path + "." + k
				}
				out = append(out, fmt.Sprintf("unknown key %s is ignored", key))
			}
		}
	}
	check("", "", raw)
	check("configuration", "configuration", raw["configuration"])
	if apps, ok := raw["apps"].(map[string]any); ok {
		for name, a := range apps {
			check("apps."+name, "app", a)
		}
	}
	if res, ok := raw["resources"].([]any); ok {
		for i, r := range res {
			check(fmt.Sprintf("resources[%d]", i), "resource", r)
		}
	}
	if conf, ok := raw["configuration"].(map[string]any); ok {
		if san, ok := conf["sanitize"].(map[string]any); ok {
			for k, r := range san {
				check("configuration.sanitize."+k, "sanitize", r)
			}
		}
	}
	if san, ok := raw["sanitize"].(map[string]any); ok {
		for k, r := range san {
			check("sanitize."+k, "sanitize", r)
		}
	}
	sort.Strings(out)
	return out
}

// Keys of a launch's answer that the launcher sets itself.
var reservedKeys = []string{"id", "host", "port", "secret", "sessionURL"}

const maxPorts = 65536

func (c *Config) check(name string) error {
	bad := func(key, format string, args ...any) error {
		return &ConfigError{File: name, Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	cf := &c.Configuration
	if cf.Host == "" {
		cf.Host = DefaultHost
	}
	if cf.Port == nil {
		return bad("configuration.port", "missing: the port the launcher's REST API listens on (the gateway's --http_port to share it)")
	}
	if *cf.Port < 0 || *cf.Port > 65535 {
		return bad("configuration.port", "%d is not a port number (0-65535)", *cf.Port)
	}
	ep := c.Endpoint()
	if ep == "" {
		return bad("configuration.endpoint", "missing: the path clients POST to, e.g. \"paraview\"")
	}
	if ep == "proxy" || ep == "upload" {
		return bad("configuration.endpoint", "%q is a path the launcher serves itself; choose another", ep)
	}
	if strings.ContainsAny(ep, "?#%\\ ") || strings.Contains(ep, "//") || strings.Contains("/"+ep+"/", "/../") || strings.Contains("/"+ep+"/", "/./") {
		return bad("configuration.endpoint", "%q is not a plain URL path", cf.Endpoint)
	}
	if cf.SessionURL == "" {
		return bad("configuration.sessionURL", "missing: the websocket URL clients connect to, e.g. \"ws://USE_HOST/proxy?sessionId=${id}&path=ws\"")
	}
	if cf.LogDir == "" {
		return bad("configuration.log_dir", "missing: the directory for <id>.txt session logs and launcherLog.log")
	}
	if cf.Timeout != nil && (*cf.Timeout <= 0 || *cf.Timeout > 24*3600) {
		return bad("configuration.timeout", "%v is not a number of seconds from 0 to 86400", *cf.Timeout)
	}
	if ct := cf.ConnectTimeout; ct != nil && (*ct < 0 || *ct > 24*3600) {
		return bad("configuration.connect_timeout", "%v is not a number of seconds from 0 (no limit) to 86400", *ct)
	}
	if cf.UploadMaxSize != nil && *cf.UploadMaxSize <= 0 {
		return bad("configuration.upload_max_size", "must be a positive number of bytes")
	}
	for i, f := range cf.Fields {
		if f == "" {
			return bad(fmt.Sprintf("configuration.fields[%d]", i), "empty field name")
		}
	}
	if len(c.Resources) == 0 {
		return bad("resources", "missing or empty: list at least one {\"host\": \"localhost\", \"port_range\": [9001, 9003]}")
	}
	seen := map[string]int{}
	total := 0
	for i, r := range c.Resources {
		key := fmt.Sprintf("resources[%d]", i)
		if strings.TrimSpace(r.Host) == "" {
			return bad(key+".host", "missing host")
		}
		if len(r.PortRange) != 2 {
			return bad(key+".port_range", "must be [first, last], got %d numbers", len(r.PortRange))
		}
		lo, hi := r.PortRange[0], r.PortRange[1]
		if lo < 1 || hi > 65535 || lo > hi {
			return bad(key+".port_range", "[%d, %d] is not a range of ports 1-65535 with first <= last", lo, hi)
		}
		total += hi - lo + 1
		if total > maxPorts {
			return bad(key+".port_range", "more than %d ports in all", maxPorts)
		}
		for p := lo; p <= hi; p++ {
			hp := fmt.Sprintf("%s:%d", r.Host, p)
			if j, dup := seen[hp]; dup {
				return bad(key+".port_range", "port %d of host %s is already in resources[%d]", p, r.Host, j)
			}
			seen[hp] = i
		}
	}
	if len(c.Apps) == 0 {
		return bad("apps", "missing or empty: define at least one application with a \"cmd\"")
	}
	for name, a := range c.Apps {
		key := "apps." + name
		if name == "" {
			return bad("apps", "an application has an empty name")
		}
		if len(a.Cmd) == 0 {
			return bad(key+".cmd", "missing or empty: the command line, a list of strings")
		}
		if strings.TrimSpace(a.Cmd[0]) == "" {
			return bad(key+".cmd[0]", "the program to run is empty")
		}
		for i, arg := range a.Cmd {
			if strings.IndexByte(arg, 0) >= 0 {
				return bad(fmt.Sprintf("%s.cmd[%d]", key, i), "contains a NUL byte")
			}
		}
		if strings.ContainsAny(a.ReadyLine, "\n\r") {
			return bad(key+".ready_line", "must be one line")
		}
	}
	for k := range c.SessionData {
		for _, r := range reservedKeys {
			if k == r {
				return bad("sessionData."+k, "%q is set by the launcher itself", k)
			}
		}
	}
	for k := range c.Properties {
		if !isIdentifier(k) {
			c.Warnings = append(c.Warnings, fmt.Sprintf("properties.%s can never be substituted: ${name} takes letters, digits and _", k))
		}
	}
	rules := map[string]SanitizeRule{}
	for _, src := range []struct {
		prefix string
		m      map[string]SanitizeRule
	}{{"configuration.sanitize.", cf.Sanitize}, {"sanitize.", c.Sanitize}} {
		for k, r := range src.m {
			key := src.prefix + k
			if _, dup := rules[k]; dup {
				return bad(key, "a rule for %q is also in the other sanitize section", k)
			}
			switch r.Type {
			case "inList":
				if r.List == nil {
					return bad(key+".list", "missing: the allowed values")
				}
			case "regexp":
				if r.Regexp == "" {
					return bad(key+".regexp", "missing: the expression values must match")
				}
				// Python's re.match: anchored at the start only. The
				// expression must be valid on its own: "a)|(b" would
				// otherwise compile once wrapped, unanchored after the |.
				_, err := regexp.Compile(r.Regexp)
				var re *regexp.Regexp
				if err == nil {
					re, err = regexp.Compile(`\A(?:` + r.Regexp + `)`)
				}
				if err != nil {
					return bad(key+".regexp", "%v (Go RE2 syntax: no lookaround or backreferences)", err)
				}
				r.re = re
			case "":
				return bad(key+".type", "missing: \"inList\" or \"regexp\"")
			default:
				return bad(key+".type", "%q is not \"inList\" or \"regexp\"", r.Type)
			}
			if r.Default == nil {
				return bad(key+".default", "missing: the value used when the client's does not pass")
			}
			rules[k] = r
		}
	}
	c.Sanitize = rules
	cf.Sanitize = nil
	return nil
}

// resolvePaths makes the config's relative paths absolute against the
// config file's directory.
func (c *Config) resolvePaths() {
	dir := filepath.Dir(c.Path)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	for _, p := range []*string{&c.Configuration.LogDir, &c.Configuration.Content, &c.Configuration.ProxyFile, &c.Configuration.UploadDir} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
}

// stripError is a comment that cannot be stripped.
type stripError struct {
	line int
	msg  string
}

func (e *stripError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// StripComments blanks out #, ## and // comments (to the end of the line)
// and /* */ comments, outside JSON strings. Blanked bytes become spaces and
// newlines are kept, so offsets and line numbers stay those of the file.
// A UTF-8 byte order mark is blanked too.
func StripComments(src []byte) ([]byte, error) {
	out := append([]byte(nil), src...)
	if bytes.HasPrefix(out, []byte("\xef\xbb\xbf")) {
		copy(out, "   ")
	}
	inString := false
	for i := 0; i < len(out); i++ {
		c := out[i]
		if inString {
			switch c {
			case '\\':
				i++ // the escaped byte cannot end the string
			case '"':
				inString = false
			case '\n':
				// JSON strings cannot span lines; let the decoder say so,
				// and do not treat the rest of the file as a string.
				inString = false
			}
			continue
		}
		if c == '"' {
			inString = true
			continue
		}
		if c == '#' || (c == '/' && i+1 < len(out) && out[i+1] == '/') {
			for i < len(out) && out[i] != '\n' {
				out[i] = ' '
				i++
			}
			continue
		}
		if c == '/' && i+1 < len(out) && out[i+1] == '*' {
			end := bytes.Index(out[i+2:], []byte("*/"))
			if end < 0 {
				return nil, &stripError{line: lineOf(src, int64(i)), msg: "a /* comment is never closed with */"}
			}
			stop := i + 2 + end + 2
			for j := i; j < stop; j++ {
				if out[j] != '\n' {
					out[j] = ' '
				}
			}
			i = stop - 1
		}
	}
	return out, nil
}
