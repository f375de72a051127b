package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdpool"
)

// mirrorPools makes one HerdPool per pool of the revision, its spec copied
// from Git (an edit in the cluster is overwritten), and deletes HerdPools of
// pools that left the fleet. A pool whose target changed starts a new
// rollout in its status.
func (r *Reconciler) mirrorPools(ctx context.Context, st *run) error {
	// Read uncached: the rollout state in the status must be this
	// controller's last write, which the cache may not show yet.
	var list herdpool.HerdPoolList
	if err := r.api.List(ctx, &list); err != nil {
		return fmt.Errorf("list HerdPools: %w", err)
	}
	existing := map[string]*herdpool.HerdPool{}
	for i := range list.Items {
		existing[list.Items[i].Name] = &list.Items[i]
	}
	st.rollouts = map[string]*herdpool.HerdPool{}
	st.original = map[string]*herdpool.HerdPool{}
	for _, p := range st.pools {
		spec := herdpool.Spec{NodePool: p.Spec, Revision: st.rev.Commit}
		np, ok := existing[p.Name]
		delete(existing, p.Name)
		switch {
		case !ok:
			np = &herdpool.HerdPool{ObjectMeta: metav1.ObjectMeta{Name: p.Name}, Spec: spec}
			if err := r.client.Create(ctx, np); err != nil {
				return fmt.Errorf("create HerdPool %s: %w", p.Name, err)
			}
		case !sameSpec(np.Spec, spec):
			np.Spec = spec
			if err := r.client.Update(ctx, np); err != nil {
				return fmt.Errorf("update HerdPool %s: %w", p.Name, err)
			}
		}
		st.original[p.Name] = np.DeepCopy()
		if np.Status.Rollout.Hash != p.Hash {
			if old := np.Status.Rollout; old.Hash != "" {
				prev := slices.DeleteFunc(slices.Clone(np.Status.Previous), func(t herdpool.PreviousTarget) bool { return t.Hash == old.Hash })
				prev = append([]herdpool.PreviousTarget{{Hash: old.Hash, Revision: old.Revision, OSCommit: np.Status.OSCommit}}, prev...)
				np.Status.Previous = prev[:min(len(prev), herdpool.MaxPrevious)]
			}
			now := metav1.NewTime(st.now)
			np.Status.Rollout = herdpool.RolloutStatus{Hash: p.Hash, Revision: st.rev.Commit, StartedAt: &now}
		}
		st.rollouts[p.Name] = np
	}
	for name, np := range existing {
		if err := r.client.Delete(ctx, np); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete HerdPool %s of a pool no longer in the fleet: %w", name, err)
		}
	}
	return nil
}

// sameSpec compares specs as the API server stores them (JSON), so empty
// and absent maps are alike.
func sameSpec(a, b herdpool.Spec) bool {
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

// specChanged passes HerdPool events where someone changed the spec, so the
// controller puts Git's back, or asked for a resume.
var specChanged = predicate.Funcs{
	CreateFunc:  func(event.CreateEvent) bool { return false },
	DeleteFunc:  func(event.DeleteEvent) bool { return true },
	GenericFunc: func(event.GenericEvent) bool { return false },
	UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.GetGeneration() != e.ObjectNew.GetGeneration() ||
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
