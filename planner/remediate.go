package planner

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
	"time"

	"herd.dev/herd/schema"
)

// Repairs: a pool's sick nodes are repaired rung by rung of the ladder its
// remediation declares for their problem (remediate below). The rules:
//   - A problem is on when kubelet's Ready condition is not True
//     (NotReady), or when one of the agent's conditions is True with a
//     fresh heartbeat. A stale condition says nothing: it is never acted on.
//   - Nodes Herd is rolling out to (told a target, cordoned or drained for
//     it, busy, converging) and quarantined nodes are not repaired; the
//     rollout leaves a node alone while it is being repaired.
//   - A problem on for its ladder's duration starts the first rung. A rung
//     that has not healed the node within its timeout after its agent was
//     asked, or that its agent reports Failed, gives way to the next; after
//     the last, the node is quarantined: left to people.
//   - Breaker: while more nodes than maxUnhealthy are sick, in the pool or
//     in one zone, no rung starts and none gives way: the pool is Stalled.
//   - At most maxPerHour rungs start in the pool in any hour.
//   - A node that falls sick again after quarantine.after repairs within
//     quarantine.window is quarantined instead.
//   - Rungs that take a node down (reboot, replace) need room under the
//     pool's maxUnavailable, counted with the rollout's nodes and after
//     the rollout's own decisions of this plan; a node already unavailable
//     takes no more room.
//   - dryRun plans the same, keeping in the pool's RepairState what a
//     repair keeps on the node, and does nothing.

// Repair actions. The controller carries them out without deciding.
const (
	// ActRemediate takes the node's repair to Repair.State's rung: it
	// records the state on the node (Repair.Ended, the rung that gave way,
	// goes to the node's history), cordons it when Cordon and drains it
	// when Drain, then asks its agent for the rung (herd.dev/remediate).
	// Planned again while the drain goes on. A dry run only records.
	ActRemediate ActionKind = "remediate"
	// ActReplace marks the node for replacement: the operator's webhook,
	// herd.dev/replace, and the Node deleted when Repair.DeleteNode.
	ActReplace ActionKind = "replace"
	// ActRemediated ends the node's repair: Repair.Ended goes to its
	// history, the state goes, and the node is uncordoned if the repair
	// cordoned it, or quarantined when Repair.Quarantine.
	ActRemediated ActionKind = "remediated"
)

// RepairStep is what a repair action carries out.
type RepairStep struct {
	// New is set when a rung starts (not when its drain goes on): it is
	// counted and reported once. The controller keeps the pool's repair
	// state before it acts, so the rate limit counts a rung even should
	// its node vanish.
	New        bool                      `json:"new,omitempty"`
	State      *schema.RemediationState  `json:"state,omitempty"`
	Ended      *schema.RemediationRecord `json:"ended,omitempty"`
	DryRun     bool                      `json:"dryRun,omitempty"`
	DeleteNode bool                      `json:"deleteNode,omitempty"`
	Quarantine bool                      `json:"quarantine,omitempty"`
}

// Why repairs start, give way, end, or wait.
const (
	CodeProblem          Code = "Problem"          // Problem (its condition's reason Health) on for Duration: a rung starts
	CodeRungTimedOut     Code = "RungTimedOut"     // Action did not heal the node within Duration
	CodeRungFailed       Code = "RungFailed"       // its agent reports Action failed; Detail says why
	CodeHealed           Code = "Healed"           // Problem cleared after Action
	CodeLadderExhausted  Code = "LadderExhausted"  // every rung of Problem's ladder tried, the last Action
	CodeFlapping         Code = "Flapping"         // repaired Count times within Duration
	CodeBreakerPool      Code = "BreakerPool"      // Count of Total nodes sick (Nodes), more than Limit
	CodeBreakerZone      Code = "BreakerZone"      // Count of Total nodes of zone Detail sick, more than Limit
	CodeRateLimited      Code = "RateLimited"      // Count rungs started in the last hour, Limit
	CodeRepairNoRoom     Code = "RepairNoRoom"     // Count of Total nodes unavailable: no room under Limit for Action
	CodeStale            Code = "StaleConditions"  // the node's conditions are stale: nothing is decided on them
	CodeRepairAbandoned  Code = "RepairAbandoned"  // the repair stops: Detail says why
	CodeRepairing        Code = "Repairing"        // a repair has the node (Action): the rollout waits
	CodeRungDrainBlocked Code = "RungDrainBlocked" // the rung's drain cannot go on by itself: it waits for people
	CodeReplaced         Code = "Replaced"         // marked for replacement
)

