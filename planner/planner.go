package planner

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"herd.dev/herd/schema"
)

// Compute turns an input into a plan.
//
// The rules, pool by pool:
//   - A node belongs to the pool whose selector matches its labels; a node
//     matching several pools is a Conflict and joins none.
//   - It is up to date when herd.dev/os-booted is the pool's OS commit and
//     herd.dev/current-config is the pool's config hash.
//   - It is unavailable when NotReady, cordoned (spec.unschedulable) or the
//     agent reports Working, Rebooting or Degraded. Unavailable nodes count
//     against maxUnavailable.
//   - Out-of-date nodes Herd already works on (dispatched, or made
//     unavailable by Herd) go in batch 1 at no extra cost: they already count.
//     Out-of-date nodes unavailable for other reasons wait until they are
//     available again, as MCO does.
//   - The rest fill batches in zone-spread order, each batch no larger than
//     maxUnavailable minus the nodes that stay unavailable; batch 1 holds
//     `canary` nodes when set. When that leaves no room, the pool is Blocked.
//   - A batch starts only when the one before it is done: while any node is
//     in flight to the target, batch 1 holds only the nodes Herd works on.
func Compute(in Input) *Plan {
	plan := &Plan{Pools: make([]PoolPlan, 0, len(in.Pools)), Unmanaged: []string{}}
	members, unmanaged, conflicts := assign(in.Pools, in.Nodes)
	plan.Unmanaged = unmanaged
	plan.Conflicts = conflicts
	for i := range in.Pools {
		plan.Pools = append(plan.Pools, planPool(&in, &in.Pools[i], members[i]))
	}
	slices.SortFunc(plan.Pools, func(a, b PoolPlan) int { return strings.Compare(a.Name, b.Name) })
	return plan
}

// assign puts each node in the pool whose selector matches it. Pools are
// indexed by one label of their selector, so a node is checked only against
// pools that could match it.
func assign(pools []Pool, nodes []Node) (members [][]*Node, unmanaged []string, conflicts []Conflict) {
	index := map[string]map[string][]int{} // label key → value → pools
	for i, p := range pools {
		sel := p.Spec.Selector.MatchLabels
		if len(sel) == 0 {
			continue // the schema forbids it; such a pool selects nothing
		}
		k := minKey(sel)
		if index[k] == nil {
			index[k] = map[string][]int{}
		}
		index[k][sel[k]] = append(index[k][sel[k]], i)
	}
	members = make([][]*Node, len(pools))
	unmanaged = []string{}
	var matched []int
	for i := range nodes {
		n := &nodes[i]
		matched = matched[:0]
		for k, v := range n.Labels {
			for _, pi := range index[k][v] {
				if pools[pi].Spec.Selector.Matches(n.Labels) {
					matched = append(matched, pi)
				}
			}
		}
		switch len(matched) {
		case 0:
			unmanaged = append(unmanaged, n.Name)
		case 1:
			members[matched[0]] = append(members[matched[0]], n)
		default:
			names := make([]string, len(matched))
			for j, pi := range matched {
				names[j] = pools[pi].Name
			}
			slices.Sort(names)
			conflicts = append(conflicts, Conflict{Node: n.Name, Pools: names})
		}
	}
	slices.Sort(unmanaged)
	slices.SortFunc(conflicts, func(a, b Conflict) int { return strings.Compare(a.Node, b.Node) })
	for _, m := range members {
		slices.SortFunc(m, func(a, b *Node) int { return strings.Compare(a.Name, b.Name) })
	}
	return members, unmanaged, conflicts
}

func minKey(m map[string]string) string {
	first := true
	var min string
	for k := range m {
		if first || k < min {
			min, first = k, false
		}
	}
	return min
}

