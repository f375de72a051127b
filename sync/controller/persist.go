package controller

import (
	"context"
	"fmt"
	"maps"
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
	ReleasePool(name string)
}

// Condition reasons of a pool's Ready, Reconciling and Stalled conditions,
// beside the phases.
const (
	ReasonObserveFailed = "ObserveFailed" // the fleet, its nodes or HerdPools could not be read
	ReasonActionFailed  = "ActionFailed"  // carrying the pool's plan out failed; the message says how
	ReasonDrainBlocked  = "DrainBlocked"  // a drain is refused by the pool's policy, or blocked past its timeout
)

// persist records what the reconcile decided and did for one pool: the
// planner's next rollout state, status and conditions, events, metrics and
// the Git status branch. It runs whatever act did; actErr, when set, makes
// the pool Ready=False with the reason.
func (r *Reconciler) persist(ctx context.Context, obs *observation, pp *planner.PoolPlan, np *herdpool.HerdPool, out *outcome, actErr error) error {
	if np.CreationTimestamp.IsZero() {
		return nil // the HerdPool could not be created: the error says why
	}
	before := np.DeepCopy()
	summarize(obs, pp, np, out, actErr)
	r.events(np, before, pp, out)
	r.recordMetrics(obs, pp, np, out)
	if err := r.patchStatus(ctx, np, before); err != nil {
		return err
	}
	if r.Status != nil {
		return r.Status.SetPool(gitPoolStatus(obs, pp, np, out))
	}
	return nil
}

// keep writes the planner's next rollout and repair state to the HerdPool
// before any of the pool's actions is carried out. A controller that stops
// half-way then leaves actions undone, which the next plan redoes, but
// never loses a decision they rest on: a rollback under way, a halt, the
// batch it started, a rung started (counted by the rate limit even should
// its node vanish).
func (r *Reconciler) keep(ctx context.Context, np *herdpool.HerdPool, pp *planner.PoolPlan) error {
	if jsonEqual(np.Status.Rollout, pp.Next) && jsonEqual(np.Status.Repairs, pp.NextRepairs) {
		return nil
	}
	before := np.DeepCopy()
	np.Status.Rollout = pp.Next
	np.Status.Repairs = pp.NextRepairs
	return r.patchStatus(ctx, np, before)
}

// summarize fills the HerdPool's status from the plan and the outcome.
func summarize(obs *observation, pp *planner.PoolPlan, np *herdpool.HerdPool, out *outcome, actErr error) {
	s := &np.Status
	s.ObservedGeneration = np.Generation
	s.ObservedRevision = obs.rev.Commit
	s.ConfigHash, s.OSCommit = pp.ConfigHash, pp.OSCommit
	s.Rollout = pp.Next
	s.Failed, s.Quarantined = pp.Failed, pp.Quarantined
	s.Nodes, s.UpToDate, s.Unavailable = pp.Nodes, len(pp.UpToDate), len(pp.Unavailable)
	s.Updating, s.Waiting, s.Degraded = 0, 0, 0
	for _, c := range pp.Changes {
		switch {
		case c.Batch == 1:
			s.Updating++
		case c.Batch == 0:
			s.Waiting++
		}
		if n := obs.byName[c.Node]; n != nil && schema.NodeState(n.Annotations[schema.AnnotationState]) == schema.StateDegraded {
			s.Degraded++
		}
	}
	s.DrainBlocked = drainBlocked(out)
	s.Progress = fmt.Sprintf("%d/%d", s.UpToDate, s.Nodes)
	s.Batch = ""
	if current, total := batchPosition(pp); total > 0 && pp.Phase != planner.PhaseUpToDate {
		s.Batch = fmt.Sprintf("%d/%d", current, total)
	}
	s.Phase = string(pp.Phase)
	s.Message = message(pp, np)
	summarizeRepairs(pp, np)
	markConditions(np, pp, actErr)
}

