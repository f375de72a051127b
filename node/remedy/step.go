// Package remedy is the agent's side of repairs: it carries out, exactly
// once, the rung the controller asks for in herd.dev/remediate, and reports
// how it went in herd.dev/remediated.
//
// As the agent's own state machine, it is a pure Step (journal and input
// in, the next action out) and an executor that does the I/O, writing the
// journal before each action: a crash at any point finishes the rung,
// never repeats it. A restart is known done by the unit's invocation ID, a
// reboot by the boot ID, so neither is done twice nor lost.
package remedy

import (
	"fmt"

	"herd.dev/herd/schema"
)

// Units the restarts act on.
const (
	KubeletUnit    = "kubelet.service"
	ContainerdUnit = "containerd.service"
)

// Phase is how far the journal's rung got.
type Phase string

// Phases of a rung.
const (
	PhaseBegun    Phase = "begun"     // noted; nothing done yet
	PhaseEvidence Phase = "evidence"  // the evidence bundle is captured
	PhaseActing   Phase = "acting"    // the marker is recorded; the action may have happened
	PhaseRebooted Phase = "rebooting" // the reboot was requested in the boot the marker names
	PhaseDone     Phase = "done"      // the outcome is known
)

// Journal is the agent's memory of the last rung asked of it, kept in
// <state-dir>/remedy.json and written before every action.
type Journal struct {
	Request string `json:"request,omitempty"` // "<action>@<id>"
	Phase   Phase  `json:"phase,omitempty"`
	// Marker is what tells, after a crash, whether the action happened:
	// the unit's invocation ID before a restart, the boot ID before a
	// reboot.
	Marker  string              `json:"marker,omitempty"`
	Result  schema.RepairResult `json:"result,omitempty"`
	Message string              `json:"message,omitempty"`
}

// report is the journal's outcome as herd.dev/remediated says it.
func (j Journal) report() string {
	req, err := schema.ParseRemediationRequest(j.Request)
	if err != nil {
		return ""
	}
	return schema.RemediationReport{Request: req, Result: j.Result, Message: j.Message}.String()
}

// ActionKind is what the executor does next.
type ActionKind int

// Actions.
const (
	Wait       ActionKind = iota // nothing to do until the Node changes
	Capture                      // capture and keep an evidence bundle (Reason)
	ReadMarker                   // read Unit's invocation ID
	Restart                      // restart Unit
	Clean                        // remove the leftover pod sandboxes
	Reboot                       // request a reboot
	Report                       // write Report to herd.dev/remediated
)

var actionNames = [...]string{"wait", "capture", "read-marker", "restart", "clean", "reboot", "report"}

func (k ActionKind) String() string {
	if int(k) < len(actionNames) {
		return actionNames[k]
	}
	return fmt.Sprintf("ActionKind(%d)", int(k))
}

// Action is the next thing to do.
type Action struct {
	Kind   ActionKind
	Unit   string // ReadMarker, Restart
	Reason string // Capture: why the evidence is taken
	Report string // Report: the annotation's value
}

// Input is what Step decides on: the Node's annotations as seen, this
// boot's ID, and the result of the last action (nil when the Node changed).
type Input struct {
	Request  string // herd.dev/remediate
	Reported string // herd.dev/remediated
	BootID   string
	Result   *Result
}

// Result is what an action came to.
type Result struct {
	Of      ActionKind
	Err     error
	Marker  string // ReadMarker: the invocation ID
	Removed int    // Clean: sandboxes removed
}

// Step returns the journal after in and the next action. The executor
// writes the journal, when it changed, before it carries the action out.
func Step(j Journal, in Input) (Journal, Action) {
	req, err := schema.ParseRemediationRequest(in.Request)
	if err != nil {
		return j, Action{Kind: Wait} // nothing asked, or nothing we can do
	}
	if req.String() != j.Request {
		j = Journal{Request: req.String(), Phase: PhaseBegun} // a new rung; a result of the last is moot
	} else if r := in.Result; r != nil {
		j = record(j, *r, in.BootID)
		if r.Of == ReadMarker && j.Phase == PhaseActing {
			return j, Action{Kind: Restart, Unit: unitOf(req.Action)} // the marker is kept: now restart
		}
	}
	return j, next(j, req.Action, in)
}

