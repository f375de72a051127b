package schema

// Node annotations: the contract between the controller and the agent.
// The controller writes the desired ones; the agent writes the rest.
const (
	AnnotationPrefix = "herd.dev/"

	// Written by the controller.
	AnnotationDesiredConfig = AnnotationPrefix + "desired-config" // config hash to apply
	AnnotationDesiredOS     = AnnotationPrefix + "desired-os"     // OSTree commit to boot
	AnnotationCordoned      = AnnotationPrefix + "cordoned"       // "true" when Herd cordoned the node
	AnnotationDrainStarted  = AnnotationPrefix + "drain-started"  // RFC 3339 time Herd began draining
	AnnotationDrainBlocked  = AnnotationPrefix + "drain-blocked"  // Refused or TimedOut while Herd's drain cannot go on by itself
	AnnotationDispatched    = AnnotationPrefix + "dispatched"     // RFC 3339 time Herd set the desired annotations
	AnnotationAtTarget      = AnnotationPrefix + "at-target"      // RFC 3339 time the node was first seen done at its target: the soak starts
	AnnotationPrestageOS    = AnnotationPrefix + "prestage-os"    // OSTree commit to pull ahead of the node's batch
	AnnotationFailures      = AnnotationPrefix + "failures"       // how many targets the node failed to reach
	AnnotationFailedTarget  = AnnotationPrefix + "failed-target"  // the config hash of its last failure
	AnnotationQuarantined   = AnnotationPrefix + "quarantined"    // why the node is out of rollouts; remove to bring it back

	// Written by the agent.
	AnnotationCurrentConfig = AnnotationPrefix + "current-config" // config hash applied
	AnnotationOSBooted      = AnnotationPrefix + "os-booted"      // OSTree commit booted
	AnnotationOSStaged      = AnnotationPrefix + "os-staged"      // OSTree commit deployed for the next boot
	AnnotationState         = AnnotationPrefix + "state"          // one of the NodeState values
	AnnotationMessage       = AnnotationPrefix + "message"        // what the agent is doing, or why it failed
	AnnotationOSPulled      = AnnotationPrefix + "os-pulled"      // OSTree commit pulled ahead and on disk
)

// TaintConverging keeps work off a node that joined a pool until it runs
// the pool's target: nodes register with it, and the agent removes it once
// the node is at its target.
const TaintConverging = AnnotationPrefix + "converging"

// LabelZone is the well-known Kubernetes zone label that batches spread over.
const LabelZone = "topology.kubernetes.io/zone"

// NodeState is the agent's state, in the herd.dev/state annotation.
type NodeState string

// Agent states.
const (
	StateIdle      NodeState = "Idle"      // at its desired config, nothing to do
	StateWorking   NodeState = "Working"   // applying config or staging an OS commit
	StateRebooting NodeState = "Rebooting" // rebooting into a staged commit
	StateDegraded  NodeState = "Degraded"  // failed; the message says why
)

// Busy reports whether the state makes a node unavailable for work.
func (s NodeState) Busy() bool {
	return s == StateWorking || s == StateRebooting || s == StateDegraded
}
