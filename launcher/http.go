package launcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"mime"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"wsgateway/internal/httperr"
	"wsgateway/internal/text"

	"github.com/rs/zerolog"
)

// maxPayload bounds the JSON body of a launch request.
const maxPayload = 1 << 20

// Handler serves the launcher's routes: the REST endpoint, /proxy,
// /upload (with upload_dir) and the content directory (with content).
func (l *Launcher) Handler() http.Handler { return l.handler }

// Match reports whether r is for the launcher when it shares the
// gateway's HTTP port: /<endpoint>, /<endpoint>/…, /proxy and, with an
// upload_dir, /upload. The content directory is not claimed; the gateway
// serves it as its static directory.
func (l *Launcher) Match(r *http.Request) bool {
	p := r.URL.Path
	ep := "/" + l.endpoint
	return p == ep || strings.HasPrefix(p, ep+"/") || p == "/proxy" || (l.upload != nil && p == "/upload")
}

// Serve answers HTTP on ln until ctx ends, then shuts the listener down
// (bounded). It does not stop the sessions: call Close for that.
func (l *Launcher) Serve(ctx context.Context, ln net.Listener) error {
	// The gateway's timeouts: a request's header within 10 s, the whole
	// request (body included) within 60 s, the answer within 5 minutes
	// (a launch extends it to its timeout). A websocket clears them once
	// upgraded.
	srv := &http.Server{
		Handler:           l.handler,
		ReadHeaderTimeout: l.timeouts.readHeader,
		ReadTimeout:       l.timeouts.read,
		WriteTimeout:      l.timeouts.write,
		IdleTimeout:       l.timeouts.idle,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(zerologWriter{l.log}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return l.baseCtx },
	}
	errCh := make(chan error, 1)
	go func() { errCh <- srv.Serve(ln) }()
	select {
	case err := <-errCh:
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("launcher listener: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-errCh
	return nil
}

type zerologWriter struct{ log zerolog.Logger }

func (w zerologWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

type handlerFunc func(w http.ResponseWriter, r *http.Request) error

func (l *Launcher) handle(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			l.writeError(w, r, err)
		}
	}
}

func (l *Launcher) routes() http.Handler {
	ep := "/" + l.endpoint
	launch := l.handle(l.handleLaunch)
	byID := l.handle(l.handleSession)
	proxy := l.handle(l.handleProxy)
	upload := l.handle(l.handleUpload)
	content := l.handle(l.handleContent)
	notFound := l.handle(func(w http.ResponseWriter, r *http.Request) error {
		return httperr.Errorf(http.StatusNotFound, "not found: %s (the launcher answers POST %s/, GET and DELETE %s/<id>, and /proxy?sessionId=<id>)", text.Cut(r.URL.Path, 200), ep, ep)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		switch {
		case p == ep || p == ep+"/":
			launch(w, r)
		case strings.HasPrefix(p, ep+"/"):
			byID(w, r)
		case p == "/proxy":
			proxy(w, r)
		case p == "/upload" && l.upload != nil:
			upload(w, r)
		case l.content != nil:
			content(w, r)
		default:
			notFound(w, r)
		}
	})
}

// crossSite refuses, with 403 and a reason, a request from a page of
// another origin (origin.Allowed: the Origin and Sec-Fetch-Site headers
// and --allowed_origins). Every route that changes state or shows a
// session goes through it: POST and DELETE of the endpoint, GET of a
// session, /upload and /proxy.
func (l *Launcher) crossSite(r *http.Request) error {
	if l.originAllowed(r) {
		return nil
	}
	o := r.Header.Get("Origin")
	if o == "" {
		o = "(none)"
	}
	return httperr.Errorf(http.StatusForbidden, "cross-site request refused: a page of another origin (Origin %q, Sec-Fetch-Site %q) may not use the launcher; serve the page from this launcher, or add its origin to --allowed_origins",
		text.Cut(o, 200), text.Cut(r.Header.Get("Sec-Fetch-Site"), 40))
}

// writeError is the one place errors become responses: {"error": "…"}.
func (l *Launcher) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	var he *httperr.Error
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &he):
		status = he.Status
	case errors.As(err, &mbe):
		status = http.StatusRequestEntityTooLarge
	}
	ev := l.log.Debug()
	if status >= 500 {
		ev = l.log.Warn()
	}
	ev.Err(err).Str("method", r.Method).Str("path", r.URL.Path).Str("remote", r.RemoteAddr).Int("status", status).Msg("launcher request refused")
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) { httperr.WriteJSON(w, status, v) }

