package services

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// The session root (--session_dir) holds one directory per launched
// session: the script's working directory, its log and, for the built-in
// desktop, the VNC socket. The gateway removes old ones, so the root must
// be the gateway's own: if another user could point it elsewhere (a
// symbolic link in a shared /tmp, say), pruning would delete their choice
// of files with the gateway's rights.

// PrepareSessionRoot creates root (mode 0700, with any missing parents)
// and checks it is the gateway's own: root and every level created for it
// are real directories (no symbolic link) owned by this user that group
// and others cannot write in, and nothing above it can be changed by
// another user (see privateDir). The error names the path and the fix.
func PrepareSessionRoot(root string) error {
	abs, err := filepath.Abs(root)
	if err != nil {
		return fmt.Errorf("session directory root %s: %w", root, err)
	}
	// The nearest level that exists is checked before anything is made
	// inside it.
	var missing []string
	top := abs
	for {
		_, err := os.Lstat(top)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) || top == filepath.Dir(top) {
			return fmt.Errorf("session directory root %s: %w", abs, err)
		}
		missing = append(missing, top)
		top = filepath.Dir(top)
	}
	if len(missing) > 0 {
		if err := privateDir(top); err != nil {
			return rootRefused(abs, err)
		}
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := os.Mkdir(missing[i], 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("session directory root %s: %w", abs, err)
		}
		// Made by us, or by someone quicker: either way it must be ours.
		if err := ownDir(missing[i]); err != nil {
			return rootRefused(abs, err)
		}
	}
	if err := privateDir(abs); err != nil {
		return rootRefused(abs, err)
	}
	if err := ownDir(abs); err != nil {
		return rootRefused(abs, err)
	}
	return nil
}

func rootRefused(root string, err error) error {
	return fmt.Errorf("refusing session directory root %s: %w; remove what another user left there, or choose a --session_dir that only you can change (a directory of yours, mode 0700)", root, err)
}

// ownDir checks that dir is a real directory (not a symbolic link) owned
// by this user that neither group nor others may write in. (The gateway
// makes its levels 0700; one made by hand may stay readable, as the
// session directories inside are 0700 themselves.)
func ownDir(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	return ownDirInfo(dir, st)
}

func ownDirInfo(dir string, st fs.FileInfo) error {
	if st.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("%s is a symbolic link; it must be a directory of this user's", dir)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Getuid() {
		return fmt.Errorf("%s belongs to another user (uid %d)", dir, sys.Uid)
	}
	if perm := st.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%s has mode %04o: others may write in it (chmod 700 it)", dir, perm)
	}
	return nil
}

// privateDir checks that only this user (or root) can change what dir
// holds: every component of the path as given (a symbolic link included)
// and every directory above the path it resolves to is owned by this user
// or root, and none of those directories is writable by everyone unless
// it is sticky (as /tmp is).
func privateDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	// The path as given: a link that another user owns can be turned
	// elsewhere at any time, even when it now points somewhere safe.
	for p := abs; ; p = filepath.Dir(p) {
		if err := notOthers(p); err != nil {
			return err
		}
		if p == filepath.Dir(p) {
			break
		}
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return err
	}
	for p := real; ; p = filepath.Dir(p) {
		if err := notOthers(p); err != nil {
			return err
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// notOthers checks one path (not followed if it is a link): owned by
// this user or root, and, if a directory, not writable by everyone
// unless sticky.
func notOthers(p string) error {
	st, err := os.Lstat(p)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if int(sys.Uid) != os.Getuid() && sys.Uid != 0 {
		return fmt.Errorf("%s belongs to another user (uid %d)", p, sys.Uid)
	}
	if st.IsDir() && st.Mode().Perm()&0o002 != 0 && st.Mode()&fs.ModeSticky == 0 {
		return fmt.Errorf("%s is writable by everyone", p)
	}
	return nil
}

// MakeSessionDir creates one session's directory (mode 0700) inside its
// root, refusing a symbolic link or a directory of another user's in its
// place.
func MakeSessionDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return ownDir(dir)
}

// PruneSessionDirs keeps the newest keep session directories of root and
// removes the rest. It works inside root through an os.Root, so nothing
// it does leaves root: a symbolic link among the entries is neither
// followed nor counted, and removal never follows one. It does nothing
// when root is not the gateway's own (PrepareSessionRoot).
func PruneSessionDirs(root string, keep int, log zerolog.Logger) {
	named, err := os.Lstat(root)
	if err == nil {
		err = ownDirInfo(root, named)
	}
	if err != nil {
		log.Warn().Err(err).Str("root", root).Msg("not pruning old session directories")
		return
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		log.Warn().Err(err).Str("root", root).Msg("cannot prune old session directories")
		return
	}
	defer r.Close()
	// What was opened must be what was checked: the name was not turned
	// into a link meanwhile.
	opened, err := r.Lstat(".")
	if err == nil && !os.SameFile(named, opened) {
		err = fmt.Errorf("%s changed while it was opened", root)
	}
	if err != nil {
		log.Warn().Err(err).Str("root", root).Msg("not pruning old session directories")
		return
	}
	d, err := r.Open(".")
	if err != nil {
		log.Warn().Err(err).Str("root", root).Msg("cannot prune old session directories")
		return
	}
	ents, err := d.ReadDir(-1)
	d.Close()
	if err != nil {
		log.Warn().Err(err).Str("root", root).Msg("cannot prune old session directories")
		return
	}
	type sdir struct {
		name string
		mod  time.Time
	}
	var dirs []sdir
	for _, e := range ents {
		info, err := r.Lstat(e.Name())
		if err != nil || !info.IsDir() {
			continue // links and files are not session directories
		}
		dirs = append(dirs, sdir{e.Name(), info.ModTime()})
	}
	if len(dirs) <= keep {
		return
	}
	sort.Slice(dirs, func(i, j int) bool { return dirs[i].mod.Before(dirs[j].mod) })
	for _, x := range dirs[:len(dirs)-keep] {
		if err := r.RemoveAll(x.name); err != nil {
			log.Warn().Err(err).Str("dir", x.name).Msg("cannot prune old session directory")
		}
	}
}
