package planner

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"herd.dev/herd/schema"
)

// Compute turns an input into a plan: every decision of every pool's
// rollout, and the rollout state to keep.
//
// The rules, pool by pool:
//   - A node belongs to the pool whose selector matches its labels; a node
//     matching several pools is a Conflict and joins none.
//   - A new target starts a new rollout (rollout.go); a new resume request
//     lifts a halt and forgives the failures so far.
//   - A node is up to date when herd.dev/os-booted is the pool's OS commit and
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
//   - Failures past maxFailures halt the rollout, or roll the nodes it
//     touched back to the last good target, by the pool's failurePolicy.
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
// pools that could match it; a node's labels are looked up by the index's
// keys (a fleet's pools usually share one) or, when it has fewer labels
// than the index has keys, the index by its labels.
func assign(pools []Pool, nodes []Node) (members [][]*Node, unmanaged []string, conflicts []Conflict) {
	index := map[string]map[string][]int{} // label key → value → pools
	var keys []string                      // index's keys
	for i, p := range pools {
		sel := p.Spec.Selector.MatchLabels
		if len(sel) == 0 {
			continue // the schema forbids it; such a pool selects nothing
		}
		k := minKey(sel)
		if index[k] == nil {
			index[k] = map[string][]int{}
			keys = append(keys, k)
		}
		index[k][sel[k]] = append(index[k][sel[k]], i)
	}
	members = make([][]*Node, len(pools))
	unmanaged = []string{}
	var matched []int
	match := func(n *Node, candidates []int) {
		for _, pi := range candidates {
			if pools[pi].Spec.Selector.Matches(n.Labels) {
				matched = append(matched, pi)
			}
		}
	}
	for i := range nodes {
		n := &nodes[i]
		matched = matched[:0]
		if len(keys) <= len(n.Labels) {
			for _, k := range keys {
				if v, ok := n.Labels[k]; ok {
					match(n, index[k][v])
				}
			}
		} else {
			for k, v := range n.Labels {
				match(n, index[k][v])
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
	byName := func(a, b *Node) int { return strings.Compare(a.Name, b.Name) }
	for _, m := range members {
		if !slices.IsSortedFunc(m, byName) { // nodes given by name need no sort
			slices.SortFunc(m, byName)
		}
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

// poolPlanner decides one pool: the rollout state (st) moves on as it
// goes, and pp collects the plan.
type poolPlanner struct {
	in     *Input
	p      *Pool
	nodes  []*Node
	pp     PoolPlan
	prev   Rollout // the state as kept
	st     Rollout // the state being decided: pp.Next at the end
	target Target  // the pool's target
	goal   Target  // where nodes go: the target, or back to the last good one

	soak, timeout time.Duration
	recheck       time.Time                // PoolPlan.Recheck
	quarantine    map[string]bool          // nodes quarantined now
	startNow      map[*Node]bool           // the nodes of the batch that runs now
	diffs         map[string]schema.Change // by current config hash
}

func planPool(in *Input, p *Pool, nodes []*Node) PoolPlan {
	pl := &poolPlanner{
		in: in, p: p, nodes: nodes,
		target:     Target{Hash: p.Hash, OSCommit: p.Spec.OS.Commit},
		soak:       p.Spec.Rollout.SoakDuration(),
		timeout:    p.Spec.Rollout.NodeTimeoutDuration(),
		quarantine: map[string]bool{},
	}
	pl.pp = PoolPlan{
		Name:       p.Name,
		ConfigHash: p.Hash,
		OSCommit:   p.Spec.OS.Commit,
		Paused:     p.Spec.Paused,
	}
	pl.begin()
	resumed := pl.resume()
	pl.setGoal()
	s := pl.sort()
	if resumed {
		pl.forgive(s)
	}
	if pl.judge(s) {
		// A rollback starts now: plan the way back at once. The failures
		// and quarantines found on the way to the target stand.
		kept := slices.DeleteFunc(pl.pp.Actions, func(a Action) bool { return a.Kind != ActFail && a.Kind != ActQuarantine })
		pl.pp.Actions = kept
		pl.pp.Failed = nil
		pl.setGoal()
		s = pl.sort()
		pl.judge(s)
	}
	pl.closed()
	pl.join(s)
	batches := pl.batch(s)
	pl.changes(s, batches)
	pl.prestage(batches)
	pl.remediate()
	pl.finish(s)
	return pl.pp
}

func (pl *poolPlanner) act(a Action) { pl.pp.Actions = append(pl.pp.Actions, a) }

// at notes a time after Now at which the plan changes by the clock alone.
func (pl *poolPlanner) at(t time.Time) {
	if t.After(pl.in.Now) && (pl.recheck.IsZero() || t.Before(pl.recheck)) {
		pl.recheck = t
	}
}

// timesOut notes when a node dispatched to the goal times out.
func (pl *poolPlanner) timesOut(n *Node) {
	if !n.Dispatched.IsZero() {
		pl.at(n.Dispatched.Add(pl.timeout + time.Millisecond)) // timedOut: past the timeout
	}
}

func (pl *poolPlanner) event(e Event) { pl.pp.Events = append(pl.pp.Events, e) }

// setGoal points the nodes at the target, or back at the last good target
// while rolling back.
func (pl *poolPlanner) setGoal() {
	pl.goal = pl.target
	pl.diffs = map[string]schema.Change{}
	pl.pp.RollingBack = pl.st.RollingBack
	if pl.st.RollingBack {
		pl.goal = pl.st.LastGood
	}
}

// sorted is the pool's nodes, sorted by where they stand.
type sorted struct {
	members    int
	free       []*Node   // out of date, already Herd's: in flight, taken out, or to retarget
	blocked    int       // free nodes whose drain is blocked: the batch does not wait for them
	settling   []*Node   // busy toward an older target: wait for a safe point
	candidates []*Node   // out of date and available
	joining    []*Node   // joined the pool, converging: no budget
	failed     []*Node   // failed this rollout
	fails      []*Reason // why each failed node failed now (nil: earlier)
	waiting    []Change  // out of date, waiting
	finishing  []string  // at the goal (or settling), still unavailable because of Herd
	held       []string  // failed and unavailable: they keep their slot, Herd's
	inFlight   int       // dispatched or soaking: the batch is not done
	// stayUnavailable counts nodes that stay unavailable whatever is
	// started: they take room under maxUnavailable.
	stayUnavailable int
}

// sort puts every node of the pool where it stands, and decides what
// follows from that alone: soaks, finishes, failures found now.
func (pl *poolPlanner) sort() *sorted {
	s := &sorted{}
	pp := &pl.pp
	pp.Unavailable, pp.UpToDate, pp.Soaking, pp.Quarantined = []Unavailable{}, []string{}, nil, nil
	goal := pl.goal
	for _, n := range pl.nodes {
		if n.Quarantined != "" || pl.quarantine[n.Name] {
			pp.Quarantined = append(pp.Quarantined, n.Name)
			continue
		}
		s.members++
		u, unavailable := unavailability(n)
		if unavailable {
			pp.Unavailable = append(pp.Unavailable, u)
		}
		if repairing(n) {
			pl.sortRepairing(s, n, unavailable)
			continue
		}
		atGoal := n.CurrentConfig == goal.Hash && n.OSBooted == goal.OSCommit
		toGoal := dispatchedTo(n, goal)
		if pl.st.RollingBack && !atGoal && !toGoal && n.DesiredConfig != pl.target.Hash && n.CurrentConfig != pl.target.Hash {
			// Rolling back: only the nodes the rollout touched go back.
			if unavailable {
				s.stayUnavailable++
			}
			continue
		}
		if atGoal {
			pl.sortAtGoal(s, n, toGoal, unavailable)
			continue
		}
		pl.sortOutOfDate(s, n, u, toGoal, unavailable)
	}
	pp.Nodes = s.members + len(pp.Quarantined)
	pp.MaxUnavailable = pl.p.Spec.Rollout.MaxUnavailable.Resolve(s.members)
	return s
}

// sortAtGoal places a node that runs the goal: done, soaking, or failing
// its health checks in its soak.
func (pl *poolPlanner) sortAtGoal(s *sorted, n *Node, toGoal, unavailable bool) {
	pp, goal := &pl.pp, pl.goal
	if !toGoal && n.DesiredConfig != "" {
		// At the goal, but told another target (a revert overtook it): at
		// a safe point, tell it the goal; its agent stands down.
		if n.State == schema.StateWorking || n.State == schema.StateRebooting {
			s.settling = append(s.settling, n)
			s.stayUnavailable++
			s.finishing = append(s.finishing, n.Name)
			return
		}
		pl.act(Action{Kind: ActRetarget, Node: n.Name, Target: goal})
	}
	ready := n.Ready && n.State == schema.StateIdle
	healthy := ready && n.Unhealthy == ""
	soaked := pl.soak == 0 || !n.AtTarget.IsZero() && !pl.in.Now.Before(n.AtTarget.Add(pl.soak))
	if healthy && toGoal && n.AtTarget.IsZero() {
		pl.act(Action{Kind: ActSoak, Node: n.Name, Target: goal})
	}
	if ready && (n.Cordoned || !n.DrainStarted.IsZero()) {
		pl.act(Action{Kind: ActFinish, Node: n.Name, Target: goal})
	}
	switch {
	case healthy && soaked:
		pp.UpToDate = append(pp.UpToDate, n.Name)
	case ready && !healthy && toGoal && !soaked:
		// A health check fails during the soak: a failure.
		var why *Reason
		if n.FailedTarget != goal.Hash {
			why = &Reason{Code: CodeHealthCheck, Detail: n.Unhealthy}
		}
		s.failed, s.fails = append(s.failed, n), append(s.fails, why)
	case !ready && toGoal && n.AtTarget.IsZero() && (n.FailedTarget == goal.Hash || timedOut(n, pl.in.Now, pl.timeout)):
		// At the target, but never back since: not done within nodeTimeout.
		var why *Reason
		if n.FailedTarget != goal.Hash {
			why = &Reason{Code: CodeNodeTimeout, Duration: pl.timeout}
		}
		s.failed, s.fails = append(s.failed, n), append(s.fails, why)
		if unavailable {
			s.stayUnavailable++
			s.held = append(s.held, n.Name)
		}
		return
	case toGoal:
		pp.Soaking = append(pp.Soaking, n.Name)
		s.inFlight++
		if n.AtTarget.IsZero() {
			pl.timesOut(n)
		} else {
			pl.at(n.AtTarget.Add(pl.soak))
		}
	default:
		pp.UpToDate = append(pp.UpToDate, n.Name) // there before this rollout
	}
	if unavailable {
		s.stayUnavailable++
		if herdOwned(n) {
			s.finishing = append(s.finishing, n.Name)
		}
	}
}

// sortOutOfDate places a node that does not run the goal.
func (pl *poolPlanner) sortOutOfDate(s *sorted, n *Node, u Unavailable, toGoal, unavailable bool) {
	switch fail := failure(n, pl.goal, pl.in.Now, pl.timeout); {
	case n.Converging && n.State != schema.StateDegraded:
		s.joining = append(s.joining, n)
	case fail != nil || n.FailedTarget == pl.goal.Hash && toGoal:
		if n.FailedTarget == pl.goal.Hash {
			fail = nil // recorded already
		}
		s.failed, s.fails = append(s.failed, n), append(s.fails, fail)
		if unavailable {
			s.stayUnavailable++ // a failed node keeps its slot
			s.held = append(s.held, n.Name)
		}
	case toGoal:
		s.free = append(s.free, n)
		s.inFlight++
		pl.timesOut(n)
	case herdOwned(n) && (n.State == schema.StateWorking || n.State == schema.StateRebooting):
		s.settling = append(s.settling, n)
		s.stayUnavailable++ // Herd's, and back soon: like a node finishing
		s.finishing = append(s.finishing, n.Name)
	case unavailable && herdOwned(n), toAnyTarget(n):
		s.free = append(s.free, n) // Herd's already: go on, or retarget it
		if n.DrainBlocked {
			s.blocked++
		}
	case unavailable:
		s.stayUnavailable++
		s.waiting = append(s.waiting, Change{Node: n.Name, Wait: &Reason{Code: CodeUnavailable, Detail: u.Message()}})
	default:
		s.candidates = append(s.candidates, n)
	}
}

// forgive records the failures so far as forgiven: a resume asked for it.
func (pl *poolPlanner) forgive(s *sorted) {
	var names []string
	for _, n := range s.failed {
		f := Failure{Node: n.Name, Count: failureCount(n, pl.goal)}
		if !slices.Contains(pl.st.Forgiven, f) {
			pl.st.Forgiven = append(pl.st.Forgiven, f)
		}
		names = append(names, n.Name)
	}
	slices.SortFunc(pl.st.Forgiven, func(a, b Failure) int {
		return cmp.Or(strings.Compare(a.Node, b.Node), cmp.Compare(a.Count, b.Count))
	})
	pl.event(Event{Kind: EventResumed, Nodes: names, Why: reason(CodeResumed)})
}

// failureCount is the node's failure count once its failure of goal is
// recorded.
func failureCount(n *Node, goal Target) int {
	if n.FailedTarget != goal.Hash {
		return n.Failures + 1
	}
	return n.Failures
}

// judge records the failures found now, quarantines nodes that failed too
// often, and holds the rest against the failure budget: past it, the
// rollout halts, or rolls back. It reports whether a rollback starts now.
func (pl *poolPlanner) judge(s *sorted) bool {
	r := pl.p.Spec.Rollout
	var counted []string
	for i, n := range s.failed {
		if why := s.fails[i]; why != nil {
			pl.act(Action{Kind: ActFail, Node: n.Name, Target: pl.goal, Why: why})
		}
		fails := failureCount(n, pl.goal)
		if q := r.Quarantine; q != nil && fails >= q.After {
			pl.quarantine[n.Name] = true
			pl.act(Action{Kind: ActQuarantine, Node: n.Name, Target: pl.goal, Why: &Reason{Code: CodeFailedTooOften, Count: fails, Hash: pl.goal.Hash}})
			continue
		}
		pl.pp.Failed = append(pl.pp.Failed, n.Name)
		if !slices.Contains(pl.st.Forgiven, Failure{Node: n.Name, Count: fails}) {
			counted = append(counted, n.Name)
		} else if n.DesiredConfig != "" {
			// A resume forgave it: try it again. Told nothing, its agent
			// stands down; then it starts like any node.
			pl.act(Action{Kind: ActReset, Node: n.Name, Why: reason(CodeResumed)})
		}
	}
	if pl.st.Halt != nil || pl.st.RollingBack || len(counted) <= r.MaxFailures {
		return false
	}
	why := &Reason{Code: CodeFailureBudget, Nodes: counted, Count: len(counted), Limit: r.MaxFailures}
	if r.FailurePolicy == schema.FailurePolicyRollback {
		if lg := pl.st.LastGood; lg.Hash != "" && lg != pl.target {
			pl.st.RollingBack = true
			pl.event(Event{Kind: EventRollbackStarted, Nodes: counted, Why: why})
			return true
		}
		why.Code = CodeNoRollbackTarget
	}
	pl.st.Halt = why
	pl.event(Event{Kind: EventHalted, Nodes: counted, Why: why})
	return false
}

// closed says whether the pool's windows or a freeze keep batches from
// starting now.
func (pl *poolPlanner) closed() {
	switch {
	case pl.in.Freeze:
		pl.pp.Closed = reason(CodeFrozen)
	case !pl.p.Windows.Open(pl.in.Now):
		pl.pp.Closed = &Reason{Code: CodeOutsideWindow, Time: pl.p.Windows.NextOpen(pl.in.Now)}
		pl.at(pl.pp.Closed.Time)
	}
}

// join gives joining nodes their target at once, outside the budget: the
// taint keeps work off them, so there is nothing to drain. While the pool
// is halted they get its last good target, not the one that failed.
func (pl *poolPlanner) join(s *sorted) {
	join := pl.goal
	if pl.st.Halt != nil && pl.st.LastGood.Hash != "" {
		join = pl.st.LastGood
	}
	for _, n := range s.joining {
		pl.pp.Joining = append(pl.pp.Joining, n.Name)
		if dispatchedTo(n, join) || n.State == schema.StateWorking || n.State == schema.StateRebooting {
			continue // told already, or at a safe point later
		}
		pl.act(Action{Kind: ActJoin, Node: n.Name, Target: join, Disruption: schema.DisruptionReboot})
	}
}

// stop says why no new node starts, or nil.
func (pl *poolPlanner) stop() *Reason {
	switch {
	case pl.pp.Paused:
		return reason(CodePaused)
	case pl.st.Halt != nil:
		return reason(CodeHalted)
	case pl.pp.Closed != nil:
		return pl.pp.Closed
	}
	return nil
}

// batch decides the batches: batch 1 runs now; the rest are a projection.
// It returns them with batch 1 first.
func (pl *poolPlanner) batch(s *sorted) [][]*Node {
	pp, r := &pl.pp, pl.p.Spec.Rollout
	room := pp.MaxUnavailable - s.stayUnavailable
	external := s.stayUnavailable - len(s.finishing) - len(s.held)
	later := pp.MaxUnavailable - external
	var batches [][]*Node
	pl.startNow = map[*Node]bool{}
	current := func(ns []*Node) {
		if len(ns) > 0 {
			batches = append(batches, ns)
			for _, n := range ns {
				pl.startNow[n] = true
			}
		}
	}
	wait := func(ns []*Node, why *Reason) {
		for _, n := range ns {
			s.waiting = append(s.waiting, Change{Node: n.Name, Wait: why})
		}
	}
	switch stop := pl.stop(); {
	case stop != nil:
		// Nodes in flight finish, and nodes taken out go on, unless the
		// rollout halted: then Herd gives them back. Nothing new starts.
		var going []*Node
		for _, n := range s.free {
			switch {
			case dispatchedTo(n, pl.goal):
				going = append(going, n)
			case toAnyTarget(n) || n.State.Busy():
				s.waiting = append(s.waiting, Change{Node: n.Name, Wait: stop})
			case pl.st.Halt != nil:
				pl.act(Action{Kind: ActFinish, Node: n.Name, Target: pl.goal, Why: stop})
				s.waiting = append(s.waiting, Change{Node: n.Name, Wait: stop})
			default:
				going = append(going, n) // taken out for this target: finish starting it
			}
		}
		current(going)
		wait(s.candidates, stop)
	case later <= 0 && len(s.candidates) > 0:
		current(s.free)
		pp.Blocked = &Reason{Code: CodeNoRoom, Count: external, Total: s.members, Limit: pp.MaxUnavailable}
		wait(s.candidates, reason(CodeNoRoom))
	case room <= 0 && len(s.candidates) > 0:
		// The last batch's nodes are at the target but not back to work yet.
		current(s.free)
		wait(s.candidates, &Reason{Code: CodeBatchFinishing, Nodes: slices.Concat(s.finishing, s.held)})
	default:
		order := spreadByZone(s.candidates)
		first := max(room-len(s.free), 0)
		if c := r.Canary; c > 0 && !pl.st.RollingBack {
			// Until the canary batch is done, batch 1 is the canary batch.
			if done := pl.done(); done < c {
				// A canary whose drain is blocked is still the canary.
				pp.Canary = true
				first = max(min(first, c-done-s.blocked), 0)
			}
		}
		if s.inFlight > 0 || len(s.finishing) > 0 || len(s.free) > s.blocked {
			// A batch starts only when the one before it is done: its
			// nodes at the target and back to work. Nodes Herd works on
			// (dispatched, draining, to retarget) are that batch; starting
			// more now, in the room the finishing nodes leave, would split
			// it, or pass the canary. A node whose drain is blocked is
			// waited for by no one: it keeps its slot, and the rollout
			// goes on around it, as kubectl drain's users expect.
			first = 0
		}
		first = min(first, len(order))
		current(append(s.free, order[:first]...))
		for rest := order[first:]; len(rest) > 0; {
			k := min(later, len(rest))
			batches = append(batches, rest[:k])
			rest = rest[k:]
		}
	}
	for _, n := range s.settling {
		s.waiting = append(s.waiting, Change{Node: n.Name, Wait: &Reason{Code: CodeSafePoint, State: n.State}})
	}
	return batches
}

// done counts the nodes at the target that Herd dispatched to it since the
// rollout started: derived from the nodes, so it survives restarts.
func (pl *poolPlanner) done() int {
	d := 0
	for _, n := range pl.nodes {
		if n.CurrentConfig == pl.target.Hash && n.OSBooted == pl.target.OSCommit && dispatchedTo(n, pl.target) &&
			!n.Dispatched.IsZero() && !n.Dispatched.Before(pl.st.Started.Add(-time.Second)) {
			d++
		}
	}
	return d
}

// changes lists every out-of-date node's change, and starts batch 1.
func (pl *poolPlanner) changes(s *sorted, batches [][]*Node) {
	pp, goal := &pl.pp, pl.goal
	rollback := pl.in.Rollbacks[pl.p.Hash] || pl.st.RollingBack || slices.ContainsFunc(pl.st.Previous, func(p Previous) bool { return p.Hash == pl.p.Hash })
	pp.Batches, pp.Changes = [][]string{}, []Change{}
	var started []string
	for bi, batch := range batches {
		names := make([]string, len(batch))
		for i, n := range batch {
			names[i] = n.Name
			c := pl.change(n)
			c.Batch = bi + 1
			c.InFlight = dispatchedTo(n, goal)
			c.Rollback = rollback
			pp.Changes = append(pp.Changes, c)
			if pl.startNow[n] && !c.InFlight {
				a := Action{Kind: ActStart, Node: n.Name, Target: goal, Disruption: c.Disruption,
					Cordon: c.Disruption >= schema.DisruptionRestartContainerd, Drain: c.Disruption == schema.DisruptionReboot,
					New: !involved(n, goal)}
				pl.act(a)
				if a.New {
					started = append(started, n.Name)
				}
			}
		}
		pp.Batches = append(pp.Batches, names)
	}
	if len(started) > 0 {
		if !subset(started, pl.st.Batch) {
			pl.st.Batches++ // not the last batch started again
			pl.st.Batch = started
		}
		pl.event(Event{Kind: EventBatchStarted, Nodes: started})
	}
	slices.SortFunc(s.waiting, func(a, b Change) int { return strings.Compare(a.Node, b.Node) })
	for _, w := range s.waiting {
		c := pl.change(nodeByName(pl.nodes, w.Node))
		c.Wait, c.Rollback = w.Wait, rollback
		pp.Changes = append(pp.Changes, c)
	}
	for _, n := range s.failed {
		if pl.quarantine[n.Name] {
			continue
		}
		c := pl.change(n)
		c.Wait = reason(CodeFailed)
		pp.Changes = append(pp.Changes, c)
	}
}

// prestage asks the nodes of later batches to pull the target's OS commit
// ahead, a few at a time.
func (pl *poolPlanner) prestage(batches [][]*Node) {
	slots, goal := pl.p.Spec.Rollout.Prestage, pl.goal
	if slots <= 0 || pl.st.RollingBack {
		return
	}
	for _, n := range pl.nodes {
		if n.PrestageOS == goal.OSCommit && n.OSPulled != goal.OSCommit && n.OSBooted != goal.OSCommit {
			slots-- // pulling now
		}
	}
	for _, batch := range batches[min(1, len(batches)):] {
		for _, n := range batch {
			if slots <= 0 {
				return
			}
			if n.OSBooted != goal.OSCommit && n.PrestageOS != goal.OSCommit && n.OSPulled != goal.OSCommit {
				pl.act(Action{Kind: ActPrestage, Node: n.Name, Target: goal})
				slots--
			}
		}
	}
}

// finish decides what the plan means for the rollout: a finished rollback
// halts it, a complete one makes the target the last good one; and sums
// the pool up.
func (pl *poolPlanner) finish(s *sorted) {
	pp, st := &pl.pp, &pl.st
	if st.RollingBack && len(pp.Changes) == 0 && len(pp.Soaking) == 0 {
		st.RollingBack = false
		st.Halt = &Reason{Code: CodeRolledBack, Hash: pl.goal.Hash, From: pl.target.Hash}
		pl.event(Event{Kind: EventHalted, Why: st.Halt})
	}
	// Complete: every node at the target itself, not back at the last good.
	pp.Complete = len(pp.UpToDate) == s.members && len(s.joining) == 0 && pl.goal == pl.target
	if pp.Complete && st.LastGood != pl.target {
		if pl.prev.LastGood.Hash != "" {
			pl.event(Event{Kind: EventCompleted})
		}
		st.LastGood, st.LastGoodRevision = pl.target, st.Revision
	}
	pp.Halt = st.Halt
	pp.Recheck = pl.recheck
	pp.Phase = pl.phase()
	slices.SortStableFunc(pp.Actions, func(a, b Action) int { return strings.Compare(a.Node, b.Node) })
	pp.Next = *st
}

// phase sums the pool up.
func (pl *poolPlanner) phase() Phase {
	pp := &pl.pp
	switch {
	case pl.st.RollingBack:
		return PhaseRollingBack
	case pl.st.Halt != nil:
		return PhaseHalted
	case len(pp.Changes) == 0 && len(pp.Soaking) == 0:
		return PhaseUpToDate
	case pp.Paused:
		return PhasePaused
	case pp.Closed != nil && allInFlight(pp):
		return PhaseWaiting
	case pp.Blocked != nil:
		return PhaseBlocked
	}
	return PhaseProgressing
}

// allInFlight reports whether batch 1 holds only nodes already dispatched.
func allInFlight(pp *PoolPlan) bool {
	for _, c := range pp.Changes {
		if c.Batch == 1 && !c.InFlight {
			return false
		}
	}
	return true
}

// failure says why a node dispatched to goal has failed it, or nil.
func failure(n *Node, goal Target, now time.Time, timeout time.Duration) *Reason {
	if !dispatchedTo(n, goal) {
		return nil
	}
	switch {
	case n.State == schema.StateDegraded:
		return &Reason{Code: CodeDegraded, Detail: n.Message}
	case timedOut(n, now, timeout):
		return &Reason{Code: CodeNodeTimeout, Duration: timeout}
	}
	return nil
}

// timedOut reports whether the node was dispatched longer than timeout ago.
func timedOut(n *Node, now time.Time, timeout time.Duration) bool {
	return !n.Dispatched.IsZero() && now.Sub(n.Dispatched) > timeout
}

// unavailability says why a node is unavailable, and whether it is.
func unavailability(n *Node) (Unavailable, bool) {
	u := Unavailable{Node: n.Name, NotReady: !n.Ready, Cordoned: n.Unschedulable}
	if n.State.Busy() {
		u.State = n.State
	}
	return u, u.NotReady || u.Cordoned || u.State != ""
}

// dispatchedTo reports whether the node was told the target.
func dispatchedTo(n *Node, t Target) bool {
	return n.DesiredConfig == t.Hash && n.DesiredOS == t.OSCommit
}

// herdOwned reports whether Herd is why the node is unavailable, or soon
// will be: taken out by Herd, busy with a target Herd told it, or told a
// target it has not reached. A node told no target is not Herd's: its
// agent stands down (after a reset) or is busy on its own.
func herdOwned(n *Node) bool {
	return n.State.Busy() && n.DesiredConfig != "" || n.Cordoned || !n.DrainStarted.IsZero() || toAnyTarget(n)
}

// involved reports whether Herd already works on the node for target t:
// told it, cordoned or draining it, or its agent is busy or failed.
// Starting a node that is not involved takes one more node out.
func involved(n *Node, t Target) bool {
	return dispatchedTo(n, t) || n.Cordoned || !n.DrainStarted.IsZero() || n.State.Busy()
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

// change works out the disruption a node needs to reach the goal, exactly
// when its current config is known, and as a reboot otherwise.
func (pl *poolPlanner) change(n *Node) Change {
	in, goal := pl.in, pl.goal
	c := Change{Node: n.Name, Zone: n.Zone(), From: n.CurrentConfig}
	osChange := n.OSBooted != goal.OSCommit
	to := pl.p.Rendered
	if goal.Hash != pl.p.Hash {
		to = in.Earlier[goal.Hash] // rolling back
	}
	switch from, known := in.Earlier[n.CurrentConfig]; {
	case n.CurrentConfig == goal.Hash:
		c.Disruption = schema.DisruptionReboot
		c.Assumed = reason(CodeOSNotBooted)
		c.Fields = []schema.FieldChange{{Path: "os.booted", From: n.OSBooted, To: goal.OSCommit}}
	case n.CurrentConfig == "":
		c.Disruption = schema.DisruptionReboot
		c.Assumed = reason(CodeNoCurrentConfig)
	case !known || to == nil:
		c.Disruption = schema.DisruptionReboot
		c.Assumed = &Reason{Code: CodeUnknownConfig, Hash: n.CurrentConfig, Detail: in.History}
	default:
		d, ok := pl.diffs[n.CurrentConfig]
		if !ok {
			d = schema.Diff(from, to)
			pl.diffs[n.CurrentConfig] = d
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

// subset reports whether every name of a is in b.
func subset(a, b []string) bool {
	for _, name := range a {
		if !slices.Contains(b, name) {
			return false
		}
	}
	return true
}

func nodeByName(nodes []*Node, name string) *Node {
	i, _ := slices.BinarySearchFunc(nodes, name, func(n *Node, name string) int { return strings.Compare(n.Name, name) })
	return nodes[i]
}
