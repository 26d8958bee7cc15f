package gateway

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"wsgateway/reservation"
	"wsgateway/session"
)

// What the gateway does differently as one replica among several
// (Config.Shared set): the status lists the whole deployment.

// shareSessions sets up what the session Manager needs as a replica:
// where started services listen, adoption of a dead replica's sessions,
// and the replicas' secret.
func (s *Server) shareSessions(c *session.Config) {
	if c.Shared == nil {
		return
	}
	c.Describe = s.describeTarget
	c.Adopt = s.adoptSession
	if len(s.cfg.ReplicaSecret) > 0 {
		s.replicaAuth = newReplicaAuth(s.cfg.ReplicaSecret)
	}
}

// sharedRecords returns every replica's records (nil when alone or when
// the shared state cannot be read: the status then shows this replica's
// own sessions).
func (s *Server) sharedRecords() []session.Record {
	if !s.sessions.IsShared() {
		return nil
	}
	ctx, cancel := context.WithTimeout(s.baseCtx, 2*time.Second)
	defer cancel()
	recs, err := s.sessions.Records(ctx)
	if err != nil {
		s.log.Warn().Err(err).Msg("status: the other replicas' sessions are not listed")
		return nil
	}
	return recs
}

// withSharedFree counts the free slots of every service from the shared
// records.
func withSharedFree(svcs []session.ServiceSlots, recs []session.Record) []session.ServiceSlots {
	if recs == nil {
		return svcs
	}
	used := map[string]int{}
	for _, r := range recs {
		used[r.Service]++
	}
	for i := range svcs {
		svcs[i].Free = max(0, svcs[i].Count-used[svcs[i].Name])
	}
	return svcs
}

// addSharedRecords adds the reservations and sessions this replica does
// not hold, each with the replica that holds it.
func (s *Server) addSharedRecords(st *Status, recs []session.Record, local []session.Info, sees func(string) bool, now time.Time) {
	if len(recs) == 0 {
		return
	}
	mine := make(map[string]bool, len(local))
	for _, in := range local {
		mine[in.Token] = true
	}
	for _, r := range recs {
		if mine[r.Token] {
			continue
		}
		rs := ResStatus{TokenPrefix: reservation.TokenPrefix(r.Token), Service: r.Service, Index: r.Index,
			State: r.State, Age: now.Sub(r.Created).Seconds(), Replica: r.Replica}
		if sees(r.Owner) {
			rs.Token, rs.Owner = r.Token, r.Owner
		}
		if r.State == string(session.Reserved) || r.State == string(session.Detached) {
			rs.ExpiresIn = r.Expires.Sub(now).Seconds()
		}
		st.Reservations = append(st.Reservations, rs)
		if r.State == string(session.Reserved) {
			continue
		}
		x := SessionStatus{TokenPrefix: rs.TokenPrefix, Service: r.Service, Index: r.Index, State: r.State, Replica: r.Replica}
		if !r.LastClaim.IsZero() {
			x.Age = now.Sub(r.LastClaim).Seconds()
		}
		if sees(r.Owner) {
			x.Token, x.Owner = r.Token, r.Owner
		}
		st.Sessions = append(st.Sessions, x)
	}
}

// sharedCollector reports the whole deployment at scrape time, from the
// shared state: slots used, reservations by state, sessions by replica,
// live replicas, and whether the shared state answered.
type sharedCollector struct{ s *Server }

var (
	sharedUpDesc = prometheus.NewDesc("wsgateway_shared_state_up",
		"1 when the replicas' shared state (Redis) answered this scrape, else 0 (the other shared figures are then missing).", nil, nil)
	sharedSlotsDesc = prometheus.NewDesc("wsgateway_shared_slots_used",
		"Slots held across every replica, by service.", []string{"service"}, nil)
	sharedResDesc = prometheus.NewDesc("wsgateway_shared_reservations",
		"Reservations across every replica, by service and state (reserved, claimed, starting, running, detached, stopping).", []string{"service", "state"}, nil)
	sharedSessDesc = prometheus.NewDesc("wsgateway_shared_sessions",
		"Sessions (used reservations) across the deployment, by service and the replica holding each.", []string{"service", "replica"}, nil)
	sharedReplicasDesc = prometheus.NewDesc("wsgateway_shared_replicas",
		"Replicas whose lease is live.", nil, nil)
)

func (c *sharedCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{sharedUpDesc, sharedSlotsDesc, sharedResDesc, sharedSessDesc, sharedReplicasDesc} {
		ch <- d
	}
}

// replicaLister is the shared state's list of live replicas.
type replicaLister interface {
	Replicas(ctx context.Context) (map[string]string, error)
}

func (c *sharedCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(c.s.baseCtx, 2*time.Second)
	defer cancel()
	recs, err := c.s.sessions.Records(ctx)
	var live map[string]string
	if rl, ok := c.s.cfg.Shared.(replicaLister); ok && err == nil {
		live, err = rl.Replicas(ctx)
	}
	if err != nil {
		ch <- prometheus.MustNewConstMetric(sharedUpDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(sharedUpDesc, prometheus.GaugeValue, 1)
	if live != nil {
		ch <- prometheus.MustNewConstMetric(sharedReplicasDesc, prometheus.GaugeValue, float64(len(live)))
	}
	slots := map[string]int{}
	for name := range c.s.svcs {
		slots[name] = 0
	}
	res := map[[2]string]int{}
	sess := map[[2]string]int{}
	for _, r := range recs {
		slots[r.Service]++
		res[[2]string{r.Service, r.State}]++
		if r.State != string(session.Reserved) {
			sess[[2]string{r.Service, r.Replica}]++
		}
	}
	for name, n := range slots {
		ch <- prometheus.MustNewConstMetric(sharedSlotsDesc, prometheus.GaugeValue, float64(n), name)
	}
	for k, n := range res {
		ch <- prometheus.MustNewConstMetric(sharedResDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	for k, n := range sess {
		ch <- prometheus.MustNewConstMetric(sharedSessDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
}
