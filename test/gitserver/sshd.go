package gitserver

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// SSHDPath is where Debian's openssh-server installs sshd. sshd must be run
// by absolute path.
const SSHDPath = "/usr/sbin/sshd"

// SSHD is a real OpenSSH server on 127.0.0.1:PORT with its own host key,
// configuration and authorized_keys, running in the foreground. A forced
// command maps repository paths under Root, like git daemon's --base-path,
// and allows only git-upload-pack, git-receive-pack and git-upload-archive.
//
// sshd needs a real account to log in to, so URLs use the account the test
// runs as (root in CI), not "git".
type SSHD struct {
	// Root is the directory repository paths are relative to.
	Root string
	// Addr is "127.0.0.1:PORT".
	Addr string
	// User is the login name in URLs.
	User string
	// ClientKey is the key authorized to log in.
	ClientKey *SSHKey
	// HostKey is the server's host key.
	HostKey *SSHKey
	// KnownHostsFile holds the "[127.0.0.1]:PORT <host key>" line.
	KnownHostsFile string

	t      testing.TB
	dir    string
	config string
	mu     sync.Mutex
	p      *process
}

// RequireSSHD fails the test when sshd is not installed.
func RequireSSHD(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(SSHDPath); err != nil {
		t.Fatalf("gitserver: %s is missing; install OpenSSH's server: apt-get update && apt-get install -y openssh-server (%v)", SSHDPath, err)
	}
}

// StartSSHD starts sshd serving the repositories under root and stops it
// when the test ends.
func StartSSHD(t testing.TB, root string) *SSHD {
	t.Helper()
	RequireSSHD(t)
	GitPath(t)
	// sshd refuses to start without its privilege separation directory,
	// which Debian creates at boot through systemd; create it when missing.
	if _, err := os.Stat("/run/sshd"); err != nil {
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatalf("gitserver: sshd needs /run/sshd and it cannot be created: %v", err)
		}
	}
	u, err := user.Current()
	if err != nil {
		t.Fatalf("gitserver: current user: %v", err)
	}
	dir := shortTempDir(t, "sshd")
	s := &SSHD{
		Root:      root,
		Addr:      FreeLoopbackAddr(t),
		User:      u.Username,
		ClientKey: NewSSHKey(t, "client"),
		HostKey:   NewSSHKey(t, "host"),
		t:         t,
		dir:       dir,
	}
	wrapper := filepath.Join(dir, "git-only")
	script := `#!/bin/sh
set -f
case "$SSH_ORIGINAL_COMMAND" in
"git-upload-pack '"*|"git-receive-pack '"*|"git-upload-archive '"*) ;;
*) echo "gitserver sshd: command not allowed: $SSH_ORIGINAL_COMMAND" >&2; exit 1 ;;
esac
cmd=${SSH_ORIGINAL_COMMAND%% *}
path=${SSH_ORIGINAL_COMMAND#* }
path=${path#\'}
path=${path%\'}
path=${path#/}
case "/$path/" in
*/../*) echo "gitserver sshd: path not allowed: $path" >&2; exit 1 ;;
esac
exec "$cmd" "` + root + `/$path"
`
	writeFile(t, wrapper, script, 0o755)
	ak := filepath.Join(dir, "authorized_keys")
	// HOME points at the server's directory so that the login shell does
	// not source the real account's ~/.bashrc (Debian's bash does for SSH
	// sessions), which can be slow and is none of the test's business.
	writeFile(t, ak, fmt.Sprintf("command=%q,environment=\"HOME=%s\",no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty %s\n",
		wrapper, dir, s.ClientKey.AuthorizedKey()), 0o600)
	s.KnownHostsFile = filepath.Join(dir, "known_hosts")
	writeFile(t, s.KnownHostsFile, s.KnownHostsLine(), 0o644)
	s.config = filepath.Join(dir, "sshd_config")
	writeFile(t, s.config, strings.Join([]string{
		"ListenAddress " + s.Addr,
		"HostKey " + s.HostKey.PrivatePath,
		"AuthorizedKeysFile " + ak,
		"PidFile none",
		"StrictModes no",
		"UsePAM no",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PubkeyAuthentication yes",
		"PermitUserEnvironment HOME",
		"PermitRootLogin prohibit-password",
		"AllowUsers " + u.Username,
		"MaxStartups 200:30:400",
		"MaxSessions 100",
		"LoginGraceTime 30",
		"LogLevel ERROR",
		"",
	}, "\n"), 0o600)
	if out, err := exec.Command(SSHDPath, "-t", "-f", s.config).CombinedOutput(); err != nil {
		t.Fatalf("gitserver: sshd rejects its config: %v: %s", err, out)
	}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// URL returns the ssh:// URL of the repository at root/repo.
func (s *SSHD) URL(repo string) string {
	return "ssh://" + s.User + "@" + s.Addr + "/" + strings.TrimPrefix(repo, "/")
}

// KnownHostsLine returns the known_hosts line for the server.
func (s *SSHD) KnownHostsLine() string {
	return fmt.Sprintf("[%s]:%s %s\n", hostOf(s.Addr), portOf(s.Addr), s.HostKey.AuthorizedKey())
}

// CLIEnv returns GIT_SSH_COMMAND for the git CLI: the client key, the
// server's known_hosts and strict host key checking.
func (s *SSHD) CLIEnv() []string {
	return []string{"GIT_SSH_COMMAND=" + strings.Join([]string{
		"ssh", "-F", "/dev/null",
		"-i", s.ClientKey.PrivatePath,
		"-o", "IdentitiesOnly=yes",
		"-o", "UserKnownHostsFile=" + s.KnownHostsFile,
		"-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes",
	}, " ")}
}

// Start starts sshd (again) and waits for its SSH banner.
func (s *SSHD) Start() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p != nil && s.p.exited() == nil {
		return
	}
	var p *process
	err := WaitFor(StartTimeout, func() error {
		var err error
		p, err = startProcess("sshd", exec.Command(SSHDPath, "-D", "-e", "-f", s.config))
		if err != nil {
			return err
		}
		err = p.waitListening(s.Addr, func(c net.Conn) error {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return fmt.Errorf("read banner: %w", err)
			}
			if !strings.HasPrefix(line, "SSH-2.0-") {
				return fmt.Errorf("unexpected banner %q", line)
			}
			return nil
		})
		if err != nil {
			p.stop()
			// The port can still be held by the previous instance's
			// connections for a moment: try again.
			if strings.Contains(p.out.String(), "Address already in use") {
				return fmt.Errorf("%s", p.out.String())
			}
			return fmt.Errorf("%w: %w", errStop, err)
		}
		return nil
	})
	if err != nil {
		s.t.Fatalf("gitserver: sshd on %s not ready: %v", s.Addr, err)
	}
	s.p = p
}

// Stop kills sshd (by its pid) and waits for it to exit.
func (s *SSHD) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.p.stop()
}

// Output returns what sshd printed so far.
func (s *SSHD) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.p == nil {
		return ""
	}
	return s.p.out.String()
}

func hostOf(addr string) string { h, _, _ := net.SplitHostPort(addr); return h }
func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("gitserver: %v", err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatalf("gitserver: write %s: %v", path, err)
	}
}

// shortTempDir returns a new directory with a short path (gpg-agent's socket
// and sshd's paths must stay short), removed when the test ends.
func shortTempDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "herd-"+prefix+"-")
	if err != nil {
		t.Fatalf("gitserver: temp dir: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