// message says where the pool stands, in a line.
func message(pp *planner.PoolPlan, np *herdpool.HerdPool) string {
	s := &np.Status
	quarantined := ""
	if len(pp.Quarantined) > 0 {
		quarantined = "; quarantined: " + strings.Join(pp.Quarantined, ", ")
	}
	at := fmt.Sprintf("%d/%d nodes at %s", s.UpToDate, s.Nodes, schema.Short(pp.OSCommit))
	switch pp.Phase {
	case planner.PhaseRollingBack:
		return fmt.Sprintf("rolling back to %s%s", schema.Short(pp.Next.LastGood.Hash), failedText(pp))
	case planner.PhaseHalted:
		return "halted: " + pp.Halt.Message() + "; lift it with `herd resume " + np.Name + "` or a new rollout.resume" + quarantined
	case planner.PhaseUpToDate:
		return at + quarantined
	case planner.PhasePaused:
		return "paused with " + at
	}
	if len(s.DrainBlocked) > 0 {
		var blocked []string
		for _, b := range s.DrainBlocked {
			blocked = append(blocked, b.Node+": "+blockingPods(b))
		}
		return "DrainBlocked: " + strings.Join(blocked, "; ") + "; " + at
	}
	switch pp.Phase {
	case planner.PhaseWaiting:
		return at + "; " + pp.Closed.Message()
	case planner.PhaseBlocked:
		return pp.Blocked.Message()
	}
	if s.Batch != "" {
		at += " (batch " + s.Batch + ")"
	}
	if s.Degraded > 0 {
		at += fmt.Sprintf(", %d degraded", s.Degraded)
	}
	return at + failedText(pp) + quarantined
}

// markConditions sets the kstatus conditions: Ready, Reconciling, Stalled.
func markConditions(np *herdpool.HerdPool, pp *planner.PoolPlan, actErr error) {
	msg := np.Status.Message
	ready := func(reason string) { conditions.MarkFalse(np, meta.ReadyCondition, reason, "%s", msg) }
	switch {
	case pp.Phase == planner.PhaseRollingBack:
		conditions.MarkReconciling(np, string(pp.Phase), "%s", msg)
		ready(string(pp.Phase))
		conditions.Delete(np, meta.StalledCondition)
	case pp.Phase == planner.PhaseHalted, pp.Phase == planner.PhaseBlocked:
		conditions.MarkStalled(np, string(pp.Phase), "%s", msg)
		ready(string(pp.Phase))
		conditions.Delete(np, meta.ReconcilingCondition)
	case pp.Phase == planner.PhaseUpToDate:
		conditions.MarkTrue(np, meta.ReadyCondition, meta.SucceededReason, "%s", msg)
		conditions.Delete(np, meta.ReconcilingCondition)
		conditions.Delete(np, meta.StalledCondition)
	case pp.Phase == planner.PhasePaused:
		// Held until someone unpauses it: Stalled, so kstatus says Failed
		// and waiters stop, rather than InProgress forever.
		conditions.MarkStalled(np, string(pp.Phase), "%s", msg)
		ready(string(pp.Phase))
		conditions.Delete(np, meta.ReconcilingCondition)
	case len(np.Status.DrainBlocked) > 0:
		conditions.MarkStalled(np, ReasonDrainBlocked, "%s", msg)
		ready(ReasonDrainBlocked)
	case pp.Phase == planner.PhaseWaiting && pp.Closed != nil && pp.Closed.Code == planner.CodeFrozen:
		// Frozen until someone lifts maintenance.freeze in Git: Stalled.
		conditions.MarkStalled(np, string(pp.Closed.Code), "%s", msg)
		ready(string(pp.Closed.Code))
		conditions.Delete(np, meta.ReconcilingCondition)
	case pp.Phase == planner.PhaseWaiting:
		// The next window opens by itself: still in progress.
		reason := string(pp.Closed.Code)
		conditions.MarkReconciling(np, reason, "%s", msg)
		ready(reason)
		conditions.Delete(np, meta.StalledCondition)
	default:
		conditions.MarkReconciling(np, meta.ProgressingReason, "%s", msg)
		ready(meta.ProgressingReason)
		conditions.Delete(np, meta.StalledCondition)
	}
	if why := pp.Repairs.Stopped; why != nil {
		// Too many nodes sick at once: repairs wait for people, whatever
		// the rollout does.
		conditions.MarkStalled(np, ReasonRepairsStopped, "%s", why.Message())
		conditions.MarkFalse(np, meta.ReadyCondition, ReasonRepairsStopped, "%s", why.Message())
	}
	if actErr != nil {
		conditions.MarkFalse(np, meta.ReadyCondition, ReasonActionFailed, "%s", actErr.Error())
	}
}

