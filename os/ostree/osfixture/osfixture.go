// Package osfixture builds throwaway OSTree content for tests and simulations:
// an archive repository of bootable OS versions and sysroots wired to it.
package osfixture

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"herd.dev/herd/os/ostree"
)

// Defaults used when Options or SysrootOptions leave a field empty.
const (
	DefaultRef    = "herd/stable"
	DefaultOSName = "herd"
	DefaultRemote = "herd"
	// KernelVersion names the (fake) kernel every version ships; all
	// versions share it, so they also share one /boot directory.
	KernelVersion = "6.1.0-herd"
)

// Env is the extra ostree environment of the sysroots made here: deployments
// stay mutable (no chattr +i), so the directories can simply be removed.
var Env = []string{"OSTREE_SYSROOT_DEBUG=mutable-deployments"}

// Options configures NewRepo.
type Options struct {
	Versions int    // OS versions to commit on Ref; 0 means 2
	Ref      string // branch of the versions; "" means DefaultRef
	Sign     bool   // GPG-sign the versions with a generated test key
	Binary   string // ostree binary; "" means "ostree"
	// PayloadMiB adds that many MiB of incompressible data to every
	// version, as 1 MiB files usr/share/payload/NNN, the same in each
	// version (benchmarks of pulls and builds on a realistic tree).
	PayloadMiB int
}

// Repo is an archive-mode repository holding successive OS versions on one
// ref. Close it to stop the gpg-agent signing started.
type Repo struct {
	Path    string   // repository directory
	URL     string   // file:// URL of Path, for remotes
	Ref     string   // branch the versions are committed on
	Commits []string // Commits[i] has version metadata "v<i+1>"; the last is Ref's head
	// KeyPath is the armored public key signing uses; empty until the
	// first signed commit.
	KeyPath string

	dir       string
	binary    string
	gnupgHome string
	keyID     string
	key       *GPGKey

	payload int // MiB of payload per version

	mu        sync.Mutex // guards Commits, the key and templates
	templates map[string]*template
}

type template struct {
	mu    sync.Mutex // held while building
	path  string
	built bool
}

// NewRepo creates the repository in dir/repo and commits opts.Versions
// bootable OS versions to it. Each version is the minimal tree ostree admin
// deploy accepts: a kernel and initramfs in usr/lib/modules/<kver>/, an
// os-release, and usr/etc.
func NewRepo(ctx context.Context, dir string, opts Options) (*Repo, error) {
	if opts.Versions == 0 {
		opts.Versions = 2
	}
	if opts.Ref == "" {
		opts.Ref = DefaultRef
	}
	if opts.Binary == "" {
		opts.Binary = "ostree"
	}
	r := &Repo{
		payload:   opts.PayloadMiB,
		Path:      filepath.Join(dir, "repo"),
		Ref:       opts.Ref,
		dir:       dir,
		binary:    opts.Binary,
		templates: map[string]*template{},
	}
	r.URL = "file://" + r.Path
	if err := os.MkdirAll(r.Path, 0o755); err != nil {
		return nil, fmt.Errorf("osfixture: %w", err)
	}
	if _, err := r.ostree(ctx, "--repo="+r.Path, "init", "--mode=archive"); err != nil {
		return nil, err
	}
	for range opts.Versions {
		if _, err := r.AddCommit(ctx, opts.Sign); err != nil {
			r.Close()
			return nil, err
		}
	}
	return r, nil
}

// Existing wraps an archive repository made elsewhere (by herd os build,
// say) so that NewSysroot can make sysroots from it: commits are its OS
// versions, oldest first, on ref; url is where nodes pull it from; keyPath
// (may be empty) the public key its commits are signed with. dir holds the
// sysroot templates. AddCommit is not for such a repository.
func Existing(dir, path, url, ref, keyPath string, commits []string) *Repo {
	return &Repo{Path: path, URL: url, Ref: ref, KeyPath: keyPath, Commits: slices.Clone(commits),
		dir: dir, binary: "ostree", templates: map[string]*template{}}
}

