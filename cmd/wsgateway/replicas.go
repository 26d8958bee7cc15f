package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/gateway"
	"wsgateway/replica"
	"wsgateway/store"
	"wsgateway/store/redisstore"
)

// share makes this gateway a replica among others on st's Redis: its
// sessions go through the replica coordination, and its event hub
// follows the shared event stream.
func (jr *jobsRun) share(ctx context.Context, cfg *Config, g *gateway.Config, st *redisstore.Store, log zerolog.Logger) error {
	id := cfg.ReplicaID
	if id == "" {
		host, _ := os.Hostname()
		var err error
		if id, err = replica.NewID(host); err != nil {
			return err
		}
	}
	co := replica.New(st, replica.Config{ID: id, Lease: cfg.ReplicaLease}, log.With().Str("component", "replica").Logger())
	// The lease exists before any session is claimed under it.
	if err := co.Renew(ctx); err != nil {
		return fmt.Errorf("--state_db %s: %w", redisstore.Redact(cfg.StateDB), err)
	}
	g.Shared = co
	g.ReplicaID = id
	fctx, cancel := context.WithCancel(context.Background())
	jr.stopFollow = cancel
	jr.hub.Follow(fctx, func(ctx context.Context, since int64) ([]store.Event, error) {
		return st.ReadEvents(ctx, since, 1000, 5*time.Second)
	})
	log.Info().Str("replica", id).Str("state_db", redisstore.Redact(cfg.StateDB)).Dur("lease", cfg.ReplicaLease).Msg("sharing state with the other replicas")
	return nil
}
