package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/source"
	"herd.dev/herd/sync/writeback"
)

// StatusSink receives the fleet's state after every reconcile: the Git
// status branch (*writeback.Writer).
type StatusSink interface {
	SetSource(writeback.SourceStatus)
	SetPool(writeback.PoolStatus) error
	RemovePool(name string)
}

// report writes what the reconcile found and did: HerdPool status with
// kstatus conditions, events, metrics, and the Git status branch.
func (r *Reconciler) report(ctx context.Context, st *run) error {
	r.Source.MarkApplied(st.rev.Commit)
	for i := range st.plan.Pools {
		pp := &st.plan.Pools[i]
		np := st.rollouts[pp.Name]
		if np == nil {
			continue
		}
		out := st.outcomes[pp.Name]
		before := st.original[pp.Name]
		r.advanceRollout(st, pp, np)
		r.poolStatus(st, pp, np, out)
		r.events(np, before, pp, out)
		r.recordMetrics(st, pp, np, out)
		if err := r.patchStatus(ctx, np, before); err != nil {
			return err
		}
		if r.Status != nil {
			if err := r.Status.SetPool(r.gitPoolStatus(st, pp, np, out)); err != nil {
				return err
			}
		}
	}
	if r.Status != nil {
		r.Status.SetSource(gitSourceStatus(r.Source.Status(), st))
	}
	revisionAge.Set(st.now.Sub(st.rev.Time).Seconds())
	if s := r.Source.Status(); !s.LastSuccessTime.IsZero() {
		sourceContactAge.Set(st.now.Sub(s.LastSuccessTime).Seconds())
	}
	return r.collect(ctx, st)
}

// advanceRollout moves the pool's rollout state on after the plan: a halt
// or rollback decided now, a resume asked for, a target every node reached.
func (r *Reconciler) advanceRollout(st *run, pp *planner.PoolPlan, np *herdpool.HerdPool) {
	ro := &np.Status.Rollout
	prev := planner.Rollout{Hash: ro.Hash, Halted: ro.Halted, RollingBack: ro.RollingBack, Forgiven: ro.Forgiven}
	if lg := np.Status.LastGood; lg != nil {
		prev.LastGood = planner.Target{Hash: lg.Hash, OSCommit: lg.OSCommit}
	}
	// A resume is asked for by a new rollout.resume in Git, or by
	// `herd resume`, which sets the herd.dev/resume annotation.
	asked := ""
	if t := np.Spec.Rollout.Resume; t != "" {
		asked = "spec:" + t
	}
	if t := np.Annotations[herdpool.AnnotationResume]; t != "" {
		asked += "|annotation:" + t
	}
	resume := false
	if asked != ro.ResumedBy {
		// A new request lifts the halt in force and retries the failed
		// nodes. The first one seen (a resume already in Git when the
		// pool appears) is only recorded.
		resume = asked != "" && ro.ResumedBy != ""
		if prev.Halted != "" || prev.RollingBack {
			resume = asked != ""
		}
		ro.ResumedBy = asked
	}
	next := planner.Next(prev, *pp, resume)
	if next.Halted != prev.Halted || next.RollingBack != prev.RollingBack || len(next.Forgiven) != len(prev.Forgiven) {
		st.requeue = true // the next plan differs: make it now
	}
	ro.Halted, ro.RollingBack, ro.Forgiven = next.Halted, next.RollingBack, next.Forgiven
	if next.LastGood.Hash != "" {
		np.Status.LastGood = &herdpool.PreviousTarget{Hash: next.LastGood.Hash, OSCommit: next.LastGood.OSCommit, Revision: st.rev.Commit}
		if prev.LastGood == next.LastGood && np.Status.LastGood != nil && st.original[pp.Name].Status.LastGood != nil {
			np.Status.LastGood.Revision = st.original[pp.Name].Status.LastGood.Revision
		}
	}
	np.Status.Failed, np.Status.Quarantined = pp.Failed, pp.Quarantined
}

