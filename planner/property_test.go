package planner

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"herd.dev/herd/schema"
)

// randomInput builds a random fleet: pools with random budgets and canaries,
// nodes with random zones, readiness, cordons, agent states and configs,
// some in no pool and some in two.
func randomInput(t testing.TB, r *rand.Rand, pools, nodes int) Input {
	in := Input{}
	hashes := []string{""}
	for i := range pools {
		commit := osNew
		if r.IntN(3) == 0 {
			commit = osOld
		}
		mu := schema.IntOrPercent{Int: 1 + r.IntN(4)}
		if r.IntN(2) == 0 {
			mu = schema.IntOrPercent{Percent: 1 + r.IntN(100), IsPct: true}
		}
		p := testPool(t, fmt.Sprintf("pool-%03d", i), commit, 100+r.IntN(3), maxUnavailable(mu), func(s *schema.NodePool) {
			if r.IntN(3) == 0 {
				s.Rollout.Canary = 1 + r.IntN(3)
			}
			s.Paused = r.IntN(15) == 0
		})
		in.Pools = append(in.Pools, p)
		hashes = append(hashes, p.Hash)
	}
	states := []schema.NodeState{"", schema.StateIdle, schema.StateIdle, schema.StateIdle, schema.StateWorking, schema.StateRebooting, schema.StateDegraded}
	zones := []string{"", "zone-a", "zone-b", "zone-c", "zone-d"}
	for i := range nodes {
		p := in.Pools[r.IntN(len(in.Pools))]
		labels := map[string]string{schema.LabelZone: zones[r.IntN(len(zones))]}
		switch r.IntN(40) {
		case 0: // in no pool
		case 1: // in two pools
			labels["herd.dev/pool"] = p.Name
			q := in.Pools[r.IntN(len(in.Pools))]
			for k, v := range q.Spec.Selector.MatchLabels {
				labels[k+"-x"] = v
			}
		default:
			labels["herd.dev/pool"] = p.Name
		}
		n := Node{
			Name:          fmt.Sprintf("node-%05d", i),
			Labels:        labels,
			Ready:         r.IntN(12) != 0,
			Unschedulable: r.IntN(15) == 0,
			State:         states[r.IntN(len(states))],
			CurrentConfig: hashes[r.IntN(len(hashes))],
			OSBooted:      []string{osOld, osNew, ""}[r.IntN(3)],
		}
		if r.IntN(2) == 0 { // most nodes are at their pool's target
			n.CurrentConfig, n.OSBooted = p.Hash, p.Spec.OS.Commit
		}
		if r.IntN(10) == 0 {
			n.DesiredConfig, n.DesiredOS = p.Hash, p.Spec.OS.Commit
		}
		n.Cordoned = n.Unschedulable && r.IntN(2) == 0
		in.Nodes = append(in.Nodes, n)
	}
	return in
}

func TestPlanProperties(t *testing.T) {
	for seed := range uint64(300) {
		r := rand.New(rand.NewPCG(seed, 1))
		in := randomInput(t, r, 1+r.IntN(8), r.IntN(120))
		plan := Compute(in)
		checkPlan(t, seed, in, plan)

		// Same input in another order: byte-identical plan.
		shuffled := in
		shuffled.Nodes = append([]Node(nil), in.Nodes...)
		shuffled.Pools = append([]Pool(nil), in.Pools...)
		r.Shuffle(len(shuffled.Nodes), func(i, j int) { shuffled.Nodes[i], shuffled.Nodes[j] = shuffled.Nodes[j], shuffled.Nodes[i] })
		r.Shuffle(len(shuffled.Pools), func(i, j int) { shuffled.Pools[i], shuffled.Pools[j] = shuffled.Pools[j], shuffled.Pools[i] })
		a, _ := json.Marshal(plan)
		b, _ := json.Marshal(Compute(shuffled))
		if string(a) != string(b) {
			t.Fatalf("seed %d: plan depends on input order", seed)
		}
	}
}