// repairMessage renders the repairs' reasons.
func repairMessage(r *Reason) (string, bool) {
	switch r.Code {
	case CodeProblem:
		return string(r.Problem) + problemReason(r) + " for " + r.Duration.String(), true
	case CodeRungTimedOut:
		return string(r.Action) + " did not heal it within " + r.Duration.String(), true
	case CodeRungFailed:
		return string(r.Action) + " failed: " + r.Detail, true
	case CodeHealed:
		return string(r.Problem) + " cleared after " + string(r.Action), true
	case CodeLadderExhausted:
		return "every repair of " + string(r.Problem) + " tried, the last " + string(r.Action) + ": left to people", true
	case CodeFlapping:
		return "sick again after " + plural(r.Count, "repair") + " within " + r.Duration.String() + ": left to people", true
	case CodeBreakerPool:
		return nodes(r.Count) + " of " + strconv.Itoa(r.Total) + " unhealthy (" + strings.Join(r.Nodes, ", ") + "), more than maxUnhealthy " + strconv.Itoa(r.Limit) + ": repairs stopped", true
	case CodeBreakerZone:
		return nodes(r.Count) + " of " + strconv.Itoa(r.Total) + " in zone " + r.Detail + " unhealthy (" + strings.Join(r.Nodes, ", ") + "), more than maxUnhealthy " + strconv.Itoa(r.Limit) + ": repairs stopped", true
	case CodeRateLimited:
		return plural(r.Count, "repair") + " started in the last hour, maxPerHour " + strconv.Itoa(r.Limit), true
	case CodeRepairNoRoom:
		return nodes(r.Count) + " of " + strconv.Itoa(r.Total) + " unavailable: no room under maxUnavailable " + strconv.Itoa(r.Limit) + " for a " + string(r.Action), true
	case CodeStale:
		return "its health conditions are stale (its agent does not report): nothing is decided on them", true
	case CodeRepairAbandoned:
		return "the repair stops: " + r.Detail, true
	case CodeRepairing:
		return "being repaired (" + string(r.Action) + "): waits for the repair", true
	case CodeRungDrainBlocked:
		return "its drain for " + string(r.Action) + " is blocked (refused by the pool's drain policy, or past its timeout): the rung waits", true
	case CodeReplaced:
		return "marked for replacement", true
	}
	return "", false
}

func problemReason(r *Reason) string {
	if r.Health == "" {
		return ""
	}
	return " (" + string(r.Health) + ")"
}

// Condition is a Node condition as repairs read it: Ready, or one of the
// agent's (schema.NodeConditionTypes).
type Condition struct {
	Type      string              `json:"type"`
	Status    string              `json:"status"` // True, False, Unknown
	Reason    schema.HealthReason `json:"reason,omitempty"`
	Since     time.Time           `json:"since,omitzero"`     // lastTransitionTime
	Heartbeat time.Time           `json:"heartbeat,omitzero"` // lastHeartbeatTime
}

// Condition status values.
const (
	ConditionTrue  = "True"
	ConditionFalse = "False"
)

// RepairState is what a pool's repairs keep between plans, in the HerdPool
// status: the rungs started lately, the breaker, and a dry run's
// counterpart of the node annotations.
type RepairState struct {
	// Log lists rungs started in the pool, oldest first: all of the last
	// hour (the rate limit) and at least the last MaxRepairLog.
	Log []RepairLog `json:"log,omitempty"`
	// Stopped says why the breaker stops repairs, while it does.
	Stopped *Reason `json:"stopped,omitempty"`
	// DryRun holds by node what a dry run keeps instead of annotations.
	DryRun map[string]DryRunNode `json:"dryRun,omitempty"`
}

// MaxRepairLog is how many rungs RepairState.Log keeps beyond the last hour.
const MaxRepairLog = 50

// RepairLog is one rung started in the pool.
type RepairLog struct {
	Node    string                   `json:"node"`
	ID      string                   `json:"id"`
	Time    time.Time                `json:"time"`
	Problem schema.Problem           `json:"problem"`
	Reason  schema.HealthReason      `json:"reason,omitempty"`
	Rung    int                      `json:"rung"`
	Action  schema.RemediationAction `json:"action"`
	DryRun  bool                     `json:"dryRun,omitempty"`
	Outcome schema.RepairOutcome     `json:"outcome,omitempty"` // once it ended
}

// DryRunNode is a dry run's record of one node.
type DryRunNode struct {
	Repair      *schema.RemediationState   `json:"repair,omitempty"`
	History     []schema.RemediationRecord `json:"history,omitempty"`
	Quarantined bool                       `json:"quarantined,omitempty"`
}

// RepairPlan is the repairs of a pool in a plan.
type RepairPlan struct {
	DryRun bool `json:"dryRun,omitempty"`
	// Sick lists the nodes with a problem on now (fresh conditions), Herd
	// not rolling out to them.
	Sick []Sick `json:"sick,omitempty"`
	// Repairing lists the repairs in progress and why each waits.
	Repairing []Repairing `json:"repairing,omitempty"`
	// Stopped says why no repair starts or gives way: the breaker.
	Stopped *Reason `json:"stopped,omitempty"`
}