// unitOf is the unit a restart rung restarts.
func unitOf(a schema.RemediationAction) string {
	if a == schema.RepairRestartContainerd {
		return ContainerdUnit
	}
	return KubeletUnit
}

// next is the action that moves the journal's rung on.
func next(j Journal, a schema.RemediationAction, in Input) Action {
	switch j.Phase {
	case PhaseBegun:
		if a.Destructive() {
			return Action{Kind: Capture, Reason: fmt.Sprintf("before %s (%s)", a, j.Request)}
		}
		return act(j, a, in)
	case PhaseEvidence, PhaseActing:
		return act(j, a, in)
	case PhaseRebooted:
		return Action{Kind: Wait} // the shutdown stops the agent
	case PhaseDone:
		if r := j.report(); r != in.Reported {
			return Action{Kind: Report, Report: r}
		}
	}
	return Action{Kind: Wait}
}

// act carries the rung's own action out, or finds it done.
func act(j Journal, a schema.RemediationAction, in Input) Action {
	switch a {
	case schema.RepairRestartKubelet, schema.RepairRestartContainerd:
		// First, or after a crash: read the unit's invocation ID, which
		// says whether the restart happened.
		return Action{Kind: ReadMarker, Unit: unitOf(a)}
	case schema.RepairCleanSandboxes:
		return Action{Kind: Clean}
	case schema.RepairReboot:
		// The boot is still the one the marker names (Resume moves a new
		// boot to done): the reboot has not happened.
		return Action{Kind: Reboot}
	}
	return Action{Kind: Wait} // replace: the evidence was all (record moved it to done)
}

// record takes an action's result into the journal.
func record(j Journal, r Result, bootID string) Journal {
	done := func(err error, ok string) Journal {
		j.Phase, j.Result, j.Message = PhaseDone, schema.ResultSucceeded, ok
		if err != nil {
			j.Result, j.Message = schema.ResultFailed, err.Error()
		}
		return j
	}
	req, _ := schema.ParseRemediationRequest(j.Request)
	switch r.Of {
	case Capture:
		j.Phase = PhaseEvidence // a failed capture does not stop the rung: the bundle says what it lacks
		switch req.Action {
		case schema.RepairReplace:
			return done(nil, "evidence captured")
		case schema.RepairReboot:
			j.Phase, j.Marker = PhaseActing, bootID
		}
	case ReadMarker:
		switch {
		case r.Err != nil:
			return done(fmt.Errorf("read the unit's state: %w", r.Err), "")
		case j.Phase == PhaseActing && r.Marker != j.Marker:
			return done(nil, "restarted") // it restarted before the agent stopped
		}
		j.Phase, j.Marker = PhaseActing, r.Marker
	case Restart:
		return done(r.Err, "restarted")
	case Clean:
		return done(r.Err, fmt.Sprintf("removed %d pod sandbox(es)", r.Removed))
	case Reboot:
		if r.Err != nil {
			return done(r.Err, "")
		}
		j.Phase = PhaseRebooted
	}
	return j
}

// Resume is the journal of an agent that starts in boot bootID: a reboot
// it asked for happened when the boot changed; when it did not, it is to
// be asked for again (the same reboot, never a second one).
func Resume(j Journal, bootID string) Journal {
	if j.Phase != PhaseActing && j.Phase != PhaseRebooted || j.Marker == "" {
		return j
	}
	if req, err := schema.ParseRemediationRequest(j.Request); err != nil || req.Action != schema.RepairReboot {
		return j
	}
	if j.Marker != bootID {
		j.Phase, j.Result, j.Message = PhaseDone, schema.ResultSucceeded, "rebooted"
	} else {
		j.Phase = PhaseActing
	}
	return j
}
