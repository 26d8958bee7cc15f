package gateway

import (
	"context"
	"time"

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
