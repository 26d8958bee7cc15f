package jobs

import (
	"os"
	"testing"

	"wsgateway/internal/procwatch"
)

// TestMain proves, after the tests, that they left no process behind.
func TestMain(m *testing.M) { os.Exit(procwatch.Run(m, nil)) }
