package gitserver

import (
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// Daemon is a running `git daemon` serving every repository under Root over
// git://127.0.0.1:PORT/, with pushes enabled. It can be stopped and started
// again on the same port to simulate an outage.
type Daemon struct {
	// Root is the --base-path: URL paths are relative to it.
	Root string
	// Addr is "127.0.0.1:PORT".
	Addr string

	t  testing.TB
	mu sync.Mutex
	p  *process
}

// StartDaemon starts git daemon for the repositories under root and stops it
// when the test ends.
func StartDaemon(t testing.TB, root string) *Daemon {
	t.Helper()
	d := &Daemon{Root: root, Addr: FreeLoopbackAddr(t), t: t}
	d.Start()
	t.Cleanup(d.Stop)
	return d
}

// URL returns the git:// URL of the repository at root/repo.
func (d *Daemon) URL(repo string) string {
	return "git://" + d.Addr + "/" + strings.TrimPrefix(repo, "/")
}

// Start starts the daemon (again) on its address and waits until it accepts
// connections. Starting a running daemon does nothing.
func (d *Daemon) Start() {
	d.t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.p != nil && d.p.exited() == nil {
		return
	}
	git := GitPath(d.t)
	host, port, _ := strings.Cut(d.Addr, ":")
	cmd := exec.Command(git, "daemon",
		"--reuseaddr",
		"--listen="+host,
		"--port="+port,
		"--base-path="+d.Root,
		"--export-all",
		"--enable=receive-pack",
		"--max-connections=0",
		"--informative-errors",
		d.Root,
	)
	cmd.Env = append(cmd.Environ(), BaseEnv()...)
	p, err := startProcess("git daemon", cmd)
	if err != nil {
		d.t.Fatalf("gitserver: %v", err)
	}
	if err := p.waitListening(d.Addr, nil); err != nil {
		p.stop()
		d.t.Fatalf("gitserver: git daemon on %s not ready: %v\n%s", d.Addr, err, p.out.String())
	}
	d.p = p
}

// Stop kills the daemon and waits for it to exit; the port then refuses
// connections until Start.
func (d *Daemon) Stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.p.stop()
}

// Output returns what the daemon printed so far (for failure messages).
func (d *Daemon) Output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.p == nil {
		return ""
	}
	return fmt.Sprint(d.p.out.String())
}
