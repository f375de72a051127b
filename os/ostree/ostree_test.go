package ostree_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
)

// These tests drive the real ostree CLI on real sysroots in temporary
// directories. They fail, not skip, when it is missing.
func TestMain(m *testing.M) {
	var missing []string
	for _, bin := range []string{"ostree", "gpg", "gpgconf", "cp"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: os/ostree tests need %s in PATH; install with: apt-get install -y ostree gnupg\n",
			strings.Join(missing, ", "))
		os.Exit(1)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: os/ostree tests need root: ostree admin deploy refuses to run otherwise")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

const remote = osfixture.DefaultRemote

func newRepo(t testing.TB, opts osfixture.Options) *osfixture.Repo {
	t.Helper()
	r, err := osfixture.NewRepo(t.Context(), t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func newSysroot(t testing.TB, r *osfixture.Repo, opts osfixture.SysrootOptions) *ostree.Sysroot {
	t.Helper()
	s, err := r.NewSysroot(t.Context(), t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// emptySysroot is an initialized sysroot with remote set up for r.
func emptySysroot(t testing.TB, r *osfixture.Repo, ropts ostree.RemoteOptions) *ostree.Sysroot {
	t.Helper()
	s := &ostree.Sysroot{Path: t.TempDir(), OSName: osfixture.DefaultOSName, Env: osfixture.Env}
	if err := s.Init(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureRemote(t.Context(), remote, r.URL, ropts); err != nil {
		t.Fatal(err)
	}
	return s
}

// logged makes s run ostree through a wrapper that logs each command line,
// and returns a function reading the log.
func logged(t *testing.T, s *ostree.Sysroot) func() []string {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	script := filepath.Join(dir, "ostree")
	real, err := exec.LookPath("ostree")
	if err != nil {
		t.Fatal(err)
	}
	body := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %q\nexec %q \"$@\"\n", log, real)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	s.Binary = script
	return func() []string {
		data, err := os.ReadFile(log)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(string(data)), "\n")
	}
}

func status(t *testing.T, s *ostree.Sysroot) ostree.Status {
	t.Helper()
	st, err := s.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("status:\n%s", describe(st))
	return st
}

func describe(st ostree.Status) string {
	var b strings.Builder
	for i, d := range st.Deployments {
		fmt.Fprintf(&b, "  %d %s %s booted=%v rollback=%v pinned=%v kargs=%q origin=%s\n",
			i, d.ID(), d.Version, d.Booted, d.Rollback, d.Pinned, d.KernelArgs, d.Origin)
	}
	if len(st.Deployments) == 0 {
		b.WriteString("  no deployments\n")
	}
	return b.String()
}

// expect checks the default, booted and rollback commits ("" = none).
func expect(t *testing.T, st ostree.Status, def, booted, rollback string) {
	t.Helper()
	get := func(d *ostree.Deployment, ok bool) string {
		if !ok {
			return ""
		}
		return d.Checksum
	}
	if got := get(st.Default()); got != def {
		t.Errorf("default = %.12s, want %.12s", got, def)
	}
	if got := get(st.Booted()); got != booted {
		t.Errorf("booted = %.12s, want %.12s", got, booted)
	}
	if got := get(st.Rollback()); got != rollback {
		t.Errorf("rollback = %.12s, want %.12s", got, rollback)
	}
}

func deployDirs(t *testing.T, s *ostree.Sysroot) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(s.Path, "ostree", "deploy", s.OSName, "deploy"))
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	return dirs
}

func remoteRef(t *testing.T, s *ostree.Sysroot, ref string) string {
	t.Helper()
	out, err := exec.Command("ostree", "--repo="+filepath.Join(s.Path, "ostree/repo"), "rev-parse", remote+":"+ref).CombinedOutput()
	if err != nil {
		t.Fatalf("rev-parse: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out))
}

func hasCommit(t *testing.T, s *ostree.Sysroot, checksum string) bool {
	t.Helper()
	ok, err := s.HasCommit(t.Context(), checksum)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

// apply is what the agent does: pull if needed, then deploy.
func apply(ctx context.Context, s *ostree.Sysroot, ref, checksum string, kargs []string) error {
	ok, err := s.HasCommit(ctx, checksum)
	if err != nil {
		return err
	}
	if !ok {
		if err := s.Pull(ctx, remote, ref, checksum); err != nil {
			return err
		}
	}
	return s.Deploy(ctx, checksum, kargs)
}

func fakeChecksum(seed string) string {
	sum := sha256.Sum256([]byte(seed))
	return hex.EncodeToString(sum[:])
}

func TestInit(t *testing.T) {
	t.Parallel()
	s := &ostree.Sysroot{Path: filepath.Join(t.TempDir(), "sysroot"), OSName: "herd", Env: osfixture.Env}
	for range 2 { // idempotent
		if err := s.Init(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"ostree/repo/config", "ostree/deploy/herd/var", "boot"} {
		if _, err := os.Stat(filepath.Join(s.Path, p)); err != nil {
			t.Errorf("after Init: %v", err)
		}
	}
	st := status(t, s)
	if len(st.Deployments) != 0 {
		t.Fatalf("fresh sysroot has %d deployments", len(st.Deployments))
	}
	expect(t, st, "", "", "")
	if err := s.SimulateBoot(t.Context()); !errors.Is(err, ostree.ErrNoDeployment) {
		t.Errorf("SimulateBoot without deployment: got %v, want ErrNoDeployment", err)
	}
}

func TestPullExactCommit(t *testing.T) {
	t.Parallel()
	r := newRepo(t, osfixture.Options{Versions: 3})
	s := emptySysroot(t, r, ostree.RemoteOptions{})
	v1, v2, v3 := r.Commits[0], r.Commits[1], r.Commits[2]

	// A second EnsureRemote with the same settings runs no command.
	s.Binary = "/bin/false"
	if err := s.EnsureRemote(t.Context(), remote, r.URL, ostree.RemoteOptions{}); err != nil {
		t.Fatalf("EnsureRemote again: %v", err)
	}
	s.Binary = ""

	for _, c := range r.Commits {
		if hasCommit(t, s, c) {
			t.Fatalf("fresh sysroot has commit %s", c)
		}
	}
	if err := s.Pull(t.Context(), remote, r.Ref, v2); err != nil {
		t.Fatal(err)
	}
	if !hasCommit(t, s, v2) || hasCommit(t, s, v3) || hasCommit(t, s, v1) {
		t.Errorf("after pulling v2: has v1=%v v2=%v v3=%v, want only v2",
			hasCommit(t, s, v1), hasCommit(t, s, v2), hasCommit(t, s, v3))
	}
	if got := remoteRef(t, s, r.Ref); got != v2 {
		t.Errorf("remote ref = %s, want v2 %s", got, v2)
	}

	// An older commit of the same ref.
	if err := s.Pull(t.Context(), remote, r.Ref, v1); err != nil {
		t.Fatal(err)
	}
	if !hasCommit(t, s, v1) || hasCommit(t, s, v3) {
		t.Errorf("after pulling v1: has v1=%v v3=%v", hasCommit(t, s, v1), hasCommit(t, s, v3))
	}
	if got := remoteRef(t, s, r.Ref); got != v1 {
		t.Errorf("remote ref = %s, want v1 %s", got, v1)
	}
	expect(t, status(t, s), "", "", "")
}

func TestDeployKernelArgs(t *testing.T) {
	t.Parallel()
	r := newRepo(t, osfixture.Options{Versions: 1})
	s := emptySysroot(t, r, ostree.RemoteOptions{})
	c := r.Commits[0]
	if err := s.Pull(t.Context(), remote, r.Ref, c); err != nil {
		t.Fatal(err)
	}
	kargs := []string{"console=tty0", "console=ttyS0,115200", "quiet", `herd.note="a b"`, "rd.empty=", "console=tty0"}
	if err := s.Deploy(t.Context(), c, kargs); err != nil {
		t.Fatal(err)
	}
	st := status(t, s)
	expect(t, st, c, "", "")
	d, _ := st.Default()
	if !slices.Equal(d.KernelArgs, kargs) {
		t.Errorf("kernel args read back %q, want %q", d.KernelArgs, kargs)
	}
	if d.Origin != c || d.Version != "v1" || d.OSName != "herd" || d.Booted {
		t.Errorf("deployment = %+v", *d)
	}

	if err := s.SimulateBoot(t.Context()); err != nil {
		t.Fatal(err)
	}
	st = status(t, s)
	expect(t, st, c, c, "")
	if !st.SimulatedBoot {
		t.Error("SimulatedBoot not set")
	}

	// The same commit and arguments again: nothing to do, no command.
	next := logged(t, s)
	if err := s.Deploy(t.Context(), c, kargs); err != nil {
		t.Fatal(err)
	}
	if cmds := next(); len(cmds) != 0 {
		t.Errorf("no-op Deploy ran %q", cmds)
	}

	// Other arguments, same commit: a new deployment, exactly those arguments.
	for _, want := range [][]string{{"quiet"}, {}} {
		if err := s.Deploy(t.Context(), c, want); err != nil {
			t.Fatal(err)
		}
		st = status(t, s)
		d, _ = st.Default()
		if !slices.Equal(d.KernelArgs, want) || d.Booted {
			t.Errorf("default %s kargs %q booted=%v, want kargs %q not booted", d.ID(), d.KernelArgs, d.Booted, want)
		}
		b, ok := st.Booted()
		if !ok || b.Serial != 0 || !b.Rollback || !slices.Equal(b.KernelArgs, kargs) {
			t.Errorf("booted deployment lost or changed: %+v", b)
		}
	}
	cmds := slices.DeleteFunc(next(), func(c string) bool { return strings.HasPrefix(c, "admin status") })
	if len(cmds) != 2 || !strings.HasPrefix(cmds[0], "admin deploy") || !strings.HasPrefix(cmds[1], "admin deploy") {
		t.Errorf("two Deploys ran %q, want one admin deploy each", cmds)
	}

	for _, bad := range [][]string{{"a b"}, {"ostree=/x"}, {""}, {"a\nb"}} {
		if err := s.Deploy(t.Context(), c, bad); err == nil {
			t.Errorf("Deploy with kernel args %q succeeded", bad)
		}
	}
	if err := s.Deploy(t.Context(), "v1", nil); err == nil {
		t.Error("Deploy of a malformed checksum succeeded")
	}
}

func TestRollbackFastPath(t *testing.T) {
	t.Parallel()
	r := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := r.Commits[0], r.Commits[1]
	kargs := []string{"console=ttyS0"}
	s := newSysroot(t, r, osfixture.SysrootOptions{Commit: v1, KernelArgs: kargs})
	ctx := t.Context()
	expect(t, status(t, s), v1, v1, "")

	if err := apply(ctx, s, r.Ref, v2, kargs); err != nil {
		t.Fatal(err)
	}
	expect(t, status(t, s), v2, v1, v1) // v1 runs, and is what a failing v2 falls back to

	if err := s.SimulateBoot(ctx); err != nil {
		t.Fatal(err)
	}
	expect(t, status(t, s), v2, v2, v1)

	// Without the remote no pull can happen: going back to v1 must not need one.
	if out, err := exec.Command("ostree", "--repo="+filepath.Join(s.Path, "ostree/repo"), "remote", "delete", remote).CombinedOutput(); err != nil {
		t.Fatalf("remote delete: %v: %s", err, out)
	}
	if err := s.Pull(ctx, remote, r.Ref, v1); err == nil {
		t.Fatal("Pull works without the remote; the test proves nothing")
	}
	next := logged(t, s)
	start := time.Now()
	if err := apply(ctx, s, r.Ref, v1, kargs); err != nil {
		t.Fatal(err)
	}
	t.Logf("rollback apply of v1 took %v", time.Since(start))
	if cmds := next(); len(cmds) != 1 || !strings.HasPrefix(cmds[0], "admin deploy") {
		t.Errorf("rollback apply ran %q, want exactly one admin deploy", cmds)
	}
	expect(t, status(t, s), v1, v2, v2)

	if err := s.SimulateBoot(ctx); err != nil {
		t.Fatal(err)
	}
	st := status(t, s)
	expect(t, st, v1, v1, v2)
	if d, _ := st.Booted(); !slices.Equal(d.KernelArgs, kargs) {
		t.Errorf("booted kernel args %q, want %q", d.KernelArgs, kargs)
	}
}

func TestPullMissingCommit(t *testing.T) {
	t.Parallel()
	r := newRepo(t, osfixture.Options{Versions: 1})
	s := newSysroot(t, r, osfixture.SysrootOptions{})
	ctx := t.Context()
	missing := fakeChecksum("not a commit")

	for _, ref := range []string{r.Ref, ""} {
		err := s.Pull(ctx, remote, ref, missing)
		if !errors.Is(err, ostree.ErrCommitNotFound) {
			t.Errorf("Pull(%q, missing) = %v, want ErrCommitNotFound", ref, err)
		}
		var ce *ostree.CommandError
		if !errors.As(err, &ce) || ce.Stderr == "" || !strings.Contains(err.Error(), ce.Stderr) {
			t.Errorf("Pull error %v does not carry ostree's stderr", err)
		}
	}
	if hasCommit(t, s, missing) {
		t.Error("HasCommit true for a failed pull")
	}
	if err := s.Deploy(ctx, missing, nil); !errors.Is(err, ostree.ErrCommitNotFound) {
		t.Errorf("Deploy(missing) = %v, want ErrCommitNotFound", err)
	}

	// Over HTTP ostree only says 404; Pull finds out it was the commit.
	srv := httptest.NewServer(http.FileServer(http.Dir(r.Path)))
	defer srv.Close()
	if err := s.EnsureRemote(ctx, "web", srv.URL, ostree.RemoteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pull(ctx, "web", r.Ref, missing); !errors.Is(err, ostree.ErrCommitNotFound) {
		t.Errorf("HTTP Pull(missing) = %v, want ErrCommitNotFound", err)
	}
	if err := s.Pull(ctx, "web", r.Ref, r.Commits[0]); err != nil {
		t.Errorf("HTTP Pull(existing) = %v", err)
	}
	expect(t, status(t, s), r.Commits[0], r.Commits[0], "")
}

func TestGPGVerification(t *testing.T) {
	t.Parallel()
	r := newRepo(t, osfixture.Options{Versions: 1, Sign: true})
	ctx := t.Context()
	signed := r.Commits[0]
	unsigned, err := r.AddCommit(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	verify := ostree.RemoteOptions{GPGVerify: true, GPGKeyPath: r.KeyPath}
	s := emptySysroot(t, r, verify)

	err = s.Pull(ctx, remote, r.Ref, unsigned)
	if !errors.Is(err, ostree.ErrVerification) {
		t.Fatalf("Pull(unsigned) = %v, want ErrVerification", err)
	}
	t.Logf("unsigned: %v", err)
	if hasCommit(t, s, unsigned) {
		t.Error("HasCommit true for a commit that failed verification")
	}
	if err := s.Pull(ctx, remote, r.Ref, signed); err != nil {
		t.Fatalf("Pull(signed) = %v", err)
	}
	if err := s.Deploy(ctx, signed, nil); err != nil {
		t.Fatal(err)
	}
	expect(t, status(t, s), signed, "", "")

	// The commit is bound to r.Ref: asking for it as another ref fails.
	if err := s.Pull(ctx, remote, "herd/other", signed); !errors.Is(err, ostree.ErrVerification) {
		t.Errorf("Pull with the wrong ref = %v, want ErrVerification", err)
	}
	// Verification without the key.
	if err := s.EnsureRemote(ctx, "nokey", r.URL, ostree.RemoteOptions{GPGVerify: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pull(ctx, "nokey", r.Ref, signed); !errors.Is(err, ostree.ErrVerification) {
		t.Errorf("Pull without the key = %v, want ErrVerification", err)
	}
	// Changing the remote's policy takes effect.
	if err := s.EnsureRemote(ctx, remote, r.URL, ostree.RemoteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Pull(ctx, remote, r.Ref, unsigned); err != nil {
		t.Errorf("Pull(unsigned) with verification off = %v", err)
	}
	if err := s.EnsureRemote(ctx, remote, r.URL, verify); err != nil {
		t.Fatal(err)
	}
	if err := s.Pull(ctx, remote, r.Ref, unsigned); !errors.Is(err, ostree.ErrVerification) {
		t.Errorf("Pull(unsigned) with verification back on = %v, want ErrVerification", err)
	}
}

func TestDeploymentsStayBounded(t *testing.T) {
	t.Parallel()
	r := newRepo(t, osfixture.Options{Versions: 3})
	s := newSysroot(t, r, osfixture.SysrootOptions{})
	ctx := t.Context()
	for i := range 10 {
		c := r.Commits[(i+1)%len(r.Commits)]
		if err := apply(ctx, s, r.Ref, c, []string{fmt.Sprintf("herd.gen=%d", i)}); err != nil {
			t.Fatal(err)
		}
		booted, _ := mustStatus(t, s).Booted()
		if i%3 == 2 {
			if err := s.SimulateBoot(ctx); err != nil {
				t.Fatal(err)
			}
		}
		st := mustStatus(t, s)
		if d, _ := st.Default(); d.Checksum != c {
			t.Fatalf("deploy %d: default %s, want %s", i, d.ID(), c)
		}
		b, ok := st.Booted()
		if !ok {
			t.Fatalf("deploy %d: booted deployment lost:\n%s", i, describe(st))
		}
		if i%3 != 2 && b.ID() != booted.ID() {
			t.Fatalf("deploy %d: booted changed from %s to %s", i, booted.ID(), b.ID())
		}
		dirs := deployDirs(t, s)
		if len(st.Deployments) > 3 || len(dirs) != len(st.Deployments) {
			t.Fatalf("deploy %d: %d deployments, %d directories on disk:\n%s", i, len(st.Deployments), len(dirs), describe(st))
		}
		if i%3 == 2 {
			// SimulateBoot pruned: only deployed commits and the remote ref's remain.
			keep := []string{remoteRef(t, s, r.Ref)}
			for _, d := range st.Deployments {
				keep = append(keep, d.Checksum)
			}
			for _, c := range commitObjects(t, s) {
				if !slices.Contains(keep, c) {
					t.Errorf("deploy %d: unreferenced commit %.12s survived cleanup", i, c)
				}
			}
		}
	}
	t.Logf("final status:\n%s", describe(mustStatus(t, s)))
}

func mustStatus(t *testing.T, s *ostree.Sysroot) ostree.Status {
	t.Helper()
	st, err := s.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func commitObjects(t *testing.T, s *ostree.Sysroot) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(s.Path, "ostree/repo/objects/*/*.commit"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range paths {
		out = append(out, filepath.Base(filepath.Dir(p))+strings.TrimSuffix(filepath.Base(p), ".commit"))
	}
	return out
}

func TestContextAndBinaryErrors(t *testing.T) {
	t.Parallel()
	s := &ostree.Sysroot{Path: t.TempDir(), OSName: "herd", Env: osfixture.Env}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Init(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Init with cancelled context = %v, want context.Canceled", err)
	}
	if _, err := s.HasCommit(ctx, fakeChecksum("x")); !errors.Is(err, context.Canceled) {
		t.Errorf("HasCommit with cancelled context = %v", err)
	}
	s.Binary = "/nonexistent/ostree"
	if _, err := s.Status(t.Context()); err == nil || !strings.Contains(err.Error(), "/nonexistent/ostree") {
		t.Errorf("Status with a missing binary = %v", err)
	}
}

// The OS's own kernel arguments (root=, rw) survive deploys that set the
// pool's: --karg-none alone would drop them and leave a node that cannot
// find its root file system.
func TestDeployKeepsOSKernelArgs(t *testing.T) {
	t.Parallel()
	r := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := r.Commits[0], r.Commits[1]
	osArgs := []string{"root=UUID=0b1c7e5a", "rw"}
	s := newSysroot(t, r, osfixture.SysrootOptions{Commit: v1, KernelArgs: append(slices.Clone(osArgs), "console=ttyS0")})
	s.PoolArg = func(arg string) bool { return !strings.HasPrefix(arg, "root=") && arg != "rw" }
	b, _ := status(t, s).Booted()
	if !slices.Equal(b.KernelArgs, []string{"console=ttyS0"}) || !slices.Equal(b.OSKernelArgs, osArgs) {
		t.Fatalf("booted: pool's %q, OS's %q", b.KernelArgs, b.OSKernelArgs)
	}
	if err := s.Pull(t.Context(), remote, r.Ref, v2); err != nil {
		t.Fatal(err)
	}
	for _, pool := range [][]string{{"quiet", "mitigations=off"}, {}} {
		if err := s.Deploy(t.Context(), v2, pool); err != nil {
			t.Fatal(err)
		}
		d, _ := status(t, s).Default()
		if d.Checksum != v2 || !slices.Equal(d.KernelArgs, pool) || !slices.Equal(d.OSKernelArgs, osArgs) {
			t.Errorf("default %s: pool's %q, OS's %q; want %q and %q", d.ID(), d.KernelArgs, d.OSKernelArgs, pool, osArgs)
		}
		// The boot entry itself, as the boot loader reads it.
		entries, _ := filepath.Glob(filepath.Join(s.Path, "boot", "loader", "entries", "*.conf"))
		found := false
		for _, e := range entries {
			b, _ := os.ReadFile(e)
			found = found || strings.Contains(string(b), "options "+strings.Join(append(slices.Clone(osArgs), pool...), " ")+" ostree=")
		}
		if !found {
			t.Errorf("no boot entry has options %q followed by ostree=", append(slices.Clone(osArgs), pool...))
		}
	}
}