// poolStatus fills the HerdPool's status from the plan and the outcome.
func (r *Reconciler) poolStatus(st *run, pp *planner.PoolPlan, np *herdpool.HerdPool, out *outcome) {
	s := &np.Status
	s.ObservedGeneration = np.Generation
	s.ObservedRevision = st.rev.Commit
	s.ConfigHash = pp.ConfigHash
	s.OSCommit = pp.OSCommit
	s.Nodes = pp.Nodes
	s.UpToDate = len(pp.UpToDate)
	s.Unavailable = len(pp.Unavailable)
	s.Updating, s.Waiting, s.Degraded = 0, 0, 0
	for _, c := range pp.Changes {
		switch {
		case c.Batch == 1:
			s.Updating++
		case c.Batch == 0:
			s.Waiting++
		}
		if n := st.byName[c.Node]; n != nil && schema.NodeState(n.Annotations[schema.AnnotationState]) == schema.StateDegraded {
			s.Degraded++
		}
	}
	if len(out.started) > 0 {
		s.Rollout.Batches++
	}
	s.Progress = fmt.Sprintf("%d/%d", s.UpToDate, s.Nodes)
	current, total := batchPosition(pp, s.Rollout.Batches, len(out.started) > 0)
	s.Batch = ""
	if total > 0 {
		s.Batch = fmt.Sprintf("%d/%d", current, total)
	}

	var blocked []string
	s.DrainBlocked = drainBlocked(out)
	for _, d := range s.DrainBlocked {
		blocked = append(blocked, fmt.Sprintf("%s: %s", d.Node, blockedPods(out.drainBlocked[d.Node])))
	}
	quarantined := ""
	if len(pp.Quarantined) > 0 {
		quarantined = fmt.Sprintf("; quarantined: %s", strings.Join(pp.Quarantined, ", "))
	}
	switch {
	case s.Rollout.RollingBack:
		s.Phase = herdpool.PhaseRollingBack
		s.Message = fmt.Sprintf("rolling back to %s: %s", short(lastGood(np)), pp.Halt+failedText(pp))
		conditions.MarkReconciling(np, "RollingBack", "%s", s.Message)
		conditions.MarkFalse(np, meta.ReadyCondition, "RollingBack", "%s", s.Message)
		conditions.Delete(np, meta.StalledCondition)
	case s.Rollout.Halted != "":
		s.Phase = herdpool.PhaseHalted
		s.Message = "halted: " + s.Rollout.Halted + "; lift it with `herd resume " + np.Name + "` or a new rollout.resume" + quarantined
		conditions.MarkStalled(np, "Halted", "%s", s.Message)
		conditions.MarkFalse(np, meta.ReadyCondition, "Halted", "%s", s.Message)
		conditions.Delete(np, meta.ReconcilingCondition)
	case len(pp.Changes) == 0 && len(pp.Soaking) == 0:
		s.Phase = herdpool.PhaseUpToDate
		s.Batch = ""
		s.Message = fmt.Sprintf("%d/%d nodes at %s", s.UpToDate, s.Nodes, short(pp.OSCommit)) + quarantined
		conditions.MarkTrue(np, meta.ReadyCondition, meta.SucceededReason, "%s", s.Message)
		conditions.Delete(np, meta.ReconcilingCondition)
		conditions.Delete(np, meta.StalledCondition)
	case pp.Paused:
		s.Phase = herdpool.PhasePaused
		s.Message = fmt.Sprintf("paused with %d/%d nodes at %s", s.UpToDate, s.Nodes, short(pp.OSCommit))
		conditions.MarkFalse(np, meta.ReadyCondition, "Paused", "%s", s.Message)
		conditions.Delete(np, meta.ReconcilingCondition)
		conditions.Delete(np, meta.StalledCondition)
	case len(blocked) > 0:
		s.Phase = herdpool.PhaseProgressing
		s.Message = "DrainBlocked: " + strings.Join(blocked, "; ") + fmt.Sprintf("; %d/%d nodes at %s", s.UpToDate, s.Nodes, short(pp.OSCommit))
		conditions.MarkStalled(np, "DrainBlocked", "%s", s.Message)
		conditions.MarkFalse(np, meta.ReadyCondition, "DrainBlocked", "%s", s.Message)
	case pp.Closed != "" && len(pp.Batches) == 0 || pp.Closed != "" && allInFlight(pp):
		s.Phase = herdpool.PhaseWaiting
		s.Message = fmt.Sprintf("%d/%d nodes at %s; %s", s.UpToDate, s.Nodes, short(pp.OSCommit), pp.Closed)
		conditions.MarkReconciling(np, "OutsideWindow", "%s", s.Message)
		conditions.MarkFalse(np, meta.ReadyCondition, "OutsideWindow", "%s", s.Message)
		conditions.Delete(np, meta.StalledCondition)
	case pp.Blocked != "":
		s.Phase = herdpool.PhaseBlocked
		s.Message = pp.Blocked
		conditions.MarkStalled(np, "Blocked", "%s", s.Message)
		conditions.MarkFalse(np, meta.ReadyCondition, "Blocked", "%s", s.Message)
	default:
		s.Phase = herdpool.PhaseProgressing
		s.Message = fmt.Sprintf("%d/%d nodes at %s", s.UpToDate, s.Nodes, short(pp.OSCommit))
		if s.Batch != "" {
			s.Message += " (batch " + s.Batch + ")"
		}
		if s.Degraded > 0 {
			s.Message += fmt.Sprintf(", %d degraded", s.Degraded)
		}
		s.Message += failedText(pp) + quarantined
		conditions.MarkReconciling(np, meta.ProgressingReason, "%s", s.Message)
		conditions.MarkFalse(np, meta.ReadyCondition, meta.ProgressingReason, "%s", s.Message)
		conditions.Delete(np, meta.StalledCondition)
	}
}