// handleLaunch is POST /<endpoint>[/]: the body is JSON whatever its
// Content-Type (the wslink client sends none).
func (l *Launcher) handleLaunch(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return httperr.Errorf(http.StatusMethodNotAllowed, "use POST on /%s/ to start a session (GET and DELETE take /%s/<id>)", l.endpoint, l.endpoint)
	}
	if err := l.crossSite(r); err != nil {
		return err
	}
	if !l.enter() {
		return errShuttingDown
	}
	defer l.work.Done()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPayload))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return httperr.Errorf(http.StatusRequestEntityTooLarge, "The request is not complete: the body is larger than %d bytes", maxPayload)
		}
		return httperr.Errorf(http.StatusBadRequest, "The request is not complete: %w", err)
	}
	var payload map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&payload); err != nil || payload == nil {
		msg := "the body must be a JSON object"
		if err != nil {
			msg += ": " + err.Error()
		}
		return httperr.Errorf(http.StatusBadRequest, "The request is not complete: %s", msg)
	}
	if _, err := dec.Token(); err != io.EOF {
		return httperr.Errorf(http.StatusBadRequest, "The request is not complete: data after the JSON object")
	}
	app, ok := payload["application"]
	if !ok {
		return httperr.Errorf(http.StatusBadRequest, "The request is not complete: no \"application\" in the JSON body")
	}
	if _, isStr := app.(string); !isStr {
		return httperr.Errorf(http.StatusBadRequest, "The request is not complete: \"application\" must be a string")
	}
	// The answer waits for the ready line: beyond the listener's write
	// timeout when timeout is longer.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(l.timeout + time.Minute))
	s, err := l.launch(r.Context(), payload)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, l.answer(s))
	return nil
}

// handleSession is GET and DELETE /<endpoint>/<id>.
func (l *Launcher) handleSession(w http.ResponseWriter, r *http.Request) error {
	id := strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, "/"+l.endpoint+"/"), "/")
	if id == "" || strings.Contains(id, "/") {
		return httperr.Errorf(http.StatusNotFound, "No session with id: %s", text.Cut(id, 100))
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodDelete:
	default:
		w.Header().Set("Allow", "GET, DELETE")
		return httperr.Errorf(http.StatusMethodNotAllowed, "use GET or DELETE on /%s/<id> (POST goes to /%s/)", l.endpoint, l.endpoint)
	}
	// The answer holds the session's secret when it is shared.
	if err := l.crossSite(r); err != nil {
		return err
	}
	if r.Method != http.MethodDelete {
		s := l.liveSession(id)
		if s == nil {
			return httperr.Errorf(http.StatusNotFound, "No session with id: %s", text.Cut(id, 100))
		}
		writeJSON(w, http.StatusOK, l.answer(s))
		return nil
	}
	if !l.enter() {
		return errShuttingDown
	}
	defer l.work.Done()
	s := l.liveSession(id)
	if s == nil {
		return httperr.Errorf(http.StatusNotFound, "No session with id: %s", text.Cut(id, 100))
	}
	ans := l.answer(s)
	l.release(s, "stopped by DELETE")
	writeJSON(w, http.StatusOK, ans)
	return nil
}

