// Package planner decides, for desired pools, observed nodes and each pool's
// rollout state at a given time, what happens next: typed actions with
// typed reasons, and the rollout state to keep. It is pure: no I/O, no
// clock, no Kubernetes client; the same input gives the same Plan.
package planner

import (
	"time"

	"herd.dev/herd/schema"
)

// Pool is a desired pool: its spec and its render.
type Pool struct {
	Name     string
	Spec     schema.NodePool
	Rendered *schema.Rendered
	Hash     string // Rendered.Hash(), computed once by the caller
	// Revision is the fleet commit the pool comes from ("" outside Git).
	Revision string
	// Windows are when the pool's batches may start; none means always.
	Windows schema.Windows
}

// Node is what the planner knows of a node: labels, health, and the
// herd.dev annotations the controller and agent keep on it.
type Node struct {
	Name          string
	Labels        map[string]string
	Ready         bool
	Unschedulable bool

	DesiredConfig string
	DesiredOS     string
	Cordoned      bool      // Herd cordoned it (herd.dev/cordoned)
	DrainStarted  time.Time // Herd began draining it (herd.dev/drain-started)
	// DrainBlocked is set while Herd's drain of it cannot go on by itself
	// (herd.dev/drain-blocked): the drain policy keeps a pod, or pods are
	// still in the way past the drain timeout. The node keeps its slot,
	// but the rollout does not wait for it.
	DrainBlocked bool

	CurrentConfig string
	OSBooted      string
	OSStaged      string
	State         schema.NodeState
	Message       string

	// What the controller keeps on the node (herd.dev annotations).
	Dispatched   time.Time // when it was told its target
	AtTarget     time.Time // when it was first seen done at its target: its soak started
	Failures     int       // targets it failed to reach
	FailedTarget string    // the config hash of its last failure
	Quarantined  string    // why it is out of rollouts
	PrestageOS   string    // the OS commit it was asked to pull ahead
	OSPulled     string    // the OS commit its agent pulled ahead

	// Unhealthy says why a health check fails for the node, evaluated by
	// the controller (CEL over its conditions, a Prometheus query).
	Unhealthy string
	// Converging is set while the node carries the herd.dev/converging
	// taint: it joined its pool and takes no work until at its target.
	Converging bool

	// Conditions are its Ready condition and the agent's health
	// conditions: what repairs are decided on (remediate.go).
	Conditions []Condition
	// Remediation is the repair in progress (herd.dev/remediation),
	// Remediations its recent repairs (herd.dev/remediations), Remediated
	// its agent's report on the last rung asked (herd.dev/remediated).
	Remediation  *schema.RemediationState
	Remediations []schema.RemediationRecord
	Remediated   *schema.RemediationReport
}

// Zone is the node's topology.kubernetes.io/zone label, or "".
func (n *Node) Zone() string { return n.Labels[schema.LabelZone] }

// Input is everything a plan depends on.
type Input struct {
	Pools []Pool
	Nodes []Node

	// Earlier maps config hashes of earlier renders (the fleet's history,
	// the renders the cluster stores) to the renders, so a node still on
	// one gets an exact diff.
	Earlier map[string]*schema.Rendered
	// History says how Earlier was gathered, for messages about nodes whose
	// config is not in it (for example "the fleet's last 50 revisions").
	History string
	// Rollbacks holds config hashes that take their pool back to a render it
	// had before; nodes going there are marked Rollback.
	Rollbacks map[string]bool

	// Rollouts is each pool's rollout state as last kept (in the HerdPool
	// status), by pool name; empty outside the cluster, where every pool
	// starts afresh.
	Rollouts map[string]Rollout
	// Resume holds, by pool, the resume request made in the cluster: the
	// herd.dev/resume annotation `herd resume` sets on the HerdPool.
	Resume map[string]string
	// Freeze stops every new batch of the fleet.
	Freeze bool
	// Repairs is each pool's repair state as last kept (HerdPool status),
	// by pool name.
	Repairs map[string]RepairState

	// Now is the time the plan is for. Nothing reads a clock.
	Now time.Time
}

// Rollout is the state of a pool's rollout that outlives one plan: the
// controller keeps it in the HerdPool status and hands it back, so
// decisions survive restarts. Compute returns the next one in PoolPlan.Next.
type Rollout struct {
	Target   Target    `json:"target,omitzero"`    // where the rollout goes
	Revision string    `json:"revision,omitempty"` // the fleet commit that set the target
	Started  time.Time `json:"started,omitzero"`   // when the target was first planned
	Batches  int       `json:"batches"`            // batches started so far
	// Batch lists the nodes the last batch started. The state is kept
	// before the batch's actions are carried out, so a controller that
	// stops in between starts them again: that is the same batch.
	Batch []string `json:"batch,omitempty"`

	// Halt says why the rollout to Target is halted; nil when it is not.
	Halt *Reason `json:"halt,omitempty"`
	// RollingBack is set while the nodes it touched go back to LastGood.
	RollingBack bool `json:"rollingBack,omitempty"`
	// Forgiven lists failures a resume forgave.
	Forgiven []Failure `json:"forgiven,omitempty"`
	// Resumed is the last resume request honoured.
	Resumed Resume `json:"resumed,omitzero"`

	// LastGood is the pool's last target every node reached: where a
	// rollback goes. It outlives rollouts.
	LastGood         Target `json:"lastGood,omitzero"`
	LastGoodRevision string `json:"lastGoodRevision,omitempty"`
	// Previous lists the pool's earlier targets, newest first, at most
	// MaxPrevious: going back to one of them is a rollback.
	Previous []Previous `json:"previous,omitempty"`
}