func failedText(pp *planner.PoolPlan) string {
	if len(pp.Failed) == 0 {
		return ""
	}
	return "; failed: " + strings.Join(pp.Failed, ", ")
}

func lastGood(np *herdpool.HerdPool) string {
	if np.Status.LastGood == nil {
		return ""
	}
	return np.Status.LastGood.Hash
}

// allInFlight reports whether batch 1 holds only nodes already dispatched.
func allInFlight(pp *planner.PoolPlan) bool {
	for _, c := range pp.Changes {
		if c.Batch == 1 && !c.InFlight {
			return false
		}
	}
	return true
}

// batchPosition says which batch runs and how many there are in all: the
// batches started so far, plus those the plan still holds.
func batchPosition(pp *planner.PoolPlan, started int, startedNow bool) (current, total int) {
	remaining := len(pp.Batches)
	if remaining > 0 && (startedNow || started > 0) {
		remaining-- // batch 1 of the plan is the one running
	}
	return started, started + remaining
}

func (r *Reconciler) patchStatus(ctx context.Context, np, before *herdpool.HerdPool) error {
	a, _ := json.Marshal(before.Status)
	b, _ := json.Marshal(np.Status)
	if bytes.Equal(a, b) {
		return nil
	}
	if err := r.client.Status().Patch(ctx, np, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("update HerdPool %s status: %w", np.Name, err)
	}
	return nil
}

