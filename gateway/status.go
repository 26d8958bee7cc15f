package gateway

import (
	"html/template"
	"net/http"
	"sort"
	"time"

	"wsgateway/auth"
	"wsgateway/reservation"
	"wsgateway/services"
	"wsgateway/session"
)

type Status struct {
	Version     string  `json:"version"`
	Admin       bool    `json:"admin"`
	User        string  `json:"user,omitempty"`
	Login       bool    `json:"login"` // users are configured: the dashboard offers a login
	Uptime      float64 `json:"uptime_seconds"`
	BasicTarget string  `json:"basic_target,omitempty"`
	Tunnels     int     `json:"tunnels"`
	// Replica is this gateway's name among its replicas (with Redis).
	Replica      string          `json:"replica,omitempty"`
	Services     []ServiceStatus `json:"services"`
	Reservations []ResStatus     `json:"reservations"`
	Sessions     []SessionStatus `json:"sessions"`
}

// ServiceStatus describes one service's slots.
type ServiceStatus struct {
	Name    string   `json:"name"`
	Count   int      `json:"count"`
	Free    int      `json:"free"`
	Waiting int      `json:"waiting,omitempty"`
	FileExt []string `json:"file_ext,omitempty"`
	Group   string   `json:"group,omitempty"`
	BuiltIn bool     `json:"builtin"`
}

// ResStatus describes one reservation. Token is shown to admins only.
type ResStatus struct {
	Owner       string  `json:"owner,omitempty"`
	Token       string  `json:"token,omitempty"`
	TokenPrefix string  `json:"token_prefix"`
	Service     string  `json:"service"`
	Index       int     `json:"index"`
	State       string  `json:"state"`
	Age         float64 `json:"age_seconds"`
	ExpiresIn   float64 `json:"expires_in,omitempty"`
	Replica     string  `json:"replica,omitempty"`
	// Cluster is a cluster session's job: its id, Slurm's state and
	// reason, its position among the pending jobs, its node.
	Cluster map[string]any `json:"cluster,omitempty"`
}

// SessionStatus describes one launched service instance.
type SessionStatus struct {
	Owner       string  `json:"owner,omitempty"`
	Token       string  `json:"token,omitempty"`
	TokenPrefix string  `json:"token_prefix"`
	Service     string  `json:"service"`
	Index       int     `json:"index"`
	State       string  `json:"state"`
	PID         int     `json:"pid,omitempty"`
	Replica     string  `json:"replica,omitempty"`
	Age         float64 `json:"age_seconds"`
	BytesIn     int64   `json:"bytes_in"`
	BytesOut    int64   `json:"bytes_out"`
	Remote      string  `json:"remote,omitempty"`
	Log         string  `json:"log,omitempty"`
	// Cluster is as in ResStatus.
	Cluster map[string]any `json:"cluster,omitempty"`
}

