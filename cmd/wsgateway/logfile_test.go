package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLogFileRotates: --log_file is rotated at its size, the old file
// kept beside it (compressed), and the current file stays small.
func TestLogFileRotates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "gw.log")
	var stderr bytes.Buffer
	log, closeLog := newLogger(&Config{LogFile: path, Verbose: 1, logMaxMB: 1}, &stderr)
	line := strings.Repeat("x", 1000)
	for i := 0; i < 1500; i++ { // 1.5 MB: one rotation
		log.Info().Int("i", i).Str("pad", line).Msg("filler")
	}
	closeLog()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var backups []string
		for _, e := range ents {
			if e.Name() != "gw.log" && strings.HasPrefix(e.Name(), "gw-") {
				backups = append(backups, e.Name())
			}
		}
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(backups) == 1 && strings.HasSuffix(backups[0], ".log.gz") {
			if st.Size() >= 1<<20 {
				t.Fatalf("the current log is %d bytes after a rotation at 1 MB", st.Size())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no compressed backup after 1.5 MB at a 1 MB rotation: %v (current %d bytes)", backups, st.Size())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if stderr.Len() != 0 {
		t.Errorf("the log went to stderr too: %q", stderr.String())
	}
	if logMaxMB != 100 || logBackups != 5 {
		t.Errorf("the documented rotation is 100 MB, 5 kept; the code says %d MB, %d", logMaxMB, logBackups)
	}
}
