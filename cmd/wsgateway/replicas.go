package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/gateway"
	"wsgateway/internal/httperr"
	"wsgateway/jobs"
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
	jr.replica = &replicaJobs{id: id, co: co, log: log.With().Str("component", "jobs").Logger()}
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
	if jr == nil {
		return
	}
	if jr.replica != nil {
		jr.replica.srv.Store(srv)
	}
	if jr.replicaLn == nil {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/", srv.ReplicaHandler())
	if jr.replica != nil && jr.mgr != nil {
		mux.Handle("/replica/v1/call", srv.ReplicaCallHandler(jobCalls(jr.mgr)))
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = hs.Serve(jr.replicaLn) }()
	jr.log.Info().Str("address", jr.replicaLn.Addr().String()).Msg("listening for the other replicas")
}

// replicaJobDir is where a replica keeps the logs and working
// directories of the jobs it runs: "jobs" next to --session_dir's
// default or given directory. Job ids are unique across the replicas,
// so replicas on one host may share it.
func replicaJobDir(cfg *Config) string {
	root := cfg.SessionDir
	if root == "" {
		root = filepath.Join(os.TempDir(), fmt.Sprintf("wsgateway-%d", os.Getuid()), "sessions")
	}
	if abs, err := filepath.Abs(root); err == nil {
		root = abs
	}
	return filepath.Join(filepath.Dir(root), "jobs")
}

// replicaJobs is the shared job queue's side of a replica: who it is,
// which replicas live, and the calls that reach the replica running a
// job (its log, its stop, its removal) over the signed replica link.
type replicaJobs struct {
	id  string
	co  *replica.Coordinator
	log zerolog.Logger
	srv atomic.Pointer[gateway.Server] // set once the gateway exists
}

var _ jobs.Remote = (*replicaJobs)(nil)

// shareJobs makes c the configuration of a replica's job Manager.
func (r *replicaJobs) shareJobs(c *jobs.Config) {
	c.Replica = r.id
	c.LiveReplicas = r.co.Replicas
	c.Remote = r
}

// call makes a call of kind on replica and maps its failures to the job
// Manager's errors.
func (r *replicaJobs) call(ctx context.Context, replica, kind, id string, args url.Values, out any) error {
	srv := r.srv.Load()
	if srv == nil {
		return fmt.Errorf("%w: this replica is still starting", jobs.ErrReplicaGone)
	}
	err := srv.CallReplica(ctx, replica, kind, id, args, out)
	var he *httperr.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &he) && he.Status == http.StatusNotFound:
		return fmt.Errorf("%w: %s (replica %s)", jobs.ErrNotFound, he.Msg, replica)
	case errors.As(err, &he) && he.Status == http.StatusConflict:
		return fmt.Errorf("%w: %s (replica %s)", jobs.ErrNotFinished, he.Msg, replica)
	case errors.As(err, &he):
		return fmt.Errorf("replica %s: %w", replica, err)
	}
	return fmt.Errorf("%w: replica %s: %w", jobs.ErrReplicaGone, replica, err)
}

func (r *replicaJobs) ReadLog(ctx context.Context, replica, id string, offset, limit int64) (jobs.LogChunk, error) {
	var c jobs.LogChunk
	err := r.call(ctx, replica, "jobs.log", id, url.Values{"offset": {strconv.FormatInt(offset, 10)}, "limit": {strconv.FormatInt(limit, 10)}}, &c)
	return c, err
}

func (r *replicaJobs) Stop(ctx context.Context, replica, id, who string) (jobs.Job, error) {
	var j jobs.Job
	err := r.call(ctx, replica, "jobs.stop", id, url.Values{"who": {who}}, &j)
	return j, err
}

func (r *replicaJobs) Remove(ctx context.Context, replica, id string) error {
	return r.call(ctx, replica, "jobs.remove", id, nil, nil)
}

// jobCalls answers the other replicas' calls for the jobs m runs.
func jobCalls(m *jobs.Manager) map[string]gateway.ReplicaCall {
	return map[string]gateway.ReplicaCall{
		"jobs.log": func(ctx context.Context, id string, a url.Values) (any, error) {
			off, err1 := strconv.ParseInt(a.Get("offset"), 10, 64)
			lim, err2 := strconv.ParseInt(a.Get("limit"), 10, 64)
			if err1 != nil || err2 != nil || off < 0 {
				return nil, httperr.Errorf(http.StatusBadRequest, "offset and limit: whole numbers, offset 0 or more")
			}
			c, err := m.ReadLog(ctx, id, off, lim)
			return c, jobHTTPErr(err)
		},
		"jobs.stop": func(ctx context.Context, id string, a url.Values) (any, error) {
			j, err := m.Stop(ctx, id, a.Get("who"))
			return j, jobHTTPErr(err)
		},
		"jobs.remove": func(ctx context.Context, id string, _ url.Values) (any, error) {
			return map[string]any{"id": id, "removed": true}, jobHTTPErr(m.Remove(ctx, id))
		},
	}
}

// jobHTTPErr gives a job Manager's error its status for the caller.
func jobHTTPErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, jobs.ErrNotFound):
		return &httperr.Error{Status: http.StatusNotFound, Msg: err.Error(), Err: err}
	case errors.Is(err, jobs.ErrNotFinished):
		return &httperr.Error{Status: http.StatusConflict, Msg: err.Error(), Err: err}
	}
	return err
}
