package schema

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Remediation mirrors #Remediation in nodepool.cue: how a pool's unhealthy
// nodes are repaired.
type Remediation struct {
	DryRun       bool                  `json:"dryRun"`
	MaxUnhealthy IntOrPercent          `json:"maxUnhealthy"`
	MaxPerHour   int                   `json:"maxPerHour"`
	Quarantine   RemediationQuarantine `json:"quarantine"`
	Replace      Replace               `json:"replace"`
	Problems     map[Problem]Ladder    `json:"problems"`
}

// RemediationQuarantine takes flapping nodes out of service.
type RemediationQuarantine struct {
	After  int    `json:"after"`
	Window string `json:"window"`
}

// WindowDuration returns quarantine.window (24h when unset or invalid).
func (q RemediationQuarantine) WindowDuration() time.Duration {
	return parseDuration(q.Window, 24*time.Hour)
}

// Replace is how the last rung marks a node for replacement.
type Replace struct {
	DeleteNode bool `json:"deleteNode"`
}

// Ladder is the repair of one problem.
type Ladder struct {
	Duration string `json:"duration"`
	Rungs    []Rung `json:"rungs"`
}

// HoldFor returns how long the problem must last before the first rung.
func (l Ladder) HoldFor() time.Duration { return parseDuration(l.Duration, 5*time.Minute) }

// Rung is one repair of a ladder.
type Rung struct {
	Action  RemediationAction `json:"action"`
	Timeout string            `json:"timeout"`
}

// TimeoutDuration returns how long the rung has to heal the node.
func (r Rung) TimeoutDuration() time.Duration { return parseDuration(r.Timeout, 5*time.Minute) }

func parseDuration(s string, def time.Duration) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return def
	}
	return d
}

// Problem is what a ladder answers: kubelet's Ready condition not True, or
// one of the agent's health conditions True.
type Problem string

// ProblemNotReady is kubelet's Ready condition False or Unknown; the other
// problems are the agent's condition types.
const ProblemNotReady Problem = "NotReady"

// Problems lists every problem, in the order repairs are chosen when
// several are due on one node: the container runtime first (kubelet's
// troubles often come from it), the specific before NotReady, which they
// usually cause.
var Problems = []Problem{
	Problem(ConditionRuntimeUnhealthy),
	Problem(ConditionPLEGUnhealthy),
	Problem(ConditionKubeletUnhealthy),
	ProblemNotReady,
	Problem(ConditionLeftoverSandboxes),
	Problem(ConditionDiskPressure),
	Problem(ConditionMemoryPressure),
	Problem(ConditionOSDrift),
}

// RemediationAction is a rung's repair.
type RemediationAction string

// Repairs, gentlest first.
const (
	RepairRestartKubelet    RemediationAction = "restart-kubelet"
	RepairCleanSandboxes    RemediationAction = "clean-sandboxes"
	RepairRestartContainerd RemediationAction = "restart-containerd"
	RepairReboot            RemediationAction = "reboot"
	RepairReplace           RemediationAction = "replace"
)

// RemediationActions lists the repairs, gentlest first.
var RemediationActions = []RemediationAction{RepairRestartKubelet, RepairCleanSandboxes, RepairRestartContainerd, RepairReboot, RepairReplace}

// Valid reports whether a is one of the repairs.
func (a RemediationAction) Valid() bool { return slices.Contains(RemediationActions, a) }

// TakesNodeDown reports whether the repair takes the node out of service:
// it is cordoned (and drained when Ready) first, and it counts against
// rollout.maxUnavailable.
func (a RemediationAction) TakesNodeDown() bool { return a == RepairReboot || a == RepairReplace }

// Destructive reports whether the agent captures an evidence bundle before
// the repair.
func (a RemediationAction) Destructive() bool { return a == RepairReboot || a == RepairReplace }

// Node annotations of repairs (docs/health.md). The controller writes the
// state, the request and the history; the agent writes the outcome.
const (
	// AnnotationRemediation is the repair in progress (RemediationState, JSON).
	AnnotationRemediation = AnnotationPrefix + "remediation"
	// AnnotationRemediate asks the agent for a rung: "<action>@<id>".
	AnnotationRemediate = AnnotationPrefix + "remediate"
	// AnnotationRemediated is the agent's outcome of the last request:
	// "<action>@<id> Succeeded" or "<action>@<id> Failed: why".
	AnnotationRemediated = AnnotationPrefix + "remediated"
	// AnnotationRemediations is the node's recent repairs
	// ([]RemediationRecord, JSON, oldest first, at most MaxRemediationRecords).
	AnnotationRemediations = AnnotationPrefix + "remediations"
	// AnnotationReplace marks a node for replacement: why, and when.
	AnnotationReplace = AnnotationPrefix + "replace"
)

// MaxRemediationRecords bounds a node's remediation history.
const MaxRemediationRecords = 20

// RemediationState is the repair in progress on a node.
type RemediationState struct {
	Problem Problem           `json:"problem"`
	Reason  HealthReason      `json:"reason,omitempty"` // the condition's reason when it started
	Rung    int               `json:"rung"`             // index into the problem's ladder
	Action  RemediationAction `json:"action"`
	ID      string            `json:"id"`      // the rung's request ID
	Started time.Time         `json:"started"` // when the rung started: cordoned, or asked for
	// Requested is when the agent was asked (after the drain, for a rung
	// that takes the node down); the rung's timeout runs from it.
	Requested time.Time `json:"requested,omitzero"`
	// Since is when the problem's condition turned on: the repair's
	// first rung started its ladder's duration after it.
	Since    time.Time `json:"since,omitzero"`
	Cordoned bool      `json:"cordoned,omitempty"` // the repair cordoned the node
	Marked   time.Time `json:"marked,omitzero"`    // replace: when the node was marked for replacement
}