// markAll records on every HerdPool that the reconcile could not observe
// the fleet: their rollout state is left as it was.
func (r *Reconciler) markAll(ctx context.Context, obs *observation, reason string, err error) {
	if obs == nil || obs.pools == nil {
		pools, lerr := r.readHerdPools(ctx)
		if lerr != nil {
			r.log.Error(lerr, "cannot record the failure on the HerdPools", "reason", reason, "err", err.Error())
			return
		}
		obs = &observation{pools: pools}
	}
	for _, np := range obs.pools {
		if !r.Shard.Owns(np.Labels) {
			continue // another shard's
		}
		before := np.DeepCopy()
		conditions.MarkFalse(np, meta.ReadyCondition, reason, "%s", err.Error())
		if perr := r.patchStatus(ctx, np, before); perr != nil {
			r.log.Error(perr, "record the failure", "pool", np.Name)
		}
	}
}

func failedText(pp *planner.PoolPlan) string {
	if len(pp.Failed) == 0 {
		return ""
	}
	return "; failed: " + strings.Join(pp.Failed, ", ")
}

// batchPosition says which batch runs and how many there are in all: the
// batches started so far, plus those the plan still holds.
func batchPosition(pp *planner.PoolPlan) (current, total int) {
	started, remaining := pp.Next.Batches, len(pp.Batches)
	if remaining > 0 && started > 0 {
		remaining-- // batch 1 of the plan is the one running
	}
	return started, started + remaining
}

func (r *Reconciler) patchStatus(ctx context.Context, np, before *herdpool.HerdPool) error {
	if equalStatus(before.Status, np.Status) {
		return nil
	}
	if err := r.client.Status().Patch(ctx, np, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("update HerdPool %s status: %w", np.Name, err)
	}
	return nil
}

func equalStatus(a, b herdpool.Status) bool { return jsonEqual(a, b) }

// events records the pool's notable moments on its HerdPool: those the
// planner decided, failures and quarantines carried out, drains newly
// blocked and nodes newly degraded.
func (r *Reconciler) events(np, before *herdpool.HerdPool, pp *planner.PoolPlan, out *outcome) {
	if r.Events == nil {
		return
	}
	ev := func(typ, reason, action, format string, args ...any) {
		r.Events.Eventf(np, nil, typ, reason, action, format, args...)
	}
	for _, e := range pp.Events {
		switch e.Kind {
		case planner.EventBatchStarted:
			ev(corev1.EventTypeNormal, string(e.Kind), "Rollout", "batch %s to %s: %s", np.Status.Batch, schema.Short(pp.OSCommit), someNames(e.Nodes, eventNames))
		case planner.EventHalted, planner.EventRollbackStarted:
			ev(corev1.EventTypeWarning, string(e.Kind), "Rollout", "%s", e.Why.Message())
		case planner.EventCompleted:
			ev(corev1.EventTypeNormal, string(e.Kind), "Rollout", "all %d nodes at config %s, OS %s", pp.Nodes, schema.Short(pp.ConfigHash), schema.Short(pp.OSCommit))
		case planner.EventRolloutStarted:
			ev(corev1.EventTypeNormal, string(e.Kind), "Rollout", "new target: config %s, OS %s (revision %s)", schema.Short(pp.ConfigHash), schema.Short(pp.OSCommit), schema.Short(pp.Next.Revision))
		case planner.EventResumed:
			ev(corev1.EventTypeNormal, string(e.Kind), "Rollout", "resumed; failures forgiven: %s", joinOrNone(e.Nodes))
		}
	}
	for _, a := range out.done {
		switch a.Kind {
		case planner.ActFail:
			ev(corev1.EventTypeWarning, "NodeFailed", "Rollout", "%s failed config %s: %s", a.Node, schema.Short(a.Target.Hash), a.Why.Message())
		case planner.ActQuarantine:
			if a.Repair != nil {
				continue // a repair's: repairEvents
			}
			ev(corev1.EventTypeWarning, "NodeQuarantined", "Rollout", "%s quarantined: %s; remove its %s annotation to bring it back", a.Node, a.Why.Message(), schema.AnnotationQuarantined)
		}
	}
	for _, b := range np.Status.DrainBlocked {
		if slices.ContainsFunc(before.Status.DrainBlocked, func(o herdpool.DrainBlockedNode) bool { return jsonEqual(o, b) }) {
			continue // reported already
		}
		why := "past its timeout"
		if b.State == cluster.Refused {
			why = "by its pool's drain policy"
		}
		ev(corev1.EventTypeWarning, ReasonDrainBlocked, "Drain", "drain of %s blocked %s: %s", b.Node, why, blockingPods(b))
	}
	for _, node := range slices.Sorted(maps.Keys(out.drains)) {
		if typ, note := podsMoved(out.drains[node]); note != "" {
			ev(typ, "PodsEvicted", "Drain", "%s: %s", node, note)
		}
	}
	if before.Status.Degraded < np.Status.Degraded {
		ev(corev1.EventTypeWarning, "NodeDegraded", "Rollout", "%d nodes degraded: %s", np.Status.Degraded, np.Status.Message)
	}
	r.repairEvents(np, pp, out)
}

