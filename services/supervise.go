package services

import "wsgateway/proc"

// Supervisor runs service scripts under the gateway's supervisor process;
// see proc.Supervisor.
type Supervisor = proc.Supervisor

// NewSupervisor prepares supervision with exe; see proc.NewSupervisor.
func NewSupervisor(exe string) (*Supervisor, error) { return proc.NewSupervisor(exe) }

// GroupAlive reports whether a member of process group pgid still runs;
// see proc.GroupAlive.
func GroupAlive(pgid int) bool { return proc.GroupAlive(pgid) }
