package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
)

// DrainPolicy is how a drain treats a node's pods: kubectl drain's flags.
type DrainPolicy struct {
	// Timeout: pods still in the way this long after the drain began make
	// it TimedOut (--timeout). Must be positive.
	Timeout            time.Duration
	DeleteEmptyDirData bool // pods with emptyDir volumes may go (--delete-emptydir-data)
	Force              bool // pods without a controller may go (--force)
	// DisableEviction deletes, once the timeout has passed, the pods that
	// evictions could not move (kubectl's --disable-eviction deletes at once).
	DisableEviction  bool
	IgnoreDaemonSets bool            // DaemonSet pods stay (--ignore-daemonsets)
	PodSelector      labels.Selector // only these pods are drained (--pod-selector); nil: all
	// GracePeriod overrides the pods' terminationGracePeriodSeconds
	// (--grace-period); nil keeps theirs.
	GracePeriod *int64
	// SkipWaitForDeleteTimeout: pods terminating this long past their grace
	// period are not waited for (--skip-wait-for-delete-timeout); 0 waits.
	SkipWaitForDeleteTimeout time.Duration
}

// DrainPolicyFor reads a pool's drain policy. The loader has validated it,
// so an error means a spec that did not come through the loader.
func DrainPolicyFor(d schema.Drain) (DrainPolicy, error) {
	p := DrainPolicy{
		DeleteEmptyDirData: d.DeleteEmptyDirData,
		Force:              d.Force,
		DisableEviction:    d.DisableEviction,
		IgnoreDaemonSets:   d.IgnoreDaemonSets,
	}
	var err error
	if p.Timeout, err = time.ParseDuration(d.Timeout); err != nil || p.Timeout <= 0 {
		return p, fmt.Errorf("drain timeout %q: want a positive duration", d.Timeout)
	}
	if d.GracePeriod != "" {
		g, err := time.ParseDuration(d.GracePeriod)
		if err != nil || g < 0 {
			return p, fmt.Errorf("drain gracePeriod %q: want a duration of 0s or more", d.GracePeriod)
		}
		secs := int64(g / time.Second)
		p.GracePeriod = &secs
	}
	if d.SkipWaitForDeleteTimeout != "" {
		if p.SkipWaitForDeleteTimeout, err = time.ParseDuration(d.SkipWaitForDeleteTimeout); err != nil {
			return p, fmt.Errorf("drain skipWaitForDeleteTimeout %q: %w", d.SkipWaitForDeleteTimeout, err)
		}
	}
	if s := d.PodSelector; s != nil {
		ls := &metav1.LabelSelector{MatchLabels: s.MatchLabels}
		for _, e := range s.MatchExpressions {
			ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{Key: e.Key, Operator: metav1.LabelSelectorOperator(e.Operator), Values: e.Values})
		}
		if p.PodSelector, err = metav1.LabelSelectorAsSelector(ls); err != nil {
			return p, fmt.Errorf("drain podSelector: %w", err)
		}
	}
	return p, nil
}

// DrainState is where a drain stands after a pass.
type DrainState string

// Drain states. Refused and TimedOut are the two ways a drain is blocked.
const (
	Drained  DrainState = "Drained"  // nothing left that must leave
	Draining DrainState = "Draining" // pods are leaving, or may yet, within the timeout
	// Refused: the policy forbids moving some pod (no controller, emptyDir
	// data, a DaemonSet's), so, as kubectl does, nothing is asked to leave.
	Refused  DrainState = "Refused"
	TimedOut DrainState = "TimedOut" // pods still in the way after the timeout
)

// PodOutcome is what a drain pass did with one pod.
type PodOutcome string

// Pod outcomes.
const (
	PodSkipped     PodOutcome = "Skipped"     // stays by design: DaemonSet, mirror, terminating past skipWaitForDeleteTimeout
	PodEvicted     PodOutcome = "Evicted"     // the Eviction API accepted it now
	PodDeleted     PodOutcome = "Deleted"     // deleted now: disableEviction, after the timeout
	PodTerminating PodOutcome = "Terminating" // leaving, within its grace period
	PodHeld        PodOutcome = "Held"        // would leave, but the drain is Refused: not asked
	PodBlocked     PodOutcome = "Blocked"     // keeps the node from draining; Reason says why
	PodFailed      PodOutcome = "Failed"      // the request failed (Message); retried with backoff until the timeout
)

