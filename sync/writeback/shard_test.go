package writeback

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
)

// TestShards runs two shards of one cluster against a real git daemon:
// each writes only its own pools and its own source file, so neither
// undoes the other's, however their pushes interleave.
func TestShards(t *testing.T) {
	f := newFixture(t)
	shard := func(name string) *Writer {
		return f.writer("c", func(o *Options) { o.Shard = name })
	}
	a, b := shard("a"), shard("b")
	flush := func(w *Writer) {
		t.Helper()
		if err := w.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for _, s := range []struct {
		w    *Writer
		pool string
	}{{a, "pa"}, {b, "pb"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= 10; i++ {
				s.w.SetPool(mkPool(s.pool, spec, fmt.Sprint("Rolling-", i), 10, i, nil))
				s.w.SetSource(SourceStatus{Reason: "Succeeded", LastApplied: &Revision{Commit: spec}, Message: fmt.Sprint(i)})
				if err := s.w.Flush(context.Background()); err != nil {
					t.Errorf("shard writing %s: %v", s.pool, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	files := func() string { return f.git("ls-tree", "-r", "--name-only", "herd/status", "clusters/c/") }
	want := "clusters/c/pa.yaml\nclusters/c/pb.yaml\nclusters/c/shards/a.yaml\nclusters/c/shards/b.yaml"
	if got := files(); got != want {
		t.Fatalf("files on the status branch:\n%s\nwant:\n%s", got, want)
	}
	for _, pool := range []string{"pa", "pb"} {
		if p := f.pool("herd/status", "c", pool); p.Phase != "Rolling-10" {
			t.Fatalf("%s: phase %q, want Rolling-10", pool, p.Phase)
		}
	}
	if got := f.git("log", "-1", "--format=%(trailers:key=Herd-Shard,valueonly)", "herd/status", "--", "clusters/c/shards/b.yaml"); strings.TrimSpace(got) != "b" {
		t.Fatalf("Herd-Shard trailer of b's last commit = %q", got)
	}

	// pb moves to shard a (its labels changed): b lets go of the file, a
	// takes it over, and b's later writes leave it alone.
	b.ReleasePool("pb")
	a.SetPool(mkPool("pb", spec, "Taken-Over", 10, 10, nil))
	flush(a)
	b.SetSource(SourceStatus{Reason: "Succeeded", LastApplied: &Revision{Commit: spec}, Message: "after"})
	flush(b)
	if p := f.pool("herd/status", "c", "pb"); p.Phase != "Taken-Over" {
		t.Fatalf("pb after the move: phase %q, want shard a's Taken-Over", p.Phase)
	}

	// pa leaves the fleet: a deletes its file, nothing else.
	a.RemovePool("pa")
	flush(a)
	want = "clusters/c/pb.yaml\nclusters/c/shards/a.yaml\nclusters/c/shards/b.yaml"
	if got := files(); got != want {
		t.Fatalf("files after removing pa:\n%s\nwant:\n%s", got, want)
	}
	// A shard restarted after the pool went still removes its file.
	a2 := shard("a")
	a2.SetPool(mkPool("pc", spec, "Rolling", 1, 0, nil))
	flush(a2)
	a2.RemovePool("pb")
	flush(a2)
	want = "clusters/c/pc.yaml\nclusters/c/shards/a.yaml\nclusters/c/shards/b.yaml"
	if got := files(); got != want {
		t.Fatalf("files after a restarted shard removed pb:\n%s\nwant:\n%s", got, want)
	}
}

// TestUnshardedOwnsDirectory: a writer without a shard replaces the whole
// cluster directory, so the files of pools removed while it was down go.
func TestUnshardedOwnsDirectory(t *testing.T) {
	f := newFixture(t)
	w := f.writer("c", nil)
	w.SetPool(mkPool("old", spec, "Rolling", 1, 0, nil))
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	w = f.writer("c", nil) // restarted; "old" is no longer in the fleet
	w.SetPool(mkPool("new", spec, "Rolling", 1, 0, nil))
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.git("ls-tree", "-r", "--name-only", "herd/status", "clusters/c/"); got != "clusters/c/new.yaml" {
		t.Fatalf("files: %s", got)
	}
}