// handleContent serves the content directory: files only, no listings, a
// directory's index.html, nothing outside the directory (symlinks
// included).
func (l *Launcher) handleContent(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return httperr.Errorf(http.StatusMethodNotAllowed, "method %s not allowed on %s", r.Method, text.Cut(r.URL.Path, 200))
	}
	notFound := httperr.Errorf(http.StatusNotFound, "not found: %s", text.Cut(r.URL.Path, 200))
	clean := path.Clean("/" + r.URL.Path)
	name := strings.TrimPrefix(clean, "/")
	if name == "" {
		name = "."
	}
	f, err := l.content.Open(name)
	if err != nil {
		return notFound
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return notFound
	}
	if st.IsDir() {
		if !strings.HasSuffix(r.URL.Path, "/") {
			target := clean + "/"
			if clean == "/" {
				target = "/"
			}
			if r.URL.RawQuery != "" {
				target += "?" + r.URL.RawQuery
			}
			http.Redirect(w, r, target, http.StatusMovedPermanently)
			return nil
		}
		idx, err := l.content.Open(path.Join(name, "index.html"))
		if err != nil {
			return notFound
		}
		defer idx.Close()
		if st, err = idx.Stat(); err != nil || !st.Mode().IsRegular() {
			return notFound
		}
		f = idx
	} else if !st.Mode().IsRegular() {
		return notFound
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, st.Name(), st.ModTime(), f)
	return nil
}

// uploaded is one file written by /upload.
type uploaded struct {
	Name string `json:"name"`
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// handleUpload is POST /upload: multipart/form-data whose file parts are
// written into upload_dir (an optional "path" field names a
// subdirectory). Names that would leave the directory are refused.
func (l *Launcher) handleUpload(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return httperr.Errorf(http.StatusMethodNotAllowed, "use POST with multipart/form-data on /upload")
	}
	if err := l.crossSite(r); err != nil {
		return err
	}
	if !l.enter() {
		return errShuttingDown
	}
	defer l.work.Done()
	if r.ContentLength > l.uploadMax {
		return httperr.Errorf(http.StatusRequestEntityTooLarge, "upload of %d bytes is over the limit of %d bytes", r.ContentLength, l.uploadMax)
	}
	r.Body = http.MaxBytesReader(w, r.Body, l.uploadMax)
	mr, err := r.MultipartReader()
	if err != nil {
		return httperr.Errorf(http.StatusBadRequest, "upload: expected multipart/form-data: %w", err)
	}
	tooBig := func(err error) error {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return httperr.Errorf(http.StatusRequestEntityTooLarge, "upload is over the limit of %d bytes", l.uploadMax)
		}
		return nil
	}
	dir := "."
	var done []uploaded
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			if e := tooBig(err); e != nil {
				return e
			}
			return httperr.Errorf(http.StatusBadRequest, "upload: malformed multipart body: %w", err)
		}
		_, params, _ := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
		filename, isFile := params["filename"]
		if !isFile {
			if part.FormName() == "path" {
				b, err := io.ReadAll(io.LimitReader(part, 4097))
				if err != nil {
					if e := tooBig(err); e != nil {
						return e
					}
					return httperr.Errorf(http.StatusBadRequest, "upload: %w", err)
				}
				if dir, err = l.uploadSubdir(string(b)); err != nil {
					return err
				}
			} else {
				_, _ = io.Copy(io.Discard, io.LimitReader(part, 1<<20))
			}
			continue
		}
		if !safeFileName(filename) {
			return httperr.Errorf(http.StatusBadRequest, "upload: refused file name %q: give a plain name, without directories or control characters", text.Cut(filename, 200))
		}
		u, err := l.saveUpload(part, dir, filename)
		if err != nil {
			if e := tooBig(err); e != nil {
				return e
			}
			return err
		}
		done = append(done, u)
		l.note(zerolog.InfoLevel, "file uploaded", "path", u.Path, "size", u.Size, "remote", r.RemoteAddr)
	}
	if len(done) == 0 {
		return httperr.Errorf(http.StatusBadRequest, "upload: no file in the request (send multipart/form-data with a file part)")
	}
	writeJSON(w, http.StatusOK, map[string]any{"files": done})
	return nil
}

