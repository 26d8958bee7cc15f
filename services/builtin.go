package services

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"wsgateway/scripts"
)

type builtin struct {
	script  string // file in scripts.FS
	options map[string]json.RawMessage
	// clientOptions are what a reservation may set (see ParseClientOption).
	clientOptions map[string]string
	about         string
}

var builtins = map[string]builtin{
	"desktop": {
		script: "desktop.sh",
		options: map[string]json.RawMessage{
			"geometry":        json.RawMessage(`"1280x800"`),
			"reconnect_grace": json.RawMessage(`30`),
		},
		// The pattern desktop.sh itself checks.
		clientOptions: map[string]string{"geometry": `^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$`},
		about:         "a TigerVNC Xvnc desktop with a window manager and a terminal",
	},
}

// BuiltInNames lists the built-in services, sorted.
func BuiltInNames() []string {
	out := make([]string, 0, len(builtins))
	for n := range builtins {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// BuiltIn returns the built-in service name with count slots, writing its
// script into dir (created if needed).
func BuiltIn(name string, count int, dir string) (*Service, error) {
	b, ok := builtins[name]
	if !ok {
		var list []string
		for _, n := range BuiltInNames() {
			list = append(list, n+" ("+builtins[n].about+")")
		}
		return nil, fmt.Errorf("unknown built-in service %q; built-ins are: %s", name, strings.Join(list, ", "))
	}
	if count < 1 || count > MaxCount {
		return nil, fmt.Errorf("built-in service %q: count must be 1..%d, got %d", name, MaxCount, count)
	}
	data, err := scripts.FS.ReadFile(b.script)
	if err != nil {
		return nil, fmt.Errorf("built-in service %q: %w", name, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("built-in service %q: creating %s: %w", name, dir, err)
	}
	// The script is run later from this directory: nobody else may be
	// able to swap it (a directory squatted in a shared /tmp, say).
	if err := privateDir(dir); err != nil {
		return nil, fmt.Errorf("built-in service %q: refusing to put its script in %s: %w; choose a --session_dir whose parents only you (or root) can write", name, dir, err)
	}
	path := filepath.Join(dir, b.script)
	tmp, err := os.CreateTemp(dir, ".tmp-"+b.script)
	if err != nil {
		return nil, fmt.Errorf("built-in service %q: %w", name, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("built-in service %q: writing script: %w", name, err)
	}
	if err := tmp.Chmod(0o700); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("built-in service %q: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("built-in service %q: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return nil, fmt.Errorf("built-in service %q: %w", name, err)
	}
	opts := make(map[string]json.RawMessage, len(b.options))
	for k, v := range b.options {
		opts[k] = v
	}
	copts := make(map[string]*ClientOption, len(b.clientOptions))
	for k, spec := range b.clientOptions {
		o, err := ParseClientOption(spec)
		if err != nil {
			return nil, fmt.Errorf("built-in service %q: client option %q: %w", name, k, err)
		}
		copts[k] = o
	}
	return &Service{Name: name, Script: path, Count: count, Options: opts, ClientOptions: copts, BuiltIn: true}, nil
}
