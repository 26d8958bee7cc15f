package integration

import (
	"path/filepath"
	"strings"
	"testing"

	"wsgateway/internal/procwatch"
)

// This file's name sorts last, and go test runs a package's tests in the
// order of its files, so TestZZNoStrayProcesses runs after every other
// integration test and proves that none of them left a process behind:
// the gateway, its supervisors, service scripts and their children,
// Xvnc, openbox, xterm, wslinksrv, node, Chromium. See internal/procwatch
// for how processes are traced to this run.

var subreaperErr = procwatch.BecomeSubreaper()

func TestZZNoStrayProcesses(t *testing.T) {
	binDir := filepath.Dir(gwBin)
	// Also anything running this run's binaries, wherever its parent is.
	procwatch.Check(t, subreaperErr, func(cmdline string) bool { return strings.Contains(cmdline, binDir) })
}
