package planner

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"herd.dev/herd/schema"
)

const (
	osOld = "1fff1fd9a3c54e8c1b3d0e7f6a2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b"
	osNew = "7a3283c6e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"
)

// testPool renders a pool selecting herd.dev/pool=name with the given OS
// commit and kubelet maxPods, and applies opts to its spec.
func testPool(t testing.TB, name, commit string, maxPods int, opts ...func(*schema.NodePool)) Pool {
	t.Helper()
	spec := schema.NodePool{
		Selector: schema.Selector{MatchLabels: map[string]string{"herd.dev/pool": name}},
		OS:       schema.OSTarget{Ref: "os/stable", Commit: commit},
		Kubelet:  &schema.Kubelet{MaxPods: &maxPods},
		Sysctl:   map[string]string{"vm.max_map_count": "262144"},
		Rollout:  schema.Rollout{MaxUnavailable: schema.IntOrPercent{Int: 1}, FailurePolicy: "halt", MaxFailures: 1},
	}
	for _, o := range opts {
		o(&spec)
	}
	rd, err := schema.Render(schema.NodeConfig{
		OS:         schema.OSConfig{Ref: spec.OS.Ref, Commit: spec.OS.Commit},
		KernelArgs: spec.KernelArgs,
		Kubelet:    spec.Kubelet,
		Sysctl:     spec.Sysctl,
		Files:      spec.Files,
	})
	if err != nil {
		t.Fatal(err)
	}
	return Pool{Name: name, Spec: spec, Rendered: rd, Hash: rd.Hash()}
}

func maxUnavailable(v schema.IntOrPercent) func(*schema.NodePool) {
	return func(p *schema.NodePool) { p.Rollout.MaxUnavailable = v }
}

func canary(n int) func(*schema.NodePool) {
	return func(p *schema.NodePool) { p.Rollout.Canary = n }
}

// node returns a Ready node of pool at the given config and OS.
func node(name, pool, zone, config, os string) Node {
	labels := map[string]string{"herd.dev/pool": pool}
	if zone != "" {
		labels[schema.LabelZone] = zone
	}
	return Node{Name: name, Labels: labels, Ready: true, CurrentConfig: config, OSBooted: os, State: schema.StateIdle}
}

