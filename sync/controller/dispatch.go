package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
)

// outcome is what dispatch did to one pool, for the report.
type outcome struct {
	mu           sync.Mutex                     // guards everything below
	started      []string                       // nodes a new batch started
	finished     []string                       // nodes put back to work
	failed       []string                       // failures recorded now
	quarantined  []string                       // nodes quarantined now
	draining     map[string]cluster.DrainResult // nodes still being drained
	drainBlocked map[string]cluster.DrainResult // drains refused by the policy or past their timeout
}

func newOutcome() *outcome {
	return &outcome{draining: map[string]cluster.DrainResult{}, drainBlocked: map[string]cluster.DrainResult{}}
}

// dispatch carries out the plan's actions, pool by pool: the planner decides
// (pure, and model-tested), the controller does. Starting nodes is the one
// action that takes more nodes out, so when the plan starts any, it is made
// again on the nodes as the API server has them now, not as a cache that
// may lag this controller's own writes.
func (r *Reconciler) dispatch(ctx context.Context, st *run) error {
	if startsNewNodes(st) {
		var list corev1.NodeList
		if err := r.api.List(ctx, &list); err != nil {
			return fmt.Errorf("list nodes: %w", err)
		}
		st.setNodes(list.Items)
		st.plan = planner.Compute(r.plannerInput(st))
	}
	pools := map[string]planner.Pool{}
	for _, p := range st.pools {
		pools[p.Name] = p
	}
	for i := range st.plan.Pools {
		pp := &st.plan.Pools[i]
		out := newOutcome()
		st.outcomes[pp.Name] = out
		if len(pp.Actions) > 0 || len(pp.Batches) > 0 || len(pp.Soaking) > 0 {
			st.requeue = true
		}
		p := pools[pp.Name]
		// The nodes of a pool advance side by side: a batch of a hundred
		// nodes is a few hundred writes.
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(16)
		for _, a := range pp.Actions {
			node := st.byName[a.Node]
			if a.Kind == planner.ActStart && a.Reason != "joining" && !involved(node, a.Target) {
				out.started = append(out.started, a.Node)
			}
			g.Go(func() error { return r.do(gctx, st, p, node, a, out) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
		slices.Sort(out.started)
	}
	return nil
}

// do carries out one action on one node. Each checks the node first, so
// doing it again after a crash finishes it and never repeats it.
func (r *Reconciler) do(ctx context.Context, st *run, p planner.Pool, node *corev1.Node, a planner.Action, out *outcome) error {
	record := func(list *[]string) {
		out.mu.Lock()
		*list = append(*list, a.Node)
		out.mu.Unlock()
	}
	switch a.Kind {
	case planner.ActStart:
		if a.Drain {
			// Cordon before draining, so nothing new lands on the node.
			if err := r.nodes.Cordon(ctx, node); err != nil {
				return err
			}
			policy, err := cluster.DrainPolicyFor(p.Spec.Rollout.Drain)
			if err != nil {
				return fmt.Errorf("pool %s: %w", p.Name, err)
			}
			res, err := r.nodes.Drain(ctx, node, policy, st.now)
			if err != nil {
				return err
			}
			r.recordDrain(st, p, a.Node, res)
			if !res.Done() {
				out.mu.Lock()
				if res.Blocked() {
					out.drainBlocked[a.Node] = res
				} else {
					out.draining[a.Node] = res
				}
				out.mu.Unlock()
				return nil
			}
		}
		return r.nodes.SetDesired(ctx, node, a.Target.Hash, a.Target.OSCommit, a.Cordon, st.now)
	case planner.ActSoak:
		return r.nodes.Annotate(ctx, node, map[string]string{schema.AnnotationAtTarget: st.now.UTC().Format(timeFormat)})
	case planner.ActFinish:
		if err := r.nodes.Uncordon(ctx, node); err != nil {
			return err
		}
		record(&out.finished)
	case planner.ActFail:
		n := cluster.PlannerNode(node).Failures + 1
		if err := r.nodes.Annotate(ctx, node, map[string]string{
			schema.AnnotationFailures:     fmt.Sprint(n),
			schema.AnnotationFailedTarget: a.Target.Hash,
		}); err != nil {
			return err
		}
		record(&out.failed)
		if r.Events != nil {
			r.Events.Eventf(st.rollouts[p.Name], nil, corev1.EventTypeWarning, "NodeFailed", "Rollout", "%s failed config %s: %s", a.Node, short(a.Target.Hash), a.Reason)
		}
	case planner.ActQuarantine:
		// A quarantined node stays out of service until someone acts.
		if err := r.nodes.Cordon(ctx, node); err != nil {
			return err
		}
		if err := r.nodes.Annotate(ctx, node, map[string]string{schema.AnnotationQuarantined: a.Reason}); err != nil {
			return err
		}
		record(&out.quarantined)
		if r.Events != nil {
			r.Events.Eventf(st.rollouts[p.Name], nil, corev1.EventTypeWarning, "NodeQuarantined", "Rollout", "%s quarantined: %s; remove its %s annotation to bring it back", a.Node, a.Reason, schema.AnnotationQuarantined)
		}
	case planner.ActPrestage:
		return r.nodes.Annotate(ctx, node, map[string]string{schema.AnnotationPrestageOS: a.Target.OSCommit})
	case planner.ActReset:
		return r.nodes.ClearDesired(ctx, node)
	}
	return nil
}

const timeFormat = "2006-01-02T15:04:05Z07:00"

// startsNewNodes reports whether the plan starts a node Herd is not yet
// working on.
func startsNewNodes(st *run) bool {
	for _, pp := range st.plan.Pools {
		for _, a := range pp.Actions {
			if a.Kind == planner.ActStart && a.Reason != "joining" && !involved(st.byName[a.Node], a.Target) {
				return true
			}
		}
	}
	return false
}

// involved reports whether Herd already works on the node: it is dispatched
// to the target, cordoned or drained by Herd, or its agent is busy or
// failed.
func involved(n *corev1.Node, t planner.Target) bool {
	a := n.Annotations
	return a[schema.AnnotationDesiredConfig] == t.Hash && a[schema.AnnotationDesiredOS] == t.OSCommit ||
		a[schema.AnnotationCordoned] == "true" || a[schema.AnnotationDrainStarted] != "" ||
		schema.NodeState(a[schema.AnnotationState]).Busy()
}

// recordDrain logs a drain pass, and records the pods it moved as an event
// on the pool, a warning when they lose data or were deleted, as kubectl
// warns.
func (r *Reconciler) recordDrain(st *run, p planner.Pool, node string, res cluster.DrainResult) {
	evicted, deleted := res.With(cluster.PodEvicted), res.With(cluster.PodDeleted)
	if len(evicted)+len(deleted) == 0 {
		r.log.V(1).Info("drain", "node", node, "state", res.State, "pods", res.String())
		return
	}
	r.log.Info("drain", "node", node, "state", res.State, "evicted", podNames(evicted), "deleted", podNames(deleted))
	if r.Events == nil {
		return
	}
	kind := corev1.EventTypeNormal
	var what []string
	if len(evicted) > 0 {
		what = append(what, "evicted "+cluster.ListPods(evicted, len(evicted)))
	}
	if len(deleted) > 0 {
		kind = corev1.EventTypeWarning
		what = append(what, "deleted after the drain timeout "+cluster.ListPods(deleted, len(deleted)))
	}
	for _, pod := range evicted {
		if pod.Reason == cluster.ReasonUnmanaged || pod.Reason == cluster.ReasonEmptyDir || pod.Reason == cluster.ReasonOrphanedDaemonSet {
			kind = corev1.EventTypeWarning
		}
	}
	r.Events.Eventf(st.rollouts[p.Name], nil, kind, "PodsEvicted", "Drain", "%s: %s", node, strings.Join(what, "; "))
}

func podNames(pods []cluster.PodResult) []string {
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Pod
	}
	return names
}

// blockedPods lists the pods that block a drain, with their reasons, for
// messages.
func blockedPods(res cluster.DrainResult) string { return cluster.ListPods(res.Blocking(), 5) }
