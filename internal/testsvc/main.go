// Command testsvc is a small service used by wsgateway's integration tests
// and benchmarks: it listens on 127.0.0.1, prints the script protocol's
// ready line, greets each connection with what the gateway told it, and
// echoes bytes back.
//
//	testsvc serve [--grandchild PIDFILE] [--pidfile PIDFILE]
//	                                       listen, print the ready line, echo
//	                                       (TESTSVC_IGNORE_TERM=1: ignore SIGTERM;
//	                                       TESTSVC_UNIX=PATH: listen on that Unix socket)
//	testsvc fail MESSAGE                   print MESSAGE on stderr, exit 3
//	testsvc silent                         print nothing, sleep
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testsvc serve|fail|silent")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "fail":
		msg := "test failure"
		if len(os.Args) > 2 {
			msg = os.Args[2]
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(3)
	case "silent":
		time.Sleep(10 * time.Minute)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
}

func serve(args []string) {
	if os.Getenv("TESTSVC_IGNORE_TERM") == "1" {
		// A service that ignores SIGTERM: only SIGKILL stops it.
		signal.Ignore(syscall.SIGTERM)
	}
	if len(args) == 2 && args[0] == "--pidfile" {
		if err := os.WriteFile(args[1], []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if len(args) == 2 && args[0] == "--grandchild" {
		// A grandchild of the service script: it must die with the session.
		cmd := exec.Command("sleep", "1000")
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "starting grandchild:", err)
			os.Exit(1)
		}
		if err := os.WriteFile(args[1], []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	network, addr := "tcp", "127.0.0.1:0"
	if p := os.Getenv("TESTSVC_UNIX"); p != "" {
		// A service on a Unix socket, as a desktop's VNC server may be.
		network, addr = "unix", p
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "testsvc listening on", ln.Addr())
	var ready []byte
	if network == "unix" {
		ready, _ = json.Marshal(map[string]any{"unix": addr})
	} else {
		ready, _ = json.Marshal(map[string]any{"hostname": "127.0.0.1", "port": ln.Addr().(*net.TCPAddr).Port})
	}
	fmt.Println(string(ready))
	hello, _ := json.Marshal(map[string]any{
		"service":     os.Getenv("WSGW_SERVICE"),
		"index":       os.Getenv("WSGW_INDEX"),
		"options":     json.RawMessage(orEmpty(os.Getenv("WSGW_OPTIONS"))),
		"session_dir": os.Getenv("WSGW_SESSION_DIR"),
		"token_len":   len(os.Getenv("WSGW_TOKEN")),
		"pid":         os.Getpid(),
		"leak":        os.Getenv("WSGW_TEST_LEAK"),
	})
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.Write(append(hello, '\n'))
			io.Copy(c, c)
		}()
	}
}

func orEmpty(s string) string {
	if s == "" {
		return "{}"
	}
	return s
}
