package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplicaAddressFlag(t *testing.T) {
	base := []string{"--local_session", "desktop", "1", "8081"}
	for _, tc := range []struct {
		addr, errMatch string
	}{
		{"127.0.0.1:0", ""},
		{"gw1.internal:9200", ""},
		{"[::1]:9200", ""},
		{"0.0.0.0:9200", "wildcard"},
		{"[::]:9200", "wildcard"},
		{":9200", "wildcard"},
		{"10.0.0.1", "host:port"},
		{"10.0.0.1:", "host:port"},
	} {
		c, err := parseArgs(append([]string{"--replica_address", tc.addr}, base...), func(string) string { return "" })
		if tc.errMatch != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errMatch) {
				t.Errorf("%s: %v, want an error about %s", tc.addr, err, tc.errMatch)
			}
			continue
		}
		if err != nil || c.ReplicaAddress != tc.addr {
			t.Errorf("%s: %v %q", tc.addr, err, c.ReplicaAddress)
		}
	}
}

func TestReplicaSecret(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	long := strings.Repeat("s", minReplicaSecret)
	tests := []struct {
		name, file, env, want, errMatch string
	}{
		{"none", "", "", "", ""},
		{"env", "", long, long, ""},
		{"env too short", "", long[1:], "", "WSGW_REPLICA_SECRET"},
		{"file", write("ok", long+"\n"), "", long, ""},
		{"file wins over env", write("ok2", long+"\n"), "e" + long, long, ""},
		{"file too short after trimming", write("short", long[1:]+" \n"), "", "", "--replica_secret_file"},
		{"file missing", filepath.Join(dir, "nope"), long, "", "--replica_secret_file"},
	}
	for _, tc := range tests {
		got, err := replicaSecret(&Config{ReplicaSecretFile: tc.file, ReplicaSecret: tc.env})
		if tc.errMatch != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errMatch) {
				t.Errorf("%s: %v, want an error about %s", tc.name, err, tc.errMatch)
			}
			continue
		}
		if err != nil || string(got) != tc.want || (tc.want == "" && got != nil) {
			t.Errorf("%s: %q %v", tc.name, got, err)
		}
	}
	// The environment variable is read by parseArgs.
	c, err := parseArgs([]string{"--local_session", "desktop", "1", "8081"}, func(k string) string {
		if k == "WSGW_REPLICA_SECRET" {
			return long
		}
		return ""
	})
	if err != nil || c.ReplicaSecret != long {
		t.Fatalf("env: %v %q", err, c.ReplicaSecret)
	}
}
