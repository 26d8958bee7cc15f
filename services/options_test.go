package services_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"wsgateway/services"
)

func TestClientOptionCheck(t *testing.T) {
	tests := []struct {
		spec, value string
		ok          bool
	}{
		{"int", "0", true},
		{"int", "-12", true},
		{"int", "+12", true},
		{"int", "123456789012345678", true},   // 18 digits
		{"int", "1234567890123456789", false}, // 19
		{"int", "", false},
		{"int", "-", false},
		{"int", "+-1", false},
		{"int", "1.5", false},
		{"int", "0x10", false},
		{"int", " 1", false},
		{"int", "1e3", false},
		{"number", "1.5", true},
		{"number", "-.5", true},
		{"number", "2.", true},
		{"number", "6.02e23", true},
		{"number", "1e999", false}, // overflows
		{"number", "Inf", false},
		{"number", "NaN", false},
		{"number", "0x1p3", false},
		{"number", "", false},
		{"number", ".", false},
		{"bool", "true", true},
		{"bool", "false", true},
		{"bool", "True", false},
		{"bool", "1", false},
		{"bool", "", false},
		{"string", "", true},
		{"string", "ann ✓ \"quoted\" $(x)", true},
		{"string", "a\nb", false},
		{"string", "a\x00b", false},
		{"string", "a\tb", false},
		{"string", "a\x7fb", false},
		{"string", "\xff", false},
		// Patterns match the whole value: anchored even when written
		// without ^ and $.
		{"^[0-9]{3,4}x[0-9]{3,4}$", "1280x800", true},
		{"^[0-9]{3,4}x[0-9]{3,4}$", "1280x800;rm", false},
		{"[0-9]{3,4}x[0-9]{3,4}", "1280x800", true},
		{"[0-9]{3,4}x[0-9]{3,4}", "x1280x800", false},
		{"[0-9]{3,4}x[0-9]{3,4}", "1280x8000;", false},
		{"a|b", "a", true},
		{"a|b", "ab", false}, // the alternation is grouped before anchoring
		{"(?s).*", "a\nb\x00", true},
	}
	for _, tt := range tests {
		o, err := services.ParseClientOption(tt.spec)
		if err != nil {
			t.Fatalf("ParseClientOption(%q): %v", tt.spec, err)
		}
		if err := o.Check(tt.value); (err == nil) != tt.ok {
			t.Errorf("%s: Check(%q) = %v, want ok=%v", tt.spec, tt.value, err, tt.ok)
		}
	}
	for _, bad := range []string{"", "[a-", "(?P<x"} {
		if _, err := services.ParseClientOption(bad); err == nil {
			t.Errorf("ParseClientOption(%q) accepted", bad)
		}
	}
}

