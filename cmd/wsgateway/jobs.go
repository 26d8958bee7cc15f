package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/auth"
	"wsgateway/events"
	"wsgateway/gateway"
	"wsgateway/jobs"
	"wsgateway/reservation"
	"wsgateway/rpc"
	"wsgateway/services"
	"wsgateway/store"
	"wsgateway/store/redisstore"
)

// defaultStateDB is --state_db when the services config has jobs and the
// option is not given.
const defaultStateDB = "wsgateway-state.db"

// jobsRun is the job runner, the durable state and the JSON-RPC control
// plane mounted at /v1/rpc on the HTTP port.
type jobsRun struct {
	st    store.Store
	hub   *events.Hub
	mgr   *jobs.Manager
	rpc   *rpc.Server
	lock  *os.File
	gw    *rpc.LateGateway // bound to the gateway once it exists
	log   zerolog.Logger
	grace time.Duration

	stopFollow context.CancelFunc // ends the shared event stream's follower
	replicaLn  net.Listener       // --replica_address (replicas.go)
	replica    *replicaJobs       // the shared job queue's link to the other replicas (replicas.go)
}

// setupJobs loads the job services of --remote_session_config, opens the
// state database (--state_db; in memory when neither it nor a job service
// is given), restores the job queue and mounts /v1/rpc.
func setupJobs(ctx context.Context, cfg *Config, g *gateway.Config, sup *services.Supervisor, log zerolog.Logger) (*jobsRun, error) {
	base := log
	log = log.With().Str("component", "jobs").Logger()
	var svcs []*jobs.Service
	if cfg.RemoteSessionConfig != "" {
		var err error
		if svcs, err = jobs.LoadConfig(cfg.RemoteSessionConfig); err != nil {
			return nil, &usageError{fmt.Sprintf("--remote_session_config: %v", err)}
		}
	}
	for _, s := range svcs {
		g.JobServices = append(g.JobServices, s.Name)
	}
	path := cfg.StateDB
	if path == "" && len(svcs) > 0 {
		path = defaultStateDB
	}
	jr := &jobsRun{log: log, grace: cfg.StopGrace, gw: &rpc.LateGateway{}}
	var jobDir string
	var st store.Store
	var shared *redisstore.Store
	if redisstore.IsURL(path) {
		rs, err := redisstore.Open(ctx, path, log)
		if err != nil {
			return nil, err
		}
		st, shared = rs, rs
		path = redisstore.Redact(path)
		// The job queue is in Redis; the logs and working directories of
		// the jobs this replica runs are on its own disk.
		jobDir = replicaJobDir(cfg)
	} else if path == "" {
		// Nothing asks for durable state (and no job can run): keep the
		// event history in memory.
		path = store.Memory
	} else {
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, &usageError{fmt.Sprintf("--state_db: %v", err)}
		}
		path = abs
		jobDir = path + ".jobs"
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, &usageError{fmt.Sprintf("--state_db: %v", err)}
		}
		lf, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, &usageError{fmt.Sprintf("--state_db: %v", err)}
		}
		if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			lf.Close()
			return nil, &usageError{fmt.Sprintf("--state_db %s is in use by another wsgateway (%v); give each gateway its own", path, err)}
		}
		jr.lock = lf
	}
	if st == nil {
		storeLog := log
		if path == store.Memory {
			// No jobs and nothing durable: nothing worth saying about them.
			storeLog = log.Level(zerolog.WarnLevel)
		}
		sq, err := store.Open(ctx, path, storeLog)
		if err != nil {
			jr.close()
			return nil, err
		}
		st = sq
	}
	jr.st = st
	var err error
	if jr.hub, err = events.NewHub(ctx, st, 10000, log); err != nil {
		jr.close()
		return nil, err
	}
	if shared != nil {
		if err := jr.share(ctx, cfg, g, shared, base); err != nil {
			jr.close()
			return nil, err
		}
	}
	jcfg := jobs.Config{Services: svcs, Store: st, Events: jr.hub, Dir: jobDir, Supervisor: sup, StopGrace: cfg.StopGrace, EnvPolicy: cfg.PassEnv,
		KeepFinished: cfg.KeepJobs, KeepFor: cfg.KeepJobsFor}
	if jr.replica != nil {
		jr.replica.shareJobs(&jcfg)
		if len(svcs) > 0 && jr.replicaLn == nil {
			log.Warn().Msg("job services without --replica_address: the other replicas cannot read the logs of, stop or remove the jobs this one runs")
		}
	}
	jr.mgr, err = jobs.New(ctx, jcfg, log)
	if err != nil {
		jr.close()
		return nil, err
	}
	jr.rpc = rpc.New(rpc.Config{
		Access:   auth.Policy{SecurityToken: g.SecurityToken, Users: g.Users, TrustedProxies: g.TrustedProxies, ProxyUIDs: g.ProxyUIDs, AllowedOrigins: g.AllowedOrigins},
		Jobs:     jr.mgr,
		Hub:      jr.hub,
		Services: g.Services,
		Gateway:  jr.gw,
		Limits:   jr.gw, // the REST API's limits, in the gateway
		Version:  version,
	}, base.With().Str("component", "rpc").Logger())
	// Reservations are durable in the same database (shared with the
	// other replicas' in Redis).
	if shared == nil {
		jr.restoreReservations(ctx, g)
		g.Durable = path != store.Memory
	}
	// The gateway's events go to the same hub as the jobs'.
	g.Publish = func(topic, owner string, data map[string]any) { jr.hub.Publish(topic, owner, data) }
	g.Extensions = append(g.Extensions, gateway.Extension{Name: "rpc", Match: jr.rpc.Match, Handler: jr.rpc})
	// The gateway's one shutdown stops the control plane and the running
	// jobs too (marked interrupted; queued jobs stay queued), in parallel
	// with its own work.
	g.StopAccepting = append(g.StopAccepting, jr.rpc.StopAccepting)
	g.Stoppers = append(g.Stoppers, jr.rpc.Close, jr.mgr.Close)
	jr.mgr.Start()
	if path != store.Memory {
		log.Info().Str("state_db", path).Int("job_services", len(svcs)).Int("queued", len(jr.mgr.Queue())).Msg("jobs ready")
	}
	return jr, nil
}

