// Package jobs runs queued batch jobs (a solver run, a conversion): job
// services come from the services config ("kind": "job"), a job's command
// line is built from the service's cmd template and typed, declared
// parameters (never a command string from a client, never a shell), at
// most count jobs of a service run at once and the rest wait in a FIFO
// queue that survives a restart. Output goes to a log file per job, and
// optional progress rules turn output lines into progress events.
package jobs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"wsgateway/services"
)

// Param types.
const (
	TypeString = "string"
	TypeInt    = "int"
	TypeNumber = "number"
	TypeBool   = "bool"
	TypeEnum   = "enum"
)

// Param declares one parameter of a job service.
type Param struct {
	Type     string          `json:"type"`
	Required bool            `json:"required,omitempty"`
	Default  json.RawMessage `json:"default,omitempty"`
	Min      *float64        `json:"min,omitempty"`
	Max      *float64        `json:"max,omitempty"`
	Pattern  string          `json:"pattern,omitempty"`
	Values   []string        `json:"values,omitempty"`
	Help     string          `json:"help,omitempty"`
	// PathUnder confines a string parameter to a directory: the value (a
	// path relative to it, or an absolute one) is cleaned, its symbolic
	// links are resolved, and it must lie inside; the program gets the
	// resolved absolute path. A value starting with '-' is refused.
	PathUnder string `json:"path_under,omitempty"`
	re        *regexp.Regexp
	base      string // PathUnder, resolved
}

// ProgressRule turns output lines into progress: Regex has named groups
// "current" and/or "total" (numbers); Total is a fixed total when no line
// gives one.
type ProgressRule struct {
	Regex string  `json:"regex"`
	Total float64 `json:"total,omitempty"`
	re    *regexp.Regexp
}

// Service is a job service.
type Service struct {
	Name     string
	Count    int
	Cmd      []string // template; Cmd[0] is an absolute path
	Params   map[string]*Param
	Progress []*ProgressRule
	Group    string // when set, only members may submit
	Options  map[string]json.RawMessage
}

type rawJob struct {
	Kind    string                     `json:"kind"`
	Cmd     []string                   `json:"cmd"`
	Count   *json.Number               `json:"count"`
	Options map[string]json.RawMessage `json:"options"`
}

var placeholder = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// LoadConfig reads the job services ("kind": "job") of a services config
// file; other entries are left to services.LoadConfig.
func LoadConfig(path string) ([]*Service, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &services.ConfigError{File: path, Msg: fmt.Sprintf("cannot read: %v", err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, services.MaxConfigBytes+1))
	if err != nil {
		return nil, &services.ConfigError{File: path, Msg: fmt.Sprintf("cannot read: %v", err)}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &services.ConfigError{File: path, Msg: err.Error()}
	}
	return ParseConfig(path, filepath.Dir(abs), data)
}

