package schema

import "time"

// NodeConditionType names a Node condition the agent's health checks
// publish. Each is a problem condition, as node-problem-detector's are:
// True means the problem is there, False that it is not, Unknown that the
// check could not tell (its reason says why). The Herd prefix keeps them
// apart from node-problem-detector's KubeletUnhealthy and
// ContainerRuntimeUnhealthy when both run on a node.
type NodeConditionType string

// The conditions of the agent's health checks (docs/health.md).
const (
	ConditionKubeletUnhealthy  NodeConditionType = "HerdKubeletUnhealthy"  // /healthz does not answer, or the Lease is not renewed
	ConditionPLEGUnhealthy     NodeConditionType = "HerdPLEGUnhealthy"     // kubelet's pod lifecycle event generator is stuck
	ConditionRuntimeUnhealthy  NodeConditionType = "HerdRuntimeUnhealthy"  // the CRI does not answer, or is not ready
	ConditionLeftoverSandboxes NodeConditionType = "HerdLeftoverSandboxes" // pod sandboxes of pods no longer on the node
	ConditionDiskPressure      NodeConditionType = "HerdDiskPressure"      // kubelet's or the runtime's filesystem is nearly full
	ConditionMemoryPressure    NodeConditionType = "HerdMemoryPressure"    // tasks stall on memory (PSI)
	ConditionOSDrift           NodeConditionType = "HerdOSDrift"           // the booted OS is not the desired one, outside a rollout
)

// NodeConditionTypes lists every health condition, in the order they are
// published and shown.
var NodeConditionTypes = []NodeConditionType{
	ConditionKubeletUnhealthy,
	ConditionPLEGUnhealthy,
	ConditionRuntimeUnhealthy,
	ConditionLeftoverSandboxes,
	ConditionDiskPressure,
	ConditionMemoryPressure,
	ConditionOSDrift,
}

// IsHealthCondition reports whether t is one of the agent's conditions.
func IsHealthCondition(t string) bool {
	for _, c := range NodeConditionTypes {
		if string(c) == t {
			return true
		}
	}
	return false
}

// HealthReason is the typed reason of a health condition: what the check
// saw. Decisions (remediation in the planner) are made on it; the
// condition's message is for people.
type HealthReason string

// Reasons of the health conditions. Each belongs to one condition type.
const (
	// HerdKubeletUnhealthy.
	ReasonKubeletHealthy        HealthReason = "KubeletHealthy"        // False: /healthz answers ok, the Lease is fresh
	ReasonKubeletHealthzFailed  HealthReason = "KubeletHealthzFailed"  // True: /healthz refused the connection or answered an error
	ReasonKubeletHealthzTimeout HealthReason = "KubeletHealthzTimeout" // True: /healthz did not answer within the timeout (hung)
	ReasonKubeletLeaseExpired   HealthReason = "KubeletLeaseExpired"   // True: the node Lease was not renewed in time
	ReasonKubeletLeaseUnknown   HealthReason = "KubeletLeaseUnknown"   // Unknown: /healthz is fine but the Lease could not be read

	// HerdPLEGUnhealthy.
	ReasonPLEGHealthy       HealthReason = "PLEGHealthy"       // False
	ReasonPLEGNotHealthy    HealthReason = "PLEGNotHealthy"    // True: kubelet's Ready condition says "PLEG is not healthy"
	ReasonPLEGRelistStalled HealthReason = "PLEGRelistStalled" // True: kubelet_pleg_last_seen_seconds is older than the threshold
	ReasonPLEGUnknown       HealthReason = "PLEGUnknown"       // Unknown: no Ready condition and no metrics to read

	// HerdRuntimeUnhealthy.
	ReasonRuntimeHealthy     HealthReason = "RuntimeHealthy"         // False: RuntimeReady and NetworkReady
	ReasonRuntimeUnreachable HealthReason = "RuntimeUnreachable"     // True: the CRI Status call failed or timed out
	ReasonRuntimeNotReady    HealthReason = "RuntimeNotReady"        // True: RuntimeReady is false
	ReasonRuntimeNetworkDown HealthReason = "RuntimeNetworkNotReady" // True: NetworkReady is false (no CNI)

	// HerdLeftoverSandboxes.
	ReasonNoLeftoverSandboxes HealthReason = "NoLeftoverSandboxes" // False
	ReasonLeftoverSandboxes   HealthReason = "LeftoverSandboxes"   // True: sandboxes of pods not bound here, older than the grace period
	ReasonSandboxesUnknown    HealthReason = "SandboxesUnknown"    // Unknown: the CRI or the API could not be listed

	// HerdDiskPressure.
	ReasonDiskOK         HealthReason = "DiskOK"         // False
	ReasonDiskSpaceLow   HealthReason = "DiskSpaceLow"   // True: free bytes below the threshold
	ReasonDiskInodesLow  HealthReason = "DiskInodesLow"  // True: free inodes below the threshold
	ReasonDiskUnreadable HealthReason = "DiskUnreadable" // Unknown: statfs failed

	// HerdMemoryPressure.
	ReasonMemoryOK       HealthReason = "MemoryOK"       // False
	ReasonMemoryStalled  HealthReason = "MemoryStalled"  // True: PSI full avg60 at or above the threshold
	ReasonPSIUnavailable HealthReason = "PSIUnavailable" // Unknown: the kernel has no PSI (or it is off)

	// HerdOSDrift.
	ReasonOSAtDesired HealthReason = "OSAtDesired" // False: the booted commit is the desired one
	ReasonOSInRollout HealthReason = "OSInRollout" // False: the agent is working towards the desired commit
	ReasonOSNoDesired HealthReason = "OSNoDesired" // False: no desired commit, nothing to drift from
	ReasonOSDrifted   HealthReason = "OSDrifted"   // True: an idle node boots another commit than the desired one
	ReasonOSUnknown   HealthReason = "OSUnknown"   // Unknown: the booted commit is not known
)

// Heartbeats of the health conditions. The agent checks every
// DefaultCheckInterval and patches the conditions when one changes status or
// reason, and at least every DefaultHeartbeatPeriod otherwise (node-problem-
// detector's heartbeat, shorter: repairs wait for it).
const (
	DefaultCheckInterval   = 10 * time.Second
	DefaultHeartbeatPeriod = time.Minute
	// StaleHeartbeats is how many heartbeats may be missed before a
	// condition is stale: its agent is not running, and nothing may be
	// decided on it.
	StaleHeartbeats = 3
)

// ConditionStale reports whether a condition whose lastHeartbeatTime is
// heartbeat is too old to act on at now: older than StaleHeartbeats periods.
// A zero heartbeat is stale. period <= 0 means DefaultHeartbeatPeriod.
func ConditionStale(heartbeat, now time.Time, period time.Duration) bool {
	if period <= 0 {
		period = DefaultHeartbeatPeriod
	}
	return heartbeat.IsZero() || now.Sub(heartbeat) > StaleHeartbeats*period
}
