package fsm

import (
	"fmt"
	"slices"

	"herd.dev/herd/schema"
)

// Systemd units the agent restarts when files of their class change.
const (
	KubeletUnit    = "kubelet.service"
	ContainerdUnit = "containerd.service"
)

// restarts are the services a change may restart, in order, and the
// disruption each takes on.
var restarts = []struct {
	d    schema.Disruption
	unit string
}{{schema.DisruptionRestartContainerd, ContainerdUnit}, {schema.DisruptionRestartKubelet, KubeletUnit}}

// apply returns the next action that takes the node towards the desired
// state, or ends the apply (end). It runs again from the top after every
// result, skipping what the pass has done: the pass memoizes results.
func (m *machine) apply() Action {
	p, j, want := &m.pass, &m.Journal, m.pass.want
	if p.os == nil {
		return Action{Kind: ReadOS}
	}
	booted := p.os.Booted
	if booted == nil {
		return m.end(Refusef("the OSTree sysroot has no booted deployment"))
	}
	if !p.began {
		m.beginApply()
	}

	if want.Config == "" {
		if p.rebooted {
			j.BootID = m.BootID
		}
		msg := "no desired config"
		if want.OS != "" {
			msg = "desired-os is set without desired-config: waiting for both"
		}
		return m.publishThenEnd(m.report(schema.StateIdle, msg))
	}
	if r := j.Refused; r != nil {
		p.recorded = true
		return m.end(&Refusal{Msg: r.Message})
	}
	if !IsHash(want.Config) {
		return m.end(Refusef("desired-config %q is not a config hash", want.Config))
	}
	if want.OS != "" && !IsHash(want.OS) {
		return m.end(Refusef("desired-os %q is not an OSTree commit checksum", want.OS))
	}
	if p.render == nil {
		return Action{Kind: FetchRender, Config: want.Config}
	}
	if !p.planned {
		if err := m.plan(); err != nil {
			return m.end(err)
		}
	}
	if p.afterBoot {
		return m.finishBoot()
	}

	if !p.inspected {
		return Action{Kind: Inspect, Render: p.render}
	}
	if !p.announced {
		p.announced = true
		// While retrying, the failure stays the message until it is over.
		if m.failures == 0 && (p.differ > 0 || p.needOS || len(j.Pending) > 0 || j.Applied != want.Config || m.staged != "") {
			msg := "applying config " + schema.Short(want.Config)
			if p.needOS {
				msg += " and OS commit " + schema.Short(p.commit)
			}
			if act, ok := m.publish(m.report(schema.StateWorking, msg)); ok {
				return act
			}
		}
	}
	if !j.is(want.Config, p.commit, p.kargs) {
		m.takeOn()
	}

	// Pull first: a commit that is missing or fails verification is
	// refused before any file changes. Deploying waits for the files.
	if p.needOS && !p.staged && !p.pulled {
		return Action{Kind: Pull, Commit: p.commit, OS: p.render.Config.OS}
	}
	// Files, then sysctls.
	if !p.filesDone && (p.differ > 0 || p.manifest != want.Config) {
		j.Phase = PhaseFiles
		j.addPending(p.classes...)
		j.BootID = m.BootID
		return Action{Kind: WriteFiles, Config: want.Config, Render: p.render}
	}
	if !p.sysctlsDone {
		return Action{Kind: ApplySysctls, Render: p.render}
	}
	if !p.needOS && m.staged != "" && !p.unstaged {
		// A deployment staged for an earlier target would boot next: make
		// the running commit the default again.
		return Action{Kind: Deploy, Commit: booted.Checksum, KernelArgs: p.kargs}
	}
	if p.needOS || slices.Contains(j.Pending, schema.DisruptionReboot) {
		return m.reboot()
	}
	for _, s := range restarts {
		if slices.Contains(j.Pending, s.d) {
			p.restarting = s.d
			return Action{Kind: Restart, Unit: s.unit}
		}
	}
	if j.Applied != want.Config {
		m.noteApplied()
	}
	j.Applied, j.Phase, j.Pending, j.BootID = want.Config, PhaseDone, nil, m.BootID
	return m.publishThenEnd(m.report(schema.StateIdle, idleMessage(want.Config, p.commit, "")))
}

