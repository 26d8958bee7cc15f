package services_test

import (
	"os"
	"testing"

	"wsgateway/internal/procwatch"
)

// This file's name sorts last, so TestZZNoStrayProcesses runs after the
// package's other tests and checks they left no process behind.

var subreaperErr error

func init() {
	if os.Getenv("WSGWTEST_HELPER") != "" {
		return // a helper process of these tests, not the test binary
	}
	subreaperErr = procwatch.BecomeSubreaper()
}

func TestZZNoStrayProcesses(t *testing.T) { procwatch.Check(t, subreaperErr, nil) }