func (l *Launcher) uploadSubdir(p string) (string, error) {
	p = strings.TrimSpace(p)
	if p == "" || p == "." || p == "/" {
		return ".", nil
	}
	if len(p) > 4096 || strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\\\x00") || hasControl(p) {
		return "", httperr.Errorf(http.StatusBadRequest, "upload: refused path %q: give a directory relative to the upload directory, without control characters", text.Cut(p, 200))
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == ".." {
			return "", httperr.Errorf(http.StatusBadRequest, "upload: refused path %q: \"..\" is not allowed", text.Cut(p, 200))
		}
	}
	clean := path.Clean(p)
	st, err := l.upload.Stat(clean)
	if err != nil || !st.IsDir() {
		return "", httperr.Errorf(http.StatusBadRequest, "upload: %q is not a directory inside the upload directory", text.Cut(p, 200))
	}
	return clean, nil
}

// safeFileName: a plain name (no directory, not "." or "..", at most 255
// bytes) of valid UTF-8 without control characters.
func safeFileName(name string) bool {
	return name != "" && name != "." && name != ".." && len(name) <= 255 &&
		!strings.ContainsAny(name, "/\\\x00") && !hasControl(name)
}

// hasControl reports invalid UTF-8 or a control character (C0, DEL, C1:
// CR, LF, ESC and the 8-bit CSI among them).
func hasControl(s string) bool {
	if !utf8.ValidString(s) {
		return true
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return true
		}
	}
	return false
}

// saveUpload streams one part into a temporary file in the target
// directory, then links it to the final name (an existing name is
// refused with 409) or, with upload_replace, renames it over it.
func (l *Launcher) saveUpload(part io.Reader, dir, name string) (uploaded, error) {
	final := path.Join(dir, name)
	exists := func() error {
		return httperr.Errorf(http.StatusConflict, "upload: %q already exists; uploads do not replace files (the launcher config's configuration.upload_replace allows it)", text.Cut(final, 300))
	}
	if st, err := l.upload.Lstat(final); err == nil {
		if !st.Mode().IsRegular() {
			return uploaded{}, httperr.Errorf(http.StatusBadRequest, "upload: %q exists and is not a regular file", text.Cut(final, 300))
		}
		if !l.uploadReplace {
			return uploaded{}, exists()
		}
	}
	var tmpName string
	var f *os.File
	for i := 0; i < 10; i++ {
		tmpName = path.Join(dir, ".upload-"+newID()[:12]+".part")
		file, err := l.upload.OpenFile(tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			f = file
			break
		}
		if !errors.Is(err, fs.ErrExist) {
			return uploaded{}, httperr.Errorf(http.StatusInternalServerError, "upload: %w", err)
		}
	}
	if f == nil {
		return uploaded{}, httperr.Errorf(http.StatusInternalServerError, "upload: cannot create a temporary file")
	}
	bp := l.bufPool.Get().(*[]byte)
	n, err := io.CopyBuffer(writerOnly{f}, part, *bp)
	l.bufPool.Put(bp)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		if l.uploadReplace {
			err = l.upload.Rename(tmpName, final)
		} else {
			// link(2) never replaces: a file that appeared meanwhile wins.
			err = l.upload.Link(tmpName, final)
		}
	}
	_ = l.upload.Remove(tmpName) // gone after a rename, a second name after a link
	if err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return uploaded{}, err
		case errors.Is(err, fs.ErrExist):
			return uploaded{}, exists()
		}
		return uploaded{}, httperr.Errorf(http.StatusInternalServerError, "upload: writing %s: %w", text.Cut(final, 300), err)
	}
	return uploaded{Name: name, Path: final, Size: n}, nil
}

// writerOnly hides ReadFrom so io.CopyBuffer uses the pooled buffer.
type writerOnly struct{ io.Writer }
