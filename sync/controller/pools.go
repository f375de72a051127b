package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
)

// mirror makes the pool's HerdPool match Git: created when missing, its
// spec and labels (the pool's own, which shards select by) put back when
// someone edited them. Its status is persist's.
func (r *Reconciler) mirror(ctx context.Context, obs *observation, np *herdpool.HerdPool) error {
	p := obs.pool(np.Name)
	spec := herdpool.Spec{NodePool: p.Spec, Revision: obs.rev.Commit}
	switch {
	case np.CreationTimestamp.IsZero():
		np.Spec = spec
		np.Labels = p.Spec.Labels
		if err := r.client.Create(ctx, np); err != nil {
			return fmt.Errorf("create HerdPool %s: %w", np.Name, err)
		}
		obs.pools[np.Name] = np
	case !sameSpec(np.Spec, spec) || !maps.Equal(np.Labels, p.Spec.Labels):
		np.Spec = spec
		np.Labels = p.Spec.Labels
		if err := r.client.Update(ctx, np); err != nil {
			return fmt.Errorf("update HerdPool %s: %w", np.Name, err)
		}
	}
	return nil
}

// store keeps the pool's render as its immutable ConfigMap before any node
// is told its hash.
func (r *Reconciler) store(ctx context.Context, obs *observation, p planner.Pool) error {
	if obs.stored[p.Hash] {
		return nil
	}
	return cluster.EnsureRendered(ctx, r.client, p.Rendered, p.Hash)
}

// removeGone deletes the HerdPools of pools no longer in the fleet; a
// shard, those its selector matches (they carry their pool's last labels).
func (r *Reconciler) removeGone(ctx context.Context, obs *observation) error {
	var errs []error
	for name, np := range obs.pools {
		if _, ok := obs.fleet.Fleet.Pools[name]; ok || !r.Shard.Owns(np.Labels) {
			continue
		}
		if err := r.client.Delete(ctx, np); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete HerdPool %s of a pool no longer in the fleet: %w", name, err))
		}
		if r.Status != nil {
			r.Status.RemovePool(name)
		}
	}
	return errors.Join(errs...)
}

// collect deletes rendered ConfigMaps that no node, pool target, last good
// or recent target refers to.
func (r *Reconciler) collect(ctx context.Context, obs *observation, plan *planner.Plan) error {
	_, err := cluster.CollectRendered(ctx, r.client, keepRenders(obs, plan), 10*time.Minute, obs.now)
	return err
}

// keepRenders is the set of render hashes collect keeps.
func keepRenders(obs *observation, plan *planner.Plan) map[string]bool {
	keep := map[string]bool{}
	for _, pp := range plan.Pools {
		keep[pp.ConfigHash] = true
		keep[pp.Next.LastGood.Hash] = true
		for _, prev := range pp.Next.Previous { // ready for a rollback
			keep[prev.Hash] = true
		}
	}
	// The planner's nodes hold the two annotations as read; most nodes
	// share one config, so a hash is set only when it differs from the
	// one before.
	var desired, current string
	for i := range obs.input.Nodes {
		n := &obs.input.Nodes[i]
		if i == 0 || n.DesiredConfig != desired {
			desired = n.DesiredConfig
			keep[desired] = true
		}
		if i == 0 || n.CurrentConfig != current {
			current = n.CurrentConfig
			keep[current] = true
		}
	}
	return keep
}

// sameSpec compares specs as the API server stores them (JSON), so empty
// and absent maps are alike.
func sameSpec(a, b herdpool.Spec) bool { return jsonEqual(a, b) }

// jsonEqual compares values as their JSON.
func jsonEqual(a, b any) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// nodeChanged passes node events that can change a plan: labels,
// annotations, schedulability, readiness; not heartbeats.
var nodeChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		a, okA := e.ObjectOld.(*corev1.Node)
		b, okB := e.ObjectNew.(*corev1.Node)
		if !okA || !okB {
			return true
		}
		return !reflect.DeepEqual(a.Labels, b.Labels) ||
			!reflect.DeepEqual(herdAnnotations(a), herdAnnotations(b)) ||
			a.Spec.Unschedulable != b.Spec.Unschedulable ||
			!reflect.DeepEqual(a.Spec.Taints, b.Spec.Taints) ||
			!reflect.DeepEqual(conditionStatuses(a), conditionStatuses(b))
	},
}

// specChanged passes HerdPool events where someone changed the spec or
// the labels, so the controller puts Git's back (or, a shard, takes a pool
// handed over to it), or asked for a resume.
var specChanged = predicate.Funcs{
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return true },
	GenericFunc: func(event.GenericEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() ||
			!maps.Equal(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels()) ||
			e.ObjectOld.GetAnnotations()[herdpool.AnnotationResume] != e.ObjectNew.GetAnnotations()[herdpool.AnnotationResume]
	},
}

func herdAnnotations(n *corev1.Node) map[string]string {
	out := map[string]string{}
	for k, v := range n.Annotations {
		if len(k) > len(schema.AnnotationPrefix) && k[:len(schema.AnnotationPrefix)] == schema.AnnotationPrefix {
			out[k] = v
		}
	}
	return out
}

// conditionStatuses maps condition types to statuses: health checks read
// them; heartbeat times do not matter.
func conditionStatuses(n *corev1.Node) map[corev1.NodeConditionType]corev1.ConditionStatus {
	out := make(map[corev1.NodeConditionType]corev1.ConditionStatus, len(n.Status.Conditions))
	for _, c := range n.Status.Conditions {
		out[c.Type] = c.Status
	}
	return out
}