// PodReason is what makes a pod special to a drain: with the policy, it
// decides the outcome (a DaemonSet pod is Skipped, or Blocked when DaemonSets
// are not ignored). An ordinary pod with a controller has none.
type PodReason string

// Pod reasons.
const (
	ReasonNone              PodReason = ""
	ReasonDaemonSet         PodReason = "DaemonSet"         // run by a DaemonSet
	ReasonOrphanedDaemonSet PodReason = "OrphanedDaemonSet" // its DaemonSet is gone (Message: the API's answer)
	ReasonMirror            PodReason = "Mirror"            // a static pod's mirror
	ReasonCompleted         PodReason = "Completed"         // Succeeded or Failed: removed whatever the policy
	ReasonUnmanaged         PodReason = "Unmanaged"         // no controller: nothing recreates it
	ReasonEmptyDir          PodReason = "EmptyDir"          // emptyDir data dies with it
	ReasonDisruptionBudget  PodReason = "DisruptionBudget"  // a PodDisruptionBudget allows no disruption now (Message: which)
	ReasonStuckTerminating  PodReason = "StuckTerminating"  // still there after its grace period (Message: since when)
	ReasonEvictionError     PodReason = "EvictionError"     // the eviction or deletion failed (Message: the API's answer)
)

// PodResult is one pod's outcome in a drain pass.
type PodResult struct {
	Pod     string // namespace/name
	Outcome PodOutcome
	Reason  PodReason
	Message string // the API's answer, or what the reason needs to be understood
}

func (p PodResult) String() string {
	s := p.Pod
	if p.Reason != ReasonNone {
		s += " (" + string(p.Reason)
		if p.Message != "" {
			s += ": " + p.Message
		}
		s += ")"
	}
	return s
}

// DrainResult is where a drain stands after one pass, pod by pod.
type DrainResult struct {
	State DrainState
	Pods  []PodResult // the node's pods the policy selects (but those gone during the pass), sorted
}

// Done reports whether the node is drained.
func (r DrainResult) Done() bool { return r.State == Drained }

// Blocked reports whether the drain cannot go on by itself: refused by the
// policy, or past its timeout with pods in the way.
func (r DrainResult) Blocked() bool { return r.State == Refused || r.State == TimedOut }

// With lists the pods of the given outcome.
func (r DrainResult) With(o PodOutcome) []PodResult {
	var out []PodResult
	for _, p := range r.Pods {
		if p.Outcome == o {
			out = append(out, p)
		}
	}
	return out
}

// Blocking lists the pods that keep the node from draining: Blocked, and
// Failed (retried until the timeout).
func (r DrainResult) Blocking() []PodResult {
	return append(r.With(PodBlocked), r.With(PodFailed)...)
}

// String describes the result for status and logs, naming the pods that
// block or are on their way (ten of each kind at most), with their reasons.
// It holds no clock reading, so it changes only when the drain does.
func (r DrainResult) String() string {
	if r.Done() {
		return "drained"
	}
	var parts []string
	for _, g := range []struct {
		what string
		o    PodOutcome
	}{
		{"blocked by", PodBlocked}, {"failing to evict", PodFailed},
		{"evicting", PodEvicted}, {"deleting", PodDeleted}, {"waiting for", PodTerminating},
	} {
		if pods := r.With(g.o); len(pods) > 0 {
			parts = append(parts, g.what+" "+ListPods(pods, 10))
		}
	}
	if r.State == Refused {
		return "refused: " + strings.Join(parts, "; ")
	}
	return strings.Join(parts, "; ")
}

// ListPods names pods with their reasons, at most limit of them, then how
// many more there are.
func ListPods(pods []PodResult, limit int) string {
	var s []string
	for i, p := range pods {
		if i == limit {
			s = append(s, fmt.Sprintf("and %d more", len(pods)-limit))
			break
		}
		s = append(s, p.String())
	}
	return strings.Join(s, ", ")
}

// evictFailure remembers a pod whose eviction failed, for backoff.
type evictFailure struct {
	node    string
	count   int
	retry   time.Time
	message string
}

// Backoff after a failed eviction: 2s, 4s, 8s, ... at most a minute.
const (
	backoffBase = 2 * time.Second
	backoffMax  = time.Minute
)