// beginApply takes in what the OS says: the booted and staged commits,
// and whether the node rebooted since the journal was written.
func (m *machine) beginApply() {
	p, j, want := &m.pass, &m.Journal, m.pass.want
	booted := p.os.Booted
	p.began = true
	m.booted, m.staged = booted.Checksum, ""
	if def := p.os.Default; def != nil && def.ID != booted.ID {
		m.staged = def.Checksum
	}
	// A reboot since the journal was written took every pending restart
	// and reboot on: the services started with the files on disk.
	p.rebooted = j.BootID != "" && m.BootID != "" && j.BootID != m.BootID
	if p.rebooted {
		j.Pending = nil
	}
	if j.Refused != nil && (j.Refused.Config != want.Config || j.Refused.OS != want.OS) {
		j.Refused = nil // the desired state changed: try again
	}
}

// takeOn makes the journal name a new change. Pending disruptions of the
// one before carry over.
func (m *machine) takeOn() {
	p, j := &m.pass, &m.Journal
	*j = Journal{
		Applied: j.Applied, OSPulled: j.OSPulled, PrePulled: j.PrePulled, Pending: j.Pending, BootID: j.BootID,
		Config: p.want.Config, OS: p.commit, KernelArgs: slices.Clone(p.kargs), Started: m.now,
		SameCommit: p.commit == p.os.Booted.Checksum,
	}
	if p.needOS && p.commit == j.PrePulled {
		j.Prestaged, j.PrePulled = true, "" // this change takes the pre-staged commit on
	}
}

// plan works out the change from the render: the OS commit, the kernel
// arguments, and what the OS needs.
func (m *machine) plan() error {
	p, j, want := &m.pass, &m.Journal, m.pass.want
	r := p.render
	commit := r.Config.OS.Commit
	if want.OS != "" {
		if commit != "" && commit != want.OS {
			return Refusef("desired-os %s is not the OS commit %s of config %s", schema.Short(want.OS), schema.Short(commit), schema.Short(want.Config))
		}
		commit = want.OS
	}
	if !IsHash(commit) {
		return Refusef("config %s names no valid OS commit (%q) and desired-os is not set", schema.Short(want.Config), commit)
	}
	kargs := r.Config.KernelArgs
	if kargs == nil {
		kargs = []string{}
	}
	for _, arg := range kargs {
		if why, denied := schema.DeniedKernelArg(arg); denied {
			return Refusef("config %s: kernel argument %q is denied: %s", schema.Short(want.Config), arg, why)
		}
	}
	booted, def := p.os.Booted, p.os.Default
	p.planned, p.commit, p.kargs = true, commit, kargs
	p.bootedOK = booted.Checksum == commit && slices.Equal(booted.KernelArgs, kargs)
	p.afterBoot = p.rebooted && j.Phase == PhaseReboot && j.is(want.Config, commit, kargs)
	p.needOS = !p.bootedOK
	// The default deployment is the target already: deployed before a
	// restart of the agent, waiting for the reboot.
	p.staged = m.staged != "" && def != nil && def.Checksum == commit && slices.Equal(def.KernelArgs, kargs) && !def.Staged
	return nil
}

// finishBoot completes a change after the reboot it asked for: the target
// must be running.
func (m *machine) finishBoot() Action {
	p, j, want := &m.pass, &m.Journal, m.pass.want
	if j.Phase == PhaseReboot {
		p.how = j.deployedHow()
		j.Phase, j.Applied, j.BootID = PhaseDone, want.Config, m.BootID
		if !p.bootedOK {
			b := p.os.Booted
			return m.end(Refusef("rebooted into OS commit %s (kernel arguments %q) for config %s, but the node booted %s (kernel arguments %q): it fell back to the previous deployment",
				schema.Short(p.commit), p.kargs, schema.Short(want.Config), schema.Short(b.Checksum), b.KernelArgs))
		}
		m.noteApplied() // with the journal write that says so: exactly once
	}
	if !p.cleaned {
		return Action{Kind: Cleanup}
	}
	return m.publishThenEnd(m.report(schema.StateIdle, idleMessage(want.Config, p.commit, p.how)))
}

// noteApplied notes the desired state reached.
func (m *machine) noteApplied() {
	n := Note{Kind: NoteApplied, Config: m.pass.want.Config, Commit: m.pass.commit}
	if s := m.Journal.Started; !s.IsZero() && m.now.After(s) {
		n.Took = m.now.Sub(s)
	}
	m.note(n)
}

