package services_test

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"wsgateway/services"
)

// needRoot skips tests that give files to another user.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
}

// theirs makes dir (mode perm) as another local user (uid 65534) would.
func theirs(t *testing.T, dir string, perm os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(dir, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
}

// victim is another user's directory holding a file and old-looking
// subdirectories: what a hijacked prune would delete.
func victim(t *testing.T) (dir, file string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "their-files")
	theirs(t, dir, 0o755)
	file = filepath.Join(dir, "precious.txt")
	if err := os.WriteFile(file, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-24 * time.Hour)
	for i := 0; i < 5; i++ {
		d := filepath.Join(dir, fmt.Sprintf("old-%d", i))
		os.Mkdir(d, 0o755)
		os.WriteFile(filepath.Join(d, "data"), []byte("x"), 0o644)
		os.Chtimes(d, old, old)
	}
	return dir, file
}

func survives(t *testing.T, dir, file string) {
	t.Helper()
	if b, err := os.ReadFile(file); err != nil || string(b) != "keep me" {
		t.Errorf("the victim's file: %q, %v", b, err)
	}
	for i := 0; i < 5; i++ {
		if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("old-%d", i), "data")); err != nil {
			t.Errorf("the victim's directory old-%d: %v", i, err)
		}
	}
}

// TestPrepareSessionRootRefusesAnotherUsersPath: each way another local
// user can prepare the default $TMPDIR/wsgateway-<uid>/sessions (or a
// configured root) is refused with the path and the fix, and the root is
// never pruned, so the victim's files survive.
func TestPrepareSessionRootRefusesAnotherUsersPath(t *testing.T) {
	needRoot(t)
	tests := []struct {
		name    string
		prepare func(t *testing.T, tmp, target string) // target: their directory
		want    string
	}{
		{"sessions is their symlink in their parent", func(t *testing.T, tmp, target string) {
			parent := filepath.Join(tmp, "wsgateway-0")
			theirs(t, parent, 0o755)
			if err := os.Symlink(target, filepath.Join(parent, "sessions")); err != nil {
				t.Fatal(err)
			}
			os.Lchown(filepath.Join(parent, "sessions"), 65534, 65534)
		}, "belongs to another user"},
		{"their parent is a symlink to their directory", func(t *testing.T, tmp, target string) {
			os.Mkdir(filepath.Join(target, "sessions"), 0o700)
			if err := os.Symlink(target, filepath.Join(tmp, "wsgateway-0")); err != nil {
				t.Fatal(err)
			}
			os.Lchown(filepath.Join(tmp, "wsgateway-0"), 65534, 65534)
		}, "another user"},
		{"their empty parent", func(t *testing.T, tmp, target string) {
			theirs(t, filepath.Join(tmp, "wsgateway-0"), 0o777)
		}, "another user"},
		{"their sessions directory in our parent", func(t *testing.T, tmp, target string) {
			os.Mkdir(filepath.Join(tmp, "wsgateway-0"), 0o700)
			theirs(t, filepath.Join(tmp, "wsgateway-0", "sessions"), 0o700)
		}, "another user (uid 65534)"},
		{"a root-owned symlink to a root-owned directory", func(t *testing.T, tmp, target string) {
			// Even a link nobody else could have made: the root is a
			// real directory, so a prune can never land elsewhere.
			real := filepath.Join(tmp, "elsewhere")
			os.Mkdir(real, 0o700)
			os.Mkdir(filepath.Join(tmp, "wsgateway-0"), 0o700)
			if err := os.Symlink(real, filepath.Join(tmp, "wsgateway-0", "sessions")); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"parent writable by everyone", func(t *testing.T, tmp, target string) {
			p := filepath.Join(tmp, "wsgateway-0")
			os.Mkdir(p, 0o777)
			os.Chmod(p, 0o777)
		}, "writable by everyone"},
		{"parent writable by everyone, root already there", func(t *testing.T, tmp, target string) {
			p := filepath.Join(tmp, "wsgateway-0")
			os.Mkdir(p, 0o777)
			os.Chmod(p, 0o777)
			os.Mkdir(filepath.Join(p, "sessions"), 0o700)
		}, "writable by everyone"},
		{"root writable by others", func(t *testing.T, tmp, target string) {
			os.MkdirAll(filepath.Join(tmp, "wsgateway-0", "sessions"), 0o700)
			os.Chmod(filepath.Join(tmp, "wsgateway-0", "sessions"), 0o702)
		}, "writable by everyone"},
		{"root writable by the group", func(t *testing.T, tmp, target string) {
			os.MkdirAll(filepath.Join(tmp, "wsgateway-0", "sessions"), 0o700)
			os.Chmod(filepath.Join(tmp, "wsgateway-0", "sessions"), 0o720)
		}, "mode 0720"},
		{"root is a file", func(t *testing.T, tmp, target string) {
			os.Mkdir(filepath.Join(tmp, "wsgateway-0"), 0o700)
			os.WriteFile(filepath.Join(tmp, "wsgateway-0", "sessions"), nil, 0o600)
		}, "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := filepath.Join(t.TempDir(), "tmp")
			os.Mkdir(tmp, 0o777)
			os.Chmod(tmp, 0o777|os.ModeSticky) // a shared /tmp
			target, file := victim(t)
			tt.prepare(t, tmp, target)
			root := filepath.Join(tmp, "wsgateway-0", "sessions")
			_, before := os.Lstat(root)
			err := services.PrepareSessionRoot(root)
			if err == nil {
				t.Fatal("accepted")
			}
			// Nothing is made under a level that is refused.
			if _, after := os.Lstat(root); before != nil && after == nil {
				t.Errorf("%s was made before the refusal", root)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), root) {
				t.Errorf("error %q: want it to name %s and say %q", err, root, tt.want)
			}
			if tt.want != "not a directory" && !strings.Contains(err.Error(), "--session_dir") {
				t.Errorf("error %q does not say what to do", err)
			}
			// What a gateway that ignored the refusal would do next.
			services.PruneSessionDirs(root, 0, zerolog.Nop())
			survives(t, target, file)
		})
	}
}

