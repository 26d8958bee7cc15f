// Package redistest runs one real redis-server for a test package: Start
// it from TestMain, take a fresh key prefix per test with Prefix, and
// Stop it when the package's tests are done. Without redis-server the
// tests that need it skip, except under CI=true, where they fail.
// NeedTLS is the same for a redis-server that speaks TLS only, with a
// throwaway certificate authority (NewTLS).
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
	// TLS, when set, is the certificate the server presents: it then
	// answers TLS only, on Port.
	TLS  *TLSFiles
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	mu         sync.Mutex
	shared     *Server
	failure    error
	sharedTLS  *Server
	failureTLS error
	seq        atomic.Int64
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
func StartAt(dir string, port int) (*Server, error) { return startAt(dir, port, nil) }

// StartTLSAt is StartAt for a server that answers TLS only, presenting
// tf's certificate (clients need no certificate of their own).
func StartTLSAt(dir string, port int, tf *TLSFiles) (*Server, error) {
	if tf == nil {
		return nil, errors.New("StartTLSAt: no certificate")
	}
	return startAt(dir, port, tf)
}

func startAt(dir string, port int, tf *TLSFiles) (*Server, error) {
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
		s := &Server{Dir: dir, Port: p, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), TLS: tf, done: make(chan struct{})}
		listen := []string{"--port", strconv.Itoa(p)}
		if tf != nil {
			listen = []string{"--port", "0", "--tls-port", strconv.Itoa(p), "--tls-cert-file", tf.CertFile,
				"--tls-key-file", tf.KeyFile, "--tls-ca-cert-file", tf.CAFile, "--tls-auth-clients", "no"}
		}
		s.cmd = exec.Command(bin, append(listen, "--bind", "127.0.0.1", "--dir", dir,
			"--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes",
			"--logfile", filepath.Join(dir, "redis.log"))...)
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
	opts := &redis.Options{Addr: s.Addr, MaxRetries: -1}
	if s.TLS != nil {
		opts.TLSConfig = s.TLS.ClientConfig()
	}
	c := redis.NewClient(opts)
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

// URL is the server's redis:// URL for database db (rediss:// when the
// server answers TLS; the client must then trust s.TLS.CAFile).
func (s *Server) URL(db int) string {
	if s.TLS != nil {
		return fmt.Sprintf("rediss://%s/%d", s.Addr, db)
	}
	return fmt.Sprintf("redis://%s/%d", s.Addr, db)
}

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
	n, err := startAt(s.Dir, s.Port, s.TLS)
	if err != nil {
		return err
	}
	s.cmd, s.done = n.cmd, n.done
	return nil
}

// StartTLS starts the package's TLS redis-server, once, with a CA and a
// certificate of its own (NewTLS) in its directory; later calls return
// the same one.
func StartTLS() (*Server, error) {
	mu.Lock()
	defer mu.Unlock()
	if sharedTLS != nil || failureTLS != nil {
		return sharedTLS, failureTLS
	}
	dir, err := os.MkdirTemp("", "wsgw-rediss-")
	if err != nil {
		failureTLS = err
		return nil, err
	}
	tf, err := NewTLS(filepath.Join(dir, "tls"))
	if err != nil {
		failureTLS = err
		return nil, err
	}
	sharedTLS, failureTLS = StartTLSAt(dir, 0, tf)
	return sharedTLS, failureTLS
}

// StopShared stops the package's servers and removes their directories;
// call it from TestMain after m.Run.
func StopShared() {
	mu.Lock()
	defer mu.Unlock()
	for _, s := range []**Server{&shared, &sharedTLS} {
		if *s != nil {
			(*s).Stop()
			os.RemoveAll((*s).Dir)
			*s = nil
		}
	}
}

// Need returns the package's redis-server, skipping the test when there
// is none (failing it under CI=true).
func Need(t testing.TB) *Server {
	t.Helper()
	return need(t, Start)
}

// NeedTLS returns the package's TLS redis-server (StartTLS), skipping
// the test when there is no redis-server (failing it under CI=true).
func NeedTLS(t testing.TB) *Server {
	t.Helper()
	return need(t, StartTLS)
}

func need(t testing.TB, start func() (*Server, error)) *Server {
	t.Helper()
	s, err := start()
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
