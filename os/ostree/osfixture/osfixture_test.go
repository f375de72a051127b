package osfixture_test

import (
	"fmt"
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

func TestMain(m *testing.M) {
	for _, bin := range []string{"ostree", "gpg", "gpgconf", "cp"} {
		if _, err := exec.LookPath(bin); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: osfixture tests need %s in PATH; install with: apt-get install -y ostree gnupg\n", bin)
			os.Exit(1)
		}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: osfixture tests need root: ostree admin deploy refuses to run otherwise")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func newRepo(t testing.TB, opts osfixture.Options) *osfixture.Repo {
	t.Helper()
	r, err := osfixture.NewRepo(t.Context(), t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

func TestNewRepo(t *testing.T) {
	r := newRepo(t, osfixture.Options{Versions: 3, Sign: true})
	if len(r.Commits) != 3 || r.KeyPath == "" || !strings.HasPrefix(r.URL, "file:///") {
		t.Fatalf("repo = %+v", r)
	}
	out, err := exec.Command("ostree", "--repo="+r.Path, "log", r.Ref).CombinedOutput()
	if err != nil {
		t.Fatalf("ostree log: %v: %s", err, out)
	}
	for i, c := range r.Commits {
		if !strings.Contains(string(out), c) || !strings.Contains(string(out), fmt.Sprintf("Version: v%d", i+1)) {
			t.Errorf("ostree log lacks v%d %s:\n%s", i+1, c, out)
		}
	}
	for _, c := range r.Commits {
		if out, err := exec.Command("ostree", "--repo="+r.Path, "show", "--print-detached-metadata-key=ostree.gpgsigs", c).CombinedOutput(); err != nil {
			t.Errorf("commit %s is not signed: %v: %s", c, err, out)
		}
	}
}

// TestNewSysroot checks that a sysroot copied (or linked) from the template
// is the same as one built with the CLI, works on its own, and leaves the
// template and its siblings alone.
func TestNewSysroot(t *testing.T) {
	for _, link := range []bool{false, true} {
		t.Run(fmt.Sprintf("link=%v", link), func(t *testing.T) { testNewSysroot(t, link) })
	}
}

func testNewSysroot(t *testing.T, link bool) {
	r := newRepo(t, osfixture.Options{Versions: 2, Sign: true})
	ctx := t.Context()
	opts := osfixture.SysrootOptions{KernelArgs: []string{"console=ttyS0"}, GPGVerify: true, Link: link}

	start := time.Now()
	fresh, err := r.NewSysroot(ctx, t.TempDir(), osfixture.SysrootOptions{KernelArgs: opts.KernelArgs, GPGVerify: true, Fresh: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fresh sysroot (CLI): %v", time.Since(start))
	if _, err := r.NewSysroot(ctx, t.TempDir(), opts); err != nil { // builds the template
		t.Fatal(err)
	}
	const n = 10
	var clones []*ostree.Sysroot
	start = time.Now()
	for range n {
		s, err := r.NewSysroot(ctx, t.TempDir(), opts)
		if err != nil {
			t.Fatal(err)
		}
		clones = append(clones, s)
	}
	t.Logf("sysroot copied from template: %v each", time.Since(start)/n)

	want, err := fresh.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append([]*ostree.Sysroot{fresh}, clones...) {
		st, err := s.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		d, ok := st.Booted()
		if !ok || len(st.Deployments) != 1 || d.Checksum != r.Commits[0] || !slices.Equal(d.KernelArgs, opts.KernelArgs) {
			t.Fatalf("%s: status %+v", s.Path, st)
		}
		if !slices.EqualFunc(st.Deployments, want.Deployments, func(a, b ostree.Deployment) bool {
			return a.ID() == b.ID() && a.Booted == b.Booted && a.Pinned == b.Pinned && slices.Equal(a.KernelArgs, b.KernelArgs)
		}) {
			t.Errorf("%s: status differs from the fresh sysroot's", s.Path)
		}
	}

	// A copy updates on its own, verifying signatures with the remote copied along.
	s := clones[0]
	v2 := r.Commits[1]
	if err := s.Pull(ctx, osfixture.DefaultRemote, r.Ref, v2); err != nil {
		t.Fatal(err)
	}
	if err := s.Deploy(ctx, v2, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.SimulateBoot(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := s.Status(ctx); err != nil {
		t.Fatal(err)
	} else if d, _ := st.Booted(); d.Checksum != v2 {
		t.Errorf("clone booted %s, want v2", d.ID())
	}
	unsigned, err := r.AddCommit(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Pull(ctx, osfixture.DefaultRemote, r.Ref, unsigned); err == nil {
		t.Error("clone pulled an unsigned commit with verification on")
	}
	// ...and the others did not move.
	if st, err := clones[1].Status(ctx); err != nil {
		t.Fatal(err)
	} else if d, _ := st.Booted(); len(st.Deployments) != 1 || d.Checksum != r.Commits[0] {
		t.Errorf("sibling sysroot changed: %+v", st)
	}
	// Linked siblings share their objects: the same files, not copies.
	objects, err := filepath.Glob(filepath.Join(clones[1].Path, "ostree/repo/objects/*/*.file"))
	if err != nil || len(objects) == 0 {
		t.Fatalf("no objects in %s: %v", clones[1].Path, err)
	}
	a, errA := os.Stat(objects[0])
	b, errB := os.Stat(filepath.Join(clones[2].Path, strings.TrimPrefix(objects[0], clones[1].Path)))
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if os.SameFile(a, b) != link {
		t.Errorf("%s shared between siblings: %v, want %v", objects[0], os.SameFile(a, b), link)
	}
	// The siblings' repositories are intact.
	for _, c := range clones[1:3] {
		if out, err := exec.CommandContext(ctx, "ostree", "fsck", "--repo="+filepath.Join(c.Path, "ostree/repo")).CombinedOutput(); err != nil {
			t.Errorf("%s: ostree fsck: %v\n%s", c.Path, err, out)
		}
	}
	next, err := r.NewSysroot(ctx, t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := next.Status(ctx); err != nil {
		t.Fatal(err)
	} else if len(st.Deployments) != 1 {
		t.Errorf("template changed: %+v", st)
	}
}

// BenchmarkNewSysroot measures per-node setup for simulations.
func BenchmarkNewSysroot(b *testing.B) {
	r := newRepo(b, osfixture.Options{Versions: 2})
	for name, opts := range map[string]osfixture.SysrootOptions{"template": {}, "link": {Link: true}, "fresh": {Fresh: true}} {
		b.Run(name, func(b *testing.B) {
			if _, err := r.NewSysroot(b.Context(), b.TempDir(), osfixture.SysrootOptions{}); err != nil {
				b.Fatal(err) // warm the template
			}
			for b.Loop() {
				if _, err := r.NewSysroot(b.Context(), b.TempDir(), opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