// MaxPrevious bounds Rollout.Previous.
const MaxPrevious = 10

// Previous is a target the pool had before.
type Previous struct {
	Target
	Revision string `json:"revision,omitempty"`
}

// Failure is one failure of a node: the count it brought the node to.
type Failure struct {
	Node  string `json:"node"`
	Count int    `json:"count"`
}

// Resume is a request to lift a halt: the spec's rollout.resume and the
// herd.dev/resume annotation. A value not seen before is a new request.
type Resume struct {
	Spec       string `json:"spec,omitempty"`
	Annotation string `json:"annotation,omitempty"`
}

// Target is what a node runs: a config hash and an OS commit.
type Target struct {
	Hash     string `json:"hash,omitempty"`
	OSCommit string `json:"osCommit,omitempty"`
}

// ActionKind is what the controller does to a node.
type ActionKind string

// Actions. Later kinds (a remediation) join this list; each is carried out
// by the controller without deciding anything.
const (
	// ActStart takes the node out of service as its disruption needs
	// (Cordon; Drain before a reboot) and then tells it its target, which
	// clears its failure mark: a new attempt.
	ActStart ActionKind = "start"
	// ActJoin tells a node that joined its pool (it carries the converging
	// taint, so no work runs on it) its target: no cordon, no drain.
	ActJoin ActionKind = "join"
	// ActRetarget tells a node already at the goal that the goal is its
	// target (a revert overtook it): its agent stands down.
	ActRetarget ActionKind = "retarget"
	// ActSoak records that the node is done at its target: its soak starts.
	ActSoak ActionKind = "soak"
	// ActFinish puts a node Herd took out back to work: uncordons it if
	// Herd cordoned it, and forgets its drain.
	ActFinish ActionKind = "finish"
	// ActFail records that the node failed its target.
	ActFail ActionKind = "fail"
	// ActQuarantine takes the node out of rollouts (and out of service).
	ActQuarantine ActionKind = "quarantine"
	// ActPrestage asks the node to pull its target's OS commit ahead.
	ActPrestage ActionKind = "prestage"
	// ActReset takes a failed node's target and failure mark away, and
	// gives it back to work if Herd took it out (one write), so that
	// its agent stands down and it is tried again like any node.
	ActReset ActionKind = "reset"
)

// Action is one thing the controller does to one node.
type Action struct {
	Kind       ActionKind        `json:"kind"`
	Node       string            `json:"node"`
	Target     Target            `json:"target,omitzero"`
	Disruption schema.Disruption `json:"disruption"`
	Cordon     bool              `json:"cordon,omitempty"` // start: cordon first
	Drain      bool              `json:"drain,omitempty"`  // start: drain before telling it
	// New is set on a start that takes a node Herd was not working on out
	// of service: it opens a batch and needs room under maxUnavailable.
	New bool    `json:"new,omitempty"`
	Why *Reason `json:"why,omitempty"`
	// Repair is what a repair action (remediate.go) carries out.
	Repair *RepairStep `json:"repair,omitempty"`
}

// Plan is what should happen: per pool, the batches and every node's change.
type Plan struct {
	Pools     []PoolPlan `json:"pools"`
	Unmanaged []string   `json:"unmanaged"`
	Conflicts []Conflict `json:"conflicts,omitempty"`
}

// Conflict is a node that matches more than one pool. It is left out of
// every pool until the selectors are fixed.
type Conflict struct {
	Node  string   `json:"node"`
	Pools []string `json:"pools"`
}

// Phase sums a pool up.
type Phase string

// Phases of a pool.
const (
	PhaseUpToDate    Phase = "UpToDate"    // every node at the target
	PhaseProgressing Phase = "Progressing" // batches running
	PhaseBlocked     Phase = "Blocked"     // no room under maxUnavailable
	PhasePaused      Phase = "Paused"      // spec.paused
	PhaseHalted      Phase = "Halted"      // failures past the budget
	PhaseRollingBack Phase = "RollingBack" // failures past the budget, going back
	PhaseWaiting     Phase = "Waiting"     // outside its maintenance windows, or the fleet is frozen
)

