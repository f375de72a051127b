package controller

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/source"
	"herd.dev/herd/test/fleettest"
)

// BenchmarkIdlePlan measures the part of a reconcile with nothing to do
// that grows with the nodes, without an API server: the nodes read from
// an informer's store (as the controller's cache holds them), the
// planner's input, the plan and the renders collect keeps.
//
//	go test ./sync/controller -run '^$' -bench IdlePlan -benchmem -count 6
func BenchmarkIdlePlan(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) { benchIdlePlan(b, n) })
	}
}

func benchIdlePlan(b *testing.B, nodes int) {
	work := filepath.Join(b.TempDir(), "fleet")
	fleettest.NewRepo(b, work)
	res := fleettest.Load(b, work)
	now := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	store := idleNodes(b, res.Hash("general"), res.Fleet.Pools["general"].OS.Commit, nodes, now)
	r := newReconciler(nil, nil, logr.Discard(), Options{})
	r.list = &informerNodes{found: true, store: store} // as New's, its informer found
	stored := map[string]*schema.Rendered{}
	for _, p := range res.PoolNames() {
		stored[res.Hash(p)] = res.Rendered[p]
	}
	pools := map[string]*herdpool.HerdPool{}
	ctx := context.Background()
	step := func() (*observation, *planner.Plan, map[string]bool) {
		obs := &observation{now: now, rev: source.Revision{Commit: "head"}, fleet: res, pools: pools}
		if err := r.readNodes(ctx, obs); err != nil {
			b.Fatal(err)
		}
		in, err := r.plannerInput(ctx, obs, nil, stored)
		if err != nil {
			b.Fatal(err)
		}
		obs.input = in
		plan := planner.Compute(obs.input)
		return obs, plan, keepRenders(obs, plan)
	}
	_, plan, keep := step()
	for _, pp := range plan.Pools {
		if len(pp.Actions) > 0 || pp.Name == "general" && len(pp.UpToDate) != nodes {
			b.Fatalf("pool %s: %d actions, %d of %d nodes done: not a plan with nothing to do", pp.Name, len(pp.Actions), len(pp.UpToDate), nodes)
		}
	}
	if !keep[res.Hash("general")] {
		b.Fatal("the pool's render is not kept")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		step()
	}
}

// idleNodes is an informer's store of nodes at the pool's target, long
// soaked, as the controller's cache keeps them (slimNode).
func idleNodes(b *testing.B, hash, commit string, n int, now time.Time) toolscache.Indexer {
	store := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	old := now.Add(-24 * time.Hour).UTC().Format(time.RFC3339)
	for i := range n {
		a := map[string]string{
			schema.AnnotationCurrentConfig: hash,
			schema.AnnotationOSBooted:      commit,
			schema.AnnotationState:         string(schema.StateIdle),
			schema.AnnotationDesiredConfig: hash,
			schema.AnnotationDesiredOS:     commit,
			schema.AnnotationDispatched:    old,
			schema.AnnotationAtTarget:      old,
		}
		name := fmt.Sprintf("general-%05d", i)
		node := fleettest.Node{Name: name, Pool: "general", Zone: fmt.Sprintf("zone-%c", 'a'+i%3), Annotations: a}.KubeNode()
		for k, v := range map[string]string{"beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "beta.kubernetes.io/arch": "amd64"} {
			node.Labels[k] = v
		}
		node.UID = types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", i))
		node.ResourceVersion = strconv.Itoa(1000 + i)
		node.CreationTimestamp = metav1.NewTime(now.Add(-48 * time.Hour))
		node.Status.Conditions[0].LastTransitionTime = node.CreationTimestamp
		slim, err := slimNode(&node)
		if err != nil {
			b.Fatal(err)
		}
		if err := store.Add(slim); err != nil {
			b.Fatal(err)
		}
	}
	return store
}