// Sick is a node with a problem on.
type Sick struct {
	Node    string              `json:"node"`
	Problem schema.Problem      `json:"problem"`
	Reason  schema.HealthReason `json:"reason,omitempty"`
	Since   time.Time           `json:"since,omitzero"`
	Wait    *Reason             `json:"wait,omitempty"` // why no repair starts, when none does
}

// Repairing is a repair in progress.
type Repairing struct {
	Node  string                  `json:"node"`
	State schema.RemediationState `json:"state"`
	Wait  *Reason                 `json:"wait,omitempty"` // why it does not move on
}

// evidenceWait is how long a replacement waits for the agent's evidence
// bundle before it marks the node anyway.
const evidenceWait = 2 * time.Minute

// repairing reports whether a repair has the node: the rollout leaves it
// alone. Dry runs have no node.
func repairing(n *Node) bool { return n.Remediation != nil }

// sortRepairing places a node a repair has, for the rollout: it waits,
// and takes room when unavailable. At the goal, it is up to date once it
// is available again: until then the rollout is not complete.
func (pl *poolPlanner) sortRepairing(s *sorted, n *Node, unavailable bool) {
	if unavailable {
		s.stayUnavailable++
	}
	if n.CurrentConfig == pl.goal.Hash && n.OSBooted == pl.goal.OSCommit {
		if !unavailable {
			pl.pp.UpToDate = append(pl.pp.UpToDate, n.Name)
		}
		return
	}
	s.waiting = append(s.waiting, Change{Node: n.Name, Wait: &Reason{Code: CodeRepairing, Action: n.Remediation.Action}})
}

// repairer decides one pool's repairs.
type repairer struct {
	pl    *poolPlanner
	spec  *schema.Remediation
	now   time.Time
	dry   bool
	next  RepairState
	plan  RepairPlan
	used  int // members unavailable after this plan's actions
	limit int // the pool's maxUnavailable
	total int // members
	rate  int // rungs started in the last hour
}

// remediate decides the pool's repairs, after the rollout's decisions.
func (pl *poolPlanner) remediate() {
	prev := pl.in.Repairs[pl.p.Name]
	spec := pl.p.Spec.Remediation
	r := &repairer{pl: pl, spec: spec, now: pl.in.Now, limit: pl.pp.MaxUnavailable}
	if spec == nil {
		r.abandon("the pool declares no remediation")
		pl.pp.NextRepairs = RepairState{Log: r.pruned(prev.Log)}
		return
	}
	r.dry = spec.DryRun
	r.next = RepairState{Log: slices.Clone(prev.Log), DryRun: map[string]DryRunNode{}}
	if r.dry {
		for name, d := range prev.DryRun {
			r.next.DryRun[name] = d
		}
		r.abandon("dryRun is on")
	}
	r.plan.DryRun = r.dry
	members := r.members()
	r.total = len(members)
	r.used = len(pl.pp.Unavailable)
	for _, a := range pl.pp.Actions {
		if a.Kind == ActStart && a.New {
			r.used++
		}
	}
	if r.dry {
		// What a dry run would have taken down counts, as it would.
		for _, n := range members {
			if st := r.stateOf(n); st != nil && st.Action.TakesNodeDown() && st.Marked.IsZero() && available(n) {
				r.used++
			}
		}
	}
	r.syncLog(members)
	r.rate = r.startedWithin(time.Hour)

	sick := r.sick(members)
	r.plan.Stopped = r.breaker(members, sick)
	if r.plan.Stopped != nil && prev.Stopped == nil {
		pl.event(Event{Kind: EventRepairsStopped, Nodes: r.plan.Stopped.Nodes, Why: r.plan.Stopped})
	}
	if r.plan.Stopped == nil && prev.Stopped != nil {
		pl.event(Event{Kind: EventRepairsResumed})
	}
	r.next.Stopped = r.plan.Stopped
	// Repairs in progress first, oldest first: they hold what they took.
	var idle []*Node
	for _, n := range byStart(r, members) {
		if st := r.stateOf(n); st != nil {
			r.progress(n, st)
		} else {
			idle = append(idle, n)
		}
	}
	for _, n := range idle {
		r.start(n, sick[n.Name])
	}
	r.next.Log = r.pruned(r.next.Log)
	if len(r.next.DryRun) == 0 {
		r.next.DryRun = nil
	}
	pl.pp.Repairs = r.plan
	pl.pp.NextRepairs = r.next
}