// Request is the agent's request of the state's rung.
func (s RemediationState) Request() RemediationRequest {
	return RemediationRequest{Action: s.Action, ID: s.ID}
}

// RemediationRecord is one rung of a node's repairs, as its history keeps it.
type RemediationRecord struct {
	ID      string            `json:"id"`
	Time    time.Time         `json:"time"` // when the rung started
	Problem Problem           `json:"problem"`
	Reason  HealthReason      `json:"reason,omitempty"`
	Rung    int               `json:"rung"`
	Action  RemediationAction `json:"action"`
	Outcome RepairOutcome     `json:"outcome"`
	Message string            `json:"message,omitempty"`
}

// Record is the record of the state's rung with its outcome.
func (s RemediationState) Record(o RepairOutcome, msg string) RemediationRecord {
	return RemediationRecord{ID: s.ID, Time: s.Started, Problem: s.Problem, Reason: s.Reason, Rung: s.Rung, Action: s.Action, Outcome: o, Message: msg}
}

// RepairOutcome is how a rung ended.
type RepairOutcome string

// Outcomes of a rung.
const (
	OutcomeHealed      RepairOutcome = "Healed"      // the problem cleared
	OutcomeTimedOut    RepairOutcome = "TimedOut"    // not healed in time: the next rung follows
	OutcomeFailed      RepairOutcome = "Failed"      // the agent could not carry it out
	OutcomeReplaced    RepairOutcome = "Replaced"    // marked for replacement
	OutcomeQuarantined RepairOutcome = "Quarantined" // the ladder is exhausted: left to people
	OutcomeAbandoned   RepairOutcome = "Abandoned"   // the node left the repair (a rollout, another pool)
)

// AppendRecord adds r to a history, unless a record of its ID is there,
// and keeps the newest MaxRemediationRecords.
func AppendRecord(h []RemediationRecord, r RemediationRecord) []RemediationRecord {
	if slices.ContainsFunc(h, func(o RemediationRecord) bool { return o.ID == r.ID }) {
		return h
	}
	h = append(slices.Clone(h), r)
	if n := len(h); n > MaxRemediationRecords {
		h = h[n-MaxRemediationRecords:]
	}
	return h
}

// ParseRemediationState reads herd.dev/remediation; "" is no repair.
func ParseRemediationState(s string) (*RemediationState, error) {
	if s == "" {
		return nil, nil
	}
	var st RemediationState
	if err := json.Unmarshal([]byte(s), &st); err != nil {
		return nil, fmt.Errorf("%s: %w", AnnotationRemediation, err)
	}
	if !st.Action.Valid() || !requestID.MatchString(st.ID) {
		return nil, fmt.Errorf("%s: invalid action %q or id %q", AnnotationRemediation, st.Action, st.ID)
	}
	return &st, nil
}

// ParseRemediationRecords reads herd.dev/remediations; "" is none.
func ParseRemediationRecords(s string) ([]RemediationRecord, error) {
	if s == "" {
		return nil, nil
	}
	var h []RemediationRecord
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return nil, fmt.Errorf("%s: %w", AnnotationRemediations, err)
	}
	return h, nil
}

// RemediationRequest is the controller's request to the agent: a rung to
// carry out once. Its ID tells requests apart.
type RemediationRequest struct {
	Action RemediationAction
	ID     string
}

var requestID = regexp.MustCompile(`^[0-9A-Za-z.-]{1,40}$`)

// String is the annotation's value: "<action>@<id>".
func (r RemediationRequest) String() string { return string(r.Action) + "@" + r.ID }

// ParseRemediationRequest reads herd.dev/remediate.
func ParseRemediationRequest(s string) (RemediationRequest, error) {
	a, id, ok := strings.Cut(s, "@")
	r := RemediationRequest{Action: RemediationAction(a), ID: id}
	if !ok || !r.Action.Valid() || !requestID.MatchString(id) {
		return RemediationRequest{}, fmt.Errorf("%s %q: want <action>@<id>, the action one of %v", AnnotationRemediate, s, RemediationActions)
	}
	return r, nil
}

// RepairResult is how the agent's part of a rung went.
type RepairResult string

// Results the agent reports.
const (
	ResultSucceeded RepairResult = "Succeeded"
	ResultFailed    RepairResult = "Failed"
)

// RemediationReport is the agent's outcome of a request: herd.dev/remediated.
type RemediationReport struct {
	Request RemediationRequest
	Result  RepairResult
	Message string
}

// maxReportMessage bounds the message of a report.
const maxReportMessage = 512

// String is the annotation's value: "<action>@<id> Succeeded[: message]".
func (r RemediationReport) String() string {
	s := r.Request.String() + " " + string(r.Result)
	if m := r.Message; m != "" {
		if len(m) > maxReportMessage {
			m = m[:maxReportMessage]
		}
		s += ": " + strings.ReplaceAll(m, "\n", " ")
	}
	return s
}

// ParseRemediationReport reads herd.dev/remediated.
func ParseRemediationReport(s string) (RemediationReport, error) {
	req, rest, _ := strings.Cut(s, " ")
	r, err := ParseRemediationRequest(req)
	if err != nil {
		return RemediationReport{}, fmt.Errorf("%s: %w", AnnotationRemediated, err)
	}
	res, msg, _ := strings.Cut(rest, ": ")
	out := RemediationReport{Request: r, Result: RepairResult(res), Message: msg}
	if out.Result != ResultSucceeded && out.Result != ResultFailed {
		return RemediationReport{}, fmt.Errorf("%s %q: result %q is neither %s nor %s", AnnotationRemediated, s, res, ResultSucceeded, ResultFailed)
	}
	return out, nil
}