func checkPlan(t *testing.T, seed uint64, in Input, plan *Plan) {
	t.Helper()
	byName := map[string]*Node{}
	for i := range in.Nodes {
		byName[in.Nodes[i].Name] = &in.Nodes[i]
	}
	pools := map[string]*Pool{}
	for i := range in.Pools {
		pools[in.Pools[i].Name] = &in.Pools[i]
	}

	// Every node is in exactly one pool, unmanaged, or a conflict.
	seen := map[string]string{}
	note := func(node, where string) {
		if prev, ok := seen[node]; ok {
			t.Fatalf("seed %d: node %s is in %s and %s", seed, node, prev, where)
		}
		seen[node] = where
	}
	for _, n := range plan.Unmanaged {
		note(n, "unmanaged")
	}
	for _, c := range plan.Conflicts {
		note(c.Node, "conflicts")
	}

	for _, pp := range plan.Pools {
		p := pools[pp.Name]
		var members []*Node
		for _, n := range in.Nodes {
			if p.Spec.Selector.Matches(n.Labels) && seen[n.Name] != "conflicts" {
				members = append(members, byName[n.Name])
				note(n.Name, "pool "+pp.Name)
			}
		}
		if pp.Nodes != len(members) {
			t.Fatalf("seed %d pool %s: %d nodes, want %d", seed, pp.Name, pp.Nodes, len(members))
		}
		budget := p.Spec.Rollout.MaxUnavailable.Resolve(len(members))
		if pp.MaxUnavailable != budget {
			t.Fatalf("seed %d pool %s: maxUnavailable %d, want %d", seed, pp.Name, pp.MaxUnavailable, budget)
		}

		upToDate := map[string]bool{}
		unavailable := map[string]bool{}
		for _, n := range members {
			if n.CurrentConfig == p.Hash && n.OSBooted == p.Spec.OS.Commit {
				upToDate[n.Name] = true
			}
			if !n.Ready || n.Unschedulable || n.State.Busy() {
				unavailable[n.Name] = true
			}
		}
		inBatch := map[string]int{}
		for bi, batch := range pp.Batches {
			if len(batch) == 0 {
				t.Fatalf("seed %d pool %s: empty batch %d", seed, pp.Name, bi+1)
			}
			for _, name := range batch {
				if upToDate[name] {
					t.Fatalf("seed %d pool %s: up-to-date node %s is in batch %d", seed, pp.Name, name, bi+1)
				}
				if _, dup := inBatch[name]; dup {
					t.Fatalf("seed %d pool %s: node %s is in two batches", seed, pp.Name, name)
				}
				inBatch[name] = bi + 1
			}
		}

		// Budget: batch 1 adds no more unavailable nodes than the room left,
		// and later batches, with the nodes that stay unavailable, fit in it.
		// Nodes at the target that Herd still holds (finishing the last
		// batch) are back before the next batch; so, in the projection, are
		// failed nodes (they keep their slot until retried, and holding
		// later batches to them would read as no room); others stay
		// unavailable.
		stay, finishing := 0, 0
		for name := range unavailable {
			if _, ok := inBatch[name]; !ok {
				stay++
				if n := byName[name]; ownedByHerd(n) && (upToDate[name] || n.State == schema.StateWorking || n.State == schema.StateRebooting) || slices.Contains(pp.Failed, name) {
					finishing++
				}
			}
		}
		// Starting nodes never takes the pool over its budget: the nodes
		// started now that were available, with every node unavailable now
		// (but the ones finishing, which come back first), fit in it.
		var startedNow []string
		for _, a := range pp.Actions {
			if a.Kind == ActStart && !byName[a.Node].Converging {
				startedNow = append(startedNow, a.Node)
			}
		}
		added := 0
		for _, name := range startedNow {
			if !unavailable[name] {
				added++
			}
		}
		if added > 0 && len(unavailable)+added > budget {
			t.Fatalf("seed %d pool %s: starts %d available nodes with %d of %d unavailable", seed, pp.Name, added, len(unavailable), budget)
		}
		// Later batches fit beside the nodes unavailable for other reasons.
		for bi, batch := range pp.Batches {
			if bi == 0 {
				continue
			}
			if room := budget - stay + finishing; len(batch) > max(room, 0) {
				t.Fatalf("seed %d pool %s: batch %d has %d nodes with room for %d", seed, pp.Name, bi+1, len(batch), room)
			}
		}
		if pp.Halt != nil || pp.Paused || pp.Closed != nil {
			for _, name := range startedNow {
				if !ownedByHerd(byName[name]) {
					t.Fatalf("seed %d pool %s: starts %s while halted, paused or closed", seed, pp.Name, name)
				}
			}
		}

		// Every out-of-date node has exactly one change: in its batch, or
		// waiting with a reason that holds.
		changed := map[string]bool{}
		for _, c := range pp.Changes {
			if changed[c.Node] {
				t.Fatalf("seed %d pool %s: node %s changes twice", seed, pp.Name, c.Node)
			}
			changed[c.Node] = true
			if upToDate[c.Node] {
				t.Fatalf("seed %d pool %s: up-to-date node %s has a change", seed, pp.Name, c.Node)
			}
			if c.Batch != inBatch[c.Node] {
				t.Fatalf("seed %d pool %s: node %s: change says batch %d, batches say %d", seed, pp.Name, c.Node, c.Batch, inBatch[c.Node])
			}
			if c.Batch == 0 && !(unavailable[c.Node] || pp.Blocked != nil || pp.Paused || pp.Halt != nil || pp.Closed != nil || pp.RollingBack || c.Wait != nil && (c.Wait.Code == CodeBatchFinishing || c.Wait.Code == CodeFailed || c.Wait.Code == CodeSafePoint)) {
				t.Fatalf("seed %d pool %s: available node %s waits, but the pool is neither blocked nor paused nor finishing a batch", seed, pp.Name, c.Node)
			}
			if c.Batch == 0 && c.Wait == nil {
				t.Fatalf("seed %d pool %s: node %s waits without a reason", seed, pp.Name, c.Node)
			}
		}
		for _, n := range members {
			if !upToDate[n.Name] && !changed[n.Name] {
				t.Fatalf("seed %d pool %s: out-of-date node %s has no change", seed, pp.Name, n.Name)
			}
		}
		if pp.Paused {
			for _, c := range pp.Changes {
				if c.Batch > 0 && !c.InFlight && !unavailable[c.Node] {
					t.Fatalf("seed %d pool %s: paused pool starts node %s", seed, pp.Name, c.Node)
				}
			}
		}
	}
	for _, n := range in.Nodes {
		if _, ok := seen[n.Name]; !ok {
			t.Fatalf("seed %d: node %s is in no pool and not reported unmanaged", seed, n.Name)
		}
	}
}

