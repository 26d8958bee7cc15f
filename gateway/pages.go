package gateway

import (
	"io/fs"
	"net/http"
	"os"
	"path"
	"strings"

	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
	"wsgateway/web"
)

// PagesPrefix is where the gateway's own pages (dashboard, viewer) and
// noVNC are always served, whatever --http_directory holds.
const PagesPrefix = "/wsgw/"

// pageCSP lets the pages load only from the gateway and talk only to it.
const pageCSP = "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'"

// pagesHandler serves the embedded dashboard and viewer.
func (s *Server) pagesHandler() http.Handler {
	fsys := web.FS()
	files := http.FileServer(http.FS(noListFS{fsys}))
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return httperr.Errorf(http.StatusMethodNotAllowed, "method %s not allowed for pages", r.Method)
		}
		name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
		if name == "" {
			name = "index.html"
		}
		if _, err := fs.Stat(fsys, name); err != nil {
			return httperr.Errorf(http.StatusNotFound, "no such page: %s", text.Cut(r.URL.Path, 200))
		}
		h := w.Header()
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("Referrer-Policy", "no-referrer")
		if name == "index.html" {
			// Serve it in place: FileServer would redirect /index.html to /.
			f, err := fsys.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			h.Set("Content-Type", "text/html; charset=utf-8")
			st, _ := f.Stat()
			http.ServeContent(w, r, name, st.ModTime(), f.(readSeeker))
			return nil
		}
		files.ServeHTTP(w, r)
		return nil
	})
}

type readSeeker interface {
	Read([]byte) (int, error)
	Seek(int64, int) (int64, error)
}

// novncHandler serves noVNC from --novnc_directory (npm @novnc/novnc or
// Debian's novnc), confined to that directory.
func (s *Server) novncHandler() http.Handler {
	dir := s.cfg.NovncDirectory
	if dir == "" {
		return s.handle(func(w http.ResponseWriter, r *http.Request) error {
			return httperr.Errorf(http.StatusNotFound, "noVNC is not installed: run make deps (npm @novnc/novnc) or apt install novnc, or give --novnc_directory")
		})
	}
	if _, err := os.Stat(dir); err != nil {
		return s.handle(func(w http.ResponseWriter, r *http.Request) error {
			return httperr.Errorf(http.StatusNotFound, "noVNC directory %s: %v", dir, err)
		})
	}
	return s.staticHandler(dir)
}
