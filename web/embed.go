// Package web holds the pages the gateway serves itself: the dashboard
// (services, Launch, live sessions) and the noVNC viewer page. They are
// plain HTML, CSS and JavaScript modules with no build step, embedded in
// the binary. noVNC itself is not here: it is installed from npm or Debian
// and served from disk.
package web

import (
	"embed"
	"io/fs"
)

//go:embed static
var static embed.FS

// FS returns the pages, rooted at the static directory.
func FS() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return sub
}
