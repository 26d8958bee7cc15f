//go:build !linux

package gateway

import (
	"errors"
	"syscall"
)

// Elsewhere than Linux there is no parking poller: every direction waits
// on its own goroutine in Go's netpoller.
type poller struct{}

func getPoller() *poller { return nil }

func (p *poller) register(*parkDir, syscall.RawConn) error {
	return errors.New("no parking poller on this system")
}

func (p *poller) forget(*parkDir) {}

func (p *poller) parkedCount() int { return 0 }

func pollerFDs() int { return 0 }
