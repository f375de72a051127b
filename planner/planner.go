package planner

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

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
		Name:        p.Name,
		ConfigHash:  p.Hash,
		OSCommit:    p.Spec.OS.Commit,
		Paused:      p.Spec.Paused,
		Unavailable: []Unavailable{},
		Batches:     [][]string{},
		Changes:     []Change{},
		UpToDate:    []string{},
	}
	r := p.Spec.Rollout
	prev := in.Rollouts[p.Name]
	st := prev
	if st.Hash != p.Hash {
		// A new target: the last rollout's halt and rollback are over.
		st = Rollout{Hash: p.Hash, LastGood: st.LastGood}
	}
	target := Target{Hash: p.Hash, OSCommit: p.Spec.OS.Commit}
	goal := target // where nodes go: the target, or back to the last good
	if st.RollingBack {
		goal = st.LastGood
		pp.RollingBack = true
	}
	forgiven := map[string]bool{} // "node#failures": a resume forgives one failure
	for _, n := range st.Forgiven {
		forgiven[n] = true
	}
	pp.failures = map[string]int{}
	soak, timeout := r.SoakDuration(), r.NodeTimeoutDuration()
	act := func(a Action) { pp.Actions = append(pp.Actions, a) }

	var (
		free       []*Node  // out of date, already Herd's: in flight or to retarget
		settling   []*Node  // working toward an older target: wait for a safe point
		candidates []*Node  // out of date and available
		joining    []*Node  // joined the pool, converging: no budget
		failed     []*Node  // failed this rollout
		waiting    []Change // out of date, unavailable for other reasons
		finishing  []string // at the goal, still unavailable because of Herd
		inFlight   int      // dispatched or soaking: the batch is not done
	)
	stayUnavailable := 0
	members := 0
	for _, n := range nodes {
		if n.Quarantined != "" {
			pp.Quarantined = append(pp.Quarantined, n.Name)
			continue
		}
		members++
		reason := unavailableReason(n)
		if reason != "" {
			pp.Unavailable = append(pp.Unavailable, Unavailable{Node: n.Name, Reason: reason})
		}
		atGoal := n.CurrentConfig == goal.Hash && n.OSBooted == goal.OSCommit
		toGoal := n.DesiredConfig == goal.Hash && n.DesiredOS == goal.OSCommit
		if st.RollingBack && !atGoal && !toGoal && n.DesiredConfig != target.Hash && n.CurrentConfig != target.Hash {
			// Rolling back: only the nodes the rollout touched go back.
			if reason != "" {
				stayUnavailable++
			}
			continue
		}

		if atGoal && !toGoal && n.DesiredConfig != "" {
			// At the goal, but told another target (a revert overtook it):
			// at a safe point, tell it the goal; its agent stands down.
			if n.State == schema.StateWorking || n.State == schema.StateRebooting {
				settling = append(settling, n)
				stayUnavailable++
				finishing = append(finishing, n.Name)
				continue
			}
			act(Action{Kind: ActStart, Node: n.Name, Target: goal, Disruption: schema.DisruptionNone, Reason: "already there"})
		}

		if atGoal {
			ready := n.Ready && n.State == schema.StateIdle
			healthy := ready && n.Unhealthy == ""
			soaked := soak == 0 || !n.AtTarget.IsZero() && !in.Now.Before(n.AtTarget.Add(soak))
			if healthy && toGoal && n.AtTarget.IsZero() && soak > 0 {
				act(Action{Kind: ActSoak, Node: n.Name, Target: goal})
			}
			if ready && n.Cordoned {
				act(Action{Kind: ActFinish, Node: n.Name, Target: goal})
			}
			switch {
			case healthy && soaked:
				pp.UpToDate = append(pp.UpToDate, n.Name)
			case ready && !healthy && toGoal && !soaked:
				// A health check fails during the soak: a failure.
				failed = append(failed, n)
				if n.FailedTarget != goal.Hash {
					act(Action{Kind: ActFail, Node: n.Name, Target: goal, Reason: "health check failed: " + n.Unhealthy})
				}
			case toGoal:
				pp.Soaking = append(pp.Soaking, n.Name)
				inFlight++
			default:
				pp.UpToDate = append(pp.UpToDate, n.Name) // there before this rollout
			}
			if reason != "" {
				stayUnavailable++
				if herdOwned(n) {
					finishing = append(finishing, n.Name)
				}
			}
			continue
		}

		// Out of date.
		switch fail := failure(n, goal, in.Now, timeout); {
		case n.Converging && n.State != schema.StateDegraded:
			joining = append(joining, n)
		case fail != "" || n.FailedTarget == goal.Hash && toGoal:
			failed = append(failed, n)
			if fail != "" && n.FailedTarget != goal.Hash {
				act(Action{Kind: ActFail, Node: n.Name, Target: goal, Reason: fail})
			}
			if reason != "" {
				stayUnavailable++ // a failed node keeps its slot
			}
		case toGoal:
			free = append(free, n)
			inFlight++
		case herdOwned(n) && (n.State == schema.StateWorking || n.State == schema.StateRebooting):
			settling = append(settling, n)
			stayUnavailable++ // Herd's, and back soon: like a node finishing
			finishing = append(finishing, n.Name)
		case reason != "" && herdOwned(n), toAnyTarget(n):
			free = append(free, n) // Herd's already: retarget it
		case reason != "":
			stayUnavailable++
			waiting = append(waiting, Change{Node: n.Name, Reason: reason + ": waits until it is available again"})
		default:
			candidates = append(candidates, n)
		}
	}
	pp.Nodes = members + len(pp.Quarantined)
	pp.MaxUnavailable = r.MaxUnavailable.Resolve(members)

	// Failures: forgiven ones do not count; nodes that fail too often leave
	// the rollout, when the pool allows it.
	var counted []*Node
	for _, n := range failed {
		fails := n.Failures
		if n.FailedTarget != goal.Hash {
			fails++ // the failure recorded now
		}
		if q := r.Quarantine; q != nil && fails >= q.After {
			act(Action{Kind: ActQuarantine, Node: n.Name, Target: goal, Reason: fmt.Sprintf("failed %d targets, the last %s", fails, short(goal.Hash))})
			continue
		}
		pp.Failed = append(pp.Failed, n.Name)
		pp.failures[n.Name] = fails
		if !forgiven[failureKey(n.Name, fails)] {
			counted = append(counted, n)
		} else if n.DesiredConfig != "" {
			// A resume forgave it: try it again. Told nothing, its agent
			// stands down; then it starts like any node.
			act(Action{Kind: ActReset, Node: n.Name, Reason: "resumed: try again"})
		}
	}
	switch {
	case st.Halted != "":
		pp.Halt = st.Halted
	case st.RollingBack:
	case len(counted) > r.MaxFailures:
		why := fmt.Sprintf("%d nodes failed (%s), more than maxFailures %d", len(counted), nodeNames(counted), r.MaxFailures)
		if r.FailurePolicy == schema.FailurePolicyRollback && st.LastGood.Hash != "" && st.LastGood.Hash != target.Hash {
			pp.StartRollback = true
		} else if r.FailurePolicy == schema.FailurePolicyRollback {
			pp.Halt = why + "; no earlier target to roll back to"
		} else {
			pp.Halt = why
		}
	}
	switch {
	case in.Freeze:
		pp.Closed = "the fleet is frozen (maintenance.freeze)"
	case !p.Windows.Open(in.Now):
		pp.Closed = "outside the pool's maintenance windows"
		if next := p.Windows.NextOpen(in.Now); !next.IsZero() {
			pp.Closed += "; the next opens at " + next.UTC().Format(time.RFC3339)
		}
	}

	// Joining nodes converge at once, outside the budget: the taint keeps
	// work off them, so there is nothing to drain. While the pool is halted
	// they get its last good target, not the one that failed.
	join := goal
	if pp.Halt != "" && st.LastGood.Hash != "" {
		join = st.LastGood
	}
	for _, n := range joining {
		pp.Joining = append(pp.Joining, n.Name)
		if n.DesiredConfig != join.Hash || n.DesiredOS != join.OSCommit {
			if n.State == schema.StateWorking || n.State == schema.StateRebooting {
				continue // at a safe point, later
			}
			act(Action{Kind: ActStart, Node: n.Name, Target: join, Disruption: schema.DisruptionReboot, Reason: "joining"})
		}
	}

	room := pp.MaxUnavailable - stayUnavailable
	external := stayUnavailable - len(finishing)
	later := pp.MaxUnavailable - external
	stop := ""
	switch {
	case pp.Paused:
		stop = "pool is paused"
	case pp.Halt != "":
		stop = "halted: " + pp.Halt
	case pp.StartRollback:
		stop = "rolling back"
	case pp.Closed != "":
		stop = pp.Closed
	}
	var batches [][]*Node
	startNow := map[*Node]bool{} // the nodes of the batch that runs now
	current := func(ns []*Node) {
		if len(ns) > 0 {
			batches = append(batches, ns)
			for _, n := range ns {
				startNow[n] = true
			}
		}
	}
	switch {
	case stop != "":
		// Nodes in flight finish; nothing new starts, no node is retargeted.
		var flying []*Node
		for _, n := range free {
			if n.DesiredConfig == goal.Hash && n.DesiredOS == goal.OSCommit {
				flying = append(flying, n)
			} else {
				waiting = append(waiting, Change{Node: n.Name, Reason: stop})
			}
		}
		current(flying)
		for _, n := range candidates {
			waiting = append(waiting, Change{Node: n.Name, Reason: stop})
		}
	case later <= 0 && len(candidates) > 0:
		current(free)
		pp.Blocked = fmt.Sprintf("%d of %d nodes are unavailable for other reasons, which leaves no room under maxUnavailable %d", external, members, pp.MaxUnavailable)
		for _, n := range candidates {
			waiting = append(waiting, Change{Node: n.Name, Reason: "blocked: no room under maxUnavailable"})
		}
	case room <= 0 && len(candidates) > 0:
		// The last batch's nodes are at the target but not back to work yet.
		current(free)
		for _, n := range candidates {
			waiting = append(waiting, Change{Node: n.Name, Reason: "waits for " + strings.Join(finishing, ", ") + " to finish the batch before"})
		}
	default:
		order := spreadByZone(candidates)
		first := max(room-len(free), 0)
		if c := r.Canary; c > 0 && !st.RollingBack {
			// Until the canary batch is done, batch 1 is the canary batch.
			done := 0
			if prev.Hash == p.Hash {
				done = prev.Done
			}
			if done < c {
				pp.Canary = true
				first = min(first, c-done)
			}
		}
		if inFlight > 0 {
			// A batch starts only when the one before it is done.
			first = 0
		}
		first = min(first, len(order))
		current(append(free, order[:first]...))
		for rest := order[first:]; len(rest) > 0; {
			k := min(later, len(rest))
			batches = append(batches, rest[:k])
			rest = rest[k:]
		}
	}
	for _, n := range settling {
		waiting = append(waiting, Change{Node: n.Name, Reason: string(n.State) + " toward an earlier target: waits for a safe point"})
	}

	diffs := map[string]schema.Change{} // by the node's current config hash
	rollback := in.Rollbacks[p.Hash] || st.RollingBack
	for bi, batch := range batches {
		names := make([]string, len(batch))
		for i, n := range batch {
			names[i] = n.Name
			c := change(in, p, n, goal, diffs)
			c.Batch = bi + 1
			c.InFlight = n.DesiredConfig == goal.Hash && n.DesiredOS == goal.OSCommit
			c.Rollback = rollback
			pp.Changes = append(pp.Changes, c)
			if startNow[n] && !c.InFlight {
				act(Action{Kind: ActStart, Node: n.Name, Target: goal, Disruption: c.Disruption,
					Cordon: c.Disruption >= schema.DisruptionRestartKubelet, Drain: c.Disruption == schema.DisruptionReboot})
			}
		}
		pp.Batches = append(pp.Batches, names)
	}
	slices.SortFunc(waiting, func(a, b Change) int { return strings.Compare(a.Node, b.Node) })
	for _, w := range waiting {
		c := change(in, p, nodeByName(nodes, w.Node), goal, diffs)
		c.Reason = joinReasons(w.Reason, c.Reason)
		c.Rollback = rollback
		pp.Changes = append(pp.Changes, c)
	}
	for _, n := range failed {
		c := change(in, p, n, goal, diffs)
		c.Reason = joinReasons("failed", c.Reason)
		pp.Changes = append(pp.Changes, c)
	}

	// Pre-stage the OS of the nodes whose batches come later, a few at a time.
	if r.Prestage > 0 && !st.RollingBack {
		slots := r.Prestage
		for _, n := range nodes {
			if n.PrestageOS == goal.OSCommit && n.OSPulled != goal.OSCommit && n.OSBooted != goal.OSCommit {
				slots-- // pulling now
			}
		}
		for _, batch := range batches[min(1, len(batches)):] {
			for _, n := range batch {
				if slots <= 0 {
					break
				}
				if n.OSBooted != goal.OSCommit && n.PrestageOS != goal.OSCommit && n.OSPulled != goal.OSCommit {
					act(Action{Kind: ActPrestage, Node: n.Name, Target: goal})
					slots--
				}
			}
		}
	}

	pp.Complete = len(pp.UpToDate) == members && len(joining) == 0 && !st.RollingBack
	if st.RollingBack && len(pp.Changes) == 0 && len(pp.Soaking) == 0 {
		pp.Halt = fmt.Sprintf("rolled back to %s after failures of %s", short(goal.Hash), short(target.Hash))
	}
	slices.SortStableFunc(pp.Actions, func(a, b Action) int { return strings.Compare(a.Node, b.Node) })
	return pp
}

