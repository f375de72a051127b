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
	mu           sync.Mutex                     // guards draining and drainBlocked
	started      []string                       // nodes a new batch started
	uncordoned   []string                       // nodes finished this time
	draining     map[string]cluster.DrainResult // nodes still being drained
	drainBlocked map[string]cluster.DrainResult // drains past their timeout
}

// dispatch drives every pool one step: nodes at the target that Herd
// cordoned go back to work; nodes of batch 1 are cordoned, drained and told
// their target, as their disruption needs.
func (r *Reconciler) dispatch(ctx context.Context, st *run) error {
	for i := range st.plan.Pools {
		pp := &st.plan.Pools[i]
		out := &outcome{draining: map[string]cluster.DrainResult{}, drainBlocked: map[string]cluster.DrainResult{}}
		st.outcomes[pp.Name] = out
		if err := r.finish(ctx, st, pp, out); err != nil {
			return err
		}
	}
	if r.startsNewNodes(st) {
		// Starting nodes is the only step that takes more nodes out, so it
		// is decided on the nodes as the API server has them now (after the
		// uncordons above), not as a cache that may lag this controller's
		// own writes.
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
		out := st.outcomes[pp.Name]
		if len(pp.Batches) == 0 {
			continue
		}
		st.requeue = true
		changes := map[string]planner.Change{}
		for _, c := range pp.Changes {
			changes[c.Node] = c
		}
		p := pools[pp.Name]
		// The nodes of a batch advance side by side: a batch of a hundred
		// nodes is a few hundred writes.
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(16)
		for _, name := range pp.Batches[0] {
			node := st.byName[name]
			if !involved(node, p) {
				out.started = append(out.started, name)
			}
			g.Go(func() error { return r.advance(gctx, st, p, node, changes[name], out) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
	return nil
}

// startsNewNodes reports whether the plan starts a node Herd is not yet
// working on.
func (r *Reconciler) startsNewNodes(st *run) bool {
	pools := map[string]planner.Pool{}
	for _, p := range st.pools {
		pools[p.Name] = p
	}
	for _, pp := range st.plan.Pools {
		if len(pp.Batches) == 0 {
			continue
		}
		for _, name := range pp.Batches[0] {
			if !involved(st.byName[name], pools[pp.Name]) {
				return true
			}
		}
	}
	return false
}

// involved reports whether Herd already works on the node: it is dispatched
// to the pool's target, cordoned or drained by Herd, or its agent is busy or
// failed.
func involved(n *corev1.Node, p planner.Pool) bool {
	a := n.Annotations
	return a[schema.AnnotationDesiredConfig] == p.Hash && a[schema.AnnotationDesiredOS] == p.Spec.OS.Commit ||
		a[schema.AnnotationCordoned] == "true" || a[schema.AnnotationDrainStarted] != "" ||
		schema.NodeState(a[schema.AnnotationState]).Busy()
}

// finish puts nodes that reached the target back to work: Ready, the agent
// idle, and cordoned by Herd.
func (r *Reconciler) finish(ctx context.Context, st *run, pp *planner.PoolPlan, out *outcome) error {
	for _, name := range pp.UpToDate {
		node := st.byName[name]
		a := node.Annotations
		if a[schema.AnnotationCordoned] != "true" && a[schema.AnnotationDrainStarted] == "" {
			continue
		}
		if !cluster.IsReady(node) || schema.NodeState(a[schema.AnnotationState]) != schema.StateIdle {
			st.requeue = true
			continue
		}
		if err := r.nodes.Uncordon(ctx, node); err != nil {
			return err
		}
		out.uncordoned = append(out.uncordoned, name)
	}
	return nil
}

// advance takes one node of the current batch one step further: cordon,
// drain, tell the agent. Each step checks the node first, so repeating
// advance after a crash finishes a step and never redoes a finished one.
func (r *Reconciler) advance(ctx context.Context, st *run, p planner.Pool, node *corev1.Node, c planner.Change, out *outcome) error {
	a := node.Annotations
	if a[schema.AnnotationDesiredConfig] == p.Hash && a[schema.AnnotationDesiredOS] == p.Spec.OS.Commit {
		return nil // dispatched: the agent has it
	}
	cordon := c.Disruption >= schema.DisruptionRestartKubelet
	if c.Disruption == schema.DisruptionReboot {
		// Cordon before draining, so nothing new lands on the node.
		if err := r.nodes.Cordon(ctx, node); err != nil {
			return err
		}
		res, err := r.nodes.Drain(ctx, node, cluster.DrainPolicy{
			Timeout: p.Spec.Rollout.DrainTimeout(),
			Force:   p.Spec.Rollout.Drain.Force,
		}, st.now)
		if err != nil {
			return err
		}
		if !res.Done {
			out.mu.Lock()
			if res.TimedOut && len(res.Blocked) > 0 {
				out.drainBlocked[node.Name] = res
			} else {
				out.draining[node.Name] = res
			}
			out.mu.Unlock()
			return nil
		}
	}
	return r.nodes.SetDesired(ctx, node, p.Hash, p.Spec.OS.Commit, cordon, st.now)
}

// blockedPods lists the pods that block a drain, for messages.
func blockedPods(res cluster.DrainResult) string {
	pods := slices.Clone(res.Blocked)
	if len(pods) > 5 {
		pods = append(pods[:5], fmt.Sprintf("and %d more", len(res.Blocked)-5))
	}
	return strings.Join(pods, ", ")
}
