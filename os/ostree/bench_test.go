package ostree_test

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
)

// BenchmarkDeploy compares the agent's apply (HasCommit, Pull if needed,
// Deploy) with the bare command it wraps:
//
//	ostree admin deploy --sysroot=P --os=herd --karg-none --karg-append=... CHECKSUM
//
// Both start from a booted sysroot holding v1 and v2 and alternate between
// them, so every iteration writes a new deployment (no no-op shortcut). The
// "interleaved" case runs one of each per iteration, in alternating order,
// which cancels out drift in disk sync cost (on a shared disk the separate
// cases can differ by 2x from run to run), and reports their ratio.
func BenchmarkDeploy(b *testing.B) {
	r := newRepo(b, osfixture.Options{Versions: 2})
	kargs := []string{"console=ttyS0,115200", "herd.bench=1"}
	setup := func(b *testing.B) *ostree.Sysroot {
		s := newSysroot(b, r, osfixture.SysrootOptions{KernelArgs: kargs})
		if err := s.Pull(b.Context(), remote, r.Ref, r.Commits[1]); err != nil {
			b.Fatal(err)
		}
		return s
	}
	driver := func(b *testing.B, s *ostree.Sysroot, i int) {
		if err := apply(b.Context(), s, r.Ref, r.Commits[(i+1)%2], kargs); err != nil {
			b.Fatal(err)
		}
	}
	raw := func(b *testing.B, s *ostree.Sysroot, i int) {
		args := []string{"admin", "deploy", "--sysroot=" + s.Path, "--os=" + s.OSName, "--karg-none"}
		for _, k := range kargs {
			args = append(args, "--karg-append="+k)
		}
		args = append(args, r.Commits[(i+1)%2])
		cmd := exec.CommandContext(b.Context(), "ostree", args...)
		cmd.Env = append(os.Environ(), osfixture.Env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}

	b.Run("driver", func(b *testing.B) {
		s := setup(b)
		i := 0
		for b.Loop() {
			driver(b, s, i)
			i++
		}
	})
	b.Run("raw", func(b *testing.B) {
		s := setup(b)
		i := 0
		for b.Loop() {
			raw(b, s, i)
			i++
		}
	})
	b.Run("interleaved", func(b *testing.B) {
		sd, sr := setup(b), setup(b)
		var td, tr time.Duration
		i := 0
		timed := func(f func(*testing.B, *ostree.Sysroot, int), s *ostree.Sysroot) time.Duration {
			start := time.Now()
			f(b, s, i)
			return time.Since(start)
		}
		for b.Loop() {
			if i%2 == 0 { // alternate who goes first
				td += timed(driver, sd)
				tr += timed(raw, sr)
			} else {
				tr += timed(raw, sr)
				td += timed(driver, sd)
			}
			i++
		}
		b.ReportMetric(float64(td.Milliseconds())/float64(i), "driver-ms/op")
		b.ReportMetric(float64(tr.Milliseconds())/float64(i), "raw-ms/op")
		b.ReportMetric(float64(td)/float64(tr), "driver/raw")
	})
}