// PoolPlan is the plan for one pool.
type PoolPlan struct {
	Name           string `json:"name"`
	ConfigHash     string `json:"configHash"`
	OSCommit       string `json:"osCommit"`
	Nodes          int    `json:"nodes"`
	MaxUnavailable int    `json:"maxUnavailable"`
	Paused         bool   `json:"paused,omitempty"`
	Phase          Phase  `json:"phase"`

	// Unavailable lists the pool's nodes that are unavailable now, and why.
	Unavailable []Unavailable `json:"unavailable"`
	// Batches are node names, batch by batch. Batch 1 is what starts now.
	Batches [][]string `json:"batches"`
	// Changes has one entry per out-of-date node, in batch order; nodes that
	// cannot be batched yet come last, with Batch 0 and the reason.
	Changes []Change `json:"changes"`
	// UpToDate lists nodes already at the target.
	UpToDate []string `json:"upToDate"`
	// Blocked says why no batch can start, when none can.
	Blocked *Reason `json:"blocked,omitempty"`
	// Canary is set while batch 1 is the canary batch: nothing else starts
	// until it is done.
	Canary bool `json:"canary,omitempty"`

	// Halt says why no new batch starts: a halt in force, or one decided
	// now. RollingBack is set while the nodes the rollout touched go back
	// to the last good target.
	Halt        *Reason `json:"halt,omitempty"`
	RollingBack bool    `json:"rollingBack,omitempty"`
	// Closed says why no batch starts now: outside the windows, or frozen.
	Closed *Reason `json:"closed,omitempty"`
	// Complete is set when every node (but quarantined ones) is done at
	// the target: it becomes the pool's last good target.
	Complete bool `json:"complete,omitempty"`

	Failed      []string `json:"failed,omitempty"`      // nodes that failed this rollout
	Soaking     []string `json:"soaking,omitempty"`     // at the target, not done yet
	Quarantined []string `json:"quarantined,omitempty"` // out of rollouts
	Joining     []string `json:"joining,omitempty"`     // new nodes converging

	// Recheck is the earliest time after Now at which the plan changes by
	// the clock alone: a node's soak ends or its nodeTimeout passes, a
	// window opens, a problem lasts its ladder's duration, a rung times
	// out, the repair rate limit frees up. Zero when nothing waits on the
	// clock.
	Recheck time.Time `json:"recheck,omitzero"`

	// Actions are what the controller does now, node by node.
	Actions []Action `json:"actions,omitempty"`
	// Events are the rollout's notable moments decided now.
	Events []Event `json:"events,omitempty"`
	// Next is the rollout state to keep for the next plan.
	Next Rollout `json:"next"`

	// Repairs are the pool's repairs (remediate.go); NextRepairs the
	// repair state to keep.
	Repairs     RepairPlan  `json:"repairs,omitzero"`
	NextRepairs RepairState `json:"nextRepairs,omitzero"`
}

// Unavailable is a node that does not count as available, and why.
type Unavailable struct {
	Node     string           `json:"node"`
	NotReady bool             `json:"notReady,omitempty"`
	Cordoned bool             `json:"cordoned,omitempty"` // spec.unschedulable
	State    schema.NodeState `json:"state,omitempty"`    // a busy agent state
}

// Change is what happens to one out-of-date node.
type Change struct {
	Node       string               `json:"node"`
	Zone       string               `json:"zone,omitempty"`
	Batch      int                  `json:"batch"`
	Disruption schema.Disruption    `json:"disruption"`
	InFlight   bool                 `json:"inFlight,omitempty"` // already dispatched
	Rollback   bool                 `json:"rollback,omitempty"` // back to an earlier render
	From       string               `json:"from,omitempty"`     // config hash the node has now
	Fields     []schema.FieldChange `json:"fields,omitempty"`
	// Wait says why the node is not in a batch (Batch 0), or failed.
	Wait *Reason `json:"wait,omitempty"`
	// Assumed says why the disruption is assumed rather than computed
	// from an exact diff.
	Assumed *Reason `json:"assumed,omitempty"`
}

// EventKind names a rollout's notable moment.
type EventKind string

// Events.
const (
	EventRolloutStarted  EventKind = "RolloutStarted"  // a new target
	EventBatchStarted    EventKind = "BatchStarted"    // nodes taken out for a new batch
	EventHalted          EventKind = "RolloutHalted"   // failures past the budget, or a finished rollback
	EventRollbackStarted EventKind = "RollbackStarted" // going back to the last good target
	EventResumed         EventKind = "RolloutResumed"  // a resume lifted a halt or forgave failures
	EventCompleted       EventKind = "RolloutComplete" // every node at the target
	EventRepairsStopped  EventKind = "RepairsStopped"  // the repair breaker opened: too many nodes sick at once
	EventRepairsResumed  EventKind = "RepairsResumed"  // the breaker closed
)

// Event is a notable moment of a pool's rollout, decided by the plan.
type Event struct {
	Kind  EventKind `json:"kind"`
	Nodes []string  `json:"nodes,omitempty"`
	Why   *Reason   `json:"why,omitempty"`
}

// HasChanges reports whether any node would change.
func (p *Plan) HasChanges() bool {
	for _, pp := range p.Pools {
		if len(pp.Changes) > 0 {
			return true
		}
	}
	return false
}