// failures is the backoff state of pods whose eviction failed. It lives in
// memory: after a restart the pods are simply tried again.
type failures struct {
	mu   sync.Mutex
	pods map[types.UID]evictFailure
}

func (f *failures) get(uid types.UID) (evictFailure, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.pods[uid]
	return e, ok
}

func (f *failures) record(uid types.UID, node, message string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.pods == nil {
		f.pods = map[types.UID]evictFailure{}
	}
	e := f.pods[uid]
	e.node, e.message = node, message
	e.count++
	e.retry = now.Add(min(backoffBase<<min(e.count-1, 10), backoffMax))
	f.pods[uid] = e
}

func (f *failures) drop(uid types.UID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.pods, uid)
}

// forget drops the node's entries for pods other than keep.
func (f *failures) forget(node string, keep map[types.UID]bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for uid, e := range f.pods {
		if e.node == node && !keep[uid] {
			delete(f.pods, uid)
		}
	}
}

// Drain makes one pass at emptying the node, as kubectl drain would, and
// reports every pod's outcome. It never waits: call it again until the
// result is Done, or Blocked.
//
// Each pod is judged first, in kubectl's order: terminating past
// skipWaitForDeleteTimeout (skipped), DaemonSet, mirror, emptyDir, no
// controller; finished pods always go. If the policy forbids moving any pod,
// the drain is Refused and asks nothing of any pod. Otherwise each pod that
// must leave is evicted through the Eviction API, so PodDisruptionBudgets
// hold; a failed eviction is that pod's alone and is retried with backoff.
// Once the timeout has passed, pods still in the way block the node, or,
// with DisableEviction, are deleted.
func (n *Nodes) Drain(ctx context.Context, node *corev1.Node, policy DrainPolicy, now time.Time) (DrainResult, error) {
	pods, verdicts, err := n.judgeAll(ctx, node.Name, policy, now)
	if err != nil {
		return DrainResult{}, fmt.Errorf("drain node %s: %w", node.Name, err)
	}
	if slices.ContainsFunc(verdicts, func(v verdict) bool { return v.outcome == PodBlocked }) {
		return refused(pods, verdicts), nil
	}
	// The timeout runs from the first pass that may evict.
	started := annotationTime(node.Annotations, schema.AnnotationDrainStarted)
	if started.IsZero() {
		if err := n.Annotate(ctx, node, map[string]string{schema.AnnotationDrainStarted: now.UTC().Format(time.RFC3339)}); err != nil {
			return DrainResult{}, fmt.Errorf("drain node %s: %w", node.Name, err)
		}
		started = now.UTC().Truncate(time.Second)
	}
	timedOut := now.Sub(started) >= policy.Timeout
	res := DrainResult{State: Drained}
	for i, v := range verdicts {
		r := PodResult{Pod: podID(&pods[i]), Outcome: v.outcome, Reason: v.reason, Message: v.message}
		if v.outcome == "" {
			var gone bool
			if r, gone, err = n.move(ctx, &pods[i], v, policy, timedOut, now); err != nil {
				return DrainResult{}, fmt.Errorf("drain node %s: %w", node.Name, err)
			}
			if gone {
				continue
			}
			res.State = Draining
		}
		res.Pods = append(res.Pods, r)
	}
	sortResults(res.Pods)
	if timedOut && len(res.Blocking()) > 0 {
		res.State = TimedOut
	}
	return res, nil
}

// judgeAll lists the pods of the node the policy selects, and judges each.
func (n *Nodes) judgeAll(ctx context.Context, node string, policy DrainPolicy, now time.Time) ([]corev1.Pod, []verdict, error) {
	pods, err := n.podsOn(ctx, node, policy.PodSelector)
	if err != nil {
		return nil, nil, err
	}
	verdicts := make([]verdict, len(pods))
	seen := make(map[types.UID]bool, len(pods))
	for i := range pods {
		gone, err := n.daemonSetGone(ctx, &pods[i])
		if err != nil {
			return nil, nil, err
		}
		verdicts[i] = judge(&pods[i], policy, gone, now)
		seen[pods[i].UID] = true
	}
	n.failures.forget(node, seen)
	return pods, verdicts, nil
}

