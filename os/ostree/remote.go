package ostree

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// RemoteOptions configures how commits from a remote are verified.
//
// Debian's ostree 2022.7 is built without libsodium, so ed25519
// (--sign-verify) verification is not offered; GPG is.
type RemoteOptions struct {
	// GPGVerify requires every pulled commit to carry a valid GPG
	// signature from a trusted key.
	GPGVerify bool
	// GPGKeyPath is a public key file (armored or binary) trusted for this
	// remote. Replacing the file's content replaces the trusted keys.
	GPGKeyPath string
}

// keyDigestOption records the trusted key's digest in the remote's config so
// that EnsureRemote can tell when nothing changed. ostree ignores unknown keys.
const keyDigestOption = "herd-gpg-key-sha256"

// EnsureRemote makes the sysroot repository's remote name point at url with
// the given verification. It is idempotent: when the remote is already
// configured that way it runs no command; otherwise it (re)creates the
// remote, dropping keys trusted before.
func (s *Sysroot) EnsureRemote(ctx context.Context, name, url string, opts RemoteOptions) error {
	if name == "" || url == "" {
		return errors.New("ostree: ensure remote: name and url are required")
	}
	if strings.ContainsAny(name, "/:\" \t\n[]") {
		return fmt.Errorf("ostree: ensure remote: invalid remote name %q", name)
	}
	want := map[string]string{
		"url":        url,
		"gpg-verify": fmt.Sprint(opts.GPGVerify),
	}
	if opts.GPGKeyPath != "" {
		key, err := os.ReadFile(opts.GPGKeyPath)
		if err != nil {
			return fmt.Errorf("ostree: ensure remote %s: %w", name, err)
		}
		sum := sha256.Sum256(key)
		want[keyDigestOption] = hex.EncodeToString(sum[:])
	}
	have, found, err := s.remoteConfig(name)
	if err != nil {
		return fmt.Errorf("ostree: ensure remote %s: %w", name, err)
	}
	if found && sameRemote(have, want) {
		return nil
	}
	if found {
		// Delete rather than add --force: deleting drops the remote's
		// keyring, so a replaced key stops being trusted.
		if _, err := s.run(ctx, s.repoFlag(), "remote", "delete", name); err != nil {
			return fmt.Errorf("ostree: ensure remote %s: %w", name, err)
		}
	}
	args := []string{s.repoFlag(), "remote", "add", "--set=gpg-verify=" + want["gpg-verify"]}
	if opts.GPGKeyPath != "" {
		args = append(args, "--gpg-import="+opts.GPGKeyPath, "--set="+keyDigestOption+"="+want[keyDigestOption])
	}
	args = append(args, name, url)
	if _, err := s.run(ctx, args...); err != nil {
		return fmt.Errorf("ostree: ensure remote %s: %w", name, err)
	}
	return nil
}

func sameRemote(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	// A key was trusted before but none is wanted now.
	_, hadKey := have[keyDigestOption]
	_, wantKey := want[keyDigestOption]
	return hadKey == wantKey
}

// remoteConfig reads remote name's settings from the repository config, or
// from etc/ostree/remotes.d where ostree puts remotes of a booted system repo.
func (s *Sysroot) remoteConfig(name string) (map[string]string, bool, error) {
	files := []string{filepath.Join(s.repoPath(), "config")}
	more, err := filepath.Glob(filepath.Join(s.Path, "etc", "ostree", "remotes.d", "*.conf"))
	if err != nil {
		return nil, false, err
	}
	files = append(files, more...)
	section := `remote "` + name + `"`
	for _, f := range files {
		kv, found, err := readKeyFileGroup(f, section)
		if err != nil {
			return nil, false, err
		}
		if found {
			return kv, true, nil
		}
	}
	return nil, false, nil
}

// readKeyFileGroup reads one [group] of a GKeyFile-style ini file.
func readKeyFileGroup(path, group string) (map[string]string, bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	var kv map[string]string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			in = line[1:len(line)-1] == group
			if in && kv == nil {
				kv = map[string]string{}
			}
			continue
		}
		if in {
			k, v, _ := strings.Cut(line, "=")
			kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return kv, kv != nil, sc.Err()
}

