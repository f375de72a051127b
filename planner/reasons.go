package planner

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"herd.dev/herd/schema"
)

// Code says what a Reason is. Code compares codes, never messages; Message
// renders a Reason for people.
type Code string

// Why an out-of-date node waits (Change.Wait).
const (
	CodeUnavailable    Code = "Unavailable"    // unavailable for reasons not Herd's: waits until it is back
	CodePaused         Code = "Paused"         // the pool is paused
	CodeHalted         Code = "Halted"         // the rollout is halted
	CodeRollingBack    Code = "RollingBack"    // the rollout is rolling back
	CodeFrozen         Code = "Frozen"         // the fleet is frozen
	CodeOutsideWindow  Code = "OutsideWindow"  // outside the pool's windows; Time is when the next opens
	CodeNoRoom         Code = "NoRoom"         // nodes unavailable for other reasons fill maxUnavailable
	CodeBatchFinishing Code = "BatchFinishing" // the nodes of the batch before are not back yet
	CodeSafePoint      Code = "SafePoint"      // busy toward an earlier target
	CodeFailed         Code = "Failed"         // the node failed this rollout
)

// Why a change's disruption is assumed (Change.Assumed).
const (
	CodeOSNotBooted     Code = "OSNotBooted"     // config applied, OS commit not booted
	CodeNoCurrentConfig Code = "NoCurrentConfig" // the node reports no current config
	CodeUnknownConfig   Code = "UnknownConfig"   // its current config is no render Herd knows
)

// Why a node failed (ActFail), left rollouts (ActQuarantine) or is tried
// again (ActReset), and why a rollout halted.
const (
	CodeDegraded         Code = "Degraded"          // its agent reports Degraded; Detail is its message
	CodeHealthCheck      Code = "HealthCheckFailed" // a health check failed in its soak; Detail says how
	CodeNodeTimeout      Code = "NodeTimeout"       // not done within nodeTimeout
	CodeFailedTooOften   Code = "FailedTooOften"    // failed quarantine.after targets
	CodeResumed          Code = "Resumed"           // a resume forgave its failure
	CodeFailureBudget    Code = "FailureBudget"     // more failed nodes than maxFailures
	CodeNoRollbackTarget Code = "NoRollbackTarget"  // past the budget, rollback asked, no last good target
	CodeRolledBack       Code = "RolledBack"        // a rollback finished
)

// Reason is why the planner decided something: a Code and the facts the
// message needs. Detail carries words from outside Herd (an agent's
// message, a health check's answer); nothing decides on it.
type Reason struct {
	Code     Code             `json:"code"`
	Nodes    []string         `json:"nodes,omitempty"`
	Count    int              `json:"count,omitempty"`
	Limit    int              `json:"limit,omitempty"`
	Total    int              `json:"total,omitempty"`
	Hash     string           `json:"hash,omitempty"`
	From     string           `json:"from,omitempty"`
	State    schema.NodeState `json:"state,omitempty"`
	Time     time.Time        `json:"time,omitzero"`
	Duration time.Duration    `json:"duration,omitempty"`
	Detail   string           `json:"detail,omitempty"`
	// Problem, Health and Action are a repair's: the problem, its
	// condition's reason, the rung's repair.
	Problem schema.Problem           `json:"problem,omitempty"`
	Health  schema.HealthReason      `json:"health,omitempty"`
	Action  schema.RemediationAction `json:"action,omitempty"`
}

func reason(c Code) *Reason { return &Reason{Code: c} }

