package proc

import (
	"os"
	"strings"
)

// SecurityTokenVar is the gateway's own secret; no started process ever
// gets it, not even as one of its own variables.
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

// Environ builds a process's environment: the allow-listed variables of
// the gateway's environment (Inherited; PATH defaults to a system path),
// then own, the process's own KEY=VALUE variables, which win over an
// inherited one of the same name. SecurityTokenVar is never included.
func Environ(own []string) []string {
	return environ(os.LookupEnv, own)
}

func environ(lookup func(string) (string, bool), own []string) []string {
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
	for _, k := range inherited {
		if v, ok := lookup(k); ok {
			set(k, v)
		}
	}
	if v, _ := lookup("PATH"); v == "" {
		set("PATH", defaultPath)
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
