package e2e

import (
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/test/story"
)

// TestShards runs one fleet on two controller shards, as Flux's
// --watch-label-selector splits objects between controllers: shard a acts
// on the pools labelled herd.dev/shard=a, shard b on every pool no shard
// names. One commit moves general to shard a and bumps the OS of general
// and batch: each shard rolls out its own pool, under its own leader
// election, and both write the status branch without undoing each other.
func TestShards(t *testing.T) {
	t.Parallel()
	r := startStory(t, story.Options{
		Pools:       map[string]int{"system": 1, "general": 3, "batch": 2},
		RebootDelay: time.Second,
		Shards:      []story.Shard{{Name: "a", Selector: "herd.dev/shard=a"}, {Name: "b", Selector: "!herd.dev/shard"}},
	})
	r.converge("first revision, every pool on shard b")

	v1, v2 := r.Fleet.Commits()[0], r.Fleet.Commits()[1]
	r.edit("pools/general.cue", `os: commit: _releases["2026.10.1"]`, "labels: \"herd.dev/shard\": \"a\"\n\tos: commit: _releases[\"2026.11.0\"]")
	r.edit("pools/batch.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	head := r.push("general moves to shard a; general and batch: 2026.11.0")
	r.converge("general rolled out by shard a, batch by shard b")

	for pool, want := range map[string]string{"general": v2, "batch": v2, "system": v1} {
		for _, n := range nodesOf(r.Fleet, pool) {
			if b := booted(t, r.Fleet, n); b != want {
				t.Errorf("%s (pool %s) booted %s, want %s", n, pool, schema.Short(b), schema.Short(want))
			}
		}
	}
	if np := r.pool("general"); np.Labels["herd.dev/shard"] != "a" {
		t.Errorf("HerdPool general has labels %v, want the pool's herd.dev/shard=a", np.Labels)
	}

	// Each shard has its own HerdSource, at the head.
	for name, sel := range map[string]string{"a": "herd.dev/shard=a", "b": "!herd.dev/shard"} {
		var hs herdsource.HerdSource
		if err := r.Client.Get(t.Context(), client.ObjectKey{Name: herdsource.NameOf(name)}, &hs); err != nil {
			t.Fatalf("HerdSource of shard %s: %v", name, err)
		}
		if hs.Spec.ShardSelector != sel || hs.Status.LastAppliedRevision != head {
			t.Errorf("HerdSource %s: selector %q, applied %s; want %q at %s", hs.Name, hs.Spec.ShardSelector, hs.Status.LastAppliedRevision, sel, head)
		}
	}

	// Two leader elections, each held.
	var leases coordinationv1.LeaseList
	if err := r.Client.List(t.Context(), &leases, client.InNamespace(schema.RenderedNamespace)); err != nil {
		t.Fatal(err)
	}
	held := 0
	for _, l := range leases.Items {
		if strings.HasPrefix(l.Name, "herd-controller") && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			held++
		}
	}
	if held != 2 {
		t.Errorf("%d herd-controller leader Leases held, want one per shard", held)
	}

	// The status branch: each pool written by its own shard, each shard's
	// source beside them, nothing lost to the other shard's pushes.
	poll(t, 30*time.Second, "both shards' pools at the head on the status branch", func() bool {
		r.git("fetch", "-q", "origin", "+refs/heads/herd/status:refs/remotes/origin/herd/status")
		for _, pool := range []string{"general", "batch", "system"} {
			out, err := r.Git("show", "origin/herd/status:clusters/demo/"+pool+".yaml")
			if err != nil || !strings.Contains(out, "specRevision: "+head) || !strings.Contains(out, "phase: UpToDate") {
				return false
			}
		}
		return true
	})
	files := r.git("ls-tree", "-r", "--name-only", "origin/herd/status", "clusters/demo/")
	if want := "clusters/demo/batch.yaml\nclusters/demo/general.yaml\nclusters/demo/shards/a.yaml\nclusters/demo/shards/b.yaml\nclusters/demo/system.yaml"; files != want {
		t.Errorf("status branch files:\n%s\nwant:\n%s", files, want)
	}
	last := func(file string) string {
		return r.git("log", "-1", "--format=%(trailers:key=Herd-Shard,valueonly)", "origin/herd/status", "--", "clusters/demo/"+file)
	}
	for file, shard := range map[string]string{"general.yaml": "a", "batch.yaml": "b", "system.yaml": "b", "shards/a.yaml": "a", "shards/b.yaml": "b"} {
		if got := strings.TrimSpace(last(file)); got != shard {
			t.Errorf("the last commit to %s is shard %q's, want %q's", file, got, shard)
		}
	}
	if phases := r.statusPhases("general"); !containsPhase(phases, string(herdpool.PhaseUpToDate)) {
		t.Errorf("general's status history: %v", phases)
	}
}
