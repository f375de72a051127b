package planner

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"herd.dev/herd/schema"
)

// The model test's repairs: random remediation policies, faults on nodes
// (cured by their rung, by a reboot, or only by a replacement; some rungs
// failing), agents that stop reporting, and a machine controller that
// replaces the nodes marked for replacement. After every step it checks,
// from the model's own record and not the planner's helpers:
//
//   - no rung starts, nor gives way, nor quarantines, while more nodes
//     are sick than maxUnhealthy, in the pool or in a zone;
//   - at most maxPerHour rungs start within any hour;
//   - a rung starts only as the first of a repair or the next after the
//     one in progress: a crash never starts one again, nor skips one;
//   - no rung starts on a stale condition (its agent silent for three
//     heartbeats) of a node that is Ready;
//   - a node sick again after quarantine.after repairs within the window
//     is quarantined, never repaired again;
//   - a dry run leaves the nodes as they are;
//   - the agents carry each rung out at most once;
//   - once the trouble stops, every repair ends and no node is left
//     cordoned by one (the budget check of model_test.go covers repairs
//     that take nodes down).

// repairPolicy gives a new target a random remediation, or none.
func (m *model) repairPolicy(s *schema.NodePool) {
	r := m.rrnd
	if r.IntN(4) == 0 {
		return
	}
	rem := defaultRemediation()
	rem.DryRun = r.IntN(6) == 0
	rem.MaxUnhealthy = schema.IntOrPercent{Int: 1 + r.IntN(3)}
	if r.IntN(2) == 0 {
		rem.MaxUnhealthy = schema.IntOrPercent{Percent: 20 + r.IntN(50), IsPct: true}
	}
	rem.MaxPerHour = 1 + r.IntN(6)
	rem.Quarantine = schema.RemediationQuarantine{After: 1 + r.IntN(3), Window: []string{"1h", "3h", "6h"}[r.IntN(3)]}
	rem.Replace.DeleteNode = r.IntN(2) == 0
	for _, p := range schema.Problems { // in order: the draws must replay
		l, ok := rem.Problems[p]
		if !ok {
			continue
		}
		l.Duration = []string{"5m", "10m", "15m"}[r.IntN(3)]
		l.Rungs = slices.Clone(l.Rungs)
		for i := range l.Rungs {
			l.Rungs[i].Timeout = []string{"5m", "10m", "20m"}[r.IntN(3)]
		}
		rem.Problems[p] = l
	}
	rem.Problems[schema.Problem(schema.ConditionMemoryPressure)] = schema.Ladder{Duration: "10m", Rungs: []schema.Rung{{Action: schema.RepairReboot, Timeout: "20m"}, {Action: schema.RepairReplace}}}
	s.Remediation = rem
}

// repairEvents are the faults, cures and silent agents of one step, and
// the machine controller's replacements.
func (m *model) repairEvents() {
	r, rm := m.rrnd, m.repairs()
	kinds := []string{"kubelet", "pleg", "runtime", "sandboxes", "notready", "memory"}
	for _, n := range m.nodes {
		switch f := rm.faults[n.Name]; {
		case f == nil && r.IntN(250) == 0:
			k := kinds[r.IntN(len(kinds))]
			f := &fault{kind: k, since: m.now, cure: faultConditions[k].cure}
			switch r.IntN(10) {
			case 0, 1:
				f.cure = schema.RepairReboot
			case 2:
				f.cure = schema.RepairReplace
			case 3:
				f.fail = f.cure
			}
			rm.faults[n.Name] = f
		case f != nil && r.IntN(80) == 0:
			delete(rm.faults, n.Name) // it goes away by itself
		}
		if r.IntN(400) == 0 {
			rm.agentDown[n.Name] = !rm.agentDown[n.Name]
		}
	}
}

// replaceMarked plays the machine controller: now and then a node marked
// for replacement is replaced by a new machine, which registers under the
// same name and joins the pool afresh.
func (m *model) replaceMarked() {
	rm := m.repairs()
	for _, n := range m.nodes {
		if !rm.replaced[n.Name] || m.rrnd.IntN(3) != 0 {
			continue
		}
		delete(rm.replaced, n.Name)
		delete(rm.faults, n.Name)
		delete(rm.rebooting, n.Name)
		for _, seen := range []map[string]int{m.rebooted, m.drained} { // a new machine
			maps.DeleteFunc(seen, func(k string, _ int) bool { return strings.HasPrefix(k, n.Name+"/") })
		}
		delete(m.startedAt, n.Name)
		for i := range m.starts {
			if m.starts[i].node == n.Name {
				m.starts[i].node += " (replaced)" // the pool's, no longer the node's
			}
		}
		*n = mnode{Node: Node{Name: n.Name, Labels: n.Labels, Ready: true, State: schema.StateIdle, Converging: true}, failOn: map[string]bool{}}
	}
}

