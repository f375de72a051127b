package writeback

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/test/gitserver"
)

type fixture struct {
	t      *testing.T
	root   string
	bare   string
	daemon *gitserver.Daemon
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{t: t, root: root, bare: gitserver.InitBare(t, filepath.Join(root, "fleet.git"), "main")}
	f.daemon = gitserver.StartDaemon(t, root)
	// The fleet repository has a main branch that status writes must not
	// touch.
	c := gitserver.NewClone(t, f.daemon.URL("fleet.git"), "main")
	c.CommitFiles("fleet", map[string]string{"fleet/pools/general.cue": "pool: general: {}\n"})
	c.Push()
	return f
}

func (f *fixture) url() string { return f.daemon.URL("fleet.git") }

func (f *fixture) writer(cluster string, mod func(*Options)) *Writer {
	f.t.Helper()
	opts := Options{URL: f.url(), Cluster: cluster, Interval: time.Hour}
	if mod != nil {
		mod(&opts)
	}
	w, err := New(opts)
	if err != nil {
		f.t.Fatalf("New: %v", err)
	}
	return w
}

// run runs w until the test ends.
func run(t *testing.T, w *Writer) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// git runs the git CLI against the bare repository.
func (f *fixture) git(args ...string) string {
	f.t.Helper()
	return gitserver.Git(f.t, f.bare, nil, args...)
}

func (f *fixture) show(branch, path string) string {
	f.t.Helper()
	return f.git("show", branch+":"+path)
}

func (f *fixture) pool(branch, cluster, pool string) PoolStatus {
	f.t.Helper()
	p, err := ParsePool([]byte(f.show(branch, "clusters/"+cluster+"/"+pool+".yaml")))
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	if err := gitserver.WaitFor(30*time.Second, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// mkPool builds a pool of n nodes of which updated run spec.
func mkPool(name, spec, phase string, n, updated int, batch *Batch) PoolStatus {
	p := PoolStatus{Name: name, SpecRevision: spec, ConfigHash: "sha256:abc", OSTarget: "herdos-1.2", Phase: phase, Batch: batch}
	since := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for i := n - 1; i >= 0; i-- { // reverse order: the writer sorts
		st, rev := "Pending", "0000000000000000000000000000000000000000"
		if i < updated {
			st, rev = "Updated", spec
		}
		p.Nodes = append(p.Nodes, NodeStatus{Name: fmt.Sprintf("node-%04d", i), State: st, Since: since, Revision: rev})
	}
	p.Counts = Counts{Total: n, Updated: updated, Pending: n - updated}
	return p
}

func trailers(msg string) map[string]string {
	out := map[string]string{}
	for _, l := range strings.Split(msg, "\n") {
		if k, v, ok := strings.Cut(l, ": "); ok && strings.HasPrefix(k, "Herd-") {
			out[k] = v
		}
	}
	return out
}
