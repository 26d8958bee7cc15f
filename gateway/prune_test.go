package gateway

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func TestPruneSessionDirsKeepsTheNewest(t *testing.T) {
	root := t.TempDir()
	base := time.Now().Add(-time.Hour)
	for i := 0; i < 10; i++ {
		d := filepath.Join(root, fmt.Sprintf("svc-%d", i))
		os.Mkdir(d, 0o700)
		os.Chtimes(d, base.Add(time.Duration(i)*time.Minute), base.Add(time.Duration(i)*time.Minute))
	}
	os.WriteFile(filepath.Join(root, "a-file"), nil, 0o600) // not a session directory
	pruneSessionDirs(root, 3, zerolog.Nop())
	ents, _ := os.ReadDir(root)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if fmt.Sprint(left) != "[a-file svc-7 svc-8 svc-9]" {
		t.Fatalf("left %v, want the 3 newest directories and the file", left)
	}
}