// calmRepairs ends the repairs' trouble: faults cured, agents reporting.
func (m *model) calmRepairs() {
	rm := m.repairs()
	clear(rm.faults)
	clear(rm.agentDown)
}

// repairSnapshot is what the checks compare a step against.
type repairSnapshot struct {
	state    map[string]*schema.RemediationState // each node's repair before the step
	cordoned map[string]bool
	sick     []string            // sick by the model's own reckoning
	zoneSick map[string][]string // by zone
	zoneSize map[string]int
	members  int
}

// snapshotRepairs records the nodes before the controller's step.
func (m *model) snapshotRepairs() repairSnapshot {
	s := repairSnapshot{state: map[string]*schema.RemediationState{}, cordoned: map[string]bool{}, zoneSick: map[string][]string{}, zoneSize: map[string]int{}}
	for _, n := range m.nodes {
		s.state[n.Name] = n.Remediation
		s.cordoned[n.Name] = n.Unschedulable
		if n.Quarantined != "" {
			continue
		}
		s.members++
		s.zoneSize[n.Zone()]++
		p := m.pool()
		goal := Target{p.Hash, p.Spec.OS.Commit}
		if m.state.RollingBack {
			goal = m.state.LastGood // as the HerdPool status says
		}
		soaking := n.DesiredConfig == goal.Hash && n.DesiredOS == goal.OSCommit && n.FailedTarget != goal.Hash &&
			(n.AtTarget.IsZero() || m.now.Before(n.AtTarget.Add(p.Spec.Rollout.SoakDuration())))
		herdsRollout := n.Remediation == nil && (soaking || n.DesiredConfig != "" && (n.DesiredConfig != n.CurrentConfig || n.DesiredOS != n.OSBooted) ||
			n.State == schema.StateWorking || n.State == schema.StateRebooting || n.State == schema.StateDegraded || n.Cordoned || !n.DrainStarted.IsZero() || n.Converging)
		if herdsRollout || !m.shows(n) {
			continue
		}
		s.sick = append(s.sick, n.Name)
		s.zoneSick[n.Zone()] = append(s.zoneSick[n.Zone()], n.Name)
	}
	return s
}

// shows reports whether the node shows a problem its pool declares: a
// fault its agent published lately, or NotReady.
func (m *model) shows(n *mnode) bool {
	rm := m.repairs()
	rem := m.pool().Spec.Remediation
	if rem == nil {
		return false
	}
	if _, ok := rem.Problems[schema.ProblemNotReady]; ok && !n.Ready {
		return true
	}
	fresh := m.now.Sub(rm.heartbeat[n.Name]) <= schema.StaleHeartbeats*schema.DefaultHeartbeatPeriod
	for _, t := range schema.NodeConditionTypes {
		if _, ok := rem.Problems[schema.Problem(t)]; ok && fresh && rm.status[n.Name+"/"+string(t)] == ConditionTrue {
			return true
		}
	}
	return false
}

// checkRepairs checks a step's repair actions against the invariants.
func (m *model) checkRepairs(pp PoolPlan, before repairSnapshot, crashed bool) {
	rm := m.repairs()
	rem := m.pool().Spec.Remediation
	for k, times := range rm.done {
		if times > 1 {
			m.fatalf("rung %s carried out %d times", k, times)
		}
	}
	if rem == nil {
		return
	}
	over := func() string {
		if limit := rem.MaxUnhealthy.Resolve(before.members); len(before.sick) > limit {
			return fmt.Sprintf("%d of %d nodes sick (%v), maxUnhealthy %d", len(before.sick), before.members, before.sick, limit)
		}
		for z, sick := range before.zoneSick {
			if limit := rem.MaxUnhealthy.Resolve(before.zoneSize[z]); z != "" && len(sick) > limit {
				return fmt.Sprintf("%d of %d nodes of zone %s sick (%v), maxUnhealthy %d", len(sick), before.zoneSize[z], z, sick, limit)
			}
		}
		return ""
	}()
	for _, a := range pp.Actions {
		starts := a.Kind == ActRemediate && a.Repair != nil && m.newRung(before, a)
		moves := starts || a.Kind == ActReplace || a.Kind == ActQuarantine && a.Why != nil && a.Why.Code == CodeFlapping ||
			a.Kind == ActRemediated && a.Repair.Quarantine
		if moves && over != "" {
			m.fatalf("%s %s while %s", a.Kind, a.Node, over)
		}
		if !starts || !m.kept(a, crashed) {
			continue
		}
		st := a.Repair.State
		m.recordStart(a)
		m.checkSequence(before, a)
		if n := m.node(a.Node); st.Problem != schema.ProblemNotReady && n.Ready && m.now.Sub(rm.heartbeat[a.Node]) > schema.StaleHeartbeats*schema.DefaultHeartbeatPeriod {
			m.fatalf("%s: rung %s started on the stale conditions of a Ready node", a.Node, st.Action)
		}
	}
	m.checkRate(rem)
	if rem.DryRun {
		for _, n := range m.nodes {
			if before.state[n.Name] == nil && n.Remediation != nil || !before.cordoned[n.Name] && n.Unschedulable && n.Remediation != nil {
				m.fatalf("a dry run changed %s: repair %+v, cordoned %v", n.Name, n.Remediation, n.Unschedulable)
			}
		}
	}
}

