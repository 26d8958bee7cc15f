package gateway

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/gorilla/websocket"
	"github.com/rs/zerolog"

	"wsgateway/reservation"
	"wsgateway/services"
	"wsgateway/session"
)

// launched is a started service as the websocket path uses it: a local
// script's instance or a cluster job.
type launched interface {
	session.Process
	// Dial connects to the service (through the RFB adapter when the
	// gateway holds its VNC password).
	Dial(ctx context.Context) (net.Conn, error)
	// CrashReason says, waiting at most wait, why the service ended ("" if
	// it runs or ended cleanly).
	CrashReason(wait time.Duration) string
	// ExitErr says how it ended, once Exited is closed.
	ExitErr() error
}

var (
	_ launched = (*services.Instance)(nil)
	_ launched = (*services.SlurmJob)(nil)
)

// minResumeGrace is how long a cluster session found running after a
// restart waits for its token to reconnect when its service's
// reconnect_grace is shorter.
const minResumeGrace = 60 * time.Second

// startSlurm submits a claimed session's cluster job and waits, the
// websocket open, until it runs and has reported its node and port; while
// it is pending each change of Slurm's reason or of its position is a
// session.state event. A websocket that closes meanwhile cancels the
// job, as does a release.
func (s *Server) startSlurm(ss *session.Session, svc *services.Service, ws *websocket.Conn, log zerolog.Logger) (*services.SlurmJob, error) {
	ctx, err := ss.BeginStart()
	if err != nil {
		return nil, err
	}
	opts, err := svc.MergedOptions(ss.Options())
	if err != nil {
		ss.StartFailed(err.Error())
		return nil, err
	}
	spec := s.launchSpec(ss.Token(), ss.Index(), svc, opts)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopWatch := watchClient(ws, cancel)
	job, err := services.SubmitSlurm(wctx, spec, s.clusterTag, log)
	if err == nil {
		ss.Note(map[string]any{"job_id": job.ID(), "job_state": "SUBMITTED"})
		err = job.WaitReady(wctx, func(st services.JobStatus) {
			d := map[string]any{"job_id": job.ID(), "job_state": st.State, "reason": st.Reason}
			if st.Position > 0 {
				d["position"] = st.Position
			}
			if st.Node != "" {
				d["node"] = st.Node
			}
			log.Info().Str("job", job.ID()).Str("state", st.State).Str("reason", st.Reason).Int("position", st.Position).Msg("cluster job waiting")
			ss.Note(d)
		})
	}
	clientErr := stopWatch()
	if err == nil && clientErr != nil {
		_ = job.Stop(context.WithoutCancel(ctx))
		err = fmt.Errorf("%w: the websocket closed while the job started: %w", services.ErrStartFailed, clientErr)
	}
	if err != nil {
		released := ctx.Err() != nil
		reason := err.Error()
		if clientErr != nil {
			reason = "websocket closed while the cluster job was waiting"
		}
		ss.StartFailed(reason)
		if released {
			return nil, session.ErrReleased
		}
		if clientErr != nil {
			return nil, errClientGone
		}
		return nil, err
	}
	ss.Note(map[string]any{"job_id": job.ID(), "job_state": "RUNNING", "endpoint": job.Endpoint().Address})
	return job, ss.Started(job)
}

// errClientGone: the websocket closed before the service was ready.
var errClientGone = errors.New("the websocket closed before the service was ready")

// watchClient reads the websocket until stop is called, so that a client
// that closes it (or sends data before the service answered) is noticed:
// then gone is called. stop returns why the client is gone, or nil when
// it is still there; after stop the goroutine has returned, no byte of
// the client's has been consumed and the connection has no deadline.
func watchClient(ws *websocket.Conn, gone func()) (stop func() error) {
	done := make(chan error, 1)
	go func() {
		_, _, err := ws.NextReader()
		if err == nil {
			err = errors.New("the client sent data before the service was ready")
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			gone()
		}
		done <- err
	}()
	return func() error {
		// This goroutine and the watcher are the connection's only users
		// before the tunnel exists: the deadline is safe to set here.
		_ = ws.NetConn().SetReadDeadline(time.Unix(1, 0))
		err := <-done
		_ = ws.NetConn().SetReadDeadline(time.Time{})
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	}
}

// launchSpec is the Spec of a session's service.
func (s *Server) launchSpec(tok string, index int, svc *services.Service, opts []byte) services.Spec {
	return services.Spec{
		Service:      svc,
		Index:        index,
		Token:        tok,
		Options:      opts,
		SessionDir:   s.sessionDir(svc, index, tok),
		StartTimeout: s.cfg.StartTimeout,
		StopGrace:    s.cfg.StopGrace,
		Supervisor:   s.cfg.Supervisor,
		EnvPolicy:    s.cfg.EnvPolicy,
	}
}

// resume is the session manager's Resume: a cluster session recorded
// before a restart whose job still runs is handed back; any other is
// cleaned up (its job cancelled if Slurm still has it).
func (s *Server) resume(r reservation.Reservation) (session.Process, time.Duration) {
	svc := s.svcs[r.Service]
	if svc == nil || svc.Kind != services.KindSlurm {
		return nil, 0
	}
	log := s.log.With().Str("service", r.Service).Int("index", r.Index).Str("token", reservation.TokenPrefix(r.Token)).Logger()
	opts, err := svc.MergedOptions(r.Options)
	if err != nil {
		opts = []byte("{}")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	job, err := services.ResumeSlurm(ctx, s.launchSpec(r.Token, r.Index, svc, opts), log)
	if err != nil {
		log.Info().Err(err).Msg("cluster session not resumed")
		return nil, 0
	}
	s.resumedJobs[job.ID()] = true
	return job, max(reconnectGrace(svc), minResumeGrace)
}

// cancelForgotten cancels the jobs Slurm still has under this gateway's
// tag that no session knows: the pending jobs of sessions that were
// starting when the previous gateway died, and any other it lost.
func (s *Server) cancelForgotten() {
	has := false
	for _, svc := range s.svcs {
		has = has || svc.Kind == services.KindSlurm
	}
	if !has {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ids, err := services.CancelForgotten(ctx, s.clusterTag, s.resumedJobs, s.cfg.EnvPolicy)
	if err != nil {
		s.log.Warn().Err(err).Msg("cannot check Slurm's queue for jobs of earlier sessions")
	}
	if len(ids) > 0 {
		s.log.Info().Strs("jobs", ids).Msg("cancelled cluster jobs no session knows")
	}
}
