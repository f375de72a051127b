package gitserver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Clone is a working clone driven by the real git CLI, standing for another
// writer of a repository (a person, CI, another controller).
type Clone struct {
	// Dir is the work tree.
	Dir string
	// URL is the remote "origin".
	URL string
	// Branch is the branch commits and pushes go to.
	Branch string
	// Env is added to every git command (GIT_SSH_COMMAND, GNUPGHOME, ...).
	Env []string
	// PushAttempts counts the pushes PushWithRetry tried.
	PushAttempts int

	t testing.TB
}

// NewClone creates a working clone of url in a new temporary directory that
// tracks branch; when the remote has no such branch yet, the clone starts it.
// env is added to every git command of the clone.
func NewClone(t testing.TB, url, branch string, env ...string) *Clone {
	t.Helper()
	c, err := TryNewClone(t, url, branch, env...)
	if err != nil {
		t.Fatalf("gitserver: %v", err)
	}
	return c
}

// TryNewClone is NewClone returning its error; safe to call from any
// goroutine.
func TryNewClone(t testing.TB, url, branch string, env ...string) (*Clone, error) {
	c := &Clone{Dir: filepath.Join(t.TempDir(), "work"), URL: url, Branch: branch, Env: env, t: t}
	ctx := context.Background()
	cfg := []string{"-c", "user.name=Test Writer", "-c", "user.email=writer@example.com", "-c", "commit.gpgsign=false"}
	// One process when the branch exists.
	args := append([]string{"clone", "--quiet", "--single-branch", "--branch", branch}, cfg...)
	if _, err := RunGit(ctx, "", c.Env, append(args, url, c.Dir)...); err == nil {
		return c, nil
	}
	_ = os.RemoveAll(c.Dir)
	steps := [][]string{
		{"init", "--quiet", "--initial-branch=" + branch, c.Dir},
		{"-C", c.Dir, "config", "user.name", "Test Writer"},
		{"-C", c.Dir, "config", "user.email", "writer@example.com"},
		{"-C", c.Dir, "config", "commit.gpgsign", "false"},
		{"-C", c.Dir, "remote", "add", "origin", url},
		{"-C", c.Dir, "fetch", "--quiet", "origin"},
	}
	for _, s := range steps {
		if _, err := RunGit(ctx, "", c.Env, s...); err != nil {
			return nil, err
		}
	}
	if c.remoteHasBranch() {
		if _, err := c.Run(ctx, "checkout", "--quiet", "-B", branch, "origin/"+branch); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Run runs git in the clone and returns its output; safe to call from any
// goroutine.
func (c *Clone) Run(ctx context.Context, args ...string) (string, error) {
	return RunGit(ctx, c.Dir, c.Env, args...)
}

// Git runs git in the clone and fails the test on error.
func (c *Clone) Git(args ...string) string {
	c.t.Helper()
	return Git(c.t, c.Dir, c.Env, args...)
}

// Write writes a file (creating directories) relative to the work tree.
func (c *Clone) Write(rel, content string) {
	c.t.Helper()
	if err := c.WriteErr(rel, content); err != nil {
		c.t.Fatalf("gitserver: %v", err)
	}
}

// WriteErr is Write returning its error; safe from any goroutine.
func (c *Clone) WriteErr(rel, content string) error {
	p := filepath.Join(c.Dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("create directory for %s: %w", rel, err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", rel, err)
	}
	return nil
}

// Commit stages everything and commits with message msg (empty commits
// allowed); it returns the new commit's hash.
func (c *Clone) Commit(msg string) string {
	c.t.Helper()
	c.Git("add", "-A")
	c.Git("commit", "--quiet", "--allow-empty", "-m", msg)
	return c.Head()
}

// CommitFiles writes files (path -> content) and commits them.
func (c *Clone) CommitFiles(msg string, files map[string]string) string {
	c.t.Helper()
	for p, content := range files {
		c.Write(p, content)
	}
	return c.Commit(msg)
}

// Head returns the hash of HEAD.
func (c *Clone) Head() string {
	c.t.Helper()
	return c.Git("rev-parse", "HEAD")
}

// Push pushes HEAD to the branch (never forced).
func (c *Clone) Push() {
	c.t.Helper()
	c.Git("push", "--quiet", "origin", "HEAD:refs/heads/"+c.Branch)
}

// ForcePush force-pushes HEAD to the branch.
func (c *Clone) ForcePush() {
	c.t.Helper()
	c.Git("push", "--quiet", "--force", "origin", "HEAD:refs/heads/"+c.Branch)
}

// ResetHard moves HEAD and the work tree to rev.
func (c *Clone) ResetHard(rev string) {
	c.t.Helper()
	c.Git("reset", "--quiet", "--hard", rev)
}

// PushWithRetry pushes HEAD, and on rejection (someone else pushed first)
// rebases onto the remote branch and tries again, up to attempts times with
// a little random back-off. It never force-pushes and is safe to call from
// any goroutine.
func (c *Clone) PushWithRetry(ctx context.Context, attempts int) error {
	var last error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			// Back off (jittered, exponential) before catching up, so
			// that the window between catching up and pushing stays
			// short.
			backoff := time.Duration(1+rand.IntN(10<<min(i, 9))) * time.Millisecond
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			if _, err := c.Run(ctx, "pull", "--quiet", "--rebase", "origin", c.Branch); err != nil {
				last = fmt.Errorf("after %w: %w", last, err)
				continue
			}
		}
		c.PushAttempts++
		_, err := c.Run(ctx, "push", "--quiet", "origin", "HEAD:refs/heads/"+c.Branch)
		if err == nil {
			return nil
		}
		last = err
	}
	return fmt.Errorf("push to %s after %d attempts: %w", c.Branch, attempts, last)
}

// SignWithGPG makes later commits OpenPGP-signed by k.
func (c *Clone) SignWithGPG(k *GPGKey) {
	c.t.Helper()
	c.setEnv("GNUPGHOME", k.Home)
	c.Git("config", "gpg.format", "openpgp")
	c.Git("config", "user.signingkey", k.Fingerprint)
	c.Git("config", "commit.gpgsign", "true")
}

// SignWithSSH makes later commits SSH-signed by k (gpg.format=ssh).
func (c *Clone) SignWithSSH(k *SSHKey) {
	c.t.Helper()
	c.Git("config", "gpg.format", "ssh")
	c.Git("config", "user.signingkey", k.PrivatePath)
	c.Git("config", "commit.gpgsign", "true")
}

// NoSigning makes later commits unsigned.
func (c *Clone) NoSigning() {
	c.t.Helper()
	c.Git("config", "commit.gpgsign", "false")
}

func (c *Clone) setEnv(key, value string) {
	prefix := key + "="
	for i, kv := range c.Env {
		if strings.HasPrefix(kv, prefix) {
			c.Env[i] = prefix + value
			return
		}
	}
	c.Env = append(c.Env, prefix+value)
}

func (c *Clone) remoteHasBranch() bool {
	out, err := RunGit(context.Background(), c.Dir, c.Env, "rev-parse", "--verify", "--quiet", "refs/remotes/origin/"+c.Branch)
	return err == nil && out != ""
}