// members are the pool's nodes repairs may touch: not quarantined.
func (r *repairer) members() []*Node {
	var out []*Node
	for _, n := range r.pl.nodes {
		if n.Quarantined == "" && !r.pl.quarantine[n.Name] {
			out = append(out, n)
		}
	}
	return out
}

// byStart orders nodes by when their repair started, else by when their
// first problem began, then by name.
func byStart(r *repairer, ns []*Node) []*Node {
	key := func(n *Node) time.Time {
		if st := r.stateOf(n); st != nil {
			return st.Started
		}
		var t time.Time
		for _, p := range schema.Problems {
			if on, known, _, since := problemOn(n, p, r.now); on && known && (t.IsZero() || since.Before(t)) {
				t = since
			}
		}
		return t
	}
	type keyed struct {
		n *Node
		t time.Time
	}
	ks := make([]keyed, len(ns))
	for i, n := range ns {
		ks[i] = keyed{n, key(n)} // once per node, not per comparison
	}
	order := func(a, b keyed) int { return cmp.Or(a.t.Compare(b.t), strings.Compare(a.n.Name, b.n.Name)) }
	if !slices.IsSortedFunc(ks, order) { // most often no repair and no problem: by name, as given
		slices.SortStableFunc(ks, order)
	}
	out := make([]*Node, len(ks))
	for i := range ks {
		out[i] = ks[i].n
	}
	return out
}

// inRollout reports whether Herd is rolling out to the node: told a
// target it has not reached, taken out for it, busy, converging, or at the
// pool's goal and neither done with its soak nor failed. Repairs leave it
// to the rollout, which judges it (health checks, nodeTimeout).
func (pl *poolPlanner) inRollout(n *Node) bool {
	if n.Remediation != nil {
		return false
	}
	soaking := dispatchedTo(n, pl.goal) && n.FailedTarget != pl.goal.Hash && (n.AtTarget.IsZero() || pl.in.Now.Before(n.AtTarget.Add(pl.soak)))
	return soaking || toAnyTarget(n) || n.State.Busy() || n.Cordoned || !n.DrainStarted.IsZero() || n.Converging
}

// problemOn says whether problem p is on the node at now, whether that is
// known (a stale or missing condition is not), its reason and since when.
func problemOn(n *Node, p schema.Problem, now time.Time) (on, known bool, reason schema.HealthReason, since time.Time) {
	typ := string(p)
	if p == schema.ProblemNotReady {
		typ = "Ready"
	}
	i := slices.IndexFunc(n.Conditions, func(c Condition) bool { return c.Type == typ })
	if i < 0 {
		return false, false, "", time.Time{}
	}
	c := n.Conditions[i]
	if p == schema.ProblemNotReady {
		return c.Status != ConditionTrue, true, c.Reason, c.Since
	}
	if schema.ConditionStale(c.Heartbeat, now, 0) {
		return false, false, "", time.Time{}
	}
	return c.Status == ConditionTrue, true, c.Reason, c.Since
}

// sick finds, by node, the declared problems on now (first in
// schema.Problems order) of nodes not in a rollout, and lists them.
func (r *repairer) sick(members []*Node) map[string]Sick {
	out := map[string]Sick{}
	for _, n := range members {
		if r.pl.inRollout(n) {
			continue
		}
		for _, p := range schema.Problems {
			if _, declared := r.spec.Problems[p]; !declared {
				continue
			}
			if on, known, reason, since := problemOn(n, p, r.now); on && known {
				out[n.Name] = Sick{Node: n.Name, Problem: p, Reason: reason, Since: since}
				break
			}
		}
	}
	return out
}