// events records a pool's notable moments on its HerdPool.
func (r *Reconciler) events(np, before *herdpool.HerdPool, pp *planner.PoolPlan, out *outcome) {
	if r.Events == nil {
		return
	}
	if len(out.started) > 0 {
		r.Events.Eventf(np, nil, corev1.EventTypeNormal, "BatchStarted", "Rollout",
			"batch %s to %s: %s", np.Status.Batch, short(pp.OSCommit), strings.Join(out.started, ", "))
	}
	for _, d := range np.Status.DrainBlocked {
		if slices.ContainsFunc(before.Status.DrainBlocked, func(b herdpool.DrainBlockedNode) bool { return reflect.DeepEqual(b, d) }) {
			continue // reported already
		}
		res := out.drainBlocked[d.Node]
		why := "past its timeout"
		if res.State == cluster.Refused {
			why = "by its pool's drain policy"
		}
		r.Events.Eventf(np, nil, corev1.EventTypeWarning, "DrainBlocked", "Drain",
			"drain of %s blocked %s: %s", d.Node, why, blockedPods(res))
	}
	if before.Status.Degraded < np.Status.Degraded {
		r.Events.Eventf(np, nil, corev1.EventTypeWarning, "NodeDegraded", "Rollout",
			"%d nodes degraded: %s", np.Status.Degraded, np.Status.Message)
	}
	if before.Status.Phase != np.Status.Phase {
		switch np.Status.Phase {
		case herdpool.PhaseHalted:
			r.Events.Eventf(np, nil, corev1.EventTypeWarning, "RolloutHalted", "Rollout", "%s", np.Status.Message)
		case herdpool.PhaseRollingBack:
			r.Events.Eventf(np, nil, corev1.EventTypeWarning, "RollbackStarted", "Rollout", "%s", np.Status.Message)
		}
	}
	if before.Status.Phase != np.Status.Phase && np.Status.Phase == herdpool.PhaseUpToDate && before.Status.Phase != "" {
		r.Events.Eventf(np, nil, corev1.EventTypeNormal, "RolloutComplete", "Rollout",
			"all %d nodes at config %s, OS %s", pp.Nodes, short(pp.ConfigHash), short(pp.OSCommit))
	}
}

// gitPoolStatus is the pool as the status branch records it.
func (r *Reconciler) gitPoolStatus(st *run, pp *planner.PoolPlan, np *herdpool.HerdPool, out *outcome) writeback.PoolStatus {
	s := np.Status
	ps := writeback.PoolStatus{
		Name:         pp.Name,
		SpecRevision: st.rev.Commit,
		ConfigHash:   pp.ConfigHash,
		OSTarget:     pp.OSCommit,
		Phase:        s.Phase,
		Message:      s.Message,
		Counts: writeback.Counts{
			Total:    pp.Nodes,
			Updated:  s.UpToDate,
			Updating: s.Updating,
			Pending:  pp.Nodes - s.UpToDate - s.Updating,
			Failed:   s.Degraded,
		},
	}
	if current, total := batchPosition(pp, s.Rollout.Batches, len(out.started) > 0); total > 0 {
		ps.Batch = &writeback.Batch{Current: current, Total: total}
	}
	for _, name := range pp.UpToDate {
		ps.Nodes = append(ps.Nodes, writeback.NodeStatus{Name: name, State: "UpToDate", Revision: st.rev.Commit})
	}
	for _, c := range pp.Changes {
		ps.Nodes = append(ps.Nodes, nodeStatus(st, c, out))
	}
	for _, name := range pp.Soaking {
		ps.Nodes = append(ps.Nodes, writeback.NodeStatus{Name: name, State: "Soaking", Revision: st.rev.Commit})
	}
	// Quarantined nodes are in every status commit until someone acts.
	for _, name := range pp.Quarantined {
		ps.Nodes = append(ps.Nodes, writeback.NodeStatus{Name: name, State: "Quarantined", Message: st.byName[name].Annotations[schema.AnnotationQuarantined]})
	}
	return ps
}

