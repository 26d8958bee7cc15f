package main

import (
	"fmt"
	"syscall"
)

// The default --max_tunnels follows the process's open-file limit: each
// tunnel holds two descriptors (the client's socket and the service's),
// and the rest of the process (listeners, log and state files, service
// supervisors, the pipes the splice keeps) gets fdReserve.
const (
	fdReserve     = 320
	fdsPerTunnel  = 2
	minMaxTunnels = 16
)

// autoMaxTunnels is the --max_tunnels value that means "from the
// open-file limit" (the default).
const autoMaxTunnels = -1

// openFileLimit raises the soft open-file limit to the hard one (the Go
// runtime does so at start on Linux; this covers the rest, and leaves
// the limit alone when it is already raised, so services started by the
// gateway still get the limit it was started with) and returns the soft
// limit in force.
func openFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("reading the open-file limit: %w", err)
	}
	if rl.Cur < rl.Max {
		raised := rl
		raised.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			rl = raised
		}
	}
	return uint64(rl.Cur), nil
}

// defaultMaxTunnels is the tunnel cap an open-file limit of nofile
// leaves room for: (nofile − fdReserve) / 2, at least minMaxTunnels.
func defaultMaxTunnels(nofile uint64) int {
	const most = 1 << 24 // RLIM_INFINITY and the like
	if nofile > most {
		nofile = most
	}
	if nofile < fdReserve+fdsPerTunnel*minMaxTunnels {
		return minMaxTunnels
	}
	return int((nofile - fdReserve) / fdsPerTunnel)
}
