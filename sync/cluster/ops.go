package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
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
	// Pods reads pods straight from the API server (pods are not cached:
	// a drain lists one node's pods by field selector).
	Pods client.Reader
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
	if node.Annotations[schema.AnnotationCordoned] != "true" && node.Annotations[schema.AnnotationDrainStarted] == "" {
		return nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	if node.Annotations[schema.AnnotationCordoned] == "true" {
		node.Spec.Unschedulable = false
	}
	delete(node.Annotations, schema.AnnotationCordoned)
	delete(node.Annotations, schema.AnnotationDrainStarted)
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
	// A new attempt: no soak yet, and the last failure is history.
	delete(node.Annotations, schema.AnnotationAtTarget)
	delete(node.Annotations, schema.AnnotationFailedTarget)
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("set desired config of node %s: %w", node.Name, err)
	}
	return nil
}

// DrainPolicy is how a drain treats pods that will not leave.
type DrainPolicy struct {
	Timeout time.Duration
	Force   bool // delete what still blocks after the timeout
}

// DrainResult is where a drain stands after one pass.
type DrainResult struct {
	Done     bool
	Evicting []string // pods asked to leave, not gone yet ("namespace/name")
	Blocked  []string // pods a PodDisruptionBudget keeps, for now
	TimedOut bool     // blocked for longer than the timeout
	Started  time.Time
}

// Drain makes one pass at emptying the node: it evicts every pod that must
// go, through the Eviction API so PodDisruptionBudgets are honoured, and
// reports what remains. DaemonSet pods, mirror pods and finished pods stay.
// Call it again until Done; it never waits itself.
func (n *Nodes) Drain(ctx context.Context, node *corev1.Node, policy DrainPolicy, now time.Time) (DrainResult, error) {
	res := DrainResult{Started: now}
	if s := node.Annotations[schema.AnnotationDrainStarted]; s != "" {
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			res.Started = t
		}
	} else {
		patch := client.MergeFrom(node)
		node = node.DeepCopy()
		setAnnotation(node, schema.AnnotationDrainStarted, now.UTC().Format(time.RFC3339))
		if err := n.Client.Patch(ctx, node, patch); err != nil {
			return res, fmt.Errorf("drain node %s: %w", node.Name, err)
		}
	}
	res.TimedOut = policy.Timeout > 0 && now.Sub(res.Started) >= policy.Timeout

	var pods corev1.PodList
	if err := n.Pods.List(ctx, &pods, client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("spec.nodeName", node.Name)}); err != nil {
		return res, fmt.Errorf("drain node %s: list pods: %w", node.Name, err)
	}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if !mustLeave(pod) {
			continue
		}
		id := pod.Namespace + "/" + pod.Name
		if pod.DeletionTimestamp != nil {
			res.Evicting = append(res.Evicting, id)
			continue
		}
		eviction := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace}}
		err := n.Client.SubResource("eviction").Create(ctx, pod, eviction)
		switch {
		case err == nil:
			res.Evicting = append(res.Evicting, id)
		case apierrors.IsNotFound(err):
		case apierrors.IsTooManyRequests(err):
			if res.TimedOut && policy.Force {
				if err := n.Client.Delete(ctx, pod); err != nil && !apierrors.IsNotFound(err) {
					return res, fmt.Errorf("drain node %s: delete pod %s: %w", node.Name, id, err)
				}
				res.Evicting = append(res.Evicting, id)
				continue
			}
			res.Blocked = append(res.Blocked, id)
		default:
			return res, fmt.Errorf("drain node %s: evict pod %s: %w", node.Name, id, err)
		}
	}
	slices.Sort(res.Evicting)
	slices.Sort(res.Blocked)
	res.Done = len(res.Evicting) == 0 && len(res.Blocked) == 0
	return res, nil
}

// mustLeave reports whether a drain must move the pod off its node.
func mustLeave(pod *corev1.Pod) bool {
	if _, mirror := pod.Annotations[corev1.MirrorPodAnnotationKey]; mirror {
		return false
	}
	for _, ref := range pod.OwnerReferences {
		if ref.Kind == "DaemonSet" && ref.Controller != nil && *ref.Controller {
			return false
		}
	}
	return pod.Status.Phase != corev1.PodSucceeded && pod.Status.Phase != corev1.PodFailed
}

// String describes the result for status and events.
func (r DrainResult) String() string {
	switch {
	case r.Done:
		return "drained"
	case len(r.Blocked) > 0:
		return "blocked by PodDisruptionBudgets: " + strings.Join(r.Blocked, ", ")
	}
	return "evicting " + strings.Join(r.Evicting, ", ")
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

// ClearDesired takes the node's target and failure mark away: its agent
// stands down, and the node is tried again like any other.
func (n *Nodes) ClearDesired(ctx context.Context, node *corev1.Node) error {
	a := node.Annotations
	if a[schema.AnnotationDesiredConfig] == "" && a[schema.AnnotationDesiredOS] == "" && a[schema.AnnotationFailedTarget] == "" {
		return nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	for _, k := range []string{schema.AnnotationDesiredConfig, schema.AnnotationDesiredOS, schema.AnnotationFailedTarget, schema.AnnotationAtTarget} {
		delete(node.Annotations, k)
	}
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("reset node %s: %w", node.Name, err)
	}
	return nil
}
