// Package services describes the programs the gateway can put behind a
// token: it parses the Nexus-format services config, knows the built-in
// services compiled into the binary, and launches and stops service scripts
// following the gateway's script protocol.
package services

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"wsgateway/internal/text"
)

// Service is one kind of launchable program with a number of slots.
type Service struct {
	Name string
	// Script is the absolute path of the executable run with "start" and
	// "stop".
	Script string
	Count  int
	// Options are passed to the script as JSON (merged with the
	// reservation's client options). Values are kept as raw JSON.
	Options map[string]json.RawMessage
	// ClientOptions are the options a client may set on a reservation
	// (the config's "client_options"): nil means none. Only these may
	// replace one of Options.
	ClientOptions map[string]*ClientOption
	// BuiltIn is true for services compiled into the binary.
	BuiltIn bool
	// Kind is KindService (a script) or KindSlurm (a Slurm batch job).
	Kind string
	// Slurm is the "slurm" object of a KindSlurm service (nil otherwise).
	Slurm *SlurmOptions
}

// ConfigError is a problem in a services config: the file, the service and
// what is wrong.
type ConfigError struct {
	File    string
	Service string
	Key     string
	Msg     string
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Service != "" {
		fmt.Fprintf(&b, ": service %q", e.Service)
	}
	if e.Key != "" {
		fmt.Fprintf(&b, ": key %q", e.Key)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// MaxConfigBytes bounds the size of a services config file.
const MaxConfigBytes = 4 << 20

// MaxCount bounds a service's count.
const MaxCount = 10000

// LoadConfig reads a Nexus-format services config. A relative script path
// is relative to the config file's directory.
func LoadConfig(path string) ([]*Service, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &ConfigError{File: path, Msg: fmt.Sprintf("cannot read: %v", err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return nil, &ConfigError{File: path, Msg: fmt.Sprintf("cannot read: %v", err)}
	}
	if len(data) > MaxConfigBytes {
		return nil, &ConfigError{File: path, Msg: fmt.Sprintf("file is larger than %d bytes", MaxConfigBytes)}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &ConfigError{File: path, Msg: err.Error()}
	}
	return ParseConfig(path, filepath.Dir(abs), data)
}

type rawService struct {
	Kind          *string                    `json:"kind"`
	Script        *string                    `json:"script"`
	Count         *json.Number               `json:"count"`
	Options       map[string]json.RawMessage `json:"options"`
	ClientOptions map[string]json.RawMessage `json:"client_options"`
	Slurm         json.RawMessage            `json:"slurm"`
}

// ParseConfig parses config bytes; file names the source in errors and dir
// is where relative script paths start.
func ParseConfig(file, dir string, data []byte) ([]*Service, error) {
	var top map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&top); err != nil {
		return nil, &ConfigError{File: file, Msg: "not a JSON object of services: " + jsonErr(data, err)}
	}
	if dec.More() {
		return nil, &ConfigError{File: file, Msg: "unexpected data after the JSON object"}
	}
	if len(top) == 0 {
		return nil, &ConfigError{File: file, Msg: `no services defined; expected {"Name": {"script": ..., "count": ..., "options": {...}}}`}
	}
	names := make([]string, 0, len(top))
	for n := range top {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]*Service, 0, len(names))
	for _, name := range names {
		if err := ValidName(name); err != nil {
			return nil, &ConfigError{File: file, Service: name, Msg: err.Error()}
		}
		kind, err := EntryKind(top[name])
		if err != nil {
			return nil, &ConfigError{File: file, Service: name, Key: "kind", Msg: err.Error()}
		}
		if kind == KindJob {
			// Job services belong to the job runner (jobs.LoadConfig).
			continue
		}
		var rs rawService
		d := json.NewDecoder(bytes.NewReader(top[name]))
		d.UseNumber()
		d.DisallowUnknownFields()
		if err := d.Decode(&rs); err != nil {
			msg := err.Error()
			if strings.Contains(msg, "unknown field") {
				msg += `; a service has "script", "count", "options" and optionally "client_options" (put anything else inside "options"), a cluster service has "kind": "slurm", "count", "options" and optionally "slurm" and "client_options", and a job has "kind": "job", "cmd", "count" and "options"`
			}
			return nil, &ConfigError{File: file, Service: name, Msg: msg}
		}
		if kind == KindSlurm {
			svc, err := parseSlurmEntry(file, dir, name, &rs)
			if err != nil {
				return nil, err
			}
			out = append(out, svc)
			continue
		}
		if rs.Slurm != nil {
			return nil, &ConfigError{File: file, Service: name, Key: "slurm", Msg: `only a "kind": "slurm" service has a "slurm" object`}
		}
		if rs.Script == nil || *rs.Script == "" {
			return nil, &ConfigError{File: file, Service: name, Key: "script", Msg: "missing; set it to the path of an executable (relative to the config file)"}
		}
		if rs.Count == nil {
			return nil, &ConfigError{File: file, Service: name, Key: "count", Msg: "missing; set it to the number of simultaneous instances, e.g. 2"}
		}
		cnt, err := rs.Count.Int64()
		if err != nil || cnt < 1 || cnt > MaxCount {
			return nil, &ConfigError{File: file, Service: name, Key: "count", Msg: fmt.Sprintf("must be a whole number from 1 to %d, got %s", MaxCount, rs.Count.String())}
		}
		if rs.Options == nil {
			return nil, &ConfigError{File: file, Service: name, Key: "options", Msg: `missing; use {} when the service has none`}
		}
		script := *rs.Script
		if !filepath.IsAbs(script) {
			script = filepath.Join(dir, script)
		}
		st, err := os.Stat(script)
		if err != nil {
			return nil, &ConfigError{File: file, Service: name, Key: "script", Msg: fmt.Sprintf("cannot use %s: %v", script, err)}
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return nil, &ConfigError{File: file, Service: name, Key: "script", Msg: fmt.Sprintf("%s is not an executable file (chmod +x it)", script)}
		}
		if err := checkOptions(rs.Options); err != nil {
			return nil, &ConfigError{File: file, Service: name, Key: "options", Msg: err.Error()}
		}
		copts, err := parseClientOptions(rs.ClientOptions)
		if err != nil {
			return nil, &ConfigError{File: file, Service: name, Key: "client_options", Msg: err.Error()}
		}
		out = append(out, &Service{Name: name, Script: script, Count: int(cnt), Options: rs.Options, ClientOptions: copts, Kind: KindService})
	}
	return out, nil
}

// Kinds of entries in a services config.
const (
	KindService = "service" // the default: a script behind a token
	KindJob     = "job"     // a queued batch job (package jobs)
	// KindSlurm (slurm.go): sessions run as Slurm batch jobs.
)

// EntryKind returns the "kind" of a services config entry: KindService
// when it has none.
func EntryKind(raw json.RawMessage) (string, error) {
	var probe struct {
		Kind *json.RawMessage `json:"kind"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil || probe.Kind == nil {
		return KindService, nil // the full decode reports a bad entry
	}
	var k string
	if err := json.Unmarshal(*probe.Kind, &k); err != nil {
		return "", fmt.Errorf(`must be "service", "slurm" or "job"`)
	}
	switch k {
	case KindService, KindJob, KindSlurm:
		return k, nil
	}
	return "", fmt.Errorf(`%q is not a kind of service; use "service" (the default), "slurm" or "job"`, k)
}

func checkOptions(o map[string]json.RawMessage) error {
	if g, ok := o["group"]; ok {
		var s string
		if err := json.Unmarshal(g, &s); err != nil {
			return fmt.Errorf(`"group" must be a string naming a group`)
		}
	}
	if fe, ok := o["file_ext"]; ok {
		var l []string
		if err := json.Unmarshal(fe, &l); err != nil {
			return fmt.Errorf(`"file_ext" must be a list of strings such as [".vtk"]`)
		}
	}
	// The numbers the gateway acts on: a value it cannot read would
	// silently mean "none" (no grace, no idle limit, no maximum).
	for _, n := range numericOptions {
		raw, ok := o[n.key]
		if !ok {
			continue
		}
		f, err := optionNumber(raw)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			return fmt.Errorf(`%q must be a number of %s, 0 or more (0: %s), such as %s; got %s`, n.key, n.unit, n.zero, n.example, text.Cut(string(raw), 40))
		}
	}
	return nil
}

// numericOptions are the service options the gateway reads as numbers.
var numericOptions = []struct{ key, unit, zero, example string }{
	{"reconnect_grace", "seconds", "the service stops when its websocket closes", "30"},
	{"idle_timeout", "seconds", "no idle limit", "600"},
	{"max_duration", "seconds", "no limit", "28800"},
	{"record_max_mb", "MiB", "the default", "100"},
	{"record_keep_days", "days", "the default", "7"},
}

// ValidName checks a service name: non-empty, at most 128 bytes, no '/',
// no control characters.
func ValidName(name string) error {
	if name == "" {
		return errors.New("empty service name")
	}
	if len(name) > 128 {
		return errors.New("service name longer than 128 bytes")
	}
	for _, r := range name {
		if r < 0x20 || r == 0x7f || r == '/' {
			return fmt.Errorf("service name contains %q; use letters, digits, spaces and punctuation other than '/'", r)
		}
	}
	return nil
}

func jsonErr(data []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := 1, 1
		// Offset counts the offending byte itself; stop just before it.
		for i := 0; i < int(se.Offset)-1 && i < len(data); i++ {
			if data[i] == '\n' {
				line++
				col = 1
			} else {
				col++
			}
		}
		return fmt.Sprintf("line %d column %d: %v", line, col, err)
	}
	return err.Error()
}

// StringOption returns a string option of the service, or "".
func (s *Service) StringOption(key string) string {
	raw, ok := s.Options[key]
	if !ok {
		return ""
	}
	var v string
	if json.Unmarshal(raw, &v) == nil {
		return v
	}
	return ""
}

// FileExt returns the service's file_ext option.
func (s *Service) FileExt() []string {
	raw, ok := s.Options["file_ext"]
	if !ok {
		return nil
	}
	var v []string
	_ = json.Unmarshal(raw, &v)
	return v
}

// MergedOptions returns the service options merged with the reservation's
// client options as a JSON object. The client options pass
// CheckClientOptions first (the same rule as at reservation time, so a
// reservation recorded under an older config cannot smuggle one in): a
// client's value replaces a service option only where the service
// declares it in "client_options".
func (s *Service) MergedOptions(query map[string]string) ([]byte, error) {
	if err := s.CheckClientOptions(query); err != nil {
		return nil, fmt.Errorf("reservation options: %w", err)
	}
	m := make(map[string]json.RawMessage, len(s.Options)+len(query))
	for k, v := range s.Options {
		m[k] = v
	}
	for k, v := range query {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encoding option %q: %w", k, err)
		}
		m[k] = b
	}
	out, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding options: %w", err)
	}
	return out, nil
}

// parseSlurmEntry checks a "kind": "slurm" entry.
func parseSlurmEntry(file, dir, name string, rs *rawService) (*Service, error) {
	if rs.Script != nil {
		return nil, &ConfigError{File: file, Service: name, Key: "script", Msg: `a "kind": "slurm" service runs "slurm": {"node_script": ...} on the node (default: the built-in desktop); remove "script"`}
	}
	if rs.Count == nil {
		return nil, &ConfigError{File: file, Service: name, Key: "count", Msg: "missing; set it to the number of simultaneous cluster sessions, e.g. 4"}
	}
	cnt, err := rs.Count.Int64()
	if err != nil || cnt < 1 || cnt > MaxCount {
		return nil, &ConfigError{File: file, Service: name, Key: "count", Msg: fmt.Sprintf("must be a whole number from 1 to %d, got %s", MaxCount, rs.Count.String())}
	}
	if rs.Options == nil {
		return nil, &ConfigError{File: file, Service: name, Key: "options", Msg: `missing; use {} when the service has none`}
	}
	if err := checkOptions(rs.Options); err != nil {
		return nil, &ConfigError{File: file, Service: name, Key: "options", Msg: err.Error()}
	}
	copts, err := parseClientOptions(rs.ClientOptions)
	if err != nil {
		return nil, &ConfigError{File: file, Service: name, Key: "client_options", Msg: err.Error()}
	}
	o := &SlurmOptions{}
	if rs.Slurm != nil {
		d := json.NewDecoder(bytes.NewReader(rs.Slurm))
		d.DisallowUnknownFields()
		if err := d.Decode(o); err != nil {
			return nil, &ConfigError{File: file, Service: name, Key: "slurm", Msg: err.Error() +
				`; it takes "partition", "account", "time", "constraint", "sbatch_args", "node_script", "poll_seconds" and "start_timeout"`}
		}
	}
	if key, err := checkSlurm(o, dir); err != nil {
		return nil, &ConfigError{File: file, Service: name, Key: "slurm." + key, Msg: err.Error()}
	}
	return &Service{Name: name, Count: int(cnt), Options: rs.Options, ClientOptions: copts, Kind: KindSlurm, Slurm: o}, nil
}

// Recording defaults (service options record_max_mb and record_keep_days).
const (
	DefaultRecordMaxMB    = 256
	DefaultRecordKeepDays = 30
)

// RecordPolicy is what a service says about recording its sessions.
type RecordPolicy struct {
	// On: record this session (the service's "record" option, or, when
	// the operator left it unset and client_options allow it, the
	// reservation's record=true).
	On bool
	// MaxBytes bounds each recording (record_max_mb); it is cut there.
	MaxBytes int64
	// Keep is how long recordings are kept (record_keep_days).
	Keep time.Duration
}

// Record reads the service's recording options for a reservation with
// the client options opts.
func (s *Service) Record(opts map[string]string) RecordPolicy {
	p := RecordPolicy{MaxBytes: DefaultRecordMaxMB << 20, Keep: DefaultRecordKeepDays * 24 * time.Hour}
	if raw, ok := s.Options["record"]; ok {
		v := strings.Trim(strings.TrimSpace(string(raw)), `"`)
		p.On = v == "true"
	} else if _, allowed := s.ClientOptions["record"]; allowed {
		p.On = opts["record"] == "true"
	}
	if f, ok := s.numberOption("record_max_mb"); ok && f > 0 {
		p.MaxBytes = int64(f * (1 << 20))
	}
	if f, ok := s.numberOption("record_keep_days"); ok && f > 0 {
		p.Keep = time.Duration(f * float64(24*time.Hour))
	}
	return p
}

// numberOption reads a numeric option (a number or a numeric string).
func (s *Service) numberOption(key string) (float64, bool) {
	raw, ok := s.Options[key]
	if !ok {
		return 0, false
	}
	f, err := optionNumber(raw)
	return f, err == nil
}

// optionNumber is the one reading of a numeric option's value, a JSON
// number or a numeric string, for the check at load and for its use.
func optionNumber(raw json.RawMessage) (float64, error) {
	return strconv.ParseFloat(strings.Trim(strings.TrimSpace(string(raw)), `"`), 64)
}

// Seconds reads an option in seconds (reconnect_grace, idle_timeout,
// max_duration); absent or 0 is 0.
func (s *Service) Seconds(key string) time.Duration {
	f, ok := s.numberOption(key)
	if !ok || f <= 0 {
		return 0
	}
	return time.Duration(f * float64(time.Second))
}
