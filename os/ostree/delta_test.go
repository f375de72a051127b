package ostree_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
)

// deltaRepo is an archive repository served over HTTP holding A (the
// fixture's first version with payloadMiB of data) and B: A with changed of
// its payload files altered in 16 bytes each and one file added, plus the
// static delta A -> B.
type deltaRepo struct {
	*osfixture.Repo
	srv  *osfixture.Server
	A, B string
}

func newDeltaRepo(t testing.TB, payloadMiB, changed int) *deltaRepo {
	t.Helper()
	r := newRepo(t, osfixture.Options{Versions: 1, PayloadMiB: payloadMiB})
	a := r.Commits[0]
	layer := t.TempDir()
	payload := filepath.Join(layer, "usr/share/payload")
	if err := osfixture.WritePayload(payload, changed, 0); err != nil {
		t.Fatal(err)
	}
	for i := range changed {
		p := filepath.Join(payload, pad(i))
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		copy(data[len(data)/2:], "herd patch level")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(layer, "usr/share/herd"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(layer, "usr/share/herd/motd"), []byte("patched\n"), 0o644)
	os.Chmod(layer, 0o755)
	repo := &ostree.Repo{Path: r.Path}
	b, err := repo.Commit(t.Context(), ostree.CommitOptions{Branch: r.Ref, Parent: a,
		Trees: []string{"ref=" + a, "dir=" + layer}, Timestamp: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if err := repo.GenerateDelta(t.Context(), a, b); err != nil {
		t.Fatal(err)
	}
	if err := repo.UpdateSummary(t.Context(), "", ""); err != nil {
		t.Fatal(err)
	}
	srv, err := osfixture.Serve(r.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	r.URL = srv.URL // sysroots made from here on pull over HTTP
	return &deltaRepo{Repo: r, srv: srv, A: a, B: b}
}

func pad(i int) string {
	return string([]byte{'0' + byte(i/100), '0' + byte(i/10%10), '0' + byte(i%10)})
}

// objectPull pulls B without static deltas, as a remote without them is pulled.
func objectPull(t testing.TB, s *ostree.Sysroot, ref, commit string) {
	cmd := exec.CommandContext(t.Context(), "ostree", "--repo="+filepath.Join(s.Path, "ostree/repo"),
		"pull", "--disable-static-deltas", remote, ref+"@"+commit)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

// A node on A pulling B over HTTP fetches the static delta, and far fewer
// bytes than an object pull of the same commit.
func TestPullUsesStaticDelta(t *testing.T) {
	d := newDeltaRepo(t, 4, 2)
	s := newSysroot(t, d.Repo, osfixture.SysrootOptions{Commit: d.A})
	d.srv.Reset()
	st, err := s.PullWithStats(t.Context(), remote, d.Ref, d.B)
	if err != nil {
		t.Fatal(err)
	}
	deltaBytes, _, deltaReqs := d.srv.Stats()
	if st.DeltaParts == 0 || deltaReqs == 0 {
		t.Fatalf("pull stats %+v, %d delta requests: no static delta used", st, deltaReqs)
	}
	if ok, err := s.HasCommit(t.Context(), d.B); !ok || err != nil {
		t.Fatalf("B not in the sysroot after the pull: %v", err)
	}

	s2 := newSysroot(t, d.Repo, osfixture.SysrootOptions{Commit: d.A})
	d.srv.Reset()
	objectPull(t, s2, d.Ref, d.B)
	objBytes, _, _ := d.srv.Stats()
	t.Logf("delta pull %d bytes, object pull %d bytes", deltaBytes, objBytes)
	if deltaBytes*10 > objBytes {
		t.Errorf("delta pull sent %d bytes, object pull %d: want at least 10x fewer", deltaBytes, objBytes)
	}
}

// BenchmarkPullDelta pulls a new commit that changes 4 files (16 bytes
// each) and adds one in a 100 MiB tree, over HTTP from an archive
// repository, into a sysroot booted on the previous commit: with the static
// delta (what the agent does) and as an object pull (--disable-static-deltas).
// It reports the bytes the server sent per pull.
//
//	go test -run '^$' -bench PullDelta -benchtime 5x ./os/ostree/
func BenchmarkPullDelta(b *testing.B) {
	d := newDeltaRepo(b, 100, 4)
	template := newSysroot(b, d.Repo, osfixture.SysrootOptions{Commit: d.A})
	for _, mode := range []string{"delta", "objects"} {
		b.Run(mode, func(b *testing.B) {
			var sent int64
			for b.Loop() {
				b.StopTimer()
				dir := filepath.Join(b.TempDir(), "sysroot")
				if out, err := exec.Command("cp", "-a", template.Path, dir).CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, out)
				}
				s := &ostree.Sysroot{Path: dir, OSName: template.OSName, Env: osfixture.Env}
				d.srv.Reset()
				b.StartTimer()
				if mode == "delta" {
					st, err := s.PullWithStats(b.Context(), remote, d.Ref, d.B)
					if err != nil || st.DeltaParts == 0 {
						b.Fatalf("pull: %+v, %v", st, err)
					}
				} else {
					objectPull(b, s, d.Ref, d.B)
				}
				b.StopTimer()
				n, _, _ := d.srv.Stats()
				sent += n
				os.RemoveAll(dir)
				b.StartTimer()
			}
			b.ReportMetric(float64(sent)/float64(b.N), "bytes-sent/op")
		})
	}
}
