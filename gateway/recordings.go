package gateway

// Recordings: a service with the option record (or a reservation asking
// record=true where the service's client_options allow it) has each of
// its session's connections recorded in the session directory, as
// recording-<n>.js (websockify's --record format: the server-to-client
// stream with times, rfb.Recorder) and recording-<n>.json (the index:
// start, end, size, user, service). Files are 0600, in 0700 directories;
// a recording is cut at record_max_mb and deleted after
// record_keep_days. GET /v1/recordings lists them (administrators all,
// users their own) and GET /v1/recordings/<dir>/<name> serves one.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"
	"github.com/rs/zerolog"

	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
	"wsgateway/reservation"
	"wsgateway/rfb"
	"wsgateway/services"
	"wsgateway/session"
)

// RecordingInfo is a recording's index entry.
type RecordingInfo struct {
	ID        string     `json:"id"` // <session dir>/<name>
	Service   string     `json:"service"`
	User      string     `json:"user"`
	Token     string     `json:"token_prefix"`
	Start     time.Time  `json:"start"`
	End       *time.Time `json:"end,omitempty"` // absent while recording
	Size      int64      `json:"size"`
	Truncated bool       `json:"truncated,omitempty"`
	KeepUntil time.Time  `json:"keep_until"`
}

var (
	recDirRe  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$`)
	recNameRe = regexp.MustCompile(`^recording-[0-9]{1,20}$`)
)

// recordedConn ends the recording's index when the connection closes.
type recordedConn struct {
	*rfb.RecordConn
	once sync.Once
	done func()
}

func (rc *recordedConn) Close() error {
	err := rc.RecordConn.Close()
	rc.once.Do(rc.done)
	return err
}

// startRecording wraps c, the service connection of ss, in a recorder
// when the service records; otherwise (or when the recording cannot be
// made: the session then runs unrecorded, and the log says why) it
// returns c.
func (s *Server) startRecording(ss *session.Session, svc *services.Service, c net.Conn, log zerolog.Logger) net.Conn {
	pol := svc.Record(ss.Options())
	if !pol.On {
		return c
	}
	res, _ := s.sessions.Get(ss.Token())
	dir := s.sessionDir(svc, ss.Index(), ss.Token())
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		log.Warn().Str("dir", dir).Msg("recording: no session directory; not recorded")
		return c
	}
	s.pruneRecordings()
	start := time.Now()
	name := fmt.Sprintf("recording-%d", start.UnixNano())
	f, err := os.OpenFile(filepath.Join(dir, name+".js"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		log.Error().Err(err).Msg("recording: cannot create the file; not recorded")
		return c
	}
	rec, err := rfb.NewRecorder(f, start, pol.MaxBytes)
	if err != nil {
		f.Close()
		log.Error().Err(err).Msg("recording: not recorded")
		return c
	}
	info := RecordingInfo{ID: filepath.Base(dir) + "/" + name, Service: svc.Name, User: res.Owner,
		Token: reservation.TokenPrefix(ss.Token()), Start: start.UTC(), KeepUntil: start.Add(pol.Keep).UTC()}
	index := filepath.Join(dir, name+".json")
	if err := writeIndex(index, info); err != nil {
		log.Error().Err(err).Msg("recording: cannot write its index")
	}
	rc := rfb.NewRecordConn(c, rec)
	log.Info().Str("recording", info.ID).Int64("max_bytes", pol.MaxBytes).Msg("recording the session")
	return &recordedConn{RecordConn: rc, done: func() {
		end := time.Now().UTC()
		info.End = &end
		info.Size = rec.Size()
		info.Truncated = rec.Full()
		if err := writeIndex(index, info); err != nil {
			log.Error().Err(err).Msg("recording: cannot write its index")
		}
		if err := rc.Err(); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Warn().Err(err).Str("recording", info.ID).Msg("recording cut")
		}
	}}
}

// writeIndex writes a recording's index (0600) in place of the old one.
func writeIndex(path string, info RecordingInfo) error {
	b, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("recording index: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("recording index: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("recording index: %w", err)
	}
	return nil
}

// recordings reads every recording's index under the session root.
func (s *Server) recordings() []RecordingInfo {
	paths, _ := filepath.Glob(filepath.Join(s.cfg.SessionRoot, "*", "recording-*.json"))
	out := []RecordingInfo{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var in RecordingInfo
		if json.Unmarshal(b, &in) != nil {
			continue
		}
		// The index's place, not its content, says which files it is.
		in.ID = filepath.Base(filepath.Dir(p)) + "/" + strings.TrimSuffix(filepath.Base(p), ".json")
		if st, err := os.Stat(strings.TrimSuffix(p, ".json") + ".js"); err == nil {
			in.Size = st.Size()
		}
		out = append(out, in)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Start.After(out[j].Start) })
	return out
}

// pruneRecordings deletes the recordings kept past their time.
func (s *Server) pruneRecordings() {
	now := time.Now()
	for _, in := range s.recordings() {
		if in.KeepUntil.IsZero() || now.Before(in.KeepUntil) || in.End == nil {
			continue
		}
		base := filepath.Join(s.cfg.SessionRoot, filepath.FromSlash(in.ID))
		for _, ext := range []string{".js", ".json"} {
			if err := os.Remove(base + ext); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.log.Warn().Err(err).Str("recording", in.ID).Msg("cannot delete an old recording")
			}
		}
		s.log.Info().Str("recording", in.ID).Msg("recording deleted: kept for its record_keep_days")
	}
}

func (s *Server) handleRecordings(w http.ResponseWriter, r *http.Request) error {
	c, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	s.pruneRecordings()
	out := []RecordingInfo{}
	for _, in := range s.recordings() {
		if c.MayManage(in.User) {
			out = append(out, in)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"recordings": out})
	return nil
}

// handleRecording serves a recording to its user or an administrator.
// It is data, never a page or a script: text/plain, nosniff, no framing.
func (s *Server) handleRecording(w http.ResponseWriter, r *http.Request) error {
	c, err := s.requireAuth(r)
	if err != nil {
		return err
	}
	dir, name := mux.Vars(r)["dir"], mux.Vars(r)["name"]
	notYours := httperr.Errorf(http.StatusNotFound, "no such recording (or not yours): %s/%s", text.Cut(dir, 64), text.Cut(name, 64))
	if !recDirRe.MatchString(dir) || !recNameRe.MatchString(name) {
		return notYours
	}
	base := filepath.Join(s.cfg.SessionRoot, dir, name)
	b, err := os.ReadFile(base + ".json")
	if err != nil {
		return notYours
	}
	var in RecordingInfo
	if json.Unmarshal(b, &in) != nil || !c.MayManage(in.User) {
		return notYours
	}
	f, err := os.Open(base + ".js")
	if err != nil {
		return notYours
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return notYours
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Disposition", `attachment; filename="`+name+`.js"`)
	http.ServeContent(w, r, name+".js", st.ModTime(), f)
	return nil
}