// refused is the result of a drain the policy refuses, as kubectl does:
// nothing is asked of any pod; those that would leave are Held.
func refused(pods []corev1.Pod, verdicts []verdict) DrainResult {
	res := DrainResult{State: Refused}
	for i, v := range verdicts {
		if v.outcome == "" {
			v.outcome = PodHeld
		}
		res.Pods = append(res.Pods, PodResult{Pod: podID(&pods[i]), Outcome: v.outcome, Reason: v.reason, Message: v.message})
	}
	sortResults(res.Pods)
	return res
}

// podsOn lists the pods bound to the node that the selector selects.
func (n *Nodes) podsOn(ctx context.Context, node string, sel labels.Selector) ([]corev1.Pod, error) {
	opts := []client.ListOption{client.MatchingFieldsSelector{Selector: fields.OneTermEqualSelector("spec.nodeName", node)}}
	if sel != nil {
		opts = append(opts, client.MatchingLabelsSelector{Selector: sel})
	}
	var pods corev1.PodList
	if err := n.Pods.List(ctx, &pods, opts...); err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	return pods.Items, nil
}

// daemonSetGone reports, for a running pod of a DaemonSet, whether that
// DaemonSet is gone, with the API's answer; "" otherwise.
func (n *Nodes) daemonSetGone(ctx context.Context, pod *corev1.Pod) (string, error) {
	ref := metav1.GetControllerOf(pod)
	if !isDaemonSet(ref) || finished(pod) {
		return "", nil
	}
	err := n.Pods.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: ref.Name}, &appsv1.DaemonSet{})
	switch {
	case err == nil:
		return "", nil
	case apierrors.IsNotFound(err):
		return apiMessage(err), nil
	}
	return "", fmt.Errorf("get DaemonSet %s/%s of pod %s: %w", pod.Namespace, ref.Name, pod.Name, err)
}

// verdict is what the policy says of a pod before anything is asked of it:
// an outcome (Skipped, Blocked), or none when the pod must leave.
type verdict struct {
	outcome PodOutcome
	reason  PodReason
	message string
}

// judge applies kubectl drain's filters to one pod, in kubectl's order; the
// first that keeps the pod decides. dsGone is the API's answer when the
// pod's DaemonSet is gone.
func judge(pod *corev1.Pod, p DrainPolicy, dsGone string, now time.Time) verdict {
	// Whole seconds past, as kubectl counts them.
	if p.SkipWaitForDeleteTimeout > 0 && pastGrace(pod, now).Truncate(time.Second) > p.SkipWaitForDeleteTimeout {
		return verdict{PodSkipped, ReasonStuckTerminating, graceEnded(pod)}
	}
	var leave verdict // must leave; the reason, if any, is worth a warning
	ref := metav1.GetControllerOf(pod)
	if isDaemonSet(ref) && !finished(pod) {
		switch {
		case dsGone != "" && !p.Force:
			return verdict{PodBlocked, ReasonOrphanedDaemonSet, dsGone}
		case dsGone != "":
			leave = verdict{"", ReasonOrphanedDaemonSet, dsGone}
		case !p.IgnoreDaemonSets:
			return verdict{PodBlocked, ReasonDaemonSet, ""}
		default:
			return verdict{PodSkipped, ReasonDaemonSet, ""}
		}
	}
	switch {
	case isMirror(pod):
		return verdict{PodSkipped, ReasonMirror, ""}
	case finished(pod):
		return verdict{"", ReasonCompleted, ""}
	}
	if hasEmptyDir(pod) {
		if !p.DeleteEmptyDirData {
			return verdict{PodBlocked, ReasonEmptyDir, ""}
		}
		leave = verdict{"", ReasonEmptyDir, ""}
	}
	if ref == nil {
		if !p.Force {
			return verdict{PodBlocked, ReasonUnmanaged, ""}
		}
		leave = verdict{"", ReasonUnmanaged, ""}
	}
	return leave
}

