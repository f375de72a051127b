// Package gitserver runs real Git servers on loopback for tests: git daemon,
// git http-backend behind Go's net/http/cgi (with optional basic or bearer
// authentication) and OpenSSH's sshd. It also has helpers that drive the real
// git CLI the way other writers of a repository would: create bare
// repositories and working clones, commit, push, force-push and sign commits
// with OpenPGP (gpg) or SSH keys.
//
// Every helper takes a testing.TB, fails the test with a clear message when
// something is missing or broken, and registers its cleanup with t.Cleanup.
// Readiness is detected by polling with deadlines, never by sleeping.
package gitserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartTimeout bounds how long a server may take to accept connections.
const StartTimeout = 15 * time.Second

// BaseEnv is the environment every git command started by this package runs
// with, on top of the process environment: no global or system config, no
// terminal prompts, fixed identities.
func BaseEnv() []string {
	return []string{
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_TERMINAL_PROMPT=0",
		"GIT_AUTHOR_NAME=Test Writer",
		"GIT_AUTHOR_EMAIL=writer@example.com",
		"GIT_COMMITTER_NAME=Test Writer",
		"GIT_COMMITTER_EMAIL=writer@example.com",
		"LC_ALL=C",
	}
}

// GitPath returns the path of the git binary or fails the test.
func GitPath(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("git")
	if err != nil {
		t.Fatalf("gitserver: the git CLI is required (apt-get install git): %v", err)
	}
	return p
}

// RunGit runs git with args in dir and returns its trimmed standard output.
// env is added to BaseEnv. Errors are returned with git's standard error.
func RunGit(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), BaseEnv()...), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("git %s (in %s): %w: %s", strings.Join(args, " "), dir, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Git runs git with args in dir and fails the test on error.
func Git(t testing.TB, dir string, env []string, args ...string) string {
	t.Helper()
	out, err := RunGit(context.Background(), dir, env, args...)
	if err != nil {
		t.Fatalf("gitserver: %v", err)
	}
	return out
}

// InitBare creates a bare repository at path whose default branch is branch
// (for example "main") and returns path.
func InitBare(t testing.TB, path, branch string) string {
	t.Helper()
	GitPath(t)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("gitserver: create parent of %s: %v", path, err)
	}
	Git(t, "", nil, "init", "--quiet", "--bare", "--initial-branch="+branch, path)
	// Let many writers push concurrently without gc kicking in mid-test.
	Git(t, path, nil, "config", "gc.auto", "0")
	Git(t, path, nil, "config", "receive.denyNonFastForwards", "false")
	return path
}

// FreeLoopbackAddr reserves a free TCP port on 127.0.0.1 and returns
// "127.0.0.1:PORT". The port is released before returning, so a server
// started right after can bind it.
func FreeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("gitserver: find a free loopback port: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("gitserver: release port %s: %v", addr, err)
	}
	return addr
}

// WaitFor polls cond every few milliseconds until it returns nil or timeout
// passes; it returns the last error on time-out.
func WaitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	wait := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, errStop) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %v: %w", timeout, err)
		}
		timer := time.NewTimer(wait)
		<-timer.C
		if wait < 50*time.Millisecond {
			wait *= 2
		}
	}
}

// process is a server child process with captured output.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

func startProcess(name string, cmd *exec.Cmd) (*process, error) {
	p := &process{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.out
	cmd.Stderr = p.out
	// The server gets its own process group so that stopping it also ends
	// the per-connection children it forked (like a crash would), and
	// nothing keeps the output pipes open after it exits.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports an error if the process has already exited.
func (p *process) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited early (%v); output:\n%s", p.name, p.err, p.out.String())
	default:
		return nil
	}
}

// stop kills the process (only this one, by its pid) and waits for it.
func (p *process) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	// Kill the process group this package created for the server (its pid
	// is the group id), then the process itself in case that failed.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Process.Kill()
	<-p.done
}

// waitListening polls until addr accepts TCP connections, failing fast when
// the process dies.
func (p *process) waitListening(addr string, check func(net.Conn) error) error {
	return WaitFor(StartTimeout, func() error {
		if err := p.exited(); err != nil {
			return errors.Join(errStop, err)
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if check != nil {
			return check(c)
		}
		return nil
	})
}

var errStop = errors.New("server process is not running")

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
