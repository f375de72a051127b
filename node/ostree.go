package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"herd.dev/herd/node/fsm"
	"herd.dev/herd/node/metrics"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

// StageOptions configure StageOS.
type StageOptions struct {
	// TrustedKeysDir holds <remote>.asc or <remote>.gpg, the key trusted for
	// a remote that requires GPG verification.
	TrustedKeysDir string
	// DefaultRemote is pulled from when the OS config names no remote.
	DefaultRemote string
	// TrustFile is the operator-owned list of remotes nodes pull from
	// (see ostree.LoadTrust). When set, a remote it does not list, or at
	// another URL, is refused, and pulls always verify signatures with the
	// key it names, whatever the rendered config says. TrustedKeysDir is
	// then unused.
	TrustFile string
	// Metrics counts pulls that used a static delta; nil counts nothing.
	Metrics *metrics.Agent
}

// PullOS makes sure commit is in the sysroot's repository: when it is not,
// it configures the remote the OS config names (with its GPG policy) and
// pulls exactly that commit. It reports whether it pulled and how long that
// took. A commit already on disk (e.g. the rollback deployment's) needs no
// remote at all: the rollback fast path.
//
// A commit the remote does not have, or that fails verification, is a
// refusal for the agent (*fsm.Refusal); the error wraps ostree.ErrCommitNotFound or
// ostree.ErrVerification.
func PullOS(ctx context.Context, s *ostree.Sysroot, osc schema.OSConfig, commit string, opts StageOptions) (bool, time.Duration, error) {
	has, err := s.HasCommit(ctx, commit)
	if err != nil {
		return false, 0, fmt.Errorf("look for OS commit %s: %w", schema.Short(commit), err)
	}
	if has {
		return false, 0, nil
	}
	remote := opts.DefaultRemote
	if opts.TrustFile != "" {
		if osc.Remote != nil {
			remote = osc.Remote.Name
		}
		if err := ensureTrusted(ctx, s, opts.TrustFile, remote, osc.Remote); err != nil {
			return false, 0, err
		}
	} else if osc.Remote != nil {
		remote = osc.Remote.Name
		ropts := ostree.RemoteOptions{GPGVerify: osc.Remote.GPGVerify}
		if osc.Remote.GPGVerify {
			ropts.GPGKeyPath = trustedKey(opts.TrustedKeysDir, remote)
		}
		if err := s.EnsureRemote(ctx, remote, osc.Remote.URL, ropts); err != nil {
			return false, 0, fmt.Errorf("pull OS commit %s: %w", schema.Short(commit), err)
		}
	}
	if remote == "" {
		return false, 0, &fsm.Refusal{
			Msg: fmt.Sprintf("OS commit %s is not on disk and the rendered config names no remote to pull it from", schema.Short(commit)),
			Err: ostree.ErrCommitNotFound,
		}
	}
	start := time.Now()
	stats, err := s.PullWithStats(ctx, remote, osc.Ref, commit)
	if err != nil {
		if errors.Is(err, ostree.ErrCommitNotFound) || errors.Is(err, ostree.ErrVerification) {
			return false, 0, &fsm.Refusal{Msg: fmt.Sprintf("OS commit %s: %v", schema.Short(commit), err), Err: err}
		}
		return false, 0, fmt.Errorf("pull OS commit %s: %w", schema.Short(commit), err)
	}
	if stats.DeltaParts > 0 {
		opts.Metrics.DeltaPulled()
	}
	return true, time.Since(start), nil
}

// ensureTrusted points the sysroot's remote at what the operator's trust
// file says for it, with signature verification on, or refuses a remote
// the file does not list (or lists at another URL than the fleet's).
// Nothing on the node changes before the check passes.
func ensureTrusted(ctx context.Context, s *ostree.Sysroot, file, remote string, fleet *schema.RemoteConfig) error {
	trust, err := ostree.LoadTrust(file)
	if err != nil {
		return &fsm.Refusal{Msg: err.Error(), Err: ostree.ErrUntrustedRemote}
	}
	url := ""
	if fleet != nil {
		url = fleet.URL
	}
	r, err := trust.Check(remote, url)
	if err != nil {
		return &fsm.Refusal{Msg: err.Error(), Err: err}
	}
	ropts := ostree.RemoteOptions{GPGVerify: true, GPGKeyPath: r.GPGKeyFile}
	if err := s.EnsureRemote(ctx, r.Name, r.URL, ropts); err != nil {
		return fmt.Errorf("trusted remote %s: %w", r.Name, err)
	}
	return nil
}

// StageOS is the agent's whole OSTree apply in one call, PullOS then
// Deploy: it makes commit, with exactly kargs, the default deployment for
// the next boot. (The agent itself writes the config files between the two,
// so that ostree merges them into the new deployment's /etc.) It reports
// whether it pulled.
func StageOS(ctx context.Context, s *ostree.Sysroot, osc schema.OSConfig, commit string, kargs []string, opts StageOptions) (bool, error) {
	pulled, _, err := PullOS(ctx, s, osc, commit, opts)
	if err != nil {
		return pulled, err
	}
	if err := s.Deploy(ctx, commit, kargs); err != nil {
		return pulled, fmt.Errorf("deploy OS commit %s: %w", schema.Short(commit), err)
	}
	return pulled, nil
}

func trustedKey(dir, remote string) string {
	if dir == "" {
		return ""
	}
	for _, ext := range []string{".asc", ".gpg"} {
		p := filepath.Join(dir, remote+ext)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	return ""
}
