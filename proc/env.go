package proc

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// SecurityTokenVar is the gateway's own secret; no started process ever
// gets it, not even as one of its own variables or through Policy.Pass.
const SecurityTokenVar = "WEBSOCKETSERVER_SECURITY_TOKEN"

// defaultPath is PATH for a process when the gateway has none.
const defaultPath = "/usr/local/bin:/usr/bin:/bin"

// inherited lists the variables of the gateway's environment that every
// started process gets (when the gateway has them): the user and locale,
// and what graphical programs and licensed solvers need to run at all.
var inherited = []string{
	"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "TZ",
	"LANG", "LC_ALL", "LC_CTYPE",
	"DISPLAY", "XAUTHORITY", "LD_LIBRARY_PATH",
	"LSTC_LICENSE", "LSTC_LICENSE_SERVER",
}

// Inherited returns the names of the gateway's environment variables that
// every started process inherits.
func Inherited() []string { return append([]string(nil), inherited...) }

// Policy is the environment policy for started processes: the built-in
// allowlist (Inherited), extended by the operator. The zero Policy is the
// built-in allowlist alone.
type Policy struct {
	// Pass lists more variables of the gateway's environment that every
	// process inherits (PYTHONPATH, CUDA_VISIBLE_DEVICES, a solver's
	// license server...). A name ending in '*' is a prefix: "PV_*" passes
	// every variable whose name starts with "PV_"; a lone "*" passes
	// nothing. SecurityTokenVar never passes, whatever Pass says.
	Pass []string
}

// ParsePolicy reads an operator's list of extra variables (the value of
// --pass_env): names or NAME* prefixes separated by commas or white space.
// An empty list is the built-in allowlist alone. A name must be letters,
// digits and underscores, not starting with a digit; a lone "*" (the
// whole environment) is refused, as is the security token's name.
func ParsePolicy(list string) (Policy, error) {
	var pol Policy
	for _, f := range strings.FieldsFunc(list, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n'
	}) {
		name := strings.TrimSuffix(f, "*")
		switch {
		case name == "":
			return Policy{}, fmt.Errorf("pass_env: %q would pass the whole environment; name the variables or prefixes (PV_*)", f)
		case !validName(name):
			return Policy{}, fmt.Errorf("pass_env: %q is not a variable name or NAME* prefix", f)
		case f == SecurityTokenVar:
			return Policy{}, fmt.Errorf("pass_env: %s is the gateway's secret and never passes", SecurityTokenVar)
		}
		pol.Pass = append(pol.Pass, f)
	}
	return pol, nil
}

// validName reports whether s is a portable environment variable name.
func validName(s string) bool {
	for i, r := range s {
		switch {
		case r == '_', r >= 'A' && r <= 'Z', r >= 'a' && r <= 'z':
		case r >= '0' && r <= '9' && i > 0:
		default:
			return false
		}
	}
	return s != ""
}

// allows reports whether Pass lets the gateway's variable name through.
func (pol Policy) allows(name string) bool {
	for _, p := range pol.Pass {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			if prefix != "" && strings.HasPrefix(name, prefix) {
				return true
			}
		} else if p == name {
			return true
		}
	}
	return false
}

// Environ builds a process's environment under the built-in allowlist
// alone: Policy{}.Environ(own).
func Environ(own []string) []string { return Policy{}.Environ(own) }

// Environ builds a process's environment: the allow-listed variables of
// the gateway's environment (Inherited, then those Pass lets through, in
// name order; PATH defaults to a system path), then own, the
// process's own KEY=VALUE variables, which win over an inherited one of
// the same name. SecurityTokenVar is never included.
func (pol Policy) Environ(own []string) []string {
	return environ(os.Environ(), pol, own)
}

// environ is Environ with the gateway's environment given (KEY=VALUE; of
// a name given twice, the first counts, as for os.Getenv).
func environ(gw []string, pol Policy, own []string) []string {
	vals := map[string]string{}
	var order []string
	set := func(k, v string) {
		if k == "" || k == SecurityTokenVar {
			return
		}
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	gwVals := map[string]string{}
	var gwNames []string
	for _, kv := range gw {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		if _, dup := gwVals[k]; !dup {
			gwVals[k] = v
			gwNames = append(gwNames, k)
		}
	}
	for _, k := range inherited {
		if v, ok := gwVals[k]; ok {
			set(k, v)
		}
	}
	if gwVals["PATH"] == "" {
		set("PATH", defaultPath)
	}
	if len(pol.Pass) > 0 {
		sort.Strings(gwNames)
		for _, k := range gwNames {
			if _, done := vals[k]; !done && pol.allows(k) {
				set(k, gwVals[k])
			}
		}
	}
	for _, kv := range own {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		set(k, v)
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+vals[k])
	}
	return out
}
