package fsm

import (
	"fmt"
	"time"

	"herd.dev/herd/schema"
)

// part is which part of a settled sync an action belongs to.
type part int

const (
	partNone   part = iota
	partPulled      // publishing a changed os-pulled
	partTaint       // removing the converging taint
	partPre         // pre-staging
)

// settle is what the agent does at a desired state reached or refused:
// report what changed since (os-pulled), remove the converging taint at
// the target, pre-stage the commit prestage-os names, and re-publish a
// report someone overwrote.
func (m *machine) settle() Action {
	p, j := &m.pass, &m.Journal
	p.stage = stageSettled
	if !p.pulledReported {
		p.pulledReported = true
		if m.hasReported && m.reported.OSPulled != j.OSPulled {
			if act, ok := m.publish(m.report(m.reported.State, m.reported.Message)); ok {
				p.inflight = partPulled
				return act
			}
		}
	}
	if !p.taintChecked {
		p.taintChecked = true
		switch {
		case !p.node.Tainted:
			m.taintFails = 0
		case !m.atTarget():
		case m.now.Before(m.taintRetryAt):
			p.wait = m.taintRetryAt.Sub(m.now)
		default:
			p.inflight = partTaint
			return Action{Kind: Untaint, Config: p.want.Config, Commit: p.want.OS}
		}
	}
	if act, ok := m.prestage(); ok {
		return act
	}
	return m.ensureReported(p.wait)
}

// atTarget reports whether the node is at the desired state and said so:
// current-config is desired-config, os-booted is desired-os (when set),
// state Idle.
func (m *machine) atTarget() bool {
	want := m.pass.want
	return m.hasReported && m.reported.State == schema.StateIdle && want.Config != "" &&
		m.reported.CurrentConfig == want.Config && m.Journal.Applied == want.Config &&
		(want.OS == "" || m.reported.OSBooted == want.OS)
}

// settledResult takes the result of a settled sync's action in.
func (m *machine) settledResult(r Result) Action {
	p := &m.pass
	in := p.inflight
	p.inflight = partNone
	switch in {
	case partPulled:
		if r.Err != nil {
			return wait(5 * time.Second)
		}
	case partTaint:
		if r.Err != nil {
			m.taintFails++
			d := backoff(m.taintFails)
			m.taintRetryAt = m.now.Add(d)
			m.note(Note{Kind: NoteUntaintFailed, Err: r.Err, Count: m.taintFails, Took: d})
			p.wait = d
		} else {
			m.taintFails, m.taintRetryAt = 0, time.Time{}
			if r.Done {
				m.note(Note{Kind: NoteUntainted, Config: p.want.Config})
			}
		}
	case partPre:
		return m.prestageResult(r)
	}
	return m.settle()
}

// preStep is how far a pre-stage got.
type preStep int

const (
	preNone       preStep = iota // not looked at in this sync
	preHas                       // looking whether the commit is on disk
	preReportHas                 // publishing os-pulled for a commit found on disk
	preFetch                     // fetching the render to pull from
	preAnnounce                  // publishing that the pull runs
	prePull                      // pulling
	preReport                    // publishing the outcome
	preFailReport                // publishing a failure
	preOver                      // nothing (more) to do in this sync
)

// prestage is the pre-stage of one sync.
type prestage struct {
	step   preStep
	commit string
	os     schema.OSConfig
	state  schema.NodeState // the report to go back to after the pull
	msg    string
	resync bool // the Prestage consumed Node events: look again at once
}

// prestage pulls the OS commit the prestage-os annotation names, ahead of
// the node's rollout, so that the apply that later deploys it needs no
// pull. It runs only at a desired state reached and reported Idle (never
// while a change is applied), and does nothing else: no deploy, no file, no
// reboot, no change of state. Once the commit is on disk (pulled, or there
// already) it reports it in os-pulled. A failure is reported in the
// message only: the node stays Idle, and the apply pulls the commit when it
// gets there.
//
// Each prestage-os value is handled once per agent; a restarted agent
// checks again and finds a pulled commit on disk. The executor interrupts
// the pull when the desired state or prestage-os changes, so that the
// apply waits for no pre-stage.
func (m *machine) prestage() (Action, bool) {
	p := &m.pass
	ps := &p.pre
	if ps.step != preNone {
		return Action{}, false
	}
	ps.step = preOver
	commit := p.node.PrestageOS
	if commit == "" || commit == m.prestageDone || !m.hasReported || m.reported.State != schema.StateIdle {
		return Action{}, false
	}
	m.prestageDone, ps.commit = commit, commit
	ps.state, ps.msg = m.reported.State, m.reported.Message
	if !IsHash(commit) {
		return m.prestageFailed(fmt.Errorf("prestage-os %q is not an OSTree commit checksum", commit)), true
	}
	return m.pre(preHas, Action{Kind: HasCommit, Commit: commit}), true
}