// gitPoolStatus is the pool as the status branch records it.
func gitPoolStatus(obs *observation, pp *planner.PoolPlan, np *herdpool.HerdPool, out *outcome) writeback.PoolStatus {
	s := np.Status
	ps := writeback.PoolStatus{
		Name:         pp.Name,
		SpecRevision: obs.rev.Commit,
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
	if current, total := batchPosition(pp); total > 0 && pp.Phase != planner.PhaseUpToDate {
		ps.Batch = &writeback.Batch{Current: current, Total: total}
	}
	for _, name := range pp.UpToDate {
		ps.Nodes = append(ps.Nodes, writeback.NodeStatus{Name: name, State: "UpToDate", Revision: obs.rev.Commit})
	}
	for _, c := range pp.Changes {
		ps.Nodes = append(ps.Nodes, nodeStatus(obs, c, out))
	}
	for _, name := range pp.Soaking {
		ps.Nodes = append(ps.Nodes, writeback.NodeStatus{Name: name, State: "Soaking", Revision: obs.rev.Commit})
	}
	for _, l := range pp.NextRepairs.Log {
		ps.Repairs = append(ps.Repairs, writeback.Repair{Time: l.Time, Node: l.Node, ID: l.ID, Problem: string(l.Problem),
			Reason: string(l.Reason), Rung: l.Rung + 1, Action: string(l.Action), DryRun: l.DryRun, Outcome: string(l.Outcome)})
	}
	// Quarantined nodes are in every status commit until someone acts.
	for _, name := range pp.Quarantined {
		ps.Nodes = append(ps.Nodes, writeback.NodeStatus{Name: name, State: "Quarantined", Message: obs.byName[name].Annotations[schema.AnnotationQuarantined]})
	}
	return ps
}

// nodeStatus names where one out-of-date node stands.
func nodeStatus(obs *observation, c planner.Change, out *outcome) writeback.NodeStatus {
	a := obs.byName[c.Node].Annotations
	ns := writeback.NodeStatus{Name: c.Node, Message: c.Message()}
	if c.Disruption != schema.DisruptionNone || c.Batch > 0 {
		ns.Message = joinMessage(c.Disruption.String(), ns.Message)
	}
	agent := schema.NodeState(a[schema.AnnotationState])
	blocked, isBlocked := out.drainBlocked(c.Node)
	draining, isDraining := out.draining(c.Node)
	switch {
	case c.Wait != nil && c.Wait.Code == planner.CodeFailed:
		ns.State, ns.Message = "Failed", a[schema.AnnotationMessage]
	case c.Batch == 0:
		ns.State = "Waiting"
	case c.Batch > 1:
		ns.State = "Pending"
	case isBlocked:
		ns.State, ns.Message = "DrainBlocked", "blocked by "+cluster.ListPods(blocked.Blocking(), 5)
	case isDraining:
		ns.State, ns.Message = "Draining", draining.String()
	case agent.Busy():
		ns.State, ns.Message = string(agent), a[schema.AnnotationMessage]
	case c.InFlight:
		ns.State = "Dispatched"
	default:
		ns.State = "Starting"
	}
	if t, err := time.Parse(time.RFC3339, a[schema.AnnotationDispatched]); err == nil && c.InFlight {
		ns.Since = t
	}
	return ns
}

// recordSource writes the source's state to the status branch (its
// metrics and HerdSource are sync/sourcestatus').
func (r *Reconciler) recordSource(obs *observation) {
	s := r.Source.Status()
	if r.Status != nil {
		r.Status.SetSource(gitSourceStatus(s, obs.rev))
	}
}

func gitSourceStatus(s source.Status, rev source.Revision) writeback.SourceStatus {
	out := writeback.SourceStatus{URL: s.URL, Branch: s.Branch, Reason: string(s.Reason), Message: s.Message}
	if s.LastFetched != "" {
		out.LastFetched = &writeback.Revision{Commit: s.LastFetched}
	}
	out.LastApplied = &writeback.Revision{Commit: rev.Commit, Subject: rev.Subject, Time: rev.Time}
	if rj := s.LastRejected; rj != nil {
		out.LastRejected = &writeback.RejectedCommit{Commit: rj.Commit, Reason: string(rj.Reason), Message: rj.Message, Time: rj.Time}
		if rj.Message != "" {
			out.Errors = strings.Split(rj.Message, "\n")
		}
	}
	if s.Reason == source.FetchFailed {
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

// drainBlocked lists the pool's blocked drains, by node, with every pod in
// their way.
func drainBlocked(out *outcome) []herdpool.DrainBlockedNode {
	var nodes []herdpool.DrainBlockedNode
	for _, name := range slices.Sorted(maps.Keys(out.drains)) {
		res, blocked := out.drainBlocked(name)
		if !blocked {
			continue
		}
		d := herdpool.DrainBlockedNode{Node: name, State: res.State}
		for _, p := range res.Blocking() {
			d.Pods = append(d.Pods, herdpool.BlockedPod{Name: p.Pod, Reason: p.Reason, Message: p.Message})
		}
		nodes = append(nodes, d)
	}
	return nodes
}

// blockingPods names the pods that block a drain, with their reasons, for
// messages.
func blockingPods(d herdpool.DrainBlockedNode) string {
	pods := make([]cluster.PodResult, len(d.Pods))
	for i, p := range d.Pods {
		pods[i] = cluster.PodResult{Pod: p.Name, Outcome: cluster.PodBlocked, Reason: p.Reason, Message: p.Message}
	}
	return cluster.ListPods(pods, 5)
}

// podsMoved says which pods a drain pass evicted or deleted, as kubectl
// warns: a Warning when they lose data (no controller, emptyDir, a gone
// DaemonSet) or were deleted; "" when it moved none.
func podsMoved(res cluster.DrainResult) (typ, note string) {
	evicted, deleted := res.With(cluster.PodEvicted), res.With(cluster.PodDeleted)
	typ = corev1.EventTypeNormal
	var what []string
	if len(evicted) > 0 {
		what = append(what, "evicted "+cluster.ListPods(evicted, len(evicted)))
	}
	if len(deleted) > 0 {
		typ = corev1.EventTypeWarning
		what = append(what, "deleted after the drain timeout "+cluster.ListPods(deleted, len(deleted)))
	}
	for _, pod := range evicted {
		if pod.Reason == cluster.ReasonUnmanaged || pod.Reason == cluster.ReasonEmptyDir || pod.Reason == cluster.ReasonOrphanedDaemonSet {
			typ = corev1.EventTypeWarning
		}
	}
	return typ, strings.Join(what, "; ")
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

// eventNames is how many nodes an event names: a batch of a thousand
// nodes would make a message of tens of kilobytes.
const eventNames = 20

// someNames joins up to n names, and says how many more there are.
func someNames(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:n], ", "), len(names)-n)
}

func joinOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
