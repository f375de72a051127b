package controller

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/schema/sandbox"
	"herd.dev/herd/sync/planinput"
	"herd.dev/herd/sync/revisions"
	"herd.dev/herd/test/fleettest"
)

// TestSamePlanAsHerdPlan feeds one commit and one node list to the input
// `herd plan` builds (the fleet's history from the working repository) and
// to the one the controller builds (the history from its bare cache of the
// remote, and the renders it stores), and requires the same plan: for the
// example fleet with nodes at its earlier revisions, and random fleets of
// nodes in random states.
func TestSamePlanAsHerdPlan(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 3))
			work := filepath.Join(t.TempDir(), "fleet")
			fleettest.NewRepo(t, work)
			hashes := map[string][]string{} // pool → hashes it had
			record := func() {
				res := fleettest.Load(t, work)
				for _, p := range res.PoolNames() {
					hashes[p] = append(hashes[p], res.Hash(p))
				}
			}
			record()
			edits := []struct{ file, old, new string }{
				{"pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`},
				{"pools/general.cue", `maxPods: 110`, `maxPods: 200`},
				{"pools/batch.cue", `"262144"`, `"524288"`},
				{"pools/system.cue", `maxPods: 64`, `maxPods: 80`},
				{"pools/general.cue", `"net.core.somaxconn": "4096"`, `"net.core.somaxconn": "8192"`},
			}
			r.Shuffle(len(edits), func(i, j int) { edits[i], edits[j] = edits[j], edits[i] })
			for _, e := range edits[:1+r.IntN(len(edits))] {
				fleettest.Edit(t, work, e.file, e.old, e.new)
				fleettest.Commit(t, work, "edit "+e.file)
				record()
			}
			head := fleettest.Git(t, work, "rev-parse", "HEAD")
			bare := filepath.Join(t.TempDir(), "repo.git")
			fleettest.Git(t, work, "clone", "-q", "--bare", work, bare)
			res := fleettest.Load(t, work)
			nodes := randomNodes(r, res.PoolNames(), hashes)
			now := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)

			// herd plan: the history of the repository it runs in.
			repo, err := revisions.Open(work)
			if err != nil {
				t.Fatal(err)
			}
			h, err := repo.LoadFrom(head, HistoryDepth)
			if err != nil {
				t.Fatal(err)
			}
			cli, err := planinput.Build(planinput.Sources{Fleet: res, Revision: head, Nodes: nodes, History: h, Now: now})
			if err != nil {
				t.Fatal(err)
			}

			// The controller: its cache of the remote, and the renders it
			// stored before telling any node.
			ch, err := gitHistory(plainDir(bare), "", (&evaluator{budget: sandbox.DefaultBudget}).loadFiles)(t.Context(), head)
			if err != nil {
				t.Fatal(err)
			}
			stored := map[string]*schema.Rendered{}
			for _, p := range res.PoolNames() {
				stored[res.Hash(p)] = res.Rendered[p]
			}
			ctl, err := planinput.Build(planinput.Sources{Fleet: res, Revision: head, Nodes: nodes, History: ch, Stored: stored, Now: now})
			if err != nil {
				t.Fatal(err)
			}

			want, got := planner.Compute(cli), planner.Compute(ctl)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("the controller's plan differs from herd plan's (-herd plan +controller):\n%s", diff)
			}
			exact := 0
			for _, pp := range got.Pools {
				for _, c := range pp.Changes {
					if c.Assumed == nil {
						exact++
					}
				}
			}
			t.Logf("%d pools, %d nodes, %d exact diffs", len(got.Pools), len(nodes), exact)
		})
	}
}

// randomNodes makes nodes of the pools at random earlier renders, some
// unknown, in random states.
func randomNodes(r *rand.Rand, pools []string, hashes map[string][]string) []*corev1.Node {
	states := []schema.NodeState{schema.StateIdle, schema.StateIdle, schema.StateIdle, schema.StateWorking, schema.StateDegraded}
	var out []*corev1.Node
	for i := range 5 + r.IntN(40) {
		pool := pools[r.IntN(len(pools))]
		hs := hashes[pool]
		current := hs[r.IntN(len(hs))]
		if r.IntN(10) == 0 {
			current = "" // joined without a report
		}
		os := []string{fleettest.Release202610, fleettest.Release202611}[r.IntN(2)]
		n := fleettest.Node{
			Name: fmt.Sprintf("%s-%02d", pool, i), Pool: pool, Zone: []string{"a", "b", "c"}[r.IntN(3)],
			NotReady: r.IntN(10) == 0, Unschedulable: r.IntN(15) == 0,
			Annotations: map[string]string{
				schema.AnnotationCurrentConfig: current,
				schema.AnnotationOSBooted:      os,
				schema.AnnotationState:         string(states[r.IntN(len(states))]),
			},
		}
		kn := n.KubeNode()
		out = append(out, &kn)
	}
	return out
}

// plainDir is a Git directory nothing else writes to.
type plainDir string

func (d plainDir) ReadGitDir(read func(gitDir string) error) error { return read(string(d)) }