func TestMembership(t *testing.T) {
	a := testPool(t, "a", osNew, 110)
	b := testPool(t, "b", osNew, 110)
	wide := testPool(t, "wide", osNew, 110, func(p *schema.NodePool) {
		p.Selector.MatchLabels = map[string]string{"role": "worker"}
	})
	both := node("both", "a", "", "", "")
	both.Labels["role"] = "worker"
	plan := Compute(Input{
		Pools: []Pool{wide, b, a},
		Nodes: []Node{
			node("a-1", "a", "", a.Hash, osNew),
			node("b-1", "b", "", "", ""),
			both,
			{Name: "stray", Labels: map[string]string{"herd.dev/pool": "c"}, Ready: true},
			{Name: "bare", Ready: true},
		},
	})
	if diff := cmp.Diff([]string{"bare", "stray"}, plan.Unmanaged); diff != "" {
		t.Errorf("unmanaged (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Conflict{{Node: "both", Pools: []string{"a", "wide"}}}, plan.Conflicts); diff != "" {
		t.Errorf("conflicts (-want +got):\n%s", diff)
	}
	var names []string
	for _, pp := range plan.Pools {
		names = append(names, pp.Name)
	}
	if diff := cmp.Diff([]string{"a", "b", "wide"}, names); diff != "" {
		t.Errorf("pools are sorted by name (-want +got):\n%s", diff)
	}
	if got := plan.Pools[0]; got.Nodes != 1 || len(got.UpToDate) != 1 || len(got.Changes) != 0 {
		t.Errorf("pool a: want 1 node, up to date; got %+v", got)
	}
	if got := plan.Pools[1]; got.Nodes != 1 || len(got.Changes) != 1 {
		t.Errorf("pool b: want 1 node changing; got %+v", got)
	}
}

func TestDisruption(t *testing.T) {
	old := testPool(t, "p", osOld, 110)
	oldPods := testPool(t, "p", osNew, 110)
	target := testPool(t, "p", osNew, 200)
	sysctlOnly := testPool(t, "p", osNew, 200, func(p *schema.NodePool) {
		p.Sysctl = map[string]string{"vm.max_map_count": "1"}
	})
	earlier := map[string]*schema.Rendered{old.Hash: old.Rendered, oldPods.Hash: oldPods.Rendered, sysctlOnly.Hash: sysctlOnly.Rendered}

	tests := []struct {
		name string
		node Node
		want Change
	}{{
		name: "unknown config reboots and says why",
		node: node("n", "p", "", "", osNew),
		want: Change{Node: "n", Batch: 1, Disruption: schema.DisruptionReboot, Assumed: reason(CodeNoCurrentConfig)},
	}, {
		name: "config not in history",
		node: node("n", "p", "", "abcdef0123456789", osNew),
		want: Change{Node: "n", Batch: 1, Disruption: schema.DisruptionReboot, From: "abcdef0123456789", Assumed: &Reason{Code: CodeUnknownConfig, Hash: "abcdef0123456789", Detail: "the fleet's last 3 revisions"}},
	}, {
		name: "os and kubelet change: reboot with exact fields",
		node: node("n", "p", "", old.Hash, osOld),
		want: Change{Node: "n", Batch: 1, Disruption: schema.DisruptionReboot, From: old.Hash, Fields: []schema.FieldChange{
			{Path: "kubelet.maxPods", From: "110", To: "200"},
			{Path: "os.commit", From: osOld, To: osNew},
		}},
	}, {
		name: "kubelet only restarts kubelet",
		node: node("n", "p", "", oldPods.Hash, osNew),
		want: Change{Node: "n", Batch: 1, Disruption: schema.DisruptionRestartKubelet, From: oldPods.Hash, Fields: []schema.FieldChange{
			{Path: "kubelet.maxPods", From: "110", To: "200"},
		}},
	}, {
		name: "sysctl only is live",
		node: node("n", "p", "", sysctlOnly.Hash, osNew),
		want: Change{Node: "n", Batch: 1, Disruption: schema.DisruptionNone, From: sysctlOnly.Hash, Fields: []schema.FieldChange{
			{Path: `sysctl."vm.max_map_count"`, From: "1", To: "262144"},
		}},
	}, {
		name: "config applied, OS staged but not booted",
		node: func() Node { n := node("n", "p", "", target.Hash, osOld); n.OSStaged = osNew; return n }(),
		want: Change{Node: "n", Batch: 1, Disruption: schema.DisruptionReboot, From: target.Hash, Assumed: reason(CodeOSNotBooted), Fields: []schema.FieldChange{
			{Path: "os.booted", From: osOld, To: osNew},
		}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := Compute(Input{Pools: []Pool{target}, Nodes: []Node{tt.node}, Earlier: earlier, History: "the fleet's last 3 revisions"})
			if diff := cmp.Diff([]Change{tt.want}, plan.Pools[0].Changes); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBatches(t *testing.T) {
	zones := []string{"a", "b", "c"}
	// nodes returns n out-of-date nodes named p-00.., spread over zones.
	nodes := func(n int) []Node {
		var out []Node
		for i := range n {
			out = append(out, node(fmt.Sprintf("p-%02d", i), "p", zones[i%3], "", osOld))
		}
		return out
	}
	with := func(ns []Node, i int, f func(*Node)) []Node { f(&ns[i]); return ns }

	tests := []struct {
		name    string
		pool    Pool
		nodes   []Node
		batches [][]string
		blocked bool
	}{{
		name:    "one at a time by default, spread over zones",
		pool:    testPool(t, "p", osNew, 110),
		nodes:   nodes(4),
		batches: [][]string{{"p-00"}, {"p-01"}, {"p-02"}, {"p-03"}},
	}, {
		name:    "zone spread within a batch",
		pool:    testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Int: 3})),
		nodes:   nodes(6),
		batches: [][]string{{"p-00", "p-01", "p-02"}, {"p-03", "p-04", "p-05"}},
	}, {
		name:    "canary first",
		pool:    testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Int: 3}), canary(1)),
		nodes:   nodes(6),
		batches: [][]string{{"p-00"}, {"p-01", "p-02", "p-03"}, {"p-04", "p-05"}},
	}, {
		name:    "percentage rounds down",
		pool:    testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Percent: 30, IsPct: true})),
		nodes:   nodes(7), // 30% of 7 = 2.1 → 2
		batches: [][]string{{"p-00", "p-01"}, {"p-02", "p-03"}, {"p-04", "p-05"}, {"p-06"}},
	}, {
		name:    "percentage never below one",
		pool:    testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Percent: 10, IsPct: true})),
		nodes:   nodes(3),
		batches: [][]string{{"p-00"}, {"p-01"}, {"p-02"}},
	}, {
		name: "a NotReady node waits and takes budget",
		pool: testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Int: 2})),
		nodes: with(nodes(4), 0, func(n *Node) {
			n.Ready = false
		}),
		batches: [][]string{{"p-03"}, {"p-01"}, {"p-02"}}, // zone a, b, c
	}, {
		name: "an unavailable up-to-date node takes budget",
		pool: testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Int: 2})),
		nodes: func() []Node {
			ns := nodes(3)
			up := node("p-up", "p", "a", "", osNew)
			up.Unschedulable = true
			return append(ns, up)
		}(),
		batches: [][]string{{"p-00"}, {"p-01"}, {"p-02"}},
	}, {
		name: "nodes Herd works on go first, at no extra cost, as a batch of their own",
		pool: testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Int: 2})),
		nodes: with(nodes(4), 3, func(n *Node) {
			n.DesiredConfig, n.DesiredOS = "earlier", osNew // failed an earlier target
			n.State = schema.StateDegraded
		}),
		batches: [][]string{{"p-03"}, {"p-00", "p-01"}, {"p-02"}},
	}, {
		name: "blocked when others use the whole budget",
		pool: testPool(t, "p", osNew, 110),
		nodes: with(nodes(3), 1, func(n *Node) {
			n.Unschedulable = true
		}),
		batches: [][]string{},
		blocked: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pp := Compute(Input{Pools: []Pool{tt.pool}, Nodes: tt.nodes}).Pools[0]
			if diff := cmp.Diff(tt.batches, pp.Batches, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("batches (-want +got):\n%s", diff)
			}
			if (pp.Blocked != nil) != tt.blocked {
				t.Errorf("blocked = %v, want blocked %v", pp.Blocked, tt.blocked)
			}
		})
	}
}