// reboot deploys the OS commit when the target changed it, records the
// reboot in the journal, reports Rebooting and requests the reboot. The
// files are written already, so ostree merges them into the new
// deployment's /etc.
func (m *machine) reboot() Action {
	p, j, want := &m.pass, &m.Journal, m.pass.want
	msg := "rebooting to take on config " + schema.Short(want.Config)
	if p.needOS {
		if !p.staged && !p.deployed {
			return Action{Kind: Deploy, Commit: p.commit, KernelArgs: p.kargs}
		}
		m.staged, j.Deployed = p.commit, true
		msg = "rebooting into OS commit " + schema.Short(p.commit) + " for config " + schema.Short(want.Config)
		if how := j.deployedHow(); how != "" {
			msg += " (" + how + ")"
		}
	}
	if j.Phase != PhaseReboot || j.BootID != m.BootID {
		j.Phase, j.BootID = PhaseReboot, m.BootID
		if p.needOS {
			m.note(Note{Kind: NoteStaged, Commit: p.commit})
		}
	}
	if act, ok := m.publish(m.report(schema.StateRebooting, msg)); ok {
		return act
	}
	if !p.rebooting {
		return Action{Kind: Reboot}
	}
	m.rebootAt = m.now
	return m.end(nil)
}

// publishThenEnd publishes r, then ends the apply.
func (m *machine) publishThenEnd(r Report) Action {
	if act, ok := m.publish(r); ok {
		return act
	}
	return m.end(nil)
}

// applied takes an apply action's result in.
func (m *machine) applied(r Result) Action {
	p, j := &m.pass, &m.Journal
	switch r.Of {
	case ReadOS:
		if r.Err != nil {
			return m.end(fmt.Errorf("read OSTree status: %w", r.Err))
		}
		p.os = &r.OS
	case FetchRender:
		if r.Err != nil {
			return m.end(r.Err)
		}
		p.render = r.Render
	case Inspect:
		if r.Err != nil {
			return m.end(r.Err)
		}
		p.inspected, p.classes, p.differ, p.manifest = true, r.Classes, r.Differ, r.ManifestHash
	case Publish:
		if r.Err != nil {
			return m.end(r.Err)
		}
	case Pull:
		if r.Err != nil {
			return m.end(r.Err)
		}
		p.pulled = true
		if r.Done {
			j.Pulled = true
			m.note(Note{Kind: NotePulled, Commit: p.commit, Took: r.Took})
		}
	case WriteFiles:
		if r.Err != nil {
			if r.Count > 0 {
				j.addPending(r.Classes...) // the restored files need taking on too
				m.note(Note{Kind: NoteFilesRestored, Count: r.Count})
			}
			return m.end(r.Err)
		}
		p.filesDone = true
		j.addPending(r.Classes...)
		m.note(Note{Kind: NoteFilesWritten, Config: p.want.Config, Count: r.Count})
	case ApplySysctls:
		m.note(Note{Kind: NoteSysctls, Count: r.Count, Err: r.Err})
		if r.Err != nil {
			return m.end(r.Err)
		}
		p.sysctlsDone = true
	case Restart:
		if r.Err != nil {
			return m.end(fmt.Errorf("config %s: %w", schema.Short(p.want.Config), r.Err))
		}
		j.dropPending(p.restarting)
		m.note(Note{Kind: NoteRestarted, Unit: unitOf(p.restarting)})
	case Deploy:
		return m.deployed(r)
	case Cleanup:
		if r.Err != nil {
			m.note(Note{Kind: NoteWarning, Msg: "ostree cleanup after boot", Err: r.Err})
		}
		p.cleaned = true
	case Reboot:
		if r.Err != nil {
			return m.end(fmt.Errorf("request reboot: %w", r.Err))
		}
		p.rebooting = true
		m.note(Note{Kind: NoteRebooting, Commit: p.commit})
	}
	return m.apply()
}

// deployed takes a Deploy's result in: of the target, or of the booted
// commit to undo an earlier target's deployment.
func (m *machine) deployed(r Result) Action {
	p, j := &m.pass, &m.Journal
	unstage := !p.needOS
	if r.Err != nil {
		if unstage {
			return m.end(fmt.Errorf("unstage %s: %w", schema.Short(m.staged), r.Err))
		}
		return m.end(r.Err)
	}
	if unstage {
		p.unstaged, m.staged = true, ""
		m.note(Note{Kind: NoteUnstaged, Commit: p.os.Booted.Checksum})
		return m.apply()
	}
	p.deployed, j.Deployed = true, true
	m.note(Note{Kind: NoteDeployed, Commit: p.commit, KernelArgs: p.kargs, Took: r.Took,
		Pulled: j.Pulled, FastPath: !j.Pulled && !j.Prestaged, Msg: j.deployedHow()})
	return m.apply()
}

func unitOf(d schema.Disruption) string {
	for _, s := range restarts {
		if s.d == d {
			return s.unit
		}
	}
	return ""
}

func idleMessage(config, commit, how string) string {
	msg := "up to date: config " + schema.Short(config) + " on OS commit " + schema.Short(commit)
	if how != "" {
		msg += " (" + how + ")"
	}
	return msg
}