// AddCommit commits the next OS version on Ref, GPG-signed if sign is set
// (generating the test key on first use), and returns its checksum.
func (r *Repo) AddCommit(ctx context.Context, sign bool) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	version := "v" + strconv.Itoa(len(r.Commits)+1)
	tree, err := os.MkdirTemp(r.dir, "tree-")
	if err != nil {
		return "", fmt.Errorf("osfixture: %w", err)
	}
	defer os.RemoveAll(tree)
	osRelease := fmt.Sprintf("NAME=\"Herd OS\"\nID=herd\nVERSION_ID=%s\nPRETTY_NAME=\"Herd OS %s\"\n", version, version)
	files := map[string]string{
		"usr/lib/modules/" + KernelVersion + "/vmlinuz":       "herd test kernel " + KernelVersion + "\n",
		"usr/lib/modules/" + KernelVersion + "/initramfs.img": "herd test initramfs " + KernelVersion + "\n",
		"usr/lib/os-release":                                  osRelease,
		"usr/share/herd/version":                              version + "\n",
	}
	for name, content := range files {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return "", fmt.Errorf("osfixture: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return "", fmt.Errorf("osfixture: %w", err)
		}
	}
	if err := WritePayload(filepath.Join(tree, "usr/share/payload"), r.payload, 0); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(tree, "usr/etc"), 0o755); err != nil {
		return "", fmt.Errorf("osfixture: %w", err)
	}
	if err := os.Symlink("../lib/os-release", filepath.Join(tree, "usr/etc/os-release")); err != nil {
		return "", fmt.Errorf("osfixture: %w", err)
	}
	args := []string{"--repo=" + r.Path, "commit", "--branch=" + r.Ref, "--tree=dir=" + tree,
		"--subject=Herd OS " + version, "--add-metadata-string=version=" + version,
		"--owner-uid=0", "--owner-gid=0"}
	if sign {
		if err := r.ensureKey(ctx); err != nil {
			return "", err
		}
		args = append(args, "--gpg-sign="+r.keyID, "--gpg-homedir="+r.gnupgHome)
	}
	out, err := r.ostree(ctx, args...)
	if err != nil {
		return "", err
	}
	checksum := strings.TrimSpace(out)
	r.Commits = append(r.Commits, checksum)
	return checksum, nil
}

// WritePayload writes mib files of 1 MiB of pseudo-random (incompressible)
// data named 000, 001, ... into dir; the content depends only on the index
// and seed.
func WritePayload(dir string, mib int, seed uint64) error {
	if mib == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("osfixture: %w", err)
	}
	buf := make([]byte, 1<<20)
	for i := range mib {
		rng := rand.New(rand.NewPCG(uint64(i), seed))
		for j := 0; j < len(buf); j += 8 {
			binary.LittleEndian.PutUint64(buf[j:], rng.Uint64())
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%03d", i)), buf, 0o644); err != nil {
			return fmt.Errorf("osfixture: %w", err)
		}
	}
	return nil
}

// ensureKey generates the signing key on first use.
func (r *Repo) ensureKey(ctx context.Context) error {
	if r.key != nil {
		return nil
	}
	k, err := NewGPGKey(ctx, r.dir)
	if err != nil {
		return err
	}
	r.key, r.gnupgHome, r.keyID, r.KeyPath = k, k.Home, k.ID, k.PublicKeyPath
	return nil
}

// Close stops the gpg-agent started for signing, if any.
func (r *Repo) Close() error {
	if r.key == nil {
		return nil
	}
	return r.key.Close()
}

// GPGKey is a generated ed25519 GPG signing key in a private GNUPGHOME.
// Close stops the gpg-agent it started.
type GPGKey struct {
	Home          string // GNUPGHOME holding the secret key
	ID            string // fingerprint
	PublicKeyPath string // armored public key
}

// NewGPGKey generates a signing key under dir.
func NewGPGKey(ctx context.Context, dir string) (*GPGKey, error) {
	home, err := os.MkdirTemp(dir, "gnupg-")
	if err != nil {
		return nil, fmt.Errorf("osfixture: %w", err)
	}
	if err := os.Chmod(home, 0o700); err != nil {
		return nil, fmt.Errorf("osfixture: %w", err)
	}
	k := &GPGKey{Home: home}
	gpg := func(args ...string) (string, error) {
		return run(ctx, []string{"GNUPGHOME=" + home}, "gpg", args...)
	}
	if _, err := gpg("--batch", "--passphrase", "", "--quick-gen-key",
		"Herd Test Signing <test@herd.dev>", "ed25519", "sign", "never"); err != nil {
		return nil, err
	}
	out, err := gpg("--batch", "--with-colons", "--list-secret-keys")
	if err != nil {
		return nil, err
	}
	for line := range strings.SplitSeq(out, "\n") {
		if f := strings.Split(line, ":"); len(f) > 9 && f[0] == "fpr" {
			k.ID = f[9]
			break
		}
	}
	if k.ID == "" {
		return nil, errors.New("osfixture: gpg: no fingerprint in generated key listing")
	}
	key, err := gpg("--batch", "--armor", "--export", k.ID)
	if err != nil {
		return nil, err
	}
	k.PublicKeyPath = filepath.Join(home, "public.asc")
	if err := os.WriteFile(k.PublicKeyPath, []byte(key), 0o644); err != nil {
		return nil, fmt.Errorf("osfixture: %w", err)
	}
	return k, nil
}

