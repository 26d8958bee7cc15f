// Package slurm holds the shipped files of the Slurm service kind: the
// built-in node script (the batch script of a cluster desktop) and the
// example services config with a "Cluster Desktop".
package slurm

import _ "embed"

// NodeDesktop is the built-in node script: an Xvnc desktop with a window
// manager and a terminal, behind the session's VNC password.
//
//go:embed node-desktop.sh
var NodeDesktop []byte
