// Package writeback publishes Herd's status as commits on a status branch of
// the fleet repository's remote (default "herd/status"), one directory per
// cluster:
//
//	clusters/<cluster>/source.yaml   – SourceStatus
//	clusters/<cluster>/<pool>.yaml   – PoolStatus, one file per pool
//	clusters/<cluster>/shards/<shard>.yaml – a shard's SourceStatus
//
// An unsharded controller owns its cluster's directory. Shards of one
// cluster (Options.Shard) share it: each writes its own pools' files and
// its own source file and leaves the rest as they are.
//
// The controller calls SetSource and SetPool with "this is the state now";
// the Writer coalesces these into at most one commit per Interval, plus one
// immediately at every phase change (a pool's phase, or the source's
// applied or rejected revision). Commits are built directly in an in-memory
// object store on top of the remote branch head, replacing only
// clusters/<cluster>/, and pushed with the head as the expected old value;
// when another writer got there first the Writer fetches the new head,
// re-applies its files and pushes again (bounded retries with jitter). It
// never force-pushes, so other writers' commits (people, CI, other
// clusters) are never lost.
package writeback

import "time"

// SourceStatus is clusters/<cluster>/source.yaml. Keep its values stable
// between real changes (no "N seconds ago" texts, no poll timestamps):
// every change is a commit.
type SourceStatus struct {
	URL    string `json:"url,omitempty" yaml:"url,omitempty"`
	Branch string `json:"branch,omitempty" yaml:"branch,omitempty"`
	// Reason is the source's condition: Succeeded, FetchFailed,
	// NonFastForward, VerificationFailed, ValidationFailed.
	Reason  string `json:"reason,omitempty" yaml:"reason,omitempty"`
	Message string `json:"message,omitempty" yaml:"message,omitempty"`
	// UnavailableSince is when the remote stopped answering, while it does
	// not.
	UnavailableSince *time.Time      `json:"unavailableSince,omitempty" yaml:"unavailableSince,omitempty"`
	LastFetched      *Revision       `json:"lastFetched,omitempty" yaml:"lastFetched,omitempty"`
	LastApplied      *Revision       `json:"lastApplied,omitempty" yaml:"lastApplied,omitempty"`
	LastRejected     *RejectedCommit `json:"lastRejected,omitempty" yaml:"lastRejected,omitempty"`
	// Errors lists current problems, one per line (for example validation
	// errors as file:line:col: message).
	Errors []string `json:"errors,omitempty" yaml:"errors,omitempty"`
}

// Revision identifies a fleet repository commit.
type Revision struct {
	Commit  string    `json:"commit" yaml:"commit"`
	Subject string    `json:"subject,omitempty" yaml:"subject,omitempty"`
	Time    time.Time `json:"time,omitzero" yaml:"time,omitempty"`
}

// RejectedCommit is a head the source refused.
type RejectedCommit struct {
	Commit  string    `json:"commit" yaml:"commit"`
	Reason  string    `json:"reason" yaml:"reason"`
	Message string    `json:"message,omitempty" yaml:"message,omitempty"`
	Time    time.Time `json:"time,omitzero" yaml:"time,omitempty"`
}

// PoolStatus is clusters/<cluster>/<pool>.yaml.
type PoolStatus struct {
	// Name is the pool's name and file name.
	Name string `json:"name" yaml:"name"`
	// SpecRevision is the fleet commit the pool is rolling out.
	SpecRevision string `json:"specRevision" yaml:"specRevision"`
	// ConfigHash identifies the rendered node configuration.
	ConfigHash string `json:"configHash,omitempty" yaml:"configHash,omitempty"`
	// OSTarget is the OS image or version the pool moves to.
	OSTarget string `json:"osTarget,omitempty" yaml:"osTarget,omitempty"`
	// Phase is the rollout phase (e.g. Idle, Rolling, Paused, Done,
	// Failed); a change of phase is committed at once.
	Phase   string `json:"phase" yaml:"phase"`
	Message string `json:"message,omitempty" yaml:"message,omitempty"`
	Batch   *Batch `json:"batch,omitempty" yaml:"batch,omitempty"`
	Counts  Counts `json:"counts" yaml:"counts"`
	// Nodes is written sorted by name.
	Nodes []NodeStatus `json:"nodes,omitempty" yaml:"nodes,omitempty"`
	// Transitions holds the most recent state changes, oldest first, at
	// most MaxTransitions. The Writer maintains it by comparing each
	// SetPool with the previous one (and continues the list found on the
	// branch); transitions passed in by the caller are appended as extra
	// events.
	Transitions []Transition `json:"transitions,omitempty" yaml:"transitions,omitempty"`
	// Repairs lists the pool's recent repairs, oldest first: every rung
	// started within the last hour, and at least the last 50 (the
	// controller's record, as the HerdPool keeps it). A new repair, or a
	// repair's outcome, is committed at once.
	Repairs []Repair `json:"repairs,omitempty" yaml:"repairs,omitempty"`
}

// Repair is one rung of a node's repair.
type Repair struct {
	Time    time.Time `json:"time" yaml:"time"` // when it started
	Node    string    `json:"node" yaml:"node"`
	ID      string    `json:"id" yaml:"id"`
	Problem string    `json:"problem" yaml:"problem"`
	Reason  string    `json:"reason,omitempty" yaml:"reason,omitempty"` // the problem's condition reason
	Rung    int       `json:"rung" yaml:"rung"`                         // 1 for the first rung of its ladder
	Action  string    `json:"action" yaml:"action"`
	DryRun  bool      `json:"dryRun,omitempty" yaml:"dryRun,omitempty"`
	Outcome string    `json:"outcome,omitempty" yaml:"outcome,omitempty"` // once it ended
}

// Batch is the position of a rollout in its batches.
type Batch struct {
	Current int `json:"current" yaml:"current"`
	Total   int `json:"total" yaml:"total"`
}

// Counts summarizes the pool's nodes.
type Counts struct {
	Total int `json:"total" yaml:"total"`
	// Updated nodes run SpecRevision.
	Updated  int `json:"updated" yaml:"updated"`
	Updating int `json:"updating" yaml:"updating"`
	Pending  int `json:"pending" yaml:"pending"`
	Failed   int `json:"failed" yaml:"failed"`
}

// NodeStatus is one node of a pool.
type NodeStatus struct {
	Name  string `json:"name" yaml:"name"`
	State string `json:"state" yaml:"state"`
	// Since is when the node entered State.
	Since time.Time `json:"since,omitzero" yaml:"since,omitempty"`
	// Revision is the spec revision the node runs.
	Revision string `json:"revision,omitempty" yaml:"revision,omitempty"`
	Message  string `json:"message,omitempty" yaml:"message,omitempty"`
}

// Transition is a change of a node's state (Node set) or of the pool's
// phase (Node empty).
type Transition struct {
	Time    time.Time `json:"time" yaml:"time"`
	Node    string    `json:"node,omitempty" yaml:"node,omitempty"`
	From    string    `json:"from,omitempty" yaml:"from,omitempty"`
	To      string    `json:"to" yaml:"to"`
	Message string    `json:"message,omitempty" yaml:"message,omitempty"`
}

// MaxTransitions bounds PoolStatus.Transitions.
const MaxTransitions = 50
