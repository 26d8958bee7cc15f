// Package scripts holds the service scripts shipped with wsgateway. The
// built-in services run them from the binary (they are embedded and
// written to the state directory at start-up); the example services config
// in this directory uses them in place.
package scripts

import "embed"

// FS holds the shipped scripts.
//
//go:embed desktop.sh
var FS embed.FS