// HasCommit reports whether the commit is completely present in the sysroot
// repository, so that Deploy needs no Pull. It reads the repository on disk
// and runs no command: a commit object without an interrupted-pull marker.
func (s *Sysroot) HasCommit(ctx context.Context, checksum string) (bool, error) {
	if err := checkChecksum(checksum); err != nil {
		return false, err
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	repo := s.repoPath()
	ok, err := exists(filepath.Join(repo, "objects", checksum[:2], checksum[2:]+".commit"))
	if err != nil || !ok {
		return false, err
	}
	partial, err := exists(filepath.Join(repo, "state", checksum+".commitpartial"))
	return !partial, err
}

// Pull fetches exactly the given commit from remote with one ostree pull of
// ref@checksum, verified as the remote's configuration requires (GPG
// signature, ref binding). The remote ref is set to the commit, which keeps it
// from being pruned until it is deployed. With ref empty the bare commit is
// pulled and stays unreferenced until deployed.
//
// A commit absent on the remote yields ErrCommitNotFound; a failed signature
// or binding check yields ErrVerification. Over HTTP ostree reports a missing
// commit only as a 404, so a remote URL where no repository is at all also
// yields ErrCommitNotFound (the wrapped stderr tells).
func (s *Sysroot) Pull(ctx context.Context, remote, ref, checksum string) error {
	_, err := s.PullWithStats(ctx, remote, ref, checksum)
	return err
}

// PullStats is what a pull fetched, as ostree pull reports it.
type PullStats struct {
	// DeltaParts is the number of static delta parts fetched: more than
	// zero when the remote offered a delta from a commit the repository has.
	DeltaParts int
	// Objects is the number of objects fetched one by one.
	Objects int
}

// noDeltaRE matches ostree pull --require-static-deltas failing for want
// of a delta (none to the commit, or no delta index at all).
var noDeltaRE = regexp.MustCompile(`Static deltas required, but none found|require static deltas, but no summary deltas or delta index found`)

// pullSummaryRE matches the last line of ostree pull, e.g. "1 delta parts,
// 3 loose fetched; 1 KiB transferred in 0 seconds; 0 bytes content written"
// or "10 metadata, 3 content objects fetched; 19538 KiB transferred ...".
var pullSummaryRE = regexp.MustCompile(`(?m)^(?:(\d+) delta parts, (\d+) loose fetched|(\d+) metadata, (\d+) content objects fetched)`)

func parsePullStats(out string) PullStats {
	var st PullStats
	for _, m := range pullSummaryRE.FindAllStringSubmatch(out, -1) {
		if m[1] != "" {
			st.DeltaParts, _ = strconv.Atoi(m[1])
			st.Objects, _ = strconv.Atoi(m[2])
		} else {
			meta, _ := strconv.Atoi(m[3])
			content, _ := strconv.Atoi(m[4])
			st.Objects = meta + content
		}
	}
	return st
}

// PullWithStats is Pull, and reports what it fetched. It pulls a static
// delta when the remote offers one from a commit the repository holds (or
// from scratch), and the objects one by one otherwise.
func (s *Sysroot) PullWithStats(ctx context.Context, remote, ref, checksum string) (PullStats, error) {
	if err := checkChecksum(checksum); err != nil {
		return PullStats{}, err
	}
	if remote == "" {
		return PullStats{}, errors.New("ostree: pull: remote is required")
	}
	target := checksum
	if ref != "" {
		target = ref + "@" + checksum
	}
	// The commit and its signature first: a commit that fails verification
	// is refused before any of its content is fetched. And ostree 2022.7,
	// asked for a commit it does not have yet, scans it while the static
	// delta is still being applied and fetches the changed objects whole
	// as well; with the commit on disk it takes them from the delta only.
	out, err := s.run(ctx, s.repoFlag(), "pull", "--commit-metadata-only", remote, target)
	if err == nil {
		out, err = s.run(ctx, s.repoFlag(), "pull", "--require-static-deltas", remote, target)
		var ce *CommandError
		if errors.As(err, &ce) && noDeltaRE.MatchString(ce.Stderr) {
			out, err = s.run(ctx, s.repoFlag(), "pull", remote, target)
		}
	}
	if err == nil {
		return parsePullStats(out), nil
	}
	return PullStats{}, s.pullError(ctx, err, remote, target, checksum)
}

// pullError classifies a failed pull: ErrCommitNotFound, ErrVerification
// or neither.
func (s *Sysroot) pullError(ctx context.Context, err error, remote, target, checksum string) error {
	wrap := func(kind error) error {
		if kind == nil {
			return fmt.Errorf("ostree: pull %s from %s: %w", target, remote, err)
		}
		return fmt.Errorf("ostree: pull %s from %s: %w: %w", target, remote, kind, err)
	}
	var ce *CommandError
	if !errors.As(err, &ce) || ctx.Err() != nil {
		return wrap(nil)
	}
	missing := func(stderr string) bool { // the commit object itself was not found
		return strings.Contains(stderr, "HTTP 404") ||
			strings.Contains(stderr, checksum+".commit") && strings.Contains(stderr, "No such file or directory")
	}
	switch {
	case verificationRE.MatchString(ce.Stderr):
		return wrap(ErrVerification)
	case strings.Contains(ce.Stderr, "HTTP 404"):
		// HTTP says only "404": the commit, or one of its objects? Ask
		// for the commit object alone (a command on the failure path only).
		_, probe := s.run(ctx, s.repoFlag(), "pull", "--commit-metadata-only", remote, checksum)
		var pe *CommandError
		if errors.As(probe, &pe) && missing(pe.Stderr) {
			return wrap(ErrCommitNotFound)
		}
	case missing(ce.Stderr):
		// file:// remotes name the missing object.
		return wrap(ErrCommitNotFound)
	}
	return wrap(nil)
}

var verificationRE = regexp.MustCompile(`(?i)GPG verification|signature|public key not found|ref binding|collection binding|BAD sig`)