// failureKey names one failure of a node: a resume forgives that one, not
// the next.
func failureKey(node string, failures int) string { return fmt.Sprintf("%s#%d", node, failures) }

// failure says why a node dispatched to goal has failed it, or "".
func failure(n *Node, goal Target, now time.Time, timeout time.Duration) string {
	if n.DesiredConfig != goal.Hash || n.DesiredOS != goal.OSCommit {
		return ""
	}
	switch {
	case n.State == schema.StateDegraded:
		return "degraded: " + n.Message
	case !n.Dispatched.IsZero() && now.Sub(n.Dispatched) > timeout:
		return fmt.Sprintf("not done %s after it was dispatched (nodeTimeout)", timeout)
	}
	return ""
}

func nodeNames(ns []*Node) string {
	names := make([]string, len(ns))
	for i, n := range ns {
		names[i] = n.Name
	}
	return strings.Join(names, ", ")
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

// herdOwned reports whether Herd is why the node is unavailable, or soon
// will be: told a target it has not reached, its agent acts on it.
func herdOwned(n *Node) bool {
	return n.State.Busy() || n.Cordoned || toAnyTarget(n)
}

// toAnyTarget reports whether the node was told a target it does not run.
func toAnyTarget(n *Node) bool {
	return n.DesiredConfig != "" && (n.DesiredConfig != n.CurrentConfig || n.DesiredOS != n.OSBooted)
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
func change(in *Input, p *Pool, n *Node, goal Target, diffs map[string]schema.Change) Change {
	c := Change{Node: n.Name, Zone: n.Zone(), From: n.CurrentConfig}
	osChange := n.OSBooted != goal.OSCommit
	to := p.Rendered
	if goal.Hash != p.Hash {
		to = in.Earlier[goal.Hash] // rolling back
	}
	switch from, known := in.Earlier[n.CurrentConfig]; {
	case n.CurrentConfig == goal.Hash:
		c.Disruption = schema.DisruptionReboot
		c.Reason = "config applied; the OS commit is not booted yet"
		c.Fields = []schema.FieldChange{{Path: "os.booted", From: n.OSBooted, To: goal.OSCommit}}
	case n.CurrentConfig == "":
		c.Disruption = schema.DisruptionReboot
		c.Reason = "node reports no herd.dev/current-config, so its config is unknown"
	case !known || to == nil:
		c.Disruption = schema.DisruptionReboot
		c.Reason = fmt.Sprintf("current config %s is unknown", short(n.CurrentConfig))
		if in.History != "" {
			c.Reason += " (not the render of " + in.History + ")"
		}
	default:
		d, ok := diffs[n.CurrentConfig]
		if !ok {
			d = schema.Diff(from, to)
			diffs[n.CurrentConfig] = d
		}
		c.Disruption, c.Fields = d.Disruption, d.Fields
		if osChange && from.Config.OS.Commit == goal.OSCommit {
			// The config says the commit is right, but the node booted another.
			c.Fields = append(slices.Clip(c.Fields), schema.FieldChange{Path: "os.booted", From: n.OSBooted, To: goal.OSCommit})
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
