package services

import "wsgateway/proc"

// Supervisor runs service scripts under the gateway's supervisor process;
// see proc.Supervisor.
type Supervisor = proc.Supervisor
