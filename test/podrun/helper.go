package podrun

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
)

// helperEnv carries the helper's configuration into the sandbox; the
// container does not see it.
const helperEnv = "HERD_PODRUN_HELPER"

// helperConfig is what the helper does in the sandbox.
type helperConfig struct {
	Forward []forward // addresses the container dials, forwarded out
	Expose  []int     // container ports exposed as SockDir/port-N.sock
	SockDir string    //
	Argv    []string  // the container's process
	Env     []string  // and its environment, exactly
}

// forward is a host:port in the sandbox forwarded to a Unix socket.
type forward struct{ Addr, Sock string }

func (c helperConfig) encode() string {
	b, _ := json.Marshal(c)
	return base64.StdEncoding.EncodeToString(b)
}

// IsHelper reports whether this process was started as the sandbox's
// helper; a test binary's TestMain then calls HelperMain.
func IsHelper() bool { return os.Getenv(helperEnv) != "" }

// HelperMain runs in the sandbox: it forwards the API server's address,
// exposes the container's ports, runs the container's process, sends it
// SIGTERM when its stdin closes, and exits with its status.
func HelperMain() {
	var cfg helperConfig
	b, err := base64.StdEncoding.DecodeString(os.Getenv(helperEnv))
	if err == nil {
		err = json.Unmarshal(b, &cfg)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "podrun helper:", err)
		os.Exit(125)
	}
	if err := cfg.forward(); err != nil {
		fmt.Fprintln(os.Stderr, "podrun helper:", err)
		os.Exit(125)
	}
	cmd := exec.Command(cfg.Argv[0], cfg.Argv[1:]...)
	cmd.Env = cfg.Env
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "podrun helper: start:", err)
		os.Exit(126)
	}
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for s := range sigs {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			os.Exit(0) // stopped as asked
		}
		os.Exit(ee.ExitCode())
	}
	os.Exit(0)
}

// forward starts the listeners: the API server's address inside the
// sandbox, and a Unix socket per exposed port.
func (c helperConfig) forward() error {
	for _, f := range c.Forward {
		ln, err := net.Listen("tcp", f.Addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", f.Addr, err)
		}
		go serveForward(ln, func() (net.Conn, error) { return net.Dial("unix", f.Sock) })
	}
	for _, port := range c.Expose {
		sock := filepath.Join(c.SockDir, "port-"+strconv.Itoa(port)+".sock")
		_ = os.Remove(sock)
		ln, err := net.Listen("unix", sock)
		if err != nil {
			return err
		}
		target := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		go serveForward(ln, func() (net.Conn, error) { return net.Dial("tcp", target) })
	}
	return nil
}

// serveForward copies each accepted connection to a new one from dial.
func serveForward(ln net.Listener, dial func() (net.Conn, error)) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer in.Close()
			out, err := dial()
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
			go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
			<-done
		}()
	}
}