func TestConfigClientOptions(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "s.sh"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	parse := func(entry string) ([]*services.Service, error) {
		return services.ParseConfig("svc.json", dir, []byte(`{"Viz": {"script": "s.sh", "count": 1, "options": {"datadir": "/srv", "geometry": "1024x768"}`+entry+`}}`))
	}
	t.Run("declared", func(t *testing.T) {
		svcs, err := parse(`, "client_options": {"geometry": "^[0-9]{3,4}x[0-9]{3,4}$", "depth": "int"}`)
		if err != nil {
			t.Fatal(err)
		}
		s := svcs[0]
		if got := strings.Join(s.AllowedClientOptions(), ", "); got != "depth (int), geometry (^[0-9]{3,4}x[0-9]{3,4}$)" {
			t.Errorf("allowed: %s", got)
		}
		tests := []struct {
			name  string
			query map[string]string
			want  []string // in the error; nil: accepted
		}{
			{"none", nil, nil},
			{"declared", map[string]string{"geometry": "1600x900", "depth": "24"}, nil},
			{"operator's option", map[string]string{"datadir": "/etc"}, []string{`"datadir"`, "set by the services config", "depth (int), geometry"}},
			{"unknown", map[string]string{"user": "ann"}, []string{`"user"`, "not an option a client may set", "depth (int)"}},
			{"gateway's own", map[string]string{"group": "admin"}, []string{`"group"`}},
			{"bad value", map[string]string{"depth": "24; rm"}, []string{`"depth"`, "whole number"}},
			{"bad pattern value", map[string]string{"geometry": "1600x900\n"}, []string{`"geometry"`, "does not match"}},
			{"one bad among good", map[string]string{"geometry": "1600x900", "datadir": "/etc"}, []string{`"datadir"`}},
		}
		for _, tt := range tests {
			err := s.CheckClientOptions(tt.query)
			if tt.want == nil {
				if err != nil {
					t.Errorf("%s: %v", tt.name, err)
				}
				continue
			}
			var oe *services.OptionError
			if !errors.As(err, &oe) {
				t.Errorf("%s: %v, want an *OptionError", tt.name, err)
				continue
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: %q does not say %q", tt.name, err, w)
				}
			}
		}
	})
	t.Run("without the key a service takes none", func(t *testing.T) {
		svcs, err := parse(``)
		if err != nil {
			t.Fatal(err)
		}
		err = svcs[0].CheckClientOptions(map[string]string{"geometry": "800x600"})
		if err == nil || !strings.Contains(err.Error(), "takes no client options") {
			t.Errorf("geometry on a service without client_options: %v", err)
		}
		if err := svcs[0].CheckClientOptions(map[string]string{}); err != nil {
			t.Errorf("no options: %v", err)
		}
	})
	for name, entry := range map[string]string{
		"gateway option":  `, "client_options": {"reconnect_grace": "int"}`,
		"group":           `, "client_options": {"group": "string"}`,
		"wait":            `, "client_options": {"wait": "number"}`,
		"bad pattern":     `, "client_options": {"x": "[a-"}`,
		"not a string":    `, "client_options": {"x": 5}`,
		"empty spec":      `, "client_options": {"x": ""}`,
		"empty name":      `, "client_options": {"": "int"}`,
		"long name":       `, "client_options": {"` + strings.Repeat("k", 65) + `": "int"}`,
		"not an object":   `, "client_options": ["geometry"]`,
		"misspelled name": `, "client_option": {"x": "int"}`,
	} {
		_, err := parse(entry)
		var ce *services.ConfigError
		if err == nil || !errors.As(err, &ce) || !strings.Contains(err.Error(), "client_option") {
			t.Errorf("%s: %v, want a config error about client_options", name, err)
		}
	}
	if _, err := parse(`, "client_options": {"` + strings.Repeat("k", 64) + `": "int"}`); err != nil {
		t.Errorf("a 64-byte option name: %v", err)
	}
}

func TestBuiltInDesktopClientOptions(t *testing.T) {
	s, err := services.BuiltIn("desktop", 1, filepath.Join(t.TempDir(), "builtin"))
	if err != nil {
		t.Fatal(err)
	}
	for q, ok := range map[string]bool{"1600x900": true, "99x99": true, "0x900": false, "1600x900 -rfbport 5900": false} {
		if err := s.CheckClientOptions(map[string]string{"geometry": q}); (err == nil) != ok {
			t.Errorf("geometry=%q: %v, want ok=%v", q, err, ok)
		}
	}
	if err := s.CheckClientOptions(map[string]string{"reconnect_grace": "0"}); err == nil {
		t.Error("a client set the desktop's reconnect_grace")
	}
}

// TestShippedConfigDeclaresItsClientOptions: the example config (make
// run) takes the geometry the README's curl example passes, and nothing
// else.
func TestShippedConfigDeclaresItsClientOptions(t *testing.T) {
	svcs, err := services.LoadConfig(filepath.Join("..", "scripts", "services.json"))
	if err != nil || len(svcs) != 1 {
		t.Fatalf("%v %v", svcs, err)
	}
	if err := svcs[0].CheckClientOptions(map[string]string{"geometry": "1280x720"}); err != nil {
		t.Errorf("geometry=1280x720: %v", err)
	}
	if err := svcs[0].CheckClientOptions(map[string]string{"reconnect_grace": "0"}); err == nil {
		t.Error("a client may set reconnect_grace")
	}
}
