package planner

import "slices"

// Next is the rollout state after a plan has been carried out: what the
// controller keeps (in the HerdPool status) for the next plan. resume lifts
// a halt or a rollback and forgives the failures so far.
func Next(prev Rollout, pp PoolPlan, resume bool) Rollout {
	st := prev
	if st.Hash != pp.ConfigHash {
		st = Rollout{Hash: pp.ConfigHash, LastGood: prev.LastGood}
	}
	switch {
	case resume:
		// Lift the halt or rollback, if any, and forgive the failures so
		// far: those nodes are tried again.
		st.Halted, st.RollingBack = "", false
		for _, n := range pp.Failed {
			if k := failureKey(n, pp.failures[n]); !slices.Contains(st.Forgiven, k) {
				st.Forgiven = append(st.Forgiven, k)
			}
		}
		slices.Sort(st.Forgiven)
	case pp.StartRollback:
		st.RollingBack = true
	case pp.Halt != "":
		st.Halted = pp.Halt
		st.RollingBack = false // a finished rollback halts at the last good target
	}
	if pp.Complete {
		st.LastGood = Target{Hash: pp.ConfigHash, OSCommit: pp.OSCommit}
	}
	return st
}
