package cluster

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
)

// Nodes cordons, drains and annotates nodes. Every operation is idempotent:
// it looks at the node as it is and does only what is missing, so a
// controller that restarts half-way finishes the step instead of repeating it.
// Operations never change the node they are given (it may be the cache's):
// they write a copy.
type Nodes struct {
	Client client.Client
	// Pods reads pods, and the DaemonSets of pods being drained, straight
	// from the API server (neither is cached: a drain lists one node's pods
	// by field selector).
	Pods client.Reader

	failures failures // pods whose eviction failed, for backoff
}

// Cordon marks the node unschedulable and records that Herd did it, so only
// Herd's cordons are undone by Uncordon. A node someone else cordoned stays
// theirs.
func (n *Nodes) Cordon(ctx context.Context, node *corev1.Node) error {
	if node.Spec.Unschedulable {
		return nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	node.Spec.Unschedulable = true
	setAnnotation(node, schema.AnnotationCordoned, "true")
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("cordon node %s: %w", node.Name, err)
	}
	return nil
}

// Uncordon makes the node schedulable again if Herd cordoned it, and clears
// Herd's drain bookkeeping.
func (n *Nodes) Uncordon(ctx context.Context, node *corev1.Node) error {
	a := node.Annotations
	if a[schema.AnnotationCordoned] != "true" && a[schema.AnnotationDrainStarted] == "" && a[schema.AnnotationDrainBlocked] == "" {
		return nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	if node.Annotations[schema.AnnotationCordoned] == "true" {
		node.Spec.Unschedulable = false
	}
	delete(node.Annotations, schema.AnnotationCordoned)
	delete(node.Annotations, schema.AnnotationDrainStarted)
	delete(node.Annotations, schema.AnnotationDrainBlocked)
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("uncordon node %s: %w", node.Name, err)
	}
	return nil
}

// SetDesired tells the node's agent what to apply; with cordon it also
// cordons the node, in the same write.
func (n *Nodes) SetDesired(ctx context.Context, node *corev1.Node, hash, commit string, cordon bool, now time.Time) error {
	return n.setDesired(ctx, node, hash, commit, cordon, now, client.MergeFrom(node))
}

// SetDesiredUnchanged is SetDesired for a node whose state the decision
// rests on, such as a joining node's converging taint: the write carries
// the node's resourceVersion, and fails with a Conflict
// (apierrors.IsConflict) when the node changed since it was read, e.g. its
// agent removed the taint and it takes work now.
func (n *Nodes) SetDesiredUnchanged(ctx context.Context, node *corev1.Node, hash, commit string, now time.Time) error {
	return n.setDesired(ctx, node, hash, commit, false, now, client.MergeFromWithOptions(node, client.MergeFromWithOptimisticLock{}))
}

func (n *Nodes) setDesired(ctx context.Context, node *corev1.Node, hash, commit string, cordon bool, now time.Time, patch client.Patch) error {
	a := node.Annotations
	if a[schema.AnnotationDesiredConfig] == hash && a[schema.AnnotationDesiredOS] == commit {
		return nil
	}
	node = node.DeepCopy()
	if cordon && !node.Spec.Unschedulable {
		node.Spec.Unschedulable = true
		setAnnotation(node, schema.AnnotationCordoned, "true")
	}
	setAnnotation(node, schema.AnnotationDesiredConfig, hash)
	setAnnotation(node, schema.AnnotationDesiredOS, commit)
	setAnnotation(node, schema.AnnotationDispatched, now.UTC().Format(time.RFC3339))
	// A new attempt: no soak yet, and the last failure is history; the
	// drain, if any, is done.
	delete(node.Annotations, schema.AnnotationAtTarget)
	delete(node.Annotations, schema.AnnotationFailedTarget)
	delete(node.Annotations, schema.AnnotationDrainBlocked)
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("set desired config of node %s: %w", node.Name, err)
	}
	return nil
}

// MarkDrainBlocked records on the node whether Herd's drain of it is
// blocked (herd.dev/drain-blocked: Refused or TimedOut), so that plans
// know, after a restart too, that the rollout need not wait for it.
func (n *Nodes) MarkDrainBlocked(ctx context.Context, node *corev1.Node, res DrainResult) error {
	want := ""
	if res.Blocked() {
		want = string(res.State)
	}
	if node.Annotations[schema.AnnotationDrainBlocked] == want {
		return nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	if want == "" {
		delete(node.Annotations, schema.AnnotationDrainBlocked)
	} else {
		setAnnotation(node, schema.AnnotationDrainBlocked, want)
	}
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("mark the drain of node %s: %w", node.Name, err)
	}
	return nil
}

func setAnnotation(node *corev1.Node, key, value string) {
	if node.Annotations == nil {
		node.Annotations = map[string]string{}
	}
	node.Annotations[key] = value
}

// Annotate sets annotations on the node, if they differ.
func (n *Nodes) Annotate(ctx context.Context, node *corev1.Node, set map[string]string) error {
	same := true
	for k, v := range set {
		if node.Annotations[k] != v {
			same = false
		}
	}
	if same {
		return nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	for k, v := range set {
		setAnnotation(node, k, v)
	}
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("annotate node %s: %w", node.Name, err)
	}
	return nil
}

// ClearDesired takes the node's target and failure mark away, and gives it
// back to work if Herd took it out, in one write: its agent stands down,
// and the node is tried again like any other.
func (n *Nodes) ClearDesired(ctx context.Context, node *corev1.Node) error {
	a := node.Annotations
	if a[schema.AnnotationDesiredConfig] == "" && a[schema.AnnotationDesiredOS] == "" && a[schema.AnnotationFailedTarget] == "" {
		return nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	if a[schema.AnnotationCordoned] == "true" {
		node.Spec.Unschedulable = false
	}
	for _, k := range []string{schema.AnnotationDesiredConfig, schema.AnnotationDesiredOS, schema.AnnotationFailedTarget, schema.AnnotationAtTarget,
		schema.AnnotationCordoned, schema.AnnotationDrainStarted, schema.AnnotationDrainBlocked} {
		delete(node.Annotations, k)
	}
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("reset node %s: %w", node.Name, err)
	}
	return nil
}