// nodeStatus names where one out-of-date node stands.
func nodeStatus(st *run, c planner.Change, out *outcome) writeback.NodeStatus {
	n := st.byName[c.Node]
	a := n.Annotations
	ns := writeback.NodeStatus{Name: c.Node, Message: c.Reason}
	if c.Disruption != schema.DisruptionNone || c.Batch > 0 {
		ns.Message = joinMessage(c.Disruption.String(), ns.Message)
	}
	agent := schema.NodeState(a[schema.AnnotationState])
	switch {
	case strings.HasPrefix(c.Reason, "failed"):
		ns.State, ns.Message = "Failed", joinMessage(a[schema.AnnotationMessage], "")
	case c.Batch == 0:
		ns.State = "Waiting"
	case c.Batch > 1:
		ns.State = "Pending"
	case isKey(out.drainBlocked, c.Node):
		ns.State, ns.Message = "DrainBlocked", "blocked by "+blockedPods(out.drainBlocked[c.Node])
	case isKey(out.draining, c.Node):
		ns.State, ns.Message = "Draining", out.draining[c.Node].String()
	case agent.Busy():
		ns.State, ns.Message = string(agent), a[schema.AnnotationMessage]
	case a[schema.AnnotationDesiredConfig] != "" && c.InFlight:
		ns.State = "Dispatched"
	default:
		ns.State = "Starting"
	}
	if t, err := time.Parse(time.RFC3339, a[schema.AnnotationDispatched]); err == nil && c.InFlight {
		ns.Since = t
	}
	return ns
}

func gitSourceStatus(s source.Status, st *run) writeback.SourceStatus {
	out := writeback.SourceStatus{URL: s.URL, Branch: s.Branch, Reason: string(s.Reason), Message: s.Message}
	if s.LastFetched != "" {
		out.LastFetched = &writeback.Revision{Commit: s.LastFetched}
	}
	out.LastApplied = &writeback.Revision{Commit: st.rev.Commit, Subject: st.rev.Subject, Time: st.rev.Time}
	if rj := s.LastRejected; rj != nil {
		out.LastRejected = &writeback.RejectedCommit{Commit: rj.Commit, Reason: string(rj.Reason), Message: rj.Message, Time: rj.Time}
		if rj.Message != "" {
			out.Errors = strings.Split(rj.Message, "\n")
		}
	}
	if s.Reason == source.SourceUnavailable {
		// The source's message counts the time since it last answered;
		// copied as is, every poll would be a commit.
		out.Message = "the remote does not answer"
		if !s.LastSuccessTime.IsZero() {
			t := s.LastSuccessTime
			out.UnavailableSince = &t
		}
	}
	return out
}

// collect deletes rendered ConfigMaps that no node, pool target or recent
// target refers to.
func (r *Reconciler) collect(ctx context.Context, st *run) error {
	keep := map[string]bool{}
	for _, p := range st.pools {
		keep[p.Hash] = true
	}
	for i := range st.nodes {
		a := st.nodes[i].Annotations
		keep[a[schema.AnnotationDesiredConfig]] = true
		keep[a[schema.AnnotationCurrentConfig]] = true
	}
	for _, np := range st.rollouts {
		for _, prev := range np.Status.Previous { // ready for a rollback
			keep[prev.Hash] = true
		}
	}
	deleted, err := cluster.CollectRendered(ctx, r.client, keep, 10*time.Minute, st.now)
	r.mu.Lock()
	for _, h := range deleted {
		delete(r.stored, h)
	}
	r.mu.Unlock()
	return err
}

// drainBlocked lists the blocked drains of a pool, by node, for its status.
func drainBlocked(out *outcome) []herdpool.DrainBlockedNode {
	var nodes []herdpool.DrainBlockedNode
	for name, res := range out.drainBlocked {
		d := herdpool.DrainBlockedNode{Node: name}
		for _, p := range res.Blocking() {
			d.Pods = append(d.Pods, herdpool.BlockedPod{Name: p.Pod, Reason: string(p.Reason), Message: p.Message})
		}
		nodes = append(nodes, d)
	}
	slices.SortFunc(nodes, func(a, b herdpool.DrainBlockedNode) int { return strings.Compare(a.Node, b.Node) })
	return nodes
}

func isKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

func joinMessage(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + ": " + b
}
