// Package redistest runs one real redis-server for a test package: Start
// it from TestMain, take a fresh key prefix per test with Prefix, and
// Stop it when the package's tests are done. Without redis-server the
// tests that need it skip, except under CI=true, where they fail.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is a running redis-server on 127.0.0.1.
type Server struct {
	Addr string
	Dir  string
	Port int
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	mu      sync.Mutex
	shared  *Server
	failure error
	seq     atomic.Int64
)

// Start starts the package's redis-server, once; later calls return the
// same one. It returns an error when redis-server is missing or does not
// come up.
func Start() (*Server, error) {
	mu.Lock()
	defer mu.Unlock()
	if shared != nil || failure != nil {
		return shared, failure
	}
	dir, err := os.MkdirTemp("", "wsgw-redis-")
	if err != nil {
		failure = err
		return nil, err
	}
	shared, failure = StartAt(dir, 0)
	return shared, failure
}

// StartAt starts a redis-server with its data in dir, on port (0: a free
// one), with append-only persistence on so that a restart loses nothing.
func StartAt(dir string, port int) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found (Debian package redis-server): %w", err)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		p := port
		if p == 0 {
			if p, err = freePort(); err != nil {
				return nil, err
			}
		}
		s := &Server{Dir: dir, Port: p, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), done: make(chan struct{})}
		s.cmd = exec.Command(bin, "--port", strconv.Itoa(p), "--bind", "127.0.0.1", "--dir", dir,
			"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes",
			"--logfile", filepath.Join(dir, "redis.log"))
		if err := s.cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting redis-server: %w", err)
		}
		go func() { _ = s.cmd.Wait(); close(s.done) }()
		if err := s.waitReady(30 * time.Second); err != nil {
			s.Stop()
			lastErr = err
			if port != 0 {
				break
			}
			continue
		}
		return s, nil
	}
	return nil, fmt.Errorf("redis-server did not come up: %w", lastErr)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) waitReady(timeout time.Duration) error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
			return fmt.Errorf("redis-server exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer on %s: %w", s.Addr, err)
		}
		time.Sleep(20 * time.Millisecond) // polling for readiness
	}
}

// URL is the server's redis:// URL for database db.
func (s *Server) URL(db int) string { return fmt.Sprintf("redis://%s/%d", s.Addr, db) }

// Stop kills the server and waits for it.
func (s *Server) Stop() {
	if s == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Restart stops the server (SIGTERM: it writes what it holds) and starts
// it again on the same port and directory.
func (s *Server) Restart() error {
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	n, err := StartAt(s.Dir, s.Port)
	if err != nil {
		return err
	}
	s.cmd, s.done = n.cmd, n.done
	return nil
}

// StopShared stops the package's server and removes its directory; call
// it from TestMain after m.Run.
func StopShared() {
	mu.Lock()
	defer mu.Unlock()
	if shared != nil {
		shared.Stop()
		os.RemoveAll(shared.Dir)
		shared = nil
	}
}

// Need returns the package's redis-server, skipping the test when there
// is none (failing it under CI=true).
func Need(t testing.TB) *Server {
	t.Helper()
	s, err := Start()
	if err != nil {
		if os.Getenv("CI") == "true" || !errors.Is(err, exec.ErrNotFound) {
			t.Fatalf("redis: %v", err)
		}
		t.Skipf("redis: %v", err)
	}
	return s
}

// Prefix returns a key prefix no other test of this process uses.
func Prefix(t testing.TB) string {
	return fmt.Sprintf("t%d-%d:", os.Getpid(), seq.Add(1))
}
