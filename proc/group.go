package proc

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// GroupAlive reports whether process group pgid has a member that is
// not a zombie (kill(2) still counts zombies, which a group may hold until
// they are reaped).
func GroupAlive(pgid int) bool {
	if pgid <= 0 {
		return false
	}
	if err := syscall.Kill(-pgid, 0); err != nil {
		return false
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return true
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, state, ok := procGroup(pid); ok && g == pgid && live(state) {
			return true
		}
	}
	return false
}

// Alive reports whether process pid exists and is not a zombie.
func Alive(pid int) bool {
	_, state, ok := procGroup(pid)
	return ok && live(state)
}

// live reports whether a /proc state letter is that of a process that
// still runs (not a zombie, not dead).
func live(state string) bool { return state != "Z" && state != "X" }

// groupMembers lists the live (non-zombie) members of process group pg
// other than the calling process.
func groupMembers(pg int) []int {
	self := os.Getpid()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		g, state, ok := procGroup(pid)
		if ok && g == pg && live(state) {
			out = append(out, pid)
		}
	}
	return out
}

// procGroup reads a process's group and state from /proc.
func procGroup(pid int) (pgid int, state string, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 3 {
		return 0, "", false
	}
	g, err := strconv.Atoi(f[2])
	if err != nil {
		return 0, "", false
	}
	return g, f[0], true
}