// benchInput is a fleet of nodes across pools, a third of them out of date.
func benchInput(b *testing.B, pools, nodes int) Input {
	in := Input{}
	for i := range pools {
		in.Pools = append(in.Pools, testPool(b, fmt.Sprintf("pool-%03d", i), osNew, 110, maxUnavailable(schema.IntOrPercent{Percent: 10, IsPct: true})))
	}
	old := testPool(b, "old", osOld, 100)
	in.Earlier = map[string]*schema.Rendered{old.Hash: old.Rendered}
	zones := []string{"zone-a", "zone-b", "zone-c"}
	for i := range nodes {
		p := in.Pools[i%pools]
		n := node(fmt.Sprintf("node-%05d", i), p.Name, zones[i%3], p.Hash, osNew)
		n.Labels["kubernetes.io/hostname"] = n.Name
		n.Labels["kubernetes.io/os"] = "linux"
		n.Labels["node.kubernetes.io/instance-type"] = "m6i.2xlarge"
		if i%3 == 0 {
			n.CurrentConfig, n.OSBooted = old.Hash, osOld
		}
		in.Nodes = append(in.Nodes, n)
	}
	return in
}

func BenchmarkCompute(b *testing.B) {
	for _, n := range []int{1000, 10000, 100000} {
		b.Run(fmt.Sprintf("nodes=%d/pools=100", n), func(b *testing.B) {
			in := benchInput(b, 100, n)
			b.ReportAllocs()
			for b.Loop() {
				Compute(in)
			}
		})
	}
}

// ownedByHerd reports whether Herd took the node out or told it a target it
// has not reached: written from the rules in docs/plan.md, not the planner.
func ownedByHerd(n *Node) bool {
	told := n.DesiredConfig != "" && (n.DesiredConfig != n.CurrentConfig || n.DesiredOS != n.OSBooted)
	return n.State.Busy() && n.DesiredConfig != "" || n.Cordoned || !n.DrainStarted.IsZero() || told
}
