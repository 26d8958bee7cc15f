package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
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
	secret, err := replicaSecret(cfg)
	if err != nil {
		return err
	}
	addr := ""
	if cfg.ReplicaAddress != "" {
		if secret == nil {
			return &usageError{"--replica_address: give the replicas' secret with --replica_secret_file or WSGW_REPLICA_SECRET"}
		}
		ln, err := net.Listen("tcp", cfg.ReplicaAddress)
		if err != nil {
			return &usageError{fmt.Sprintf("--replica_address: %v", err)}
		}
		jr.replicaLn = ln
		addr = ln.Addr().String()
		if host, _, _ := net.SplitHostPort(cfg.ReplicaAddress); host != "" {
			// Keep the name given (a host name the others resolve).
			_, port, _ := net.SplitHostPort(addr)
			addr = net.JoinHostPort(host, port)
		}
		g.StopAccepting = append(g.StopAccepting, func() { _ = ln.Close() })
	}
	g.ReplicaSecret = secret
	co := replica.New(st, replica.Config{ID: id, Lease: cfg.ReplicaLease, Address: addr}, log.With().Str("component", "replica").Logger())
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
	log.Info().Str("replica", id).Str("state_db", redisstore.Redact(cfg.StateDB)).Dur("lease", cfg.ReplicaLease).
		Str("replica_address", addr).Bool("replica_secret", secret != nil).Msg("sharing state with the other replicas")
	return nil
}

// minReplicaSecret is the shortest replicas' secret accepted.
const minReplicaSecret = 16

// replicaSecret reads the replicas' shared secret: --replica_secret_file,
// else $WSGW_REPLICA_SECRET; nil when neither is given.
func replicaSecret(cfg *Config) ([]byte, error) {
	secret, what := cfg.ReplicaSecret, "WSGW_REPLICA_SECRET"
	if cfg.ReplicaSecretFile != "" {
		b, err := os.ReadFile(cfg.ReplicaSecretFile)
		if err != nil {
			return nil, &usageError{fmt.Sprintf("--replica_secret_file: %v", err)}
		}
		secret, what = strings.TrimSpace(string(b)), "--replica_secret_file"
	}
	if secret == "" {
		return nil, nil
	}
	if len(secret) < minReplicaSecret {
		return nil, &usageError{fmt.Sprintf("%s: the replicas' secret must be at least %d bytes", what, minReplicaSecret)}
	}
	return []byte(secret), nil
}

// serveReplicas serves the replica listener, if any, with srv's
// replica handler until the gateway's shutdown closes it.
func (jr *jobsRun) serveReplicas(srv *gateway.Server) {
	if jr == nil || jr.replicaLn == nil {
		return
	}
	hs := &http.Server{Handler: srv.ReplicaHandler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = hs.Serve(jr.replicaLn) }()
	jr.log.Info().Str("address", jr.replicaLn.Addr().String()).Msg("listening for the other replicas")
}