// ParseConfig parses the job entries of config bytes.
func ParseConfig(file, dir string, data []byte) ([]*Service, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, &services.ConfigError{File: file, Msg: "not a JSON object of services: " + err.Error()}
	}
	names := make([]string, 0, len(top))
	for n := range top {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []*Service
	for _, name := range names {
		kind, err := services.EntryKind(top[name])
		if err != nil || kind != services.KindJob {
			continue // services.ParseConfig reports it
		}
		bad := func(key, format string, args ...any) error {
			return &services.ConfigError{File: file, Service: name, Key: key, Msg: fmt.Sprintf(format, args...)}
		}
		if err := services.ValidName(name); err != nil {
			return nil, bad("", "%v", err)
		}
		var rj rawJob
		d := json.NewDecoder(bytes.NewReader(top[name]))
		d.UseNumber()
		d.DisallowUnknownFields()
		if err := d.Decode(&rj); err != nil {
			return nil, bad("", `%v; a job has "kind": "job", "cmd" (a list), "count" and "options"`, err)
		}
		if len(rj.Cmd) == 0 {
			return nil, bad("cmd", `missing; give the program and its arguments as a list, e.g. ["lsdyna", "i=${input}"]`)
		}
		if rj.Count == nil {
			return nil, bad("count", "missing; set it to how many jobs of this service may run at once")
		}
		cnt, err := rj.Count.Int64()
		if err != nil || cnt < 1 || cnt > services.MaxCount {
			return nil, bad("count", "must be a whole number from 1 to %d", services.MaxCount)
		}
		if rj.Options == nil {
			return nil, bad("options", "missing; use {} when the job has no parameters")
		}
		svc := &Service{Name: name, Count: int(cnt), Params: map[string]*Param{}, Options: rj.Options}
		if raw, ok := rj.Options["params"]; ok {
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&svc.Params); err != nil {
				return nil, bad("options.params", "%v", err)
			}
		}
		for pn, p := range svc.Params {
			if err := p.check(pn); err != nil {
				return nil, bad("options.params."+pn, "%v", err)
			}
		}
		if raw, ok := rj.Options["progress"]; ok {
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&svc.Progress); err != nil {
				return nil, bad("options.progress", `%v; give a list of {"regex": "...(?P<current>...)..."}`, err)
			}
			for i, r := range svc.Progress {
				re, err := regexp.Compile(r.Regex)
				if err != nil {
					return nil, bad(fmt.Sprintf("options.progress[%d]", i), "%v", err)
				}
				if re.SubexpIndex("current") < 0 && re.SubexpIndex("total") < 0 {
					return nil, bad(fmt.Sprintf("options.progress[%d]", i), "the regex needs a named group (?P<current>...) or (?P<total>...)")
				}
				r.re = re
			}
		}
		if raw, ok := rj.Options["group"]; ok {
			if err := json.Unmarshal(raw, &svc.Group); err != nil {
				return nil, bad("options.group", "must be a string naming a group")
			}
		}
		for i, a := range rj.Cmd {
			for _, m := range placeholder.FindAllStringSubmatch(a, -1) {
				if _, ok := svc.Params[m[1]]; !ok {
					return nil, bad(fmt.Sprintf("cmd[%d]", i), "${%s} is not a declared parameter (options.params)", m[1])
				}
			}
		}
		if placeholder.MatchString(rj.Cmd[0]) {
			return nil, bad("cmd[0]", "the program may not come from a parameter")
		}
		prog := rj.Cmd[0]
		switch {
		case filepath.IsAbs(prog):
		case strings.Contains(prog, "/"):
			prog = filepath.Join(dir, prog)
		default:
			p, err := exec.LookPath(prog)
			if err != nil {
				return nil, bad("cmd[0]", "%s is not in PATH: %v", prog, err)
			}
			if prog, err = filepath.Abs(p); err != nil {
				return nil, bad("cmd[0]", "%v", err)
			}
		}
		st, err := os.Stat(prog)
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return nil, bad("cmd[0]", "%s is not an executable file", prog)
		}
		svc.Cmd = append([]string{prog}, rj.Cmd[1:]...)
		out = append(out, svc)
	}
	return out, nil
}

func (p *Param) check(name string) error {
	switch p.Type {
	case TypeString, TypeInt, TypeNumber, TypeBool:
	case TypeEnum:
		if len(p.Values) == 0 {
			return errors.New(`an enum needs "values"`)
		}
	case "":
		return fmt.Errorf(`missing "type" (string, int, number, bool or enum)`)
	default:
		return fmt.Errorf("type %q is not string, int, number, bool or enum", p.Type)
	}
	if p.PathUnder != "" {
		if p.Type != TypeString {
			return fmt.Errorf(`"path_under" is for parameters of type "string"`)
		}
		if !filepath.IsAbs(p.PathUnder) {
			return fmt.Errorf("path_under %q must be an absolute path", p.PathUnder)
		}
		base, err := filepath.EvalSymlinks(p.PathUnder)
		if err != nil {
			return fmt.Errorf("path_under: %w", err)
		}
		if st, err := os.Stat(base); err != nil || !st.IsDir() {
			return fmt.Errorf("path_under %s is not a directory", p.PathUnder)
		}
		p.base = base
	}
	if p.Pattern != "" {
		re, err := regexp.Compile(p.Pattern)
		if err != nil {
			return fmt.Errorf("pattern: %w", err)
		}
		p.re = re
	}
	if len(p.Default) > 0 {
		if _, err := p.value(name, p.Default); err != nil {
			return fmt.Errorf("default: %w", err)
		}
	}
	return nil
}

// MaxParamBytes bounds a string parameter.
const MaxParamBytes = 4096