func TestPrepareSessionRootAccepts(t *testing.T) {
	mode := func(t *testing.T, p string) os.FileMode {
		t.Helper()
		st, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode()
	}
	t.Run("fresh, under a sticky shared directory", func(t *testing.T) {
		tmp := filepath.Join(t.TempDir(), "tmp")
		os.Mkdir(tmp, 0o777)
		os.Chmod(tmp, 0o777|os.ModeSticky)
		root := filepath.Join(tmp, "wsgateway-0", "sessions")
		if err := services.PrepareSessionRoot(root); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{filepath.Dir(root), root} {
			if m := mode(t, p); !m.IsDir() || m.Perm() != 0o700 {
				t.Errorf("%s: mode %v, want a 0700 directory", p, m)
			}
		}
		// Again, as at the next start.
		if err := services.PrepareSessionRoot(root); err != nil {
			t.Errorf("second start: %v", err)
		}
	})
	t.Run("an existing directory of ours", func(t *testing.T) {
		for _, perm := range []os.FileMode{0o700, 0o755, 0o750} {
			root := t.TempDir()
			os.Chmod(root, perm)
			if err := services.PrepareSessionRoot(root); err != nil {
				t.Errorf("mode %04o: %v", perm, err)
			}
		}
	})
	t.Run("a relative path", func(t *testing.T) {
		t.Chdir(t.TempDir())
		if err := services.PrepareSessionRoot(filepath.Join("a", "sessions")); err != nil {
			t.Fatal(err)
		}
		if m := mode(t, filepath.Join("a", "sessions")); m.Perm() != 0o700 {
			t.Errorf("mode %v", m)
		}
	})
	t.Run("under a file", func(t *testing.T) {
		f := filepath.Join(t.TempDir(), "f")
		os.WriteFile(f, nil, 0o600)
		err := services.PrepareSessionRoot(filepath.Join(f, "sessions"))
		if err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("root under a file: %v", err)
		}
	})
}

func TestMakeSessionDir(t *testing.T) {
	root := t.TempDir()
	d := filepath.Join(root, "svc-0-abc")
	if err := services.MakeSessionDir(d); err != nil {
		t.Fatal(err)
	}
	if err := services.MakeSessionDir(d); err != nil {
		t.Errorf("again (a restored session): %v", err)
	}
	other := t.TempDir()
	link := filepath.Join(root, "svc-1-def")
	os.Symlink(other, link)
	if err := services.MakeSessionDir(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("a symlink in place of the session directory: %v", err)
	}
	if err := services.MakeSessionDir(filepath.Join(root, "missing", "x")); err == nil {
		t.Error("a session directory whose parent is missing was made")
	}
}

