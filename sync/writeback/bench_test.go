package writeback

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/test/gitserver"
)

// benchPool is a pool of n nodes where the first updated run spec and the
// next `updating` are being updated.
func benchPool(n, updated, updating, batch, batches int) PoolStatus {
	since := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	p := PoolStatus{
		Name: "general", SpecRevision: spec, ConfigHash: "sha256:4f2a9c", OSTarget: "herdos-1.2.3",
		Phase: "Rolling", Batch: &Batch{Current: batch, Total: batches},
		Counts: Counts{Total: n, Updated: updated, Updating: updating, Pending: n - updated - updating},
	}
	for i := 0; i < n; i++ {
		node := NodeStatus{Name: fmt.Sprintf("node-%04d", i), State: "Pending", Since: since, Revision: "0123456789abcdef0123456789abcdef01234567"}
		switch {
		case i < updated:
			node.State, node.Revision, node.Since = "Updated", spec, since.Add(time.Duration(i)*time.Second)
		case i < updated+updating:
			node.State, node.Since = "Updating", since.Add(time.Duration(i)*time.Second)
		}
		p.Nodes = append(p.Nodes, node)
	}
	return p
}

func benchServer(b *testing.B) (root, url string) {
	b.Helper()
	root = b.TempDir()
	gitserver.InitBare(b, filepath.Join(root, "fleet.git"), "main")
	return root, gitserver.StartDaemon(b, root).URL("fleet.git")
}

// BenchmarkWritePool1000 measures writing and pushing the status of a
// 1,000-node pool (render, commit, push over git://), one changed batch of
// 10 nodes per write.
func BenchmarkWritePool1000(b *testing.B) {
	_, url := benchServer(b)
	w, err := New(Options{URL: url, Cluster: "bench", Interval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	w.SetPool(benchPool(1000, 0, 10, 1, 100))
	if err := w.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := (i + 1) % 99
		w.SetPool(benchPool(1000, k*10, 10, k+1, 100))
		if err := w.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if st := w.Stats(); st.Commits != b.N+1 {
		b.Fatalf("%d commits for %d writes", st.Commits, b.N+1)
	}
}

// BenchmarkRolloutGrowth simulates a 1,000-node rollout in batches of 10,
// one status write per batch (100 commits), then runs `git gc` on the
// server's repository and reports `git count-objects -v`'s size-pack as
// packed-bytes (and per write).
func BenchmarkRolloutGrowth(b *testing.B) {
	const nodes, batch = 1000, 10
	batches := nodes / batch
	var packed, loose float64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		root, url := benchServer(b)
		w, err := New(Options{URL: url, Cluster: "bench", Interval: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		for k := 0; k < batches; k++ {
			w.SetPool(benchPool(nodes, k*batch, batch, k+1, batches))
			if err := w.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		bare := filepath.Join(root, "fleet.git")
		loose = countObjects(b, bare)["size"] * 1024
		gitserver.Git(b, bare, nil, "gc", "--quiet", "--prune=now")
		packed = countObjects(b, bare)["size-pack"] * 1024
	}
	b.ReportMetric(packed, "packed-bytes")
	b.ReportMetric(packed/float64(batches), "packed-bytes/write")
	b.ReportMetric(loose, "loose-bytes-before-gc")
}

func countObjects(b *testing.B, bare string) map[string]float64 {
	out := gitserver.Git(b, bare, nil, "count-objects", "-v")
	m := map[string]float64{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ": "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			m[k] = f
		}
	}
	return m
}