func planPool(in *Input, p *Pool, nodes []*Node) PoolPlan {
	pp := PoolPlan{
		Name:           p.Name,
		ConfigHash:     p.Hash,
		OSCommit:       p.Spec.OS.Commit,
		Nodes:          len(nodes),
		MaxUnavailable: p.Spec.Rollout.MaxUnavailable.Resolve(len(nodes)),
		Paused:         p.Spec.Paused,
		Unavailable:    []Unavailable{},
		Batches:        [][]string{},
		Changes:        []Change{},
		UpToDate:       []string{},
	}

	var free, candidates []*Node // free: out of date and already Herd's
	var waiting []Change
	var finishing []string // at the target, still unavailable because of Herd
	stayUnavailable := 0
	for _, n := range nodes {
		reason := unavailableReason(n)
		if reason != "" {
			pp.Unavailable = append(pp.Unavailable, Unavailable{Node: n.Name, Reason: reason})
		}
		if n.OSBooted == p.Spec.OS.Commit && n.CurrentConfig == p.Hash {
			pp.UpToDate = append(pp.UpToDate, n.Name)
			if reason != "" {
				stayUnavailable++
				if herdOwned(n) {
					finishing = append(finishing, n.Name)
				}
			}
			continue
		}
		inFlight := n.DesiredConfig == p.Hash && n.DesiredOS == p.Spec.OS.Commit
		switch {
		case inFlight || reason != "" && herdOwned(n):
			free = append(free, n)
		case reason != "":
			stayUnavailable++
			waiting = append(waiting, Change{Node: n.Name, Reason: reason + ": waits until it is available again"})
		default:
			candidates = append(candidates, n)
		}
	}

	room := pp.MaxUnavailable - stayUnavailable
	// Nodes finishing the last batch take room now, but not for long: later
	// batches count only the nodes unavailable for other reasons.
	external := stayUnavailable - len(finishing)
	later := pp.MaxUnavailable - external
	var batches [][]*Node
	switch {
	case pp.Paused:
		// Nodes in flight finish; nothing new starts.
		if len(free) > 0 {
			batches = append(batches, free)
		}
		for _, n := range candidates {
			waiting = append(waiting, Change{Node: n.Name, Reason: "pool is paused"})
		}
	case later <= 0 && len(candidates) > 0:
		if len(free) > 0 {
			batches = append(batches, free)
		}
		pp.Blocked = fmt.Sprintf("%d of %d nodes are unavailable for other reasons, which leaves no room under maxUnavailable %d", external, len(nodes), pp.MaxUnavailable)
		for _, n := range candidates {
			waiting = append(waiting, Change{Node: n.Name, Reason: "blocked: no room under maxUnavailable"})
		}
	case room <= 0 && len(candidates) > 0:
		// The last batch's nodes are at the target but not back to work yet.
		if len(free) > 0 {
			batches = append(batches, free)
		}
		for _, n := range candidates {
			waiting = append(waiting, Change{Node: n.Name, Reason: "waits for " + strings.Join(finishing, ", ") + " to finish the batch before"})
		}
	default:
		order := spreadByZone(candidates)
		first := max(room-len(free), 0)
		if c := p.Spec.Rollout.Canary; c > 0 {
			// Until the canary batch is done, batch 1 is the canary batch.
			done := 0
			if st, ok := in.Rollouts[p.Name]; ok && st.Hash == p.Hash {
				done = st.Done
			}
			if done < c {
				pp.Canary = true
				first = min(first, c-done)
			}
		}
		if inFlight(free, p) > 0 {
			// A batch starts only when the one before it is done.
			first = 0
		}
		first = min(first, len(order))
		if b := append(free, order[:first]...); len(b) > 0 {
			batches = append(batches, b)
		}
		for rest := order[first:]; len(rest) > 0; {
			k := min(later, len(rest))
			batches = append(batches, rest[:k])
			rest = rest[k:]
		}
	}

	diffs := map[string]schema.Change{} // by the node's current config hash
	rollback := in.Rollbacks[p.Hash]
	for bi, batch := range batches {
		names := make([]string, len(batch))
		for i, n := range batch {
			names[i] = n.Name
			c := change(in, p, n, diffs)
			c.Batch = bi + 1
			c.InFlight = n.DesiredConfig == p.Hash && n.DesiredOS == p.Spec.OS.Commit
			c.Rollback = rollback
			pp.Changes = append(pp.Changes, c)
		}
		pp.Batches = append(pp.Batches, names)
	}
	slices.SortFunc(waiting, func(a, b Change) int { return strings.Compare(a.Node, b.Node) })
	for _, w := range waiting {
		c := change(in, p, nodeByName(nodes, w.Node), diffs)
		c.Reason = joinReasons(w.Reason, c.Reason)
		c.Rollback = rollback
		pp.Changes = append(pp.Changes, c)
	}
	return pp
}