// move asks one pod to leave, or says why it has not left yet; gone when it
// has.
func (n *Nodes) move(ctx context.Context, pod *corev1.Pod, v verdict, p DrainPolicy, timedOut bool, now time.Time) (PodResult, bool, error) {
	r := PodResult{Pod: podID(pod), Reason: v.reason, Message: v.message}
	if pod.DeletionTimestamp != nil {
		// Asked already (by Herd or anyone): wait for it, as kubectl does.
		r.Outcome = PodTerminating
		if pastGrace(pod, now) > 0 {
			r.Outcome, r.Reason, r.Message = PodBlocked, ReasonStuckTerminating, graceEnded(pod)
		}
		return r, false, nil
	}
	// The UID precondition: never a pod of the same name started since.
	opts := &metav1.DeleteOptions{GracePeriodSeconds: p.GracePeriod, Preconditions: &metav1.Preconditions{UID: &pod.UID}}
	if timedOut && p.DisableEviction {
		err := n.Client.Delete(ctx, pod, &client.DeleteOptions{GracePeriodSeconds: opts.GracePeriodSeconds, Preconditions: opts.Preconditions})
		return n.answer(pod, r, PodDeleted, err, timedOut, now)
	}
	if f, ok := n.failures.get(pod.UID); ok && now.Before(f.retry) {
		return failed(r, f.message, timedOut), false, nil
	}
	eviction := &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace}, DeleteOptions: opts}
	err := n.Client.SubResource("eviction").Create(ctx, pod, eviction)
	return n.answer(pod, r, PodEvicted, err, timedOut, now)
}

// answer turns the API's answer to an eviction or deletion into the pod's
// outcome.
func (n *Nodes) answer(pod *corev1.Pod, r PodResult, done PodOutcome, err error, timedOut bool, now time.Time) (PodResult, bool, error) {
	switch {
	case err == nil:
		n.failures.drop(pod.UID)
		r.Outcome = done
		return r, false, nil
	case apierrors.IsNotFound(err):
		n.failures.drop(pod.UID)
		return r, true, nil
	case ctxErr(err):
		return r, false, err
	case apierrors.IsTooManyRequests(err) && apierrors.HasStatusCause(err, policyv1.DisruptionBudgetCause):
		r.Outcome, r.Reason, r.Message = PodBlocked, ReasonDisruptionBudget, budgetMessage(err)
		return r, false, nil
	}
	msg := apiMessage(err)
	n.failures.record(pod.UID, pod.Spec.NodeName, msg, now)
	return failed(r, msg, timedOut), false, nil
}

// failed is a pod whose eviction failed: retried until the timeout, then
// blocking.
func failed(r PodResult, msg string, timedOut bool) PodResult {
	r.Outcome, r.Reason, r.Message = PodFailed, ReasonEvictionError, msg
	if timedOut {
		r.Outcome = PodBlocked
	}
	return r
}

func ctxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// apiMessage is the API server's message for an error, or the error.
func apiMessage(err error) string {
	var s apierrors.APIStatus
	if errors.As(err, &s) && s.Status().Message != "" {
		return s.Status().Message
	}
	return err.Error()
}

// budgetMessage names the PodDisruptionBudget a refused eviction hit.
func budgetMessage(err error) string {
	var s apierrors.APIStatus
	if errors.As(err, &s) && s.Status().Details != nil {
		for _, c := range s.Status().Details.Causes {
			if c.Type == policyv1.DisruptionBudgetCause && c.Message != "" {
				return c.Message
			}
		}
	}
	return apiMessage(err)
}

func podID(pod *corev1.Pod) string { return pod.Namespace + "/" + pod.Name }

func sortResults(rs []PodResult) {
	slices.SortFunc(rs, func(a, b PodResult) int { return strings.Compare(a.Pod, b.Pod) })
}

func finished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

func isMirror(pod *corev1.Pod) bool {
	_, ok := pod.Annotations[corev1.MirrorPodAnnotationKey]
	return ok
}

func isDaemonSet(ref *metav1.OwnerReference) bool {
	return ref != nil && ref.Kind == "DaemonSet" && ref.APIVersion == appsv1.SchemeGroupVersion.String()
}

func hasEmptyDir(pod *corev1.Pod) bool {
	for _, v := range pod.Spec.Volumes {
		if v.EmptyDir != nil {
			return true
		}
	}
	return false
}

// pastGrace is how long ago a terminating pod's grace period ended
// (negative while it runs; 0 for a pod not terminating).
func pastGrace(pod *corev1.Pod, now time.Time) time.Duration {
	if pod.DeletionTimestamp == nil {
		return 0
	}
	return now.Sub(pod.DeletionTimestamp.Time)
}

func graceEnded(pod *corev1.Pod) string {
	return "its grace period ended at " + pod.DeletionTimestamp.UTC().Format(time.RFC3339)
}
