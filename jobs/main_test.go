package jobs

import (
	"os"
	"testing"

	"wsgateway/internal/procwatch"
	"wsgateway/internal/redistest"
)

// TestMain proves, after the tests, that they left no process behind
// (the package's redis-server, which the shared-queue tests start, is
// stopped first).
func TestMain(m *testing.M) {
	sub := procwatch.BecomeSubreaper()
	code := m.Run()
	redistest.StopShared()
	if problems := procwatch.Verify(sub, nil); len(problems) > 0 {
		for _, p := range problems {
			os.Stderr.WriteString("FAIL: no stray processes: " + p + "\n")
		}
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}
