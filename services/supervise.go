package services

import "wsgateway/proc"

// Supervisor runs service scripts under the gateway's supervisor process;
// see proc.Supervisor.
type Supervisor = proc.Supervisor

// NewSupervisor prepares supervision with exe; see proc.NewSupervisor.
func NewSupervisor(exe string) (*Supervisor, error) { return proc.NewSupervisor(exe) }