// status builds /v1/status for c. Administrators see every token; a
// user sees the tokens of their own reservations.
func (s *Server) status(c auth.Caller) Status {
	admin := c.Admin()
	user := c.Name()
	sees := c.MayManage
	now := time.Now()
	svcs, infos := s.sessions.Snapshot()
	recs := s.sharedRecords()
	svcs = withSharedFree(svcs, recs)
	st := Status{Replica: s.cfg.ReplicaID, Version: s.cfg.Version, Admin: admin, User: user, Login: s.cfg.Users != nil, Uptime: now.Sub(s.started).Seconds(), BasicTarget: s.cfg.ClientAddr,
		Services: []ServiceStatus{}, Reservations: []ResStatus{}, Sessions: []SessionStatus{}}
	waiting := s.sessions.Waiting()
	for _, v := range svcs {
		svc := s.svcs[v.Name]
		st.Services = append(st.Services, ServiceStatus{Name: v.Name, Count: v.Count, Free: v.Free, Waiting: waiting[v.Name],
			FileExt: svc.FileExt(), Group: svc.StringOption("group"), BuiltIn: svc.BuiltIn})
	}
	for _, r := range infos {
		rs := ResStatus{TokenPrefix: reservation.TokenPrefix(r.Token), Service: r.Service, Index: r.Index,
			State: r.State, Age: now.Sub(r.Created).Seconds(), Cluster: r.Detail, Replica: s.cfg.ReplicaID}
		if sees(r.Owner) {
			rs.Token = r.Token
			rs.Owner = r.Owner
		}
		if r.State == string(session.Reserved) || r.State == string(session.Detached) {
			rs.ExpiresIn = r.Expires.Sub(now).Seconds()
		}
		st.Reservations = append(st.Reservations, rs)
		if r.Since.IsZero() {
			continue
		}
		x := SessionStatus{TokenPrefix: reservation.TokenPrefix(r.Token), Service: r.Service, Index: r.Index,
			State: r.State, Age: now.Sub(r.Since).Seconds(), BytesIn: r.BytesIn, BytesOut: r.BytesOut, Cluster: r.Detail, Replica: s.cfg.ReplicaID}
		if inst, ok := r.Proc.(*services.Instance); ok && inst != nil {
			if sees(r.Owner) {
				x.PID = inst.PID()
			}
			if admin {
				x.Log = inst.LogPath()
			}
		}
		if admin {
			x.Remote = r.Remote
		}
		if sees(r.Owner) {
			x.Token = r.Token
			x.Owner = r.Owner
		}
		st.Sessions = append(st.Sessions, x)
	}
	s.addSharedRecords(&st, recs, infos, sees, now)
	s.mu.Lock()
	st.Tunnels = len(s.tunnels)
	s.mu.Unlock()
	sort.Slice(st.Sessions, func(i, j int) bool {
		if st.Sessions[i].Service != st.Sessions[j].Service {
			return st.Sessions[i].Service < st.Sessions[j].Service
		}
		return st.Sessions[i].Index < st.Sessions[j].Index
	})
	return st
}

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) error {
	c, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.status(c))
	return nil
}

var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"secs": func(f float64) string { return (time.Duration(f) * time.Second).String() },
}).Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>wsgateway status</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:left}
th{background:#f3f3f3}
</style></head><body>
<h1>wsgateway status</h1>
<p>Version {{.Version}}, up {{secs .Uptime}}, {{.Tunnels}} open tunnel(s){{if .BasicTarget}}, basic mode to {{.BasicTarget}}{{end}}.</p>
<h2>Services</h2>
<table><tr><th>Service</th><th>Free</th><th>Total</th><th>File types</th><th>Group</th></tr>
{{range .Services}}<tr><td>{{.Name}}</td><td>{{.Free}}</td><td>{{.Count}}</td><td>{{range .FileExt}}{{.}} {{end}}</td><td>{{.Group}}</td></tr>
{{else}}<tr><td colspan="5">No services configured.</td></tr>{{end}}</table>
<h2>Reservations</h2>
<table><tr><th>Token</th><th>Service</th><th>Index</th><th>State</th><th>Age</th></tr>
{{range .Reservations}}<tr><td>{{.TokenPrefix}}…</td><td>{{.Service}}</td><td>{{.Index}}</td><td>{{.State}}</td><td>{{secs .Age}}</td></tr>
{{else}}<tr><td colspan="5">None.</td></tr>{{end}}</table>
<h2>Sessions</h2>
<table><tr><th>Token</th><th>Service</th><th>Index</th><th>State</th><th>PID</th><th>Age</th><th>Bytes in</th><th>Bytes out</th></tr>
{{range .Sessions}}<tr><td>{{.TokenPrefix}}…</td><td>{{.Service}}</td><td>{{.Index}}</td><td>{{.State}}</td><td>{{.PID}}</td><td>{{secs .Age}}</td><td>{{.BytesIn}}</td><td>{{.BytesOut}}</td></tr>
{{else}}<tr><td colspan="8">None.</td></tr>{{end}}</table>
</body></html>
`))

func (s *Server) handleStatusView(w http.ResponseWriter, r *http.Request) error {
	if _, err := s.requireAuth(r); err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	return statusTmpl.Execute(w, s.status(auth.Caller{}))
}
