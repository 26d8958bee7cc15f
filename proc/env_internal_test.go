package proc

import (
	"slices"
	"strings"
	"testing"
)

// TestPolicyEnviron: what passes, in which order, from a given gateway
// environment; want is the whole environment, stated by hand.
func TestPolicyEnviron(t *testing.T) {
	gw := []string{
		"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8",
		SecurityTokenVar + "=the-secret",
		"PYTHONPATH=/opt/pv/lib", "CUDA_VISIBLE_DEVICES=0,1",
		"PV_PLUGIN_PATH=/opt/pv/plugins", "PV_B=b", "PV=bare", "PVX=x", "XPV_A=a",
		"ANSYSLMD_LICENSE_FILE=1055@lic", "ANSYS=no",
		"WEBSOCKETSERVER_OTHER=o",
		"DUP=first", "DUP=second",
		"AWS_SECRET_ACCESS_KEY=no",
		"NOEQUALS", "=novalue",
	}
	tests := []struct {
		name string
		gw   []string
		pass []string
		own  []string
		want []string
	}{
		{"built-in allowlist alone", gw, nil, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8"}},
		{"names pass, others do not", gw, []string{"PYTHONPATH", "CUDA_VISIBLE_DEVICES"}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8", "CUDA_VISIBLE_DEVICES=0,1", "PYTHONPATH=/opt/pv/lib"}},
		{"a name is not a prefix", gw, []string{"PV", "ANSYS"}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8", "ANSYS=no", "PV=bare"}},
		{"prefixes match at the start only", gw, []string{"PV_*", "ANSYSLMD_*"}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8", "ANSYSLMD_LICENSE_FILE=1055@lic", "PV_B=b", "PV_PLUGIN_PATH=/opt/pv/plugins"}},
		{"a prefix matches the bare prefix too", gw, []string{"PV*"}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8", "PV=bare", "PVX=x", "PV_B=b", "PV_PLUGIN_PATH=/opt/pv/plugins"}},
		{"never the security token by name", gw, []string{SecurityTokenVar}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8"}},
		{"never the security token by prefix", gw, []string{"WEBSOCKETSERVER_*"}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8", "WEBSOCKETSERVER_OTHER=o"}},
		{"a lone star passes nothing", gw, []string{"*"}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8"}},
		{"an allow-listed name is not given twice", gw, []string{"HOME", "LANG*"}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8"}},
		{"of a name given twice the first counts", gw, []string{"DUP"}, nil,
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8", "DUP=first"}},
		{"own variables win over passed ones", gw, []string{"PYTHONPATH"}, []string{"PYTHONPATH=/mine", "WSGW_X=1"},
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8", "PYTHONPATH=/mine", "WSGW_X=1"}},
		{"the token never as an own variable", gw, nil, []string{SecurityTokenVar + "=smuggled"},
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8"}},
		{"malformed entries are no names", gw, []string{"NOEQUALS", "*"}, []string{"BAD", "=x"},
			[]string{"PATH=/usr/bin", "HOME=/home/u", "LANG=C.UTF-8"}},
		{"no PATH: the default, even when passed", []string{"PATH=", "PYTHONPATH=p"}, []string{"PATH", "PYTHONPATH"}, nil,
			[]string{"PATH=" + defaultPath, "PYTHONPATH=p"}},
		{"no PATH at all: the default", []string{"HOME=/h"}, nil, nil,
			[]string{"HOME=/h", "PATH=" + defaultPath}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := environ(tt.gw, Policy{Pass: tt.pass}, tt.own)
			if !slices.Equal(got, tt.want) {
				t.Errorf("environ =\n  %q\nwant\n  %q", got, tt.want)
			}
		})
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		list    string
		want    []string
		wantErr string // part of the error; "" : none
	}{
		{"", nil, ""},
		{" , \t\n", nil, ""},
		{"PYTHONPATH", []string{"PYTHONPATH"}, ""},
		{"PYTHONPATH,PV_*  CUDA_VISIBLE_DEVICES,\tANSYSLMD_LICENSE_FILE\n", []string{"PYTHONPATH", "PV_*", "CUDA_VISIBLE_DEVICES", "ANSYSLMD_LICENSE_FILE"}, ""},
		{"_X,a1,Z9_*", []string{"_X", "a1", "Z9_*"}, ""},
		{"*", nil, "whole environment"},
		{"PATH,*", nil, "whole environment"},
		{"1ABC", nil, "not a variable name"},
		{"A1B", []string{"A1B"}, ""},
		{"A-B", nil, "not a variable name"},
		{"A*B", nil, "not a variable name"},
		{"PV_**", nil, "not a variable name"},
		{"PV=1", nil, "not a variable name"},
		{"É", nil, "not a variable name"},
		{SecurityTokenVar, nil, "never passes"},
		{"PYTHONPATH," + SecurityTokenVar, nil, "never passes"},
	}
	for _, tt := range tests {
		t.Run(tt.list, func(t *testing.T) {
			pol, err := ParsePolicy(tt.list)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("ParsePolicy(%q): %v", tt.list, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("ParsePolicy(%q) = %v, %v; want an error about %q", tt.list, pol, err, tt.wantErr)
			case tt.wantErr != "":
				if pol.Pass != nil {
					t.Errorf("ParsePolicy(%q) refused but returned %q", tt.list, pol.Pass)
				}
			case !slices.Equal(pol.Pass, tt.want):
				t.Errorf("ParsePolicy(%q) = %q, want %q", tt.list, pol.Pass, tt.want)
			}
		})
	}
}