// Message renders the reason for people.
func (r *Reason) Message() string {
	if r == nil {
		return ""
	}
	if m, ok := repairMessage(r); ok {
		return m
	}
	switch r.Code {
	case CodeUnavailable:
		return r.Detail + ": waits until it is available again"
	case CodePaused:
		return "pool is paused"
	case CodeHalted:
		return "the rollout is halted"
	case CodeRollingBack:
		return "the rollout is rolling back"
	case CodeFrozen:
		return "the fleet is frozen (maintenance.freeze)"
	case CodeOutsideWindow:
		s := "outside the pool's maintenance windows"
		if !r.Time.IsZero() {
			s += "; the next opens at " + r.Time.UTC().Format(time.RFC3339)
		}
		return s
	case CodeNoRoom:
		return fmt.Sprintf("%d of %d nodes are unavailable for other reasons, which leaves no room under maxUnavailable %d", r.Count, r.Total, r.Limit)
	case CodeBatchFinishing:
		return "waits for " + strings.Join(r.Nodes, ", ") + " to finish the batch before"
	case CodeSafePoint:
		return string(r.State) + " toward an earlier target: waits for a safe point"
	case CodeFailed:
		return "failed"
	case CodeOSNotBooted:
		return "config applied; the OS commit is not booted yet"
	case CodeNoCurrentConfig:
		return "node reports no " + schema.AnnotationCurrentConfig + ", so its config is unknown"
	case CodeUnknownConfig:
		s := "current config " + schema.Short(r.Hash) + " is unknown"
		if r.Detail != "" {
			s += " (not the render of " + r.Detail + ")"
		}
		return s
	case CodeDegraded:
		return "degraded: " + r.Detail
	case CodeHealthCheck:
		return "health check failed: " + r.Detail
	case CodeNodeTimeout:
		return fmt.Sprintf("not done %s after it was dispatched (nodeTimeout)", r.Duration)
	case CodeFailedTooOften:
		return fmt.Sprintf("failed %s, the last %s", plural(r.Count, "target"), schema.Short(r.Hash))
	case CodeResumed:
		return "resumed: try again"
	case CodeFailureBudget:
		return fmt.Sprintf("%s failed (%s), more than maxFailures %d", nodes(r.Count), strings.Join(r.Nodes, ", "), r.Limit)
	case CodeNoRollbackTarget:
		return fmt.Sprintf("%s failed (%s), more than maxFailures %d; no earlier target to roll back to", nodes(r.Count), strings.Join(r.Nodes, ", "), r.Limit)
	case CodeRolledBack:
		return fmt.Sprintf("rolled back to %s after failures of %s", schema.Short(r.Hash), schema.Short(r.From))
	}
	return string(r.Code)
}

// nodes reads "1 node", "2 nodes".
func nodes(n int) string { return plural(n, "node") }

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// MarshalJSON writes the reason with its message, for readers of plans
// and HerdPool status.
func (r Reason) MarshalJSON() ([]byte, error) {
	type plain Reason
	return json.Marshal(struct {
		plain
		Message string `json:"message"`
	}{plain(r), r.Message()})
}

// UnmarshalJSON reads a reason; the message is rendered again, not kept.
func (r *Reason) UnmarshalJSON(b []byte) error {
	type plain Reason
	return json.Unmarshal(b, (*plain)(r))
}

// Message says why the node is unavailable: "NotReady, cordoned".
func (u Unavailable) Message() string {
	var why []string
	if u.NotReady {
		why = append(why, "NotReady")
	}
	if u.Cordoned {
		why = append(why, "cordoned")
	}
	if u.State != "" {
		why = append(why, string(u.State))
	}
	return strings.Join(why, ", ")
}

// MarshalJSON writes the node with its reason.
func (u Unavailable) MarshalJSON() ([]byte, error) {
	type plain Unavailable
	return json.Marshal(struct {
		plain
		Reason string `json:"reason"`
	}{plain(u), u.Message()})
}

// Message says why the node waits and why its disruption is assumed.
func (c Change) Message() string {
	switch {
	case c.Wait == nil:
		return c.Assumed.Message()
	case c.Assumed == nil:
		return c.Wait.Message()
	}
	return c.Wait.Message() + "; " + c.Assumed.Message()
}

// MarshalJSON writes the change with its reason.
func (c Change) MarshalJSON() ([]byte, error) {
	type plain Change
	return json.Marshal(struct {
		plain
		Reason string `json:"reason,omitempty"`
	}{plain(c), c.Message()})
}
