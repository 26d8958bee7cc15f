package main

import (
	"syscall"
	"testing"
)

func TestDefaultMaxTunnels(t *testing.T) {
	cases := []struct {
		nofile uint64
		want   int
	}{
		{0, minMaxTunnels},
		{1024, (1024 - fdReserve) / 2},
		{fdReserve + 2*minMaxTunnels - 1, minMaxTunnels},
		{fdReserve + 2*minMaxTunnels, minMaxTunnels},
		{fdReserve + 2*minMaxTunnels + 2, minMaxTunnels + 1},
		{20000, 9840},
		{20001, 9840},
		{1 << 20, (1<<20 - fdReserve) / 2},
		{^uint64(0), (1<<24 - fdReserve) / 2},
	}
	for _, c := range cases {
		if got := defaultMaxTunnels(c.nofile); got != c.want {
			t.Errorf("defaultMaxTunnels(%d) = %d, want %d", c.nofile, got, c.want)
		}
		// Two descriptors per tunnel and the reserve fit in the limit.
		if c.nofile >= fdReserve+2*minMaxTunnels && c.nofile <= 1<<24 {
			if used := uint64(fdsPerTunnel*defaultMaxTunnels(c.nofile) + fdReserve); used > c.nofile {
				t.Errorf("limit %d: %d tunnels need %d descriptors", c.nofile, defaultMaxTunnels(c.nofile), used)
			}
		}
	}
}

// TestOpenFileLimitRaised: after openFileLimit the soft limit is the hard
// one, and that is what it returns.
func TestOpenFileLimitRaised(t *testing.T) {
	got, err := openFileLimit()
	if err != nil {
		t.Fatal(err)
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur != rl.Max || got != uint64(rl.Cur) {
		t.Fatalf("soft %d, hard %d, returned %d", rl.Cur, rl.Max, got)
	}
}

// TestMaxTunnelsFlagDefault: without the flag the cap is "from the
// limit"; an explicit value, 0 included, stays.
func TestMaxTunnelsFlagDefault(t *testing.T) {
	env := func(string) string { return "" }
	cfg, err := parseArgs([]string{"--client_hostname", "127.0.0.1", "--client_port", "5900", "8080"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxTunnels != autoMaxTunnels {
		t.Fatalf("default %d, want autoMaxTunnels", cfg.MaxTunnels)
	}
	for _, v := range []string{"0", "7"} {
		cfg, err := parseArgs([]string{"--max_tunnels", v, "--client_hostname", "127.0.0.1", "--client_port", "5900", "8080"}, env)
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]int{"0": 0, "7": 7}[v]; cfg.MaxTunnels != want {
			t.Fatalf("--max_tunnels %s gave %d", v, cfg.MaxTunnels)
		}
	}
}
