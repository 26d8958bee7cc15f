package services

import (
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"wsgateway/internal/text"
)

// Types a client option may be declared with; anything else in
// "client_options" is a regular expression the whole value must match.
const (
	OptionInt    = "int"    // a whole number: optional sign, up to 18 digits
	OptionNumber = "number" // a finite decimal number
	OptionBool   = "bool"   // true or false
	OptionString = "string" // any text without control characters
)

// MaxClientOptionKey bounds the name of a client option.
const MaxClientOptionKey = 64

// gatewayOptions are options the gateway itself acts on: only the
// operator sets them, so no service may offer them to clients. "wait" and
// "security_token" are query parameters the gateway consumes.
var gatewayOptions = map[string]bool{
	"group": true, "file_ext": true, "reconnect_grace": true, "idle_timeout": true,
	"max_duration": true, "wait": true, "security_token": true,
	"record_max_mb": true, "record_keep_days": true,
}

// ClientOption is one option a client may set on a reservation: a type
// or a pattern its value must match whole.
type ClientOption struct {
	// Spec is how the config declared it: a type name or a pattern.
	Spec string
	re   *regexp.Regexp
}

// ParseClientOption reads a declaration: "int", "number", "bool",
// "string", or a regular expression (Go syntax) that must match the
// whole value (it is anchored: "[a-z]+" means "^[a-z]+$").
func ParseClientOption(spec string) (*ClientOption, error) {
	switch spec {
	case OptionInt, OptionNumber, OptionBool, OptionString:
		return &ClientOption{Spec: spec}, nil
	case "":
		return nil, fmt.Errorf(`empty; give a type ("int", "number", "bool", "string") or a pattern such as "^[0-9]{3,4}x[0-9]{3,4}$"`)
	}
	re, err := regexp.Compile(`^(?:` + spec + `)$`)
	if err != nil {
		return nil, fmt.Errorf(`neither a type ("int", "number", "bool", "string") nor a valid pattern: %w`, err)
	}
	return &ClientOption{Spec: spec, re: re}, nil
}

// Check says why v is not a value of the option, or nil.
func (o *ClientOption) Check(v string) error {
	switch o.Spec {
	case OptionInt:
		if !isInt(v) {
			return fmt.Errorf("must be a whole number")
		}
	case OptionNumber:
		if !decimal.MatchString(v) {
			return fmt.Errorf("must be a decimal number")
		}
		if f, err := strconv.ParseFloat(v, 64); err != nil || math.IsInf(f, 0) {
			return fmt.Errorf("must be a decimal number")
		}
	case OptionBool:
		if v != "true" && v != "false" {
			return fmt.Errorf("must be true or false")
		}
	case OptionString:
		if !utf8.ValidString(v) {
			return fmt.Errorf("must be UTF-8 text")
		}
		for _, r := range v {
			if unicode.IsControl(r) {
				return fmt.Errorf("may not contain control characters")
			}
		}
	default:
		if !o.re.MatchString(v) {
			return fmt.Errorf("does not match %s", o.Spec)
		}
	}
	return nil
}

// decimal is a number as people write it: no hex, no "Inf", no "NaN".
var decimal = regexp.MustCompile(`^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?$`)

// isInt: an optional sign and 1 to 18 digits (always fits an int64).
func isInt(v string) bool {
	d := v
	if d != "" && (d[0] == '-' || d[0] == '+') {
		d = d[1:]
	}
	if d == "" || len(d) > 18 {
		return false
	}
	for _, c := range d {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseClientOptions reads a service's "client_options" object.
func parseClientOptions(raw map[string]json.RawMessage) (map[string]*ClientOption, error) {
	out := make(map[string]*ClientOption, len(raw))
	for _, k := range sortedKeys(raw) {
		if k == "" || len(k) > MaxClientOptionKey {
			return nil, fmt.Errorf("option names are 1 to %d bytes, got %q", MaxClientOptionKey, k)
		}
		if gatewayOptions[k] {
			return nil, fmt.Errorf("%q is the gateway's own option; only the services config sets it", k)
		}
		var spec string
		if err := json.Unmarshal(raw[k], &spec); err != nil {
			return nil, fmt.Errorf(`%q: give a type ("int", "number", "bool", "string") or a pattern as a string`, k)
		}
		o, err := ParseClientOption(spec)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", k, err)
		}
		out[k] = o
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// OptionError is a client option a service does not accept.
type OptionError struct {
	Service string
	Key     string
	Msg     string
}

func (e *OptionError) Error() string { return e.Msg }

// AllowedClientOptions lists the options a client may set, each with its
// type or pattern, sorted by name ("geometry (^[0-9]+x[0-9]+$)").
func (s *Service) AllowedClientOptions() []string {
	out := make([]string, 0, len(s.ClientOptions))
	for _, k := range sortedKeys(s.ClientOptions) {
		out = append(out, k+" ("+s.ClientOptions[k].Spec+")")
	}
	return out
}

// CheckClientOptions is the one rule for a reservation's options: each
// must be declared in the service's "client_options" and its value must
// fit the declaration. A service without the key takes none, so an option
// the operator set is never replaced by a client's unless the operator
// offered it. The first refusal (in key order) is an *OptionError naming
// the option and what the service allows.
func (s *Service) CheckClientOptions(query map[string]string) error {
	for _, k := range sortedKeys(query) {
		o, ok := s.ClientOptions[k]
		if !ok {
			allowed := "it takes no client options"
			if len(s.ClientOptions) > 0 {
				allowed = "a client may set only: " + strings.Join(s.AllowedClientOptions(), ", ")
			}
			why := "not an option a client may set"
			if _, set := s.Options[k]; set {
				why = "set by the services config, and a client may not replace it"
			}
			return &OptionError{Service: s.Name, Key: k, Msg: fmt.Sprintf("option %q of service %q is %s; %s", text.Cut(k, 64), s.Name, why, allowed)}
		}
		if err := o.Check(query[k]); err != nil {
			return &OptionError{Service: s.Name, Key: k, Msg: fmt.Sprintf("option %q of service %q: %q %v", k, s.Name, text.Cut(query[k], 64), err)}
		}
	}
	return nil
}