// inFlight counts the nodes already dispatched to the pool's target.
func inFlight(nodes []*Node, p *Pool) int {
	n := 0
	for _, node := range nodes {
		if node.DesiredConfig == p.Hash && node.DesiredOS == p.Spec.OS.Commit {
			n++
		}
	}
	return n
}

// unavailableReason says why a node is unavailable, or "" when it is not.
func unavailableReason(n *Node) string {
	var why []string
	if !n.Ready {
		why = append(why, "NotReady")
	}
	if n.Unschedulable {
		why = append(why, "cordoned")
	}
	if n.State.Busy() {
		why = append(why, string(n.State))
	}
	return strings.Join(why, ", ")
}

// herdOwned reports whether Herd is why the node is unavailable.
func herdOwned(n *Node) bool {
	return n.State.Busy() || n.Cordoned
}

// spreadByZone orders nodes round-robin over their zones (sorted by name, nodes
// without a zone last), so each batch spreads over as many zones as it can.
func spreadByZone(nodes []*Node) []*Node {
	byZone := map[string][]*Node{}
	for _, n := range nodes {
		byZone[n.Zone()] = append(byZone[n.Zone()], n)
	}
	zones := make([]string, 0, len(byZone))
	for z := range byZone {
		zones = append(zones, z)
	}
	slices.SortFunc(zones, func(a, b string) int {
		if (a == "") != (b == "") {
			return cmp.Compare(b, a) // "" last
		}
		return strings.Compare(a, b)
	})
	out := make([]*Node, 0, len(nodes))
	for i := 0; len(out) < len(nodes); i++ {
		for _, z := range zones {
			if i < len(byZone[z]) {
				out = append(out, byZone[z][i])
			}
		}
	}
	return out
}

// change works out the disruption a node needs to reach the pool's target,
// exactly when its current config is known, and as a reboot otherwise.
func change(in *Input, p *Pool, n *Node, diffs map[string]schema.Change) Change {
	c := Change{Node: n.Name, Zone: n.Zone(), From: n.CurrentConfig}
	osChange := n.OSBooted != p.Spec.OS.Commit
	switch from, known := in.Earlier[n.CurrentConfig]; {
	case n.CurrentConfig == p.Hash:
		c.Disruption = schema.DisruptionReboot
		c.Reason = "config applied; the OS commit is not booted yet"
		c.Fields = []schema.FieldChange{{Path: "os.booted", From: n.OSBooted, To: p.Spec.OS.Commit}}
	case n.CurrentConfig == "":
		c.Disruption = schema.DisruptionReboot
		c.Reason = "node reports no herd.dev/current-config, so its config is unknown"
	case !known:
		c.Disruption = schema.DisruptionReboot
		c.Reason = fmt.Sprintf("current config %s is unknown", short(n.CurrentConfig))
		if in.History != "" {
			c.Reason += " (not the render of " + in.History + ")"
		}
	default:
		d, ok := diffs[n.CurrentConfig]
		if !ok {
			d = schema.Diff(from, p.Rendered)
			diffs[n.CurrentConfig] = d
		}
		c.Disruption, c.Fields = d.Disruption, d.Fields
		if osChange && from.Config.OS.Commit == p.Spec.OS.Commit {
			// The config says the commit is right, but the node booted another.
			c.Fields = append(slices.Clip(c.Fields), schema.FieldChange{Path: "os.booted", From: n.OSBooted, To: p.Spec.OS.Commit})
		}
	}
	if osChange {
		c.Disruption = schema.DisruptionReboot
	}
	return c
}

func nodeByName(nodes []*Node, name string) *Node {
	i, _ := slices.BinarySearchFunc(nodes, name, func(n *Node, name string) int { return strings.Compare(n.Name, name) })
	return nodes[i]
}

func joinReasons(a, b string) string {
	if b == "" {
		return a
	}
	return a + "; " + b
}

func short(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}
