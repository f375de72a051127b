// Package fsm is the node agent's decisions as a pure state machine: Step
// takes what the agent knows and returns its next action; package node acts.
//
// Like etcd's raft (Step versus Ready), nothing here does I/O or reads a
// clock: the executor hands in the Node it sees and the time, carries out
// the Action Step returns, and hands its Result back. It writes the Journal
// whenever Step changed it, before the action: a crash at any point resumes
// from the journal and what the node shows.
package fsm

import (
	"errors"
	"fmt"
	"time"

	"herd.dev/herd/schema"
)

// DefaultRebootTimeout is how long the agent waits to be stopped by a
// reboot it requested before it requests it again.
const DefaultRebootTimeout = 15 * time.Minute

// State is what Step decides from besides its input: the journal, which
// the executor keeps on disk, and what the agent remembers while it runs
// (lost when it stops, as a crash loses it).
type State struct {
	Journal Journal
	// BootID is this boot's ID; empty when the node has none to read.
	BootID string
	// RebootTimeout: see DefaultRebootTimeout.
	RebootTimeout time.Duration

	reported    Report // what the annotations say, as last published
	hasReported bool
	patchedRV   string // the Node's resource version after the last publish

	booted string // the booted commit, as last read
	staged string // the commit deployed for the next boot, when it is not the booted one

	settled   bool // desired state settledAt reached or refused: nothing to do until it changes
	settledAt Key
	failures  int // transient failures in a row
	retryFor  Key
	retryAt   time.Time
	rebootAt  time.Time // when a reboot was requested; zero when none is

	prestageDone string    // the prestage-os commit handled (on disk, pulled or failed) by this agent
	taintFails   int       // failed removals of the converging taint in a row
	taintRetryAt time.Time // when to try removing it again after a failure

	pass pass // the sync in progress
}

// New returns the state of an agent that starts with journal j.
func New(j Journal, bootID string, rebootTimeout time.Duration) State {
	if rebootTimeout <= 0 {
		rebootTimeout = DefaultRebootTimeout
	}
	return State{Journal: j, BootID: bootID, RebootTimeout: rebootTimeout}
}

// Input is one step's input: the Node as seen now, which starts a new
// sync, or the result of the action the previous step returned. An input
// with neither (or a result when no sync is in progress) waits.
type Input struct {
	Now    time.Time
	Node   *Node
	Result *Result
}

// Step returns the state after in, and what to do next. It does not
// modify s.
func Step(s State, in Input) (State, Output) {
	s.Journal = s.Journal.Clone()
	m := &machine{State: &s, now: in.Now}
	var act Action
	switch {
	case in.Node != nil:
		act = m.begin(*in.Node)
	case in.Result != nil && s.pass.stage != stageNone:
		act = m.record(*in.Result)
	default:
		act = Action{Kind: Wait}
	}
	if act.Kind == Wait || act.Kind == Resync {
		s.pass = pass{}
	}
	return s, Output{Action: act, Notes: m.notes}
}

// stage is which part of a sync is in progress.
type stage int

const (
	stageNone    stage = iota
	stageEnsure        // re-publishing a report someone overwrote, then waiting
	stageApply         // taking the node to the desired state
	stageRefuse        // reporting a refusal
	stageFail          // reporting a transient failure
	stageSettled       // at the desired state: os-pulled, the taint, pre-stage
)

// pass is one sync: from a Node to a Wait. Fields memoize the results of
// actions, so that each step resumes where the last one left off.
type pass struct {
	stage stage
	node  Node
	want  Key
	wait  time.Duration // the wait the sync ends with

	publishing Report // the report of the Publish in flight

	// apply
	os          *OS
	began       bool
	rebooted    bool // a reboot happened since the journal was written
	recorded    bool // the refusal is the journal's
	render      *schema.Rendered
	planned     bool
	commit      string
	kargs       []string
	bootedOK    bool // the booted deployment is the target
	afterBoot   bool // the reboot this change asked for happened
	needOS      bool
	staged      bool // the default deployment is the target already
	how         string
	inspected   bool
	classes     []schema.Disruption
	differ      int
	manifest    string
	announced   bool
	pulled      bool
	filesDone   bool
	sysctlsDone bool
	restarting  schema.Disruption
	unstaged    bool
	deployed    bool
	cleaned     bool
	rebooting   bool // the reboot was requested

	// settled
	inflight       part // which part the action in flight belongs to
	pulledReported bool
	taintChecked   bool
	pre            prestage
}

// machine is one Step at work.
type machine struct {
	*State
	now   time.Time
	notes []Note
}

func (m *machine) note(n Note) { m.notes = append(m.notes, n) }

func wait(d time.Duration) Action { return Action{Kind: Wait, After: d} }

// begin starts a sync: the agent sees its Node as it is now.
func (m *machine) begin(n Node) Action {
	m.pass = pass{node: n, want: n.Desired}
	j, want := &m.Journal, n.Desired
	if j.OSPulled != "" && n.PrestageOS != j.OSPulled {
		// The pre-stage request is over or changed: os-pulled goes with
		// the next report.
		j.OSPulled = ""
	}
	if !m.rebootAt.IsZero() {
		if left := m.RebootTimeout - m.now.Sub(m.rebootAt); left > 0 {
			return m.ensureReported(left)
		}
		m.note(Note{Kind: NoteRebootAgain})
		m.rebootAt = time.Time{}
	}
	if m.settled && want == m.settledAt {
		m.pass.stage = stageSettled
		return m.settle()
	}
	if want == m.retryFor && m.now.Before(m.retryAt) {
		return wait(m.retryAt.Sub(m.now)) // backing off: events do not cut it short
	}
	if want != m.retryFor {
		m.failures = 0 // a new desired state starts afresh
	}
	m.settled = false
	m.pass.stage = stageApply
	return m.apply()
}