func TestInFlightNodesStayInBatchOne(t *testing.T) {
	p := testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Int: 2}))
	ns := []Node{node("p-0", "p", "a", "", osOld), node("p-1", "p", "b", "", osOld), node("p-2", "p", "c", "", osOld)}
	ns[2].DesiredConfig, ns[2].DesiredOS, ns[2].State = p.Hash, osNew, schema.StateWorking
	pp := Compute(Input{Pools: []Pool{p}, Nodes: ns}).Pools[0]
	if diff := cmp.Diff([][]string{{"p-2"}, {"p-0", "p-1"}}, pp.Batches); diff != "" {
		t.Errorf("batch 1 waits for the node in flight (-want +got):\n%s", diff)
	}
	if !pp.Changes[0].InFlight || pp.Changes[1].InFlight {
		t.Errorf("only p-2 is in flight: %+v", pp.Changes)
	}
}

func TestPausedPoolStartsNothing(t *testing.T) {
	p := testPool(t, "p", osNew, 110, func(s *schema.NodePool) { s.Paused = true })
	pp := Compute(Input{Pools: []Pool{p}, Nodes: []Node{node("p-0", "p", "", "", osOld)}}).Pools[0]
	if len(pp.Batches) != 0 {
		t.Errorf("paused pool has batches %v", pp.Batches)
	}
	if len(pp.Changes) != 1 || pp.Changes[0].Batch != 0 || pp.Changes[0].Wait == nil || pp.Changes[0].Wait.Code != CodePaused {
		t.Errorf("paused pool lists its node as waiting with a reason: %+v", pp.Changes)
	}
}

func TestRollbackMarked(t *testing.T) {
	p := testPool(t, "p", osOld, 110)
	n := node("p-0", "p", "", "", osNew)
	pp := Compute(Input{Pools: []Pool{p}, Nodes: []Node{n}, Rollbacks: map[string]bool{p.Hash: true}}).Pools[0]
	if !pp.Changes[0].Rollback {
		t.Errorf("change to an earlier render is a rollback: %+v", pp.Changes[0])
	}
}