// pre returns a pre-stage action, done in step s.
func (m *machine) pre(s preStep, act Action) Action {
	m.pass.pre.step, m.pass.inflight = s, partPre
	return act
}

// prestageResult takes a pre-stage action's result in.
func (m *machine) prestageResult(r Result) Action {
	p, j := &m.pass, &m.Journal
	ps := &p.pre
	switch ps.step {
	case preHas:
		if r.Err != nil {
			return m.prestageFailed(r.Err)
		}
		if r.Done {
			if j.OSPulled == ps.commit {
				return m.prestageEnd()
			}
			m.note(Note{Kind: NotePrestaged, Commit: ps.commit})
			j.OSPulled = ps.commit
			if act, ok := m.publish(m.report(m.reported.State, m.reported.Message)); ok {
				return m.pre(preReportHas, act)
			}
			return m.prestageEnd()
		}
		// Pull from the remote of the config applied, or of the desired
		// one when none was applied yet; with neither, from the default.
		hash := j.Applied
		if hash == "" {
			hash = p.want.Config
		}
		if hash == "" {
			return m.announce(schema.OSConfig{})
		}
		if !IsHash(hash) {
			return m.prestageFailed(fmt.Errorf("config %q is not a config hash", hash))
		}
		return m.pre(preFetch, Action{Kind: FetchRender, Config: hash})
	case preReportHas:
		ps.resync = r.Err != nil // the settled sync reports again, with a backoff
		return m.prestageEnd()
	case preFetch:
		if r.Err != nil {
			return m.prestageFailed(r.Err)
		}
		return m.announce(r.Render.Config.OS)
	case preAnnounce:
		return m.pre(prePull, Action{Kind: Prestage, Commit: ps.commit, OS: ps.os})
	case prePull:
		ps.resync = true
		if r.Interrupted {
			m.note(Note{Kind: NotePrestageInterrupted, Commit: ps.commit})
			m.prestageDone = ""
			if act, ok := m.publish(m.report(ps.state, ps.msg)); ok {
				return m.pre(preReport, act)
			}
			return m.prestageEnd()
		}
		if r.Err != nil {
			return m.prestageFailed(r.Err)
		}
		j.OSPulled = ps.commit
		if r.Done {
			j.PrePulled = ps.commit
		}
		m.note(Note{Kind: NotePrestaged, Commit: ps.commit, Pulled: r.Done, Took: r.Took})
		if act, ok := m.publish(m.report(ps.state, ps.msg)); ok {
			return m.pre(preReport, act)
		}
		return m.prestageEnd()
	}
	// preReport, preFailReport: a failed report is only logged.
	return m.prestageEnd()
}

// announce reports the pull, then pulls from osc.
func (m *machine) announce(osc schema.OSConfig) Action {
	ps := &m.pass.pre
	ps.os = osc
	msg := "pulling OS commit " + schema.Short(ps.commit) + " ahead of its rollout (pre-stage)"
	if act, ok := m.publish(m.report(ps.state, msg)); ok {
		return m.pre(preAnnounce, act)
	}
	return m.pre(prePull, Action{Kind: Prestage, Commit: ps.commit, OS: osc})
}

// prestageFailed reports a failed pre-stage in the message, keeping the
// state: the node is not Degraded by it.
func (m *machine) prestageFailed(err error) Action {
	ps := &m.pass.pre
	m.note(Note{Kind: NotePrestageFailed, Commit: ps.commit, Err: err})
	msg := fmt.Sprintf("pre-staging OS commit %s failed (the apply will pull it): %v", schema.Short(ps.commit), err)
	if act, ok := m.publish(m.report(m.reported.State, msg)); ok {
		return m.pre(preFailReport, act)
	}
	return m.prestageEnd()
}

// prestageEnd ends the pre-stage of this sync.
func (m *machine) prestageEnd() Action {
	ps := &m.pass.pre
	if m.prestageDone == ps.commit {
		m.note(Note{Kind: NotePrestageHandled, Commit: ps.commit})
	}
	ps.step = preOver
	if ps.resync {
		return Action{Kind: Resync}
	}
	return m.settle()
}