// entries lists dir's names, sorted.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func TestPruneSessionDirsKeepsTheNewest(t *testing.T) {
	tests := []struct {
		keep int
		want string
	}{
		{3, "[a-file svc-7 svc-8 svc-9]"},
		{9, "[a-file svc-1 svc-2 svc-3 svc-4 svc-5 svc-6 svc-7 svc-8 svc-9]"},
		{10, "[a-file svc-0 svc-1 svc-2 svc-3 svc-4 svc-5 svc-6 svc-7 svc-8 svc-9]"},
		{11, "[a-file svc-0 svc-1 svc-2 svc-3 svc-4 svc-5 svc-6 svc-7 svc-8 svc-9]"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.keep), func(t *testing.T) {
			root := t.TempDir()
			os.Chmod(root, 0o700)
			base := time.Now().Add(-time.Hour)
			for i := 0; i < 10; i++ {
				d := filepath.Join(root, fmt.Sprintf("svc-%d", i))
				os.Mkdir(d, 0o700)
				os.WriteFile(filepath.Join(d, "session.log"), nil, 0o600)
				at := base.Add(time.Duration(i) * time.Minute)
				os.Chtimes(d, at, at)
			}
			os.WriteFile(filepath.Join(root, "a-file"), nil, 0o600) // not a session directory
			services.PruneSessionDirs(root, tt.keep, zerolog.Nop())
			if got := fmt.Sprint(entries(t, root)); got != tt.want {
				t.Errorf("left %s, want %s", got, tt.want)
			}
		})
	}
}

// TestPruneSessionDirsStaysInside: links inside the root, to a directory
// or inside an old session directory, are never followed; what they point
// to survives.
func TestPruneSessionDirsStaysInside(t *testing.T) {
	outside := t.TempDir()
	precious := filepath.Join(outside, "precious.txt")
	os.WriteFile(precious, []byte("keep me"), 0o644)
	root := t.TempDir()
	os.Chmod(root, 0o700)
	old := time.Now().Add(-time.Hour)
	// An old link entry, older than everything: not a session directory.
	os.Symlink(outside, filepath.Join(root, "aaa-link"))
	// An old session directory holding a link out.
	sd := filepath.Join(root, "svc-0")
	os.Mkdir(sd, 0o700)
	os.Symlink(outside, filepath.Join(sd, "out"))
	os.Symlink(precious, filepath.Join(sd, "file-out"))
	os.Chtimes(sd, old, old)
	newer := filepath.Join(root, "svc-1")
	os.Mkdir(newer, 0o700)

	services.PruneSessionDirs(root, 1, zerolog.Nop())
	if got := fmt.Sprint(entries(t, root)); got != "[aaa-link svc-1]" {
		t.Errorf("left %s, want the link (not a session) and the newest", got)
	}
	if b, err := os.ReadFile(precious); err != nil || string(b) != "keep me" {
		t.Errorf("the file outside: %q, %v", b, err)
	}
}

// TestPruneSessionDirsRootNotOurs: a root that is a link, or not private,
// is not pruned at all.
func TestPruneSessionDirsRootNotOurs(t *testing.T) {
	t.Run("link", func(t *testing.T) {
		target := t.TempDir()
		os.Chmod(target, 0o700)
		os.Mkdir(filepath.Join(target, "old"), 0o700)
		link := filepath.Join(t.TempDir(), "sessions")
		os.Symlink(target, link)
		services.PruneSessionDirs(link, 0, zerolog.Nop())
		if _, err := os.Stat(filepath.Join(target, "old")); err != nil {
			t.Errorf("pruned through a link: %v", err)
		}
	})
	t.Run("open to others", func(t *testing.T) {
		root := t.TempDir()
		os.Chmod(root, 0o757)
		os.Mkdir(filepath.Join(root, "old"), 0o700)
		services.PruneSessionDirs(root, 0, zerolog.Nop())
		if _, err := os.Stat(filepath.Join(root, "old")); err != nil {
			t.Errorf("pruned a root open to others: %v", err)
		}
	})
}