// breaker says why repairs stop: more nodes sick than maxUnhealthy, in the
// pool or in a zone; nil when they go on.
func (r *repairer) breaker(members []*Node, sick map[string]Sick) *Reason {
	names := make([]string, 0, len(sick))
	for name := range sick {
		names = append(names, name)
	}
	slices.Sort(names)
	if limit := r.spec.MaxUnhealthy.Resolve(len(members)); len(sick) > limit {
		return &Reason{Code: CodeBreakerPool, Count: len(sick), Total: len(members), Limit: limit, Nodes: names}
	}
	if len(sick) == 0 {
		return nil // a limit is at least 1: no zone without a sick node trips it
	}
	zones := map[string][]*Node{}
	for _, n := range members {
		if z := n.Zone(); z != "" {
			zones[z] = append(zones[z], n)
		}
	}
	for _, z := range sortedKeys(zones) {
		var in []string
		for _, n := range zones[z] {
			if _, ok := sick[n.Name]; ok {
				in = append(in, n.Name)
			}
		}
		if limit := r.spec.MaxUnhealthy.Resolve(len(zones[z])); len(in) > limit {
			return &Reason{Code: CodeBreakerZone, Count: len(in), Total: len(zones[z]), Limit: limit, Nodes: in, Detail: z}
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// stateOf is the repair the node is at: on the node, or in a dry run's
// record.
func (r *repairer) stateOf(n *Node) *schema.RemediationState {
	if r.dry {
		return r.next.DryRun[n.Name].Repair
	}
	return n.Remediation
}

// historyOf is the node's repairs so far.
func (r *repairer) historyOf(n *Node) []schema.RemediationRecord {
	if r.dry {
		return r.next.DryRun[n.Name].History
	}
	return n.Remediations
}

// progress moves a repair in progress on: healed, given way, replaced, or
// waiting.
func (r *repairer) progress(n *Node, st *schema.RemediationState) {
	ladder := r.spec.Problems[st.Problem]
	wait := func(why *Reason) {
		r.plan.Repairing = append(r.plan.Repairing, Repairing{Node: n.Name, State: *st, Wait: why})
	}
	if r.pl.quarantine[n.Name] || inRolloutNow(n) {
		r.end(n, st, schema.OutcomeAbandoned, &Reason{Code: CodeRepairAbandoned, Detail: "the node left the repair"}, false)
		return
	}
	if !st.Marked.IsZero() {
		wait(reason(CodeReplaced)) // the machine's owner takes it from here
		return
	}
	_, known, _, _ := problemOn(n, st.Problem, r.now)
	if r.healed(n, st) {
		r.end(n, st, schema.OutcomeHealed, &Reason{Code: CodeHealed, Problem: st.Problem, Action: st.Action}, false)
		return
	}
	if st.Rung >= len(ladder.Rungs) {
		// The ladder changed under the repair: it has no more rungs.
		r.escalate(n, st, &Reason{Code: CodeRepairAbandoned, Detail: "the ladder has no rung " + strconv.Itoa(st.Rung+1) + " any more"}, wait)
		return
	}
	requested := st.Requested
	if r.dry {
		requested = st.Started
	}
	if requested.IsZero() {
		// Still draining: carry on starting the rung. A drain kubectl
		// would refuse, or blocked past its timeout, holds the rung (and
		// its room) until people make way, as a rollout's does.
		r.act(n, *st, nil, r.startWhy(n, st), false)
		if n.DrainBlocked {
			wait(&Reason{Code: CodeRungDrainBlocked, Action: st.Action})
		} else {
			wait(nil)
		}
		return
	}
	if !known && n.Ready {
		wait(reason(CodeStale)) // it may be healed: nothing is known
		return
	}
	report := n.Remediated
	answered := !r.dry && report != nil && report.Request == st.Request()
	if answered && report.Result == schema.ResultFailed {
		r.escalate(n, st, &Reason{Code: CodeRungFailed, Action: st.Action, Detail: report.Message}, wait)
		return
	}
	if st.Action == schema.RepairReplace {
		// Mark the node once its agent captured its evidence, or gave up
		// on it, or could not have (the node is down).
		if answered || !n.Ready || r.dry || !r.now.Before(requested.Add(evidenceWait)) {
			if r.plan.Stopped != nil {
				wait(r.plan.Stopped)
				return
			}
			r.replace(n, st)
			return
		}
		r.wake(requested.Add(evidenceWait))
		wait(nil)
		return
	}
	timeout := ladder.Rungs[st.Rung].TimeoutDuration()
	if r.now.Before(requested.Add(timeout)) {
		r.wake(requested.Add(timeout))
		wait(nil)
		return
	}
	r.escalate(n, st, &Reason{Code: CodeRungTimedOut, Action: st.Action, Duration: timeout}, wait)
}

// inRolloutNow reports whether the rollout took a node under repair: told
// it a target since (a join, a retarget).
func inRolloutNow(n *Node) bool {
	return n.Remediation != nil && toAnyTarget(n) && n.Dispatched.After(n.Remediation.Started)
}

// healed reports whether the repair's problem cleared, on evidence newer
// than the rung's request, and a node the rung took down is Ready again.
func (r *repairer) healed(n *Node, st *schema.RemediationState) bool {
	on, known, _, _ := problemOn(n, st.Problem, r.now)
	if !known || on || st.Action.TakesNodeDown() && !n.Ready {
		return false // a node taken down is given back once it is Ready
	}
	if st.Problem == schema.ProblemNotReady {
		return true
	}
	i := slices.IndexFunc(n.Conditions, func(c Condition) bool { return c.Type == string(st.Problem) })
	after := st.Requested
	if after.IsZero() {
		after = st.Started
	}
	// Node conditions keep whole seconds: compare to the second.
	return !n.Conditions[i].Heartbeat.Before(after.Truncate(time.Second))
}

// escalate gives way to the next rung, or quarantines the node after the
// last, unless the breaker, the rate limit or the budget hold it.
func (r *repairer) escalate(n *Node, st *schema.RemediationState, why *Reason, wait func(*Reason)) {
	ladder := r.spec.Problems[st.Problem]
	outcome := schema.OutcomeTimedOut
	if why.Code == CodeRungFailed {
		outcome = schema.OutcomeFailed
	}
	if st.Rung+1 >= len(ladder.Rungs) {
		if hold := r.holdQuarantine(n); hold != nil {
			wait(hold)
			return
		}
		r.end(n, st, outcome, &Reason{Code: CodeLadderExhausted, Problem: st.Problem, Action: st.Action}, true)
		return
	}
	rung := ladder.Rungs[st.Rung+1]
	if hold := r.hold(n, rung.Action); hold != nil {
		wait(hold)
		return
	}
	ended := st.Record(outcome, why.Message())
	next := r.newState(n, st.Problem, st.Reason, st.Rung+1, rung.Action)
	next.Since = st.Since
	r.begin(n, next, &ended, why)
}

// start begins a repair of a sick node whose problem lasted long enough.
func (r *repairer) start(n *Node, s Sick) {
	if s.Node == "" {
		r.forgetDryQuarantine(n)
		return
	}
	r.plan.Sick = append(r.plan.Sick, s)
	sick := &r.plan.Sick[len(r.plan.Sick)-1]
	if r.dry && r.next.DryRun[n.Name].Quarantined {
		sick.Wait = &Reason{Code: CodeRepairAbandoned, Detail: "a dry run quarantined it"}
		return
	}
	ladder := r.spec.Problems[s.Problem]
	if len(ladder.Rungs) == 0 {
		return // declared to count for the breaker, not repaired
	}
	if s.Since.IsZero() {
		return // since when is not known: it never lasted long enough
	}
	if due := s.Since.Add(ladder.HoldFor()); r.now.Before(due) {
		r.wake(due)
		return
	}
	if r.plan.Stopped != nil {
		sick.Wait = r.plan.Stopped
		return
	}
	window := r.spec.Quarantine.WindowDuration()
	if k := r.episodes(n, window); k >= r.spec.Quarantine.After {
		if hold := r.holdQuarantine(n); hold != nil {
			sick.Wait = hold
			return
		}
		why := &Reason{Code: CodeFlapping, Count: k, Duration: window}
		if r.dry {
			d := r.next.DryRun[n.Name]
			d.Quarantined = true
			r.next.DryRun[n.Name] = d
			r.pl.act(Action{Kind: ActQuarantine, Node: n.Name, Why: why, Repair: &RepairStep{DryRun: true}})
			return
		}
		r.pl.quarantineNow(n.Name)
		r.pl.act(Action{Kind: ActQuarantine, Node: n.Name, Why: why})
		return
	}
	rung := ladder.Rungs[0]
	if hold := r.hold(n, rung.Action); hold != nil {
		sick.Wait = hold
		return
	}
	st := r.newState(n, s.Problem, s.Reason, 0, rung.Action)
	st.Since = s.Since
	r.begin(n, st, nil, &Reason{Code: CodeProblem, Problem: s.Problem, Health: s.Reason, Duration: r.now.Sub(s.Since).Truncate(time.Second)})
}

// forgetDryQuarantine lets a dry run try a healthy node it quarantined
// again, should it fall sick.
func (r *repairer) forgetDryQuarantine(n *Node) {
	if d, ok := r.next.DryRun[n.Name]; r.dry && ok && d.Quarantined {
		d.Quarantined = false
		r.next.DryRun[n.Name] = d
	}
}

// episodes counts the node's repairs begun within window.
func (r *repairer) episodes(n *Node, window time.Duration) int {
	k := 0
	for _, rec := range r.historyOf(n) {
		if rec.Rung == 0 && r.now.Sub(rec.Time) <= window {
			k++
		}
	}
	return k
}

// hold says why a rung of action cannot start on the node now: the
// breaker, the rate limit, or no room for a node it takes down.
func (r *repairer) hold(n *Node, action schema.RemediationAction) *Reason {
	switch {
	case r.plan.Stopped != nil:
		return r.plan.Stopped
	case r.rate >= r.spec.MaxPerHour:
		r.wake(r.rateFrees())
		return &Reason{Code: CodeRateLimited, Count: r.rate, Limit: r.spec.MaxPerHour}
	case action.TakesNodeDown() && available(n) && r.used >= r.limit:
		return &Reason{Code: CodeRepairNoRoom, Count: r.used, Total: r.total, Limit: r.limit, Action: action}
	}
	return nil
}

// quarantineNow takes a node a repair quarantines out of the plan's lists.
func (pl *poolPlanner) quarantineNow(name string) {
	pp := &pl.pp
	pl.quarantine[name] = true
	pp.Quarantined = append(pp.Quarantined, name)
	pp.UpToDate = slices.DeleteFunc(pp.UpToDate, func(s string) bool { return s == name })
	pp.Changes = slices.DeleteFunc(pp.Changes, func(c Change) bool { return c.Node == name })
}

// holdQuarantine says why the node cannot be quarantined now: the breaker,
// or the budget, which shrinks with the pool. A quarantined node leaves
// the pool, so the nodes left must fit the smaller maxUnavailable.
func (r *repairer) holdQuarantine(n *Node) *Reason {
	if r.plan.Stopped != nil {
		return r.plan.Stopped
	}
	if r.dry {
		return nil
	}
	used := r.used
	if !available(n) {
		used--
	}
	if limit := r.pl.p.Spec.Rollout.MaxUnavailable.Resolve(r.total - 1); used > limit {
		return &Reason{Code: CodeRepairNoRoom, Count: used, Total: r.total - 1, Limit: limit, Action: "quarantine"}
	}
	r.total--
	r.limit = r.pl.p.Spec.Rollout.MaxUnavailable.Resolve(r.total)
	r.used = used
	return nil
}

// available reports whether the node counts as available now.
func available(n *Node) bool {
	_, unavailable := unavailability(n)
	return !unavailable
}

// newState is a rung's state, started now.
func (r *repairer) newState(n *Node, p schema.Problem, why schema.HealthReason, rung int, action schema.RemediationAction) schema.RemediationState {
	st := schema.RemediationState{Problem: p, Reason: why, Rung: rung, Action: action, ID: strconv.FormatInt(r.now.Unix(), 10), Started: r.now}
	if r.dry || !action.TakesNodeDown() {
		st.Requested = r.now // asked at once: no drain first
	}
	st.Cordoned = !r.dry && action.TakesNodeDown() && (n.Remediation != nil && n.Remediation.Cordoned || !n.Unschedulable)
	return st
}

// begin starts a rung: counts it, logs it, and plans the action.
func (r *repairer) begin(n *Node, st schema.RemediationState, ended *schema.RemediationRecord, why *Reason) {
	r.rate++
	if st.Action.TakesNodeDown() && available(n) {
		r.used++
	}
	if ended != nil {
		r.setOutcome(n.Name, ended.ID, ended.Outcome)
	}
	r.next.Log = append(r.next.Log, RepairLog{Node: n.Name, ID: st.ID, Time: st.Started, Problem: st.Problem, Reason: st.Reason, Rung: st.Rung, Action: st.Action, DryRun: r.dry})
	if r.dry {
		d := r.next.DryRun[n.Name]
		if ended != nil {
			d.History = schema.AppendRecord(d.History, *ended)
		}
		d.Repair = &st
		r.next.DryRun[n.Name] = d
	}
	r.act(n, st, ended, why, true)
	r.plan.Repairing = append(r.plan.Repairing, Repairing{Node: n.Name, State: st})
	if !st.Requested.IsZero() {
		r.wake(st.Requested.Add(r.spec.Problems[st.Problem].Rungs[st.Rung].TimeoutDuration()))
	}
}

// act plans the rung's action: its start, or its drain going on.
func (r *repairer) act(n *Node, st schema.RemediationState, ended *schema.RemediationRecord, why *Reason, start bool) {
	down := st.Action.TakesNodeDown()
	r.pl.act(Action{Kind: ActRemediate, Node: n.Name, Why: why,
		Cordon: !r.dry && down, Drain: !r.dry && down && n.Ready,
		Repair: &RepairStep{New: start, State: &st, Ended: ended, DryRun: r.dry}})
}

// startWhy is why a rung still starting (draining) started.
func (r *repairer) startWhy(n *Node, st *schema.RemediationState) *Reason {
	return &Reason{Code: CodeProblem, Problem: st.Problem, Health: st.Reason, Duration: r.now.Sub(st.Started).Truncate(time.Second)}
}

// replace marks the node for replacement.
func (r *repairer) replace(n *Node, st *schema.RemediationState) {
	marked := *st
	marked.Marked = r.now
	if r.dry {
		d := r.next.DryRun[n.Name]
		d.Repair = &marked
		r.next.DryRun[n.Name] = d
	}
	r.setOutcome(n.Name, st.ID, schema.OutcomeReplaced)
	r.pl.act(Action{Kind: ActReplace, Node: n.Name, Why: reason(CodeReplaced),
		Repair: &RepairStep{State: &marked, DryRun: r.dry, DeleteNode: r.spec.Replace.DeleteNode}})
	r.plan.Repairing = append(r.plan.Repairing, Repairing{Node: n.Name, State: marked, Wait: reason(CodeReplaced)})
}

// end ends a repair with outcome: healed, abandoned, or the ladder
// exhausted (quarantine).
func (r *repairer) end(n *Node, st *schema.RemediationState, outcome schema.RepairOutcome, why *Reason, quarantine bool) {
	ended := st.Record(outcome, why.Message())
	r.setOutcome(n.Name, st.ID, outcome)
	if quarantine && !r.dry {
		r.pl.quarantineNow(n.Name)
	}
	if r.dry {
		d := r.next.DryRun[n.Name]
		d.Repair, d.History = nil, schema.AppendRecord(d.History, ended)
		d.Quarantined = d.Quarantined || quarantine
		r.next.DryRun[n.Name] = d
	}
	r.pl.act(Action{Kind: ActRemediated, Node: n.Name, Why: why, Repair: &RepairStep{State: st, Ended: &ended, DryRun: r.dry, Quarantine: quarantine}})
}

// abandon ends the real repairs of the pool's nodes: the pool no longer
// declares remediation, or only a dry run.
func (r *repairer) abandon(why string) {
	for _, n := range r.pl.nodes {
		if st := n.Remediation; st != nil {
			ended := st.Record(schema.OutcomeAbandoned, "the repair stops: "+why)
			r.pl.act(Action{Kind: ActRemediated, Node: n.Name, Why: &Reason{Code: CodeRepairAbandoned, Detail: why}, Repair: &RepairStep{State: st, Ended: &ended}})
		}
	}
}

// setOutcome notes how a logged rung ended.
func (r *repairer) setOutcome(node, id string, o schema.RepairOutcome) {
	for i := range r.next.Log {
		if l := &r.next.Log[i]; l.Node == node && l.ID == id {
			l.Outcome = o
		}
	}
}

// syncLog adds to the log the rungs the nodes show and it lacks: the
// controller may have stopped after acting, before it kept the log.
func (r *repairer) syncLog(members []*Node) {
	logged := map[[2]string]int{}
	for i, l := range r.next.Log {
		logged[[2]string{l.Node, l.ID}] = i
	}
	add := func(n *Node, st schema.RemediationState, o schema.RepairOutcome) {
		k := [2]string{n.Name, st.ID}
		if i, ok := logged[k]; ok {
			if o != "" && r.next.Log[i].Outcome == "" {
				r.next.Log[i].Outcome = o
			}
			return
		}
		logged[k] = len(r.next.Log)
		r.next.Log = append(r.next.Log, RepairLog{Node: n.Name, ID: st.ID, Time: st.Started, Problem: st.Problem, Reason: st.Reason, Rung: st.Rung, Action: st.Action, DryRun: r.dry, Outcome: o})
	}
	for _, n := range members {
		if r.dry {
			continue // a dry run logs as it plans
		}
		for _, rec := range n.Remediations {
			if r.now.Sub(rec.Time) <= time.Hour {
				add(n, schema.RemediationState{Problem: rec.Problem, Reason: rec.Reason, Rung: rec.Rung, Action: rec.Action, ID: rec.ID, Started: rec.Time}, rec.Outcome)
			}
		}
		if st := n.Remediation; st != nil {
			add(n, *st, "")
		}
	}
	slices.SortStableFunc(r.next.Log, func(a, b RepairLog) int { return a.Time.Compare(b.Time) })
}

// startedWithin counts the rungs of this kind of run (dry or not) logged
// within d.
func (r *repairer) startedWithin(d time.Duration) int {
	k := 0
	for _, l := range r.next.Log {
		if l.DryRun == r.dry && r.now.Sub(l.Time) < d {
			k++
		}
	}
	return k
}

// rateFrees is when the oldest rung counted by the rate limit leaves the
// hour.
func (r *repairer) rateFrees() time.Time {
	for _, l := range r.next.Log { // oldest first
		if l.DryRun == r.dry && r.now.Sub(l.Time) < time.Hour {
			return l.Time.Add(time.Hour)
		}
	}
	return time.Time{}
}

// pruned keeps the log entries of the last hour, and at least the last
// MaxRepairLog.
func (r *repairer) pruned(log []RepairLog) []RepairLog {
	keep := 0
	for i, l := range log {
		if r.now.Sub(l.Time) < time.Hour {
			break
		}
		keep = i + 1
	}
	keep = min(keep, max(len(log)-MaxRepairLog, 0))
	if keep == len(log) {
		return nil
	}
	return slices.Clone(log[keep:])
}

// wake notes when repairs change by the clock alone (PoolPlan.Recheck): a
// problem lasts long enough, a rung times out, the rate limit frees up.
func (r *repairer) wake(t time.Time) { r.pl.at(t) }