// restoreReservations has the gateway record its reservations in the
// state database and hold again those recorded before a restart.
func (jr *jobsRun) restoreReservations(ctx context.Context, g *gateway.Config) {
	log := jr.log
	g.Persist = storePersister{st: jr.st, log: log}
	if rows, err := jr.st.ListReservations(ctx); err != nil {
		log.Error().Err(err).Msg("reservations from before the restart not read")
	} else {
		for _, r := range rows {
			g.Restored = append(g.Restored, reservation.Reservation{Token: r.Token, Service: r.Service, Index: r.Index,
				Owner: r.Owner, Options: r.Options, State: r.State, Created: r.Created, Expires: r.Expires})
		}
	}
}

// close stops the RPC connections and the running jobs (marked
// interrupted; queued jobs stay queued), then closes the database.
func (jr *jobsRun) close() {
	if jr == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), jr.grace+15*time.Second)
	defer cancel()
	var errs []error
	if jr.rpc != nil {
		errs = append(errs, jr.rpc.Close(ctx))
	}
	if jr.mgr != nil {
		errs = append(errs, jr.mgr.Close(ctx))
	}
	if jr.hub != nil {
		jr.hub.Close()
	}
	if jr.stopFollow != nil {
		jr.stopFollow()
	}
	if jr.replicaLn != nil {
		_ = jr.replicaLn.Close()
	}
	if jr.st != nil {
		errs = append(errs, jr.st.Close())
	}
	if jr.lock != nil {
		errs = append(errs, jr.lock.Close())
	}
	if err := errors.Join(errs...); err != nil {
		jr.log.Warn().Err(err).Msg("jobs shutdown")
	}
}

// storePersister records the gateway's reservations in the state
// database; a failure is logged (the reservation still works until the
// next restart).
type storePersister struct {
	st  store.Store
	log zerolog.Logger
}

func (p storePersister) SaveReservation(r reservation.Reservation) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.st.SaveReservation(ctx, store.Reservation{Token: r.Token, Service: r.Service, Index: r.Index, Owner: r.Owner,
		Options: r.Options, State: string(r.State), Created: r.Created, Expires: r.Expires}); err != nil {
		p.log.Error().Err(err).Str("token", reservation.TokenPrefix(r.Token)).Msg("reservation not recorded")
	}
}

func (p storePersister) DeleteReservation(token string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.st.DeleteReservation(ctx, token); err != nil {
		p.log.Error().Err(err).Str("token", reservation.TokenPrefix(token)).Msg("reservation not forgotten")
	}
}