// record takes the result of the last action in.
func (m *machine) record(r Result) Action {
	p := &m.pass
	if r.Of == Publish {
		if r.Err == nil {
			m.published(r.ResourceVersion)
		} else if p.stage != stageApply {
			m.note(Note{Kind: NoteReportFailed, Err: r.Err})
		}
	}
	switch p.stage {
	case stageEnsure:
		if r.Err != nil && (p.wait == 0 || p.wait > 5*time.Second) {
			return wait(5 * time.Second)
		}
		return wait(p.wait)
	case stageApply:
		return m.applied(r)
	case stageRefuse:
		if r.Err != nil {
			// Not settled: try again.
			m.retryFor, m.retryAt = p.want, m.now.Add(5*time.Second)
			return wait(5 * time.Second)
		}
		m.settled, m.settledAt = true, p.want
		return wait(0)
	case stageFail:
		return wait(p.wait)
	case stageSettled:
		return m.settledResult(r)
	}
	return wait(0)
}

// published records a successful Publish.
func (m *machine) published(rv string) {
	r := m.pass.publishing
	if !m.hasReported || m.reported.State != r.State {
		m.note(Note{Kind: NoteState, State: r.State, Msg: r.Message})
	}
	m.reported, m.hasReported, m.patchedRV = r, true, rv
}

// report returns the truth as the agent knows it, in the given state.
func (m *machine) report(state schema.NodeState, msg string) Report {
	return Report{
		CurrentConfig: m.Journal.Applied,
		OSBooted:      m.booted,
		OSStaged:      m.staged,
		OSPulled:      m.Journal.OSPulled,
		State:         state,
		Message:       truncate(msg, maxMessage),
	}
}

// publish returns the Publish of r, unless the annotations say r already.
func (m *machine) publish(r Report) (Action, bool) {
	if m.hasReported && r == m.reported {
		return Action{}, false
	}
	m.pass.publishing = r
	return Action{Kind: Publish, Report: r}, true
}

// ensureReported publishes the last report again when someone else changed
// the annotations since, and then waits d.
func (m *machine) ensureReported(d time.Duration) Action {
	p := &m.pass
	n := p.node
	if !m.hasReported || m.reported == n.Reported || olderThan(n.ResourceVersion, m.patchedRV) {
		return wait(d)
	}
	p.stage, p.wait, p.publishing = stageEnsure, d, m.reported
	return Action{Kind: Publish, Report: m.reported}
}

// end finishes an apply: at the desired state (or rebooting into it), a
// refusal, or a transient failure.
func (m *machine) end(err error) Action {
	p := &m.pass
	var ref *Refusal
	switch {
	case err == nil:
		m.failures, m.retryFor = 0, Key{}
		if !m.rebootAt.IsZero() {
			return wait(m.RebootTimeout)
		}
		m.settled, m.settledAt = true, p.want
		p.stage = stageSettled
		return m.settle()
	case errors.As(err, &ref):
		m.failures, m.retryFor = 0, Key{}
		return m.refuse(ref)
	default:
		return m.fail(err)
	}
}

// refuse records and reports a refused desired state.
func (m *machine) refuse(ref *Refusal) Action {
	p, j := &m.pass, &m.Journal
	if !p.recorded {
		m.note(Note{Kind: NoteRefused, Config: p.want.Config, Commit: p.want.OS, Msg: ref.Msg, Err: ref.Err})
		j.Refused = &Refused{Config: p.want.Config, OS: p.want.OS, Message: ref.Msg}
		j.BootID = m.BootID
	}
	p.stage = stageRefuse
	if act, ok := m.publish(m.report(schema.StateDegraded, ref.Msg)); ok {
		return act
	}
	m.settled, m.settledAt = true, p.want
	return wait(0)
}

// fail reports a transient failure and backs off.
func (m *machine) fail(err error) Action {
	p := &m.pass
	m.failures++
	delay := backoff(m.failures)
	state := schema.StateWorking
	if m.failures >= 3 {
		state = schema.StateDegraded
	}
	m.note(Note{Kind: NoteRetry, Err: err, Count: m.failures, Took: delay})
	m.retryFor, m.retryAt = p.want, m.now.Add(delay)
	p.stage, p.wait = stageFail, delay
	msg := fmt.Sprintf("%v (attempt %d, retrying in %s)", err, m.failures, delay.Round(time.Second))
	if act, ok := m.publish(m.report(state, msg)); ok {
		return act
	}
	return wait(delay)
}

func backoff(failures int) time.Duration {
	d := time.Second << min(failures-1, 9)
	return min(d, 5*time.Minute)
}

// olderThan reports whether resource version rv is older than ref: the
// watch can deliver a Node from before the agent's own last patch. Resource
// versions are opaque; when they are not numbers this says false, and the
// agent merely patches once more than needed.
func olderThan(rv, ref string) bool {
	a, okA := parseUint(rv)
	b, okB := parseUint(ref)
	return okA && okB && a < b
}

func parseUint(s string) (uint64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// IsHash reports whether s is a config hash or an OSTree commit checksum:
// 64 lowercase hex digits.
func IsHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
