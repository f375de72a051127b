package planner

import "slices"

// begin takes the pool's rollout state as kept: a new target starts a new
// rollout, which ends the last one's halt, rollback and forgiveness and
// remembers its target among the pool's earlier ones.
func (pl *poolPlanner) begin() {
	pl.prev = pl.in.Rollouts[pl.p.Name]
	prev := pl.prev
	pl.st = prev
	pl.st.Forgiven = slices.Clone(prev.Forgiven)
	if prev.Target == pl.target {
		return
	}
	pl.st = Rollout{
		Target:           pl.target,
		Revision:         pl.p.Revision,
		Started:          pl.in.Now,
		Resumed:          prev.Resumed,
		LastGood:         prev.LastGood,
		LastGoodRevision: prev.LastGoodRevision,
		Previous:         prev.Previous,
	}
	if prev.Target.Hash != "" {
		pl.st.Previous = pushPrevious(prev.Previous, Previous{Target: prev.Target, Revision: prev.Revision})
		pl.event(Event{Kind: EventRolloutStarted})
	}
}

// pushPrevious puts p first in the list of earlier targets, once, and
// keeps at most MaxPrevious.
func pushPrevious(list []Previous, p Previous) []Previous {
	out := append([]Previous{p}, slices.DeleteFunc(slices.Clone(list), func(q Previous) bool { return q.Hash == p.Hash })...)
	return out[:min(len(out), MaxPrevious)]
}

// resume honours a new resume request, from Git (rollout.resume) or the
// cluster (herd resume): it lifts the halt or rollback in force, and the
// caller forgives the failures so far. The first request a pool ever shows
// (a resume already in Git when the pool appears) is only recorded, unless
// the pool is halted. It reports whether the rollout resumes.
func (pl *poolPlanner) resume() bool {
	asked := Resume{Spec: pl.p.Spec.Rollout.Resume, Annotation: pl.in.Resume[pl.p.Name]}
	st := &pl.st
	if asked == st.Resumed {
		return false
	}
	first := st.Resumed == Resume{}
	st.Resumed = asked
	if asked == (Resume{}) || first && st.Halt == nil && !st.RollingBack {
		return false
	}
	st.Halt, st.RollingBack = nil, false
	return true
}
