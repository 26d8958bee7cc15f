package services_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"wsgateway/services"
)

// The built-in script is written to a directory and run from there later,
// so a directory another user can change (one squatted in a shared /tmp
// before the gateway's first start) is refused: that user could swap the
// script and run code as the gateway's user.
func TestBuiltInRefusesADirectoryOthersCanChange(t *testing.T) {
	t.Run("world-writable parent", func(t *testing.T) {
		parent := filepath.Join(t.TempDir(), "wsgateway-0")
		if err := os.Mkdir(parent, 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(parent, 0o777) // past the umask
		_, err := services.BuiltIn("desktop", 1, filepath.Join(parent, "builtin"))
		if err == nil || !strings.Contains(err.Error(), "writable by everyone") {
			t.Fatalf("BuiltIn under a world-writable directory: %v", err)
		}
	})
	t.Run("sticky world-writable parent is fine", func(t *testing.T) {
		parent := filepath.Join(t.TempDir(), "tmp")
		if err := os.Mkdir(parent, 0o777); err != nil {
			t.Fatal(err)
		}
		os.Chmod(parent, 0o777|os.ModeSticky)
		if _, err := services.BuiltIn("desktop", 1, filepath.Join(parent, "wsgateway-0", "builtin")); err != nil {
			t.Fatalf("BuiltIn under a sticky directory (as /tmp): %v", err)
		}
	})
	t.Run("symlink to a world-writable directory", func(t *testing.T) {
		base := t.TempDir()
		open := filepath.Join(base, "open")
		os.Mkdir(open, 0o777)
		os.Chmod(open, 0o777)
		if err := os.Symlink(open, filepath.Join(base, "link")); err != nil {
			t.Fatal(err)
		}
		if _, err := services.BuiltIn("desktop", 1, filepath.Join(base, "link", "builtin")); err == nil {
			t.Fatal("BuiltIn through a symlink to a world-writable directory was accepted")
		}
	})
	t.Run("another user's directory", func(t *testing.T) {
		if os.Getuid() != 0 {
			t.Skip("needs root to give a directory to another user")
		}
		parent := filepath.Join(t.TempDir(), "squatted")
		os.Mkdir(parent, 0o755)
		if err := os.Chown(parent, 65534, 65534); err != nil {
			t.Skip(err)
		}
		dir := filepath.Join(parent, "builtin")
		os.Mkdir(dir, 0o755)
		_, err := services.BuiltIn("desktop", 1, dir)
		if err == nil || !strings.Contains(err.Error(), "another user") {
			t.Fatalf("BuiltIn in another user's directory: %v", err)
		}
	})
}
