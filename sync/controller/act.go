package controller

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
)

// outcome is what acting on one pool's plan did, for persist.
type outcome struct {
	mu     sync.Mutex                     // guards everything below
	done   []planner.Action               // actions carried out
	drains map[string]cluster.DrainResult // every drain pass made, by node
}

func newOutcome() *outcome {
	return &outcome{drains: map[string]cluster.DrainResult{}}
}

// draining reports whether the node's drain goes on: pods are leaving.
func (o *outcome) draining(node string) (cluster.DrainResult, bool) {
	res, ok := o.drains[node]
	return res, ok && res.State == cluster.Draining
}

// drainBlocked reports whether the node's drain cannot go on by itself:
// refused by the policy, or past its timeout.
func (o *outcome) drainBlocked(node string) (cluster.DrainResult, bool) {
	res, ok := o.drains[node]
	return res, ok && res.Blocked()
}

// pending reports whether any drain is not done.
func (o *outcome) pending() bool {
	for _, res := range o.drains {
		if !res.Done() {
			return true
		}
	}
	return false
}

// actWorkers is how many nodes of a pool are acted on at once: a batch of a
// hundred nodes is a few hundred writes.
const actWorkers = 16

// act carries out the pool's actions: the planner decided them, so this
// only does. A node's actions run in the plan's order; nodes run side by
// side. A failed action does not stop the others: all errors are returned.
// Each action checks the node first, so doing it again after a crash
// finishes it and never repeats it.
func (r *Reconciler) act(ctx context.Context, obs *observation, pp *planner.PoolPlan, out *outcome) error {
	pool := obs.pool(pp.Name)
	var byNode [][]planner.Action
	for i, a := range pp.Actions { // sorted by node
		if i == 0 || pp.Actions[i-1].Node != a.Node {
			byNode = append(byNode, nil)
		}
		byNode[len(byNode)-1] = append(byNode[len(byNode)-1], a)
	}
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, actWorkers)
	)
	for _, actions := range byNode {
		node := obs.byName[actions[0].Node]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			for _, a := range actions {
				if err := r.do(ctx, obs, pool, node, a, out); err != nil {
					if !errors.Is(err, errDrainPending) && !errors.Is(err, errNodeChanged) {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
					return // the node's later actions rest on this one
				}
			}
		}()
	}
	wg.Wait()
	slices.SortFunc(out.done, func(a, b planner.Action) int { return compareActions(a, b) })
	return errors.Join(errs...)
}

func compareActions(a, b planner.Action) int {
	if a.Node != b.Node {
		if a.Node < b.Node {
			return -1
		}
		return 1
	}
	return 0
}

// do carries out one action on one node.
func (r *Reconciler) do(ctx context.Context, obs *observation, p planner.Pool, node *corev1.Node, a planner.Action, out *outcome) error {
	done := func() error {
		out.mu.Lock()
		out.done = append(out.done, a)
		out.mu.Unlock()
		return nil
	}
	if a.Repair != nil {
		if err := r.repair(ctx, obs, p, node, a, out); err != nil {
			return err
		}
		return done()
	}
	switch a.Kind {
	case planner.ActStart:
		if a.Drain {
			// Cordon before draining, so nothing new lands on the node.
			if err := r.nodes.Cordon(ctx, node); err != nil {
				return err
			}
			if err := r.drain(ctx, obs, p, node, out); err != nil {
				return err
			}
		}
		if err := r.nodes.SetDesired(ctx, node, a.Target.Hash, a.Target.OSCommit, a.Cordon, obs.now); err != nil {
			return err
		}
	case planner.ActJoin:
		// Outside the budget only while the node still converges: if it
		// changed since it was observed (its agent removed the taint), the
		// next reconcile plans it anew.
		err := r.nodes.SetDesiredUnchanged(ctx, node, a.Target.Hash, a.Target.OSCommit, obs.now)
		if apierrors.IsConflict(err) {
			return errNodeChanged
		}
		if err != nil {
			return err
		}
	case planner.ActRetarget:
		if err := r.nodes.SetDesired(ctx, node, a.Target.Hash, a.Target.OSCommit, false, obs.now); err != nil {
			return err
		}
	case planner.ActSoak:
		if err := r.nodes.Annotate(ctx, node, map[string]string{schema.AnnotationAtTarget: obs.now.UTC().Format(timeFormat)}); err != nil {
			return err
		}
		commitToNode.WithLabelValues(p.Name).Observe(obs.now.Sub(obs.rev.Time).Seconds())
	case planner.ActFinish:
		if err := r.nodes.Uncordon(ctx, node); err != nil {
			return err
		}
	case planner.ActFail:
		n := cluster.PlannerNode(node).Failures + 1
		if err := r.nodes.Annotate(ctx, node, map[string]string{
			schema.AnnotationFailures:     fmt.Sprint(n),
			schema.AnnotationFailedTarget: a.Target.Hash,
		}); err != nil {
			return err
		}
	case planner.ActQuarantine:
		// A quarantined node stays out of service until someone acts.
		if err := r.nodes.Cordon(ctx, node); err != nil {
			return err
		}
		if err := r.nodes.Annotate(ctx, node, map[string]string{schema.AnnotationQuarantined: a.Why.Message()}); err != nil {
			return err
		}
	case planner.ActPrestage:
		if err := r.nodes.Annotate(ctx, node, map[string]string{schema.AnnotationPrestageOS: a.Target.OSCommit}); err != nil {
			return err
		}
	case planner.ActReset:
		if err := r.nodes.ClearDesired(ctx, node); err != nil {
			return err
		}
	default:
		return fmt.Errorf("node %s: unknown action %q", a.Node, a.Kind)
	}
	return done()
}

// drain makes one pass of the pool's drain policy (kubectl drain's) over
// the node, records on it whether the drain is blocked, and keeps the
// result for persist. errDrainPending while pods are still in the way.
func (r *Reconciler) drain(ctx context.Context, obs *observation, p planner.Pool, node *corev1.Node, out *outcome) error {
	policy, err := cluster.DrainPolicyFor(p.Spec.Rollout.Drain)
	if err != nil {
		return fmt.Errorf("pool %s: %w", p.Name, err)
	}
	res, err := r.nodes.Drain(ctx, node, policy, obs.now)
	if err != nil {
		return err
	}
	r.logDrain(node.Name, res)
	if err := r.nodes.MarkDrainBlocked(ctx, node, res); err != nil {
		return err
	}
	out.mu.Lock()
	out.drains[node.Name] = res
	out.mu.Unlock()
	if !res.Done() {
		return errDrainPending
	}
	return nil
}

// logDrain logs a drain pass: at the default level when it moved pods.
func (r *Reconciler) logDrain(node string, res cluster.DrainResult) {
	evicted, deleted := res.With(cluster.PodEvicted), res.With(cluster.PodDeleted)
	if len(evicted)+len(deleted) == 0 {
		r.log.V(1).Info("drain", "node", node, "state", res.State, "pods", res.String())
		return
	}
	r.log.Info("drain", "node", node, "state", res.State, "evicted", podNames(evicted), "deleted", podNames(deleted))
}

func podNames(pods []cluster.PodResult) []string {
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = p.Pod
	}
	return names
}

// errDrainPending ends a node's actions while its drain goes on; it is not
// a failure.
var errDrainPending = errors.New("drain in progress")

// errNodeChanged means the node changed since it was observed; the change
// brings another reconcile.
var errNodeChanged = errors.New("the node changed since it was observed")

const timeFormat = "2006-01-02T15:04:05Z07:00"