// TestCanaryGates: while the canary batch is not done, the controller starts
// nothing beyond it, however much room is left; once done, batches are full.
func TestCanaryGates(t *testing.T) {
	p := testPool(t, "p", osNew, 110, maxUnavailable(schema.IntOrPercent{Int: 3}), canary(1))
	ns := []Node{node("p-0", "p", "a", "", osOld), node("p-1", "p", "b", "", osOld), node("p-2", "p", "c", "", osOld), node("p-3", "p", "a", "", osOld)}
	ns[0].DesiredConfig, ns[0].DesiredOS, ns[0].State = p.Hash, osNew, schema.StateWorking

	now := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	state := map[string]Rollout{"p": {Target: Target{Hash: p.Hash, OSCommit: osNew}, Started: now.Add(-time.Hour)}}
	pp := Compute(Input{Pools: []Pool{p}, Nodes: ns, Rollouts: state, Now: now}).Pools[0]
	if diff := cmp.Diff([][]string{{"p-0"}, {"p-3", "p-1", "p-2"}}, pp.Batches); diff != "" || !pp.Canary {
		t.Errorf("canary in flight: batches (-want +got):\n%s canary %v", diff, pp.Canary)
	}

	// The canary, dispatched in this rollout, is done.
	ns[0] = node("p-0", "p", "a", p.Hash, osNew)
	ns[0].DesiredConfig, ns[0].DesiredOS, ns[0].Dispatched = p.Hash, osNew, now.Add(-30*time.Minute)
	pp = Compute(Input{Pools: []Pool{p}, Nodes: ns, Rollouts: state, Now: now}).Pools[0]
	if diff := cmp.Diff([][]string{{"p-3", "p-1", "p-2"}}, pp.Batches); diff != "" || pp.Canary {
		t.Errorf("canary done: batches (-want +got):\n%s canary %v", diff, pp.Canary)
	}

	// A node dispatched before this rollout started does not count.
	state["p"] = Rollout{Target: Target{Hash: p.Hash, OSCommit: osNew}, Started: now.Add(-10 * time.Minute)}
	pp = Compute(Input{Pools: []Pool{p}, Nodes: ns, Rollouts: state, Now: now}).Pools[0]
	if len(pp.Batches[0]) != 1 || !pp.Canary {
		t.Errorf("a new rollout starts with a canary again: %v", pp.Batches)
	}
}

// TestFinishingBatchIsNotABlock: a node of the last batch at the target but
// still cordoned by Herd takes the room for now; the pool waits for it, and
// is not blocked.
func TestFinishingBatchIsNotABlock(t *testing.T) {
	p := testPool(t, "p", osNew, 110)
	ns := []Node{node("p-0", "p", "a", p.Hash, osNew), node("p-1", "p", "b", "", osOld), node("p-2", "p", "c", "", osOld)}
	ns[0].Unschedulable, ns[0].Cordoned = true, true
	pp := Compute(Input{Pools: []Pool{p}, Nodes: ns}).Pools[0]
	if pp.Blocked != nil || len(pp.Batches) != 0 {
		t.Errorf("blocked %v, batches %v; want no block and nothing started", pp.Blocked, pp.Batches)
	}
	for _, c := range pp.Changes {
		if c.Batch != 0 || c.Wait == nil || c.Wait.Code != CodeBatchFinishing || !slices.Equal(c.Wait.Nodes, []string{"p-0"}) {
			t.Errorf("%s: batch %d, wait %+v", c.Node, c.Batch, c.Wait)
		}
	}
	// Cordoned by someone else, the same node does block.
	ns[0].Cordoned = false
	if pp := Compute(Input{Pools: []Pool{p}, Nodes: ns}).Pools[0]; pp.Blocked == nil {
		t.Errorf("a node cordoned by someone else leaves no room, but the pool is not blocked")
	}
}

// TestRecheck: the plan says when it next changes by the clock alone, so
// the controller looks again then rather than at its next poll.
func TestRecheck(t *testing.T) {
	now := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	p := testPool(t, "p", osNew, 110, func(s *schema.NodePool) {
		s.Rollout.Soak, s.Rollout.NodeTimeout = "10m", "30m"
	})
	target := func(n Node, dispatched time.Time) Node {
		n.DesiredConfig, n.DesiredOS, n.Dispatched = p.Hash, osNew, dispatched
		return n
	}
	soaking := target(node("p-0", "p", "a", p.Hash, osNew), now.Add(-5*time.Minute))
	soaking.AtTarget = now.Add(-2 * time.Minute)
	inFlight := target(node("p-1", "p", "b", "", osOld), now.Add(-25*time.Minute))
	inFlight.State = schema.StateWorking
	window, err := schema.Window{Days: []string{"Mon"}, Start: "12:00", End: "13:00", TimeZone: "UTC"}.Compile()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		nodes   []Node
		windows schema.Windows
		want    time.Time
	}{
		{"nothing waits on the clock", []Node{node("p-0", "p", "a", p.Hash, osNew)}, nil, time.Time{}},
		{"a soak ends", []Node{soaking}, nil, soaking.AtTarget.Add(10 * time.Minute)},
		{"a node times out first", []Node{soaking, inFlight}, nil, inFlight.Dispatched.Add(30*time.Minute + time.Millisecond)},
		{"a window opens", []Node{node("p-0", "p", "a", "", osOld)}, schema.Windows{window}, time.Date(2026, 11, 2, 12, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := p
			pool.Windows = tt.windows
			pp := Compute(Input{Pools: []Pool{pool}, Nodes: tt.nodes, Now: now}).Pools[0]
			if !pp.Recheck.Equal(tt.want) {
				t.Errorf("recheck %v, want %v", pp.Recheck, tt.want)
			}
		})
	}
}
