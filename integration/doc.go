// Package integration holds wsgateway's end-to-end tests: they build the
// real binary and a small test service, run them on 127.0.0.1 and talk to
// them with real websocket and HTTP clients.
package integration
