// Package planner decides, for desired pools and observed nodes, which nodes
// change, in which batches, and how disruptive each change is. It is pure: no
// I/O, no clock, no Kubernetes client; the same input gives the same Plan.
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
	Cordoned      bool // Herd cordoned it (herd.dev/cordoned)

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
}

// Zone is the node's topology.kubernetes.io/zone label, or "".
func (n *Node) Zone() string { return n.Labels[schema.LabelZone] }

// Input is everything a plan depends on.
type Input struct {
	Pools []Pool
	Nodes []Node

	// Earlier maps config hashes of earlier revisions' renders to the
	// renders, so a node still on one gets an exact diff.
	Earlier map[string]*schema.Rendered
	// History says how Earlier was gathered, for messages about nodes whose
	// config is not in it (for example "the fleet's last 50 revisions").
	History string
	// Rollbacks holds config hashes that take their pool back to a render it
	// had before; nodes going there are marked Rollback.
	Rollbacks map[string]bool

	// Rollouts is what the controller keeps of each pool's rollout in
	// progress, by pool name; empty for a plan made outside the cluster.
	Rollouts map[string]Rollout
	// Freeze stops every new batch of the fleet.
	Freeze bool

	// Now is the time the plan is for. Nothing reads a clock.
	Now time.Time
}

// Rollout is the state of a pool's rollout that outlives one plan: the
// controller keeps it in the HerdPool status, so decisions survive restarts.
type Rollout struct {
	Hash string // the config hash the rollout goes to
	Done int    // nodes it has brought to the target so far

	Halted      string   // why the rollout to Hash is halted; "" when it is not
	RollingBack bool     // its touched nodes go back to LastGood
	Forgiven    []string // failures a resume forgave, as "node#count"
	// LastGood is the pool's last target that every node reached: where a
	// rollback goes. It outlives rollouts.
	LastGood Target
}

// Target is what a node runs: a config hash and an OS commit.
type Target struct {
	Hash     string `json:"hash,omitempty"`
	OSCommit string `json:"osCommit,omitempty"`
}

// ActionKind is what the controller does to a node.
type ActionKind string

// Actions.
const (
	// ActStart takes the node out of service as its disruption needs
	// (cordon; drain before a reboot) and tells it its target, which
	// clears its failure mark: a new attempt.
	ActStart ActionKind = "start"
	// ActSoak records that the node is done at its target: its soak starts.
	ActSoak ActionKind = "soak"
	// ActFinish puts a node at its target back to work (uncordons it).
	ActFinish ActionKind = "finish"
	// ActFail records that the node failed its target.
	ActFail ActionKind = "fail"
	// ActQuarantine takes the node out of rollouts.
	ActQuarantine ActionKind = "quarantine"
	// ActPrestage asks the node to pull its target's OS commit ahead.
	ActPrestage ActionKind = "prestage"
	// ActReset takes a failed node's target and failure mark away, so that
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
	Reason     string            `json:"reason,omitempty"`
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

// PoolPlan is the plan for one pool.
type PoolPlan struct {
	Name           string `json:"name"`
	ConfigHash     string `json:"configHash"`
	OSCommit       string `json:"osCommit"`
	Nodes          int    `json:"nodes"`
	MaxUnavailable int    `json:"maxUnavailable"`
	Paused         bool   `json:"paused,omitempty"`

	// Unavailable lists the pool's nodes that are unavailable now, and why.
	Unavailable []Unavailable `json:"unavailable"`
	// Batches are node names, batch by batch. Batch 1 is what starts now.
	Batches [][]string `json:"batches"`
	// Changes has one entry per out-of-date node, in batch order; nodes that
	// cannot be batched yet come last, with Batch 0 and a reason.
	Changes []Change `json:"changes"`
	// UpToDate lists nodes already at the target.
	UpToDate []string `json:"upToDate"`
	// Blocked says why no batch can start, when none can.
	Blocked string `json:"blocked,omitempty"`
	// Canary is set while batch 1 is the canary batch: nothing else starts
	// until it is done.
	Canary bool `json:"canary,omitempty"`

	// Halt says why no new batch starts: a halt in force, or one decided
	// now because failures passed the budget.
	Halt string `json:"halt,omitempty"`
	// RollingBack is set while the nodes the rollout touched go back to
	// the last good target; StartRollback when that is decided now.
	RollingBack   bool `json:"rollingBack,omitempty"`
	StartRollback bool `json:"startRollback,omitempty"`
	// Closed says why no batch starts now: outside the windows, or frozen.
	Closed string `json:"closed,omitempty"`
	// Complete is set when every node (but quarantined ones) is done at
	// the target: it becomes the pool's last good target.
	Complete bool `json:"complete,omitempty"`

	Failed      []string `json:"failed,omitempty"`      // nodes that failed this rollout
	Soaking     []string `json:"soaking,omitempty"`     // at the target, not done yet
	Quarantined []string `json:"quarantined,omitempty"` // out of rollouts
	Joining     []string `json:"joining,omitempty"`     // new nodes converging

	// Actions are what the controller does now, node by node.
	Actions []Action `json:"-"`

	failures map[string]int // per failed node, its failure count
}

// Unavailable is a node that does not count as available, and why.
type Unavailable struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
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
	// Reason explains a disruption that is not exact, or why the node waits.
	Reason string `json:"reason,omitempty"`
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
