package launcher

import (
	"testing"

	"wsgateway/internal/procwatch"
)

// This file's name sorts last, so TestZZNoStrayProcesses runs after the
// package's other tests and checks they left no process behind.

var subreaperErr = procwatch.BecomeSubreaper()

func TestZZNoStrayProcesses(t *testing.T) { procwatch.Check(t, subreaperErr, nil) }