// Close stops the gpg-agent signing started.
func (k *GPGKey) Close() error {
	cmd := exec.Command("gpgconf", "--homedir", k.Home, "--kill", "all")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("osfixture: gpgconf --kill: %w: %s", err, out)
	}
	return nil
}

// SysrootOptions configures NewSysroot.
type SysrootOptions struct {
	OSName     string   // stateroot; "" means DefaultOSName
	Remote     string   // remote pointing at the Repo; "" means DefaultRemote
	Commit     string   // deployed and booted commit; "" means Commits[0]
	KernelArgs []string // kernel arguments of that deployment
	GPGVerify  bool     // verify signatures with the Repo's key
	// Fresh builds the sysroot with the ostree CLI instead of copying the
	// cached template built for the same options.
	Fresh bool
	// Link shares the template's OSTree objects with the new sysroot
	// instead of copying them: files OSTree itself keeps as hard links
	// (its objects and the deployments checked out of them, which it
	// never writes in place) are linked, every other file is copied. A
	// sysroot then costs its directories and a few small files.
	Link bool
}

// NewSysroot creates a sysroot in dir (absent or empty) holding the remote
// for r, with opts.Commit pulled, deployed and booted (SimulateBoot).
//
// The first sysroot for given options is built with the ostree CLI (Init,
// EnsureRemote, Pull, Deploy, SimulateBoot, about 0.3 s, dominated by ostree
// syncing the file system) into a template; later ones copy the template
// (cp -a), which yields the same files for a fraction of the cost.
func (r *Repo) NewSysroot(ctx context.Context, dir string, opts SysrootOptions) (*ostree.Sysroot, error) {
	if opts.OSName == "" {
		opts.OSName = DefaultOSName
	}
	if opts.Remote == "" {
		opts.Remote = DefaultRemote
	}
	r.mu.Lock()
	if opts.Commit == "" && len(r.Commits) > 0 {
		opts.Commit = r.Commits[0]
	}
	r.mu.Unlock()
	if opts.Commit == "" {
		return nil, errors.New("osfixture: NewSysroot: the repository has no commit")
	}
	if opts.Fresh {
		return r.build(ctx, dir, opts)
	}

	key := fmt.Sprintf("%q", []any{opts.OSName, opts.Remote, opts.Commit, opts.KernelArgs, opts.GPGVerify})
	r.mu.Lock()
	t := r.templates[key]
	if t == nil {
		t = &template{path: filepath.Join(r.dir, "templates", strconv.Itoa(len(r.templates)))}
		r.templates[key] = t
	}
	r.mu.Unlock()
	t.mu.Lock()
	if !t.built {
		os.RemoveAll(t.path) // a failed attempt's leftovers
		if _, err := r.build(ctx, t.path, opts); err != nil {
			t.mu.Unlock()
			return nil, err
		}
		t.built = true
	}
	t.mu.Unlock()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("osfixture: %w", err)
	}
	if opts.Link {
		if err := linkTree(t.path, dir); err != nil {
			return nil, fmt.Errorf("osfixture: linking sysroot template: %w", err)
		}
		return r.sysroot(dir, opts), nil
	}
	cmd := exec.CommandContext(ctx, "cp", "-a", t.path+"/.", dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("osfixture: copying sysroot template: %w: %s", err, out)
	}
	return r.sysroot(dir, opts), nil
}

func (r *Repo) sysroot(dir string, opts SysrootOptions) *ostree.Sysroot {
	return &ostree.Sysroot{Path: dir, OSName: opts.OSName, Binary: r.binary, Env: Env}
}

func (r *Repo) build(ctx context.Context, dir string, opts SysrootOptions) (*ostree.Sysroot, error) {
	s := r.sysroot(dir, opts)
	if err := s.Init(ctx); err != nil {
		return nil, err
	}
	ropts := ostree.RemoteOptions{GPGVerify: opts.GPGVerify}
	if opts.GPGVerify {
		r.mu.Lock()
		ropts.GPGKeyPath = r.KeyPath
		r.mu.Unlock()
	}
	if err := s.EnsureRemote(ctx, opts.Remote, r.URL, ropts); err != nil {
		return nil, err
	}
	if err := s.Pull(ctx, opts.Remote, r.Ref, opts.Commit); err != nil {
		return nil, err
	}
	if err := s.Deploy(ctx, opts.Commit, opts.KernelArgs); err != nil {
		return nil, err
	}
	if err := s.SimulateBoot(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (r *Repo) ostree(ctx context.Context, args ...string) (string, error) {
	return run(ctx, nil, r.binary, args...)
}

func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("osfixture: %s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