// newRung reports whether an ActRemediate starts a rung the node (or the
// dry run) is not at already.
func (m *model) newRung(before repairSnapshot, a Action) bool {
	if a.Repair.DryRun {
		return !slices.ContainsFunc(m.starts, func(s repairStart) bool { return s.node == a.Node && s.id == a.Repair.State.ID && s.dry })
	}
	cur := before.state[a.Node]
	return cur == nil || cur.ID != a.Repair.State.ID
}

// repairStart is a rung the model saw start.
type repairStart struct {
	node, id string
	at       time.Time
	rung     int
	dry      bool
	problem  schema.Problem
}

// kept reports whether a rung's start took: a real one is on its node; a
// dry run's is kept unless the controller crashed before keeping it.
func (m *model) kept(a Action, crashed bool) bool {
	if a.Repair.DryRun {
		return !crashed
	}
	n := m.node(a.Node)
	return n != nil && n.Remediation != nil && n.Remediation.ID == a.Repair.State.ID
}

func (m *model) recordStart(a Action) {
	st := a.Repair.State
	m.starts = append(m.starts, repairStart{node: a.Node, id: st.ID, at: m.now, rung: st.Rung, dry: a.Repair.DryRun, problem: st.Problem})
}

// checkSequence: a real rung is the first of a repair, or the one after
// the rung in progress; a first rung never starts on a node sick again
// after quarantine.after repairs within the window.
func (m *model) checkSequence(before repairSnapshot, a Action) {
	st := a.Repair.State
	rem := m.pool().Spec.Remediation
	if a.Repair.DryRun {
		return
	}
	cur := before.state[a.Node]
	switch {
	case cur == nil && st.Rung != 0:
		m.fatalf("%s: rung %d (%s) started with no repair in progress", a.Node, st.Rung+1, st.Action)
	case cur != nil && (st.Rung != cur.Rung+1 || st.Problem != cur.Problem):
		m.fatalf("%s: rung %d of %s started while at rung %d of %s", a.Node, st.Rung+1, st.Problem, cur.Rung+1, cur.Problem)
	}
	if st.Rung != 0 {
		return
	}
	window := rem.Quarantine.WindowDuration()
	k := 0
	for _, s := range m.starts[:len(m.starts)-1] {
		if s.node == a.Node && !s.dry && s.rung == 0 && m.now.Sub(s.at) <= window {
			k++
		}
	}
	if k >= rem.Quarantine.After {
		m.fatalf("%s repaired again after %d repairs within %s (quarantine.after %d)", a.Node, k, window, rem.Quarantine.After)
	}
}

// checkRate: a rung (of a kind: dry or real) starts now only if fewer than
// maxPerHour started within the hour before.
func (m *model) checkRate(rem *schema.Remediation) {
	for _, dry := range []bool{false, true} {
		now, k := false, 0
		for _, s := range m.starts {
			if s.dry == dry && m.now.Sub(s.at) < time.Hour {
				k++
				now = now || s.at.Equal(m.now)
			}
		}
		if now && k > rem.MaxPerHour {
			m.fatalf("%d rungs started within an hour (dry run %v), maxPerHour %d", k, dry, rem.MaxPerHour)
		}
	}
}

// repairsOver reports whether every repair ended and no node is left
// cordoned by one: once the trouble stopped, they all must.
func (m *model) repairsOver() (string, bool) {
	for _, n := range m.nodes {
		if n.Quarantined != "" {
			continue
		}
		if st := n.Remediation; st != nil && st.Marked.IsZero() {
			return fmt.Sprintf("%s is still at rung %d (%s) of %s", n.Name, st.Rung+1, st.Action, st.Problem), false
		}
	}
	return "", true
}

// describeRepairState adds the repair state to a model's dump.
func (m *model) describeRepairState() string {
	var b strings.Builder
	rm := m.repairs()
	for _, n := range m.nodes {
		if f := rm.faults[n.Name]; f != nil || n.Remediation != nil || rm.agentDown[n.Name] {
			fmt.Fprintf(&b, "  %s: fault %+v, agent down %v, repair %+v, history %+v\n", n.Name, f, rm.agentDown[n.Name], n.Remediation, n.Remediations)
		}
	}
	if rem := m.pool().Spec.Remediation; rem != nil {
		fmt.Fprintf(&b, "  remediation: dryRun %v, maxUnhealthy %s, maxPerHour %d, quarantine %+v\n", rem.DryRun, rem.MaxUnhealthy, rem.MaxPerHour, rem.Quarantine)
	}
	return b.String()
}
