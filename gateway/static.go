package gateway

import (
	"io/fs"
	"net/http"
	"os"
	"path"
	"strings"

	"wsgateway/internal/httperr"
	"wsgateway/internal/text"
)

// staticHandler serves dir with no directory listings and nothing from
// outside dir (symlinks included: the directory is opened as an os.Root).
func (s *Server) staticHandler(dir string) http.Handler {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return s.handle(func(w http.ResponseWriter, r *http.Request) error {
			return httperr.Errorf(http.StatusInternalServerError, "cannot open the http directory: %v", err)
		})
	}
	fsys := noListFS{root.FS()}
	fileServer := http.FileServer(http.FS(fsys))
	return s.handle(func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return httperr.Errorf(http.StatusMethodNotAllowed, "method %s not allowed for files", r.Method)
		}
		p := r.URL.Path
		if strings.Contains(p, "\x00") || strings.Contains(p, "\\") {
			return httperr.Errorf(http.StatusBadRequest, "bad path")
		}
		clean := path.Clean("/" + p)
		name := strings.TrimPrefix(clean, "/")
		if name == "" {
			name = "."
		}
		if !fs.ValidPath(name) {
			return httperr.Errorf(http.StatusNotFound, "not found: %s", text.Cut(p, 200))
		}
		f, err := fsys.Open(name)
		if err != nil && name == "." {
			// The directory has no index.html: say where the gateway's
			// own pages are.
			return httperr.Errorf(http.StatusNotFound, "not found: / (the --http_directory has no index.html; the dashboard is at %s)", PagesPrefix)
		}
		if err != nil {
			return httperr.Errorf(http.StatusNotFound, "not found: %s", text.Cut(p, 200))
		}
		f.Close()
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fileServer.ServeHTTP(w, r)
		return nil
	})
}

// noListFS refuses to open a directory that has no index.html, so the
// file server never lists one.
type noListFS struct{ fs.FS }

func (n noListFS) Open(name string) (fs.File, error) {
	f, err := n.FS.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsDir() {
		idx, err := n.FS.Open(path.Join(name, "index.html"))
		if err != nil {
			f.Close()
			return nil, fs.ErrNotExist
		}
		idx.Close()
	}
	return f, nil
}