// value checks a parameter's JSON value and returns it as an argument.
func (p *Param) value(name string, raw json.RawMessage) (string, error) {
	switch p.Type {
	case TypeString, TypeEnum:
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("parameter %q must be a string", name)
		}
		if len(s) > MaxParamBytes {
			return "", fmt.Errorf("parameter %q is longer than %d bytes", name, MaxParamBytes)
		}
		if strings.ContainsAny(s, "\x00\n\r") {
			return "", fmt.Errorf("parameter %q may not contain NUL or line breaks", name)
		}
		if p.Type == TypeEnum {
			for _, v := range p.Values {
				if v == s {
					return s, nil
				}
			}
			return "", fmt.Errorf("parameter %q must be one of %s", name, strings.Join(p.Values, ", "))
		}
		if p.re != nil && !p.re.MatchString(s) {
			return "", fmt.Errorf("parameter %q does not match %s", name, p.Pattern)
		}
		if p.base != "" {
			return p.confine(name, s)
		}
		return s, nil
	case TypeBool:
		var b bool
		if err := json.Unmarshal(raw, &b); err != nil {
			return "", fmt.Errorf("parameter %q must be true or false", name)
		}
		return strconv.FormatBool(b), nil
	case TypeInt, TypeNumber:
		var f float64
		if err := json.Unmarshal(raw, &f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return "", fmt.Errorf("parameter %q must be a number", name)
		}
		if p.Type == TypeInt && f != math.Trunc(f) {
			return "", fmt.Errorf("parameter %q must be a whole number", name)
		}
		if p.Min != nil && f < *p.Min {
			return "", fmt.Errorf("parameter %q must be at least %v", name, *p.Min)
		}
		if p.Max != nil && f > *p.Max {
			return "", fmt.Errorf("parameter %q must be at most %v", name, *p.Max)
		}
		if p.Type == TypeInt {
			return strconv.FormatInt(int64(f), 10), nil
		}
		return strconv.FormatFloat(f, 'g', -1, 64), nil
	}
	return "", fmt.Errorf("parameter %q has an unknown type", name)
}

// ParamError is a client's parameter that cannot be used.
type ParamError struct{ Msg string }

func (e *ParamError) Error() string { return e.Msg }

// Argv checks params against the service's declarations and returns the
// command line, and the parameters with defaults filled in.
func (s *Service) Argv(params map[string]json.RawMessage) ([]string, map[string]json.RawMessage, error) {
	vals := map[string]string{}
	full := map[string]json.RawMessage{}
	for k := range params {
		if _, ok := s.Params[k]; !ok {
			names := make([]string, 0, len(s.Params))
			for n := range s.Params {
				names = append(names, n)
			}
			sort.Strings(names)
			return nil, nil, &ParamError{fmt.Sprintf("unknown parameter %q; %s takes: %s", k, s.Name, strings.Join(names, ", "))}
		}
	}
	for name, p := range s.Params {
		raw, ok := params[name]
		if !ok || string(raw) == "null" {
			if p.Required {
				return nil, nil, &ParamError{fmt.Sprintf("parameter %q is required", name)}
			}
			if len(p.Default) == 0 {
				vals[name] = ""
				continue
			}
			raw = p.Default
		}
		v, err := p.value(name, raw)
		if err != nil {
			return nil, nil, &ParamError{err.Error()}
		}
		vals[name] = v
		full[name] = raw
	}
	argv := make([]string, len(s.Cmd))
	for i, a := range s.Cmd {
		argv[i] = placeholder.ReplaceAllStringFunc(a, func(m string) string {
			return vals[m[2:len(m)-1]]
		})
	}
	return argv, full, nil
}

// confine resolves a path_under parameter's value and checks it lies
// inside the directory: relative values start there, ".." and symbolic
// links are followed as the program would follow them, and the answer is
// the resolved absolute path (so it can never read as an option).
func (p *Param) confine(name, v string) (string, error) {
	if v == "" {
		return "", fmt.Errorf("parameter %q must name a path under %s", name, p.PathUnder)
	}
	if v[0] == '-' {
		return "", fmt.Errorf("parameter %q may not start with '-'", name)
	}
	full := v
	if !filepath.IsAbs(full) {
		full = filepath.Join(p.base, full)
	}
	real, err := resolvePath(filepath.Clean(full))
	if err != nil {
		return "", fmt.Errorf("parameter %q: %w", name, err)
	}
	if !strings.HasPrefix(real, p.base+string(filepath.Separator)) {
		return "", fmt.Errorf("parameter %q must lie inside %s", name, p.PathUnder)
	}
	return real, nil
}

// resolvePath resolves the symbolic links of a clean absolute path whose
// last components may not exist yet (an output file): the longest
// existing prefix is resolved and the rest appended.
func resolvePath(p string) (string, error) {
	rest := ""
	for {
		real, err := filepath.EvalSymlinks(p)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if _, lerr := os.Lstat(p); lerr == nil {
			// It exists but leads nowhere: a link whose target would be
			// created where it points, wherever that is.
			return "", fmt.Errorf("%s is a symbolic link to nothing", p)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return "", err
		}
		rest = filepath.Join(filepath.Base(p), rest)
		p = parent
	}
}
