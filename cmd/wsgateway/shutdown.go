package main

import (
	"context"
	"errors"
	"sync"
)

// The gateway's shutdown (gateway.Server.Shutdown) owns the one deadline;
// these are the hooks it calls for the parts wired here.

// stopAccepting stops the launcher's own listener (its sessions are
// stopped by stop).
func (lr *launcherRun) stopAccepting() {
	if lr != nil && lr.cancel != nil {
		lr.cancel()
	}
}

// stop stops every launcher application, bounded by ctx.
func (lr *launcherRun) stop(ctx context.Context) error {
	if lr == nil {
		return nil
	}
	return lr.l.Close(ctx)
}

// stopAccepting refuses new control-plane connections.
func (jr *jobsRun) stopAccepting() {
	if jr != nil && jr.rpc != nil {
		jr.rpc.StopAccepting()
	}
}

// stop closes the control-plane connections (1001) and stops the running
// jobs (marked interrupted; queued jobs stay queued) in parallel, bounded
// by ctx.
func (jr *jobsRun) stop(ctx context.Context) error {
	if jr == nil {
		return nil
	}
	var wg sync.WaitGroup
	var rerr, jerr error
	if jr.rpc != nil {
		wg.Add(1)
		go func() { defer wg.Done(); rerr = jr.rpc.Close(ctx) }()
	}
	if jr.mgr != nil {
		wg.Add(1)
		go func() { defer wg.Done(); jerr = jr.mgr.Close(ctx) }()
	}
	wg.Wait()
	return errors.Join(rerr, jerr)
}
