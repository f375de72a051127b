// Package ostree drives an OSTree-managed node OS through the ostree CLI:
// pull exact commits, deploy them with kernel arguments, read status, and simulate boots.
package ostree

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Errors reported by Sysroot methods; test for them with errors.Is.
var (
	// ErrCommitNotFound means the commit does not exist where it was looked
	// for: on the remote for Pull, in the sysroot repository for Deploy.
	ErrCommitNotFound = errors.New("commit not found")
	// ErrVerification means the commit failed verification against the
	// remote's policy: missing or bad GPG signature, unknown key, or a ref
	// binding that does not match the requested ref.
	ErrVerification = errors.New("commit verification failed")
	// ErrNoDeployment means the sysroot has no deployment yet.
	ErrNoDeployment = errors.New("no deployment")
)

// Sysroot is an OSTree sysroot and the stateroot (OS name) Herd manages in it.
//
// The zero value is not usable: Path and OSName are required. Methods are not
// safe for concurrent use on the same sysroot.
type Sysroot struct {
	Path   string // sysroot path, "/" on a real node
	OSName string // stateroot, e.g. "herd"
	Binary string // ostree binary; "ostree" when empty
	// Env is added to the environment of every ostree command, e.g.
	// "OSTREE_SYSROOT_DEBUG=mutable-deployments" for throwaway sysroots.
	Env []string
	// PoolArg reports whether a kernel argument is one the node's pool
	// sets (the agent passes schema.PoolKernelArg). The others (root=,
	// rootflags=, rw, ...) belong to the OS: Status reports them apart, as
	// OSKernelArgs, and Deploy keeps those of the current default
	// deployment. Nil: every argument is the pool's, and a deploy sets
	// exactly the arguments it is given.
	PoolArg func(arg string) bool
}

// CommandError is a failed ostree command. Sysroot methods wrap it with
// context; retrieve it with errors.As.
type CommandError struct {
	Args   []string // full command line, binary first
	Stderr string   // trimmed standard error
	Err    error    // *exec.ExitError, context error, or start error
}

func (e *CommandError) Error() string {
	msg := strings.Join(e.Args, " ") + ": " + e.Err.Error()
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

func (s *Sysroot) binary() string {
	if s.Binary == "" {
		return "ostree"
	}
	return s.Binary
}

// repoPath is the sysroot's system repository.
func (s *Sysroot) repoPath() string { return filepath.Join(s.Path, "ostree", "repo") }

func (s *Sysroot) sysrootFlag() string { return "--sysroot=" + s.Path }
func (s *Sysroot) repoFlag() string    { return "--repo=" + s.repoPath() }

// run executes one ostree command and returns its standard output.
func (s *Sysroot) run(ctx context.Context, args ...string) (string, error) {
	if s.Path == "" || s.OSName == "" {
		return "", errors.New("ostree: Sysroot needs Path and OSName")
	}
	return runOSTree(ctx, s.binary(), s.Env, args...)
}

// runOSTree executes one ostree command with env added to the environment
// and returns its standard output; a failure is a *CommandError.
func runOSTree(ctx context.Context, binary string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, binary, args...)
	// Stable, untranslated messages: errors are classified from stderr.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// ostree admin deploy forks an fsfreeze watchdog; never hang on its pipes.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			err = fmt.Errorf("%w (%v)", ctxErr, err)
		}
		return stdout.String(), &CommandError{
			Args:   append([]string{binary}, args...),
			Stderr: strings.TrimSpace(stderr.String()),
			Err:    err,
		}
	}
	return stdout.String(), nil
}

var checksumRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func checkChecksum(checksum string) error {
	if !checksumRE.MatchString(checksum) {
		return fmt.Errorf("ostree: invalid commit checksum %q (want 64 lowercase hex digits)", checksum)
	}
	return nil
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return false, err
}

// Init creates the sysroot layout (ostree admin init-fs) and the stateroot
// (ostree admin os-init). Steps already done are skipped, so Init is
// idempotent and costs no command on an initialized sysroot.
func (s *Sysroot) Init(ctx context.Context) error {
	if s.Path == "" || s.OSName == "" {
		return errors.New("ostree: init: Sysroot needs Path and OSName")
	}
	ok, err := exists(filepath.Join(s.repoPath(), "config"))
	if err != nil {
		return fmt.Errorf("ostree: init %s: %w", s.Path, err)
	}
	if !ok {
		if err := os.MkdirAll(s.Path, 0o755); err != nil {
			return fmt.Errorf("ostree: init %s: %w", s.Path, err)
		}
		if _, err := s.run(ctx, "admin", "init-fs", "--modern", s.Path); err != nil {
			return fmt.Errorf("ostree: init %s: %w", s.Path, err)
		}
	}
	// os-init fails with "File exists" when run twice.
	ok, err = exists(filepath.Join(s.Path, "ostree", "deploy", s.OSName))
	if err != nil {
		return fmt.Errorf("ostree: init %s: %w", s.Path, err)
	}
	if !ok {
		if _, err := s.run(ctx, "admin", "os-init", s.sysrootFlag(), s.OSName); err != nil {
			return fmt.Errorf("ostree: init stateroot %s: %w", s.OSName, err)
		}
	}
	return nil
}

// Cleanup removes leftover deployment data and prunes repository objects no
// longer reachable from a ref or deployment (ostree admin cleanup). Deploy
// skips the prune to stay fast; SimulateBoot runs Cleanup, and an agent on a
// real node should call it once the new deployment has booted.
func (s *Sysroot) Cleanup(ctx context.Context) error {
	if _, err := s.run(ctx, "admin", "cleanup", s.sysrootFlag()); err != nil {
		return fmt.Errorf("ostree: cleanup: %w", err)
	}
	return nil
}
