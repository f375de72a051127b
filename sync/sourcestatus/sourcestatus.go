// Package sourcestatus shows the fleet source in the cluster: it keeps the
// HerdSource object, its kstatus conditions, events and metrics in step with sync/source.
package sourcestatus

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	ctrlsource "sigs.k8s.io/controller-runtime/pkg/source"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/sync/source"
)

// Source is what the updater reads: *source.Source.
type Source interface {
	Status() source.Status
	Current() (source.Revision, bool)
	Changes() <-chan struct{}
	Trigger()
}

// Updater keeps the HerdSource object of one source. It runs on the leader
// only, beside (not inside) the pool reconcile.
type Updater struct {
	Client client.Client
	// Name is the HerdSource's name; default herdsource.Name.
	Name   string
	Source Source
	Spec   herdsource.Spec // URL credentials are removed before it is written
	Events events.EventRecorder
	Now    func() time.Time
}

// SetupWithManager runs the updater on every change of the source and of
// the HerdSource object (a webhook's reconcile request).
func (u *Updater) SetupWithManager(mgr ctrl.Manager) error {
	if u.Now == nil {
		u.Now = time.Now
	}
	if u.Name == "" {
		u.Name = herdsource.Name
	}
	u.Spec.URL = Redact(u.Spec.URL)
	changes := make(chan event.GenericEvent)
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-u.Source.Changes():
				select {
				case changes <- event.GenericEvent{Object: &herdsource.HerdSource{ObjectMeta: metav1.ObjectMeta{Name: u.Name}}}:
				case <-ctx.Done():
					return nil
				}
			}
		}
	})); err != nil {
		return err
	}
	skip := true // several controllers in one process in tests
	onlyOurs := predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetName() == u.Name })
	return ctrl.NewControllerManagedBy(mgr).
		Named("herdsource").
		WithOptions(ctrlcontroller.Options{SkipNameValidation: &skip}).
		For(&herdsource.HerdSource{}, builder.WithPredicates(onlyOurs, predicate.AnnotationChangedPredicate{})).
		WatchesRawSource(ctrlsource.Channel(changes, &handler.EnqueueRequestForObject{})).
		Complete(u)
}

// Reconcile writes the source's state into the HerdSource, creating it when
// missing, and acts on a new reconcile request.
func (u *Updater) Reconcile(ctx context.Context, _ reconcile.Request) (ctrl.Result, error) {
	var obj herdsource.HerdSource
	err := u.Client.Get(ctx, client.ObjectKey{Name: u.Name}, &obj)
	if apierrors.IsNotFound(err) {
		obj = herdsource.HerdSource{ObjectMeta: metav1.ObjectMeta{Name: u.Name}, Spec: u.Spec}
		if err = u.Client.Create(ctx, &obj); err != nil {
			return ctrl.Result{}, fmt.Errorf("create HerdSource %s: %w", u.Name, err)
		}
	} else if err != nil {
		return ctrl.Result{}, fmt.Errorf("read HerdSource %s: %w", u.Name, err)
	}
	if obj.Spec != u.Spec {
		before := obj.DeepCopy()
		obj.Spec = u.Spec
		if err := u.Client.Patch(ctx, &obj, client.MergeFrom(before)); err != nil {
			return ctrl.Result{}, fmt.Errorf("update HerdSource %s spec: %w", u.Name, err)
		}
	}
	before := obj.DeepCopy()
	if asked := obj.Annotations[meta.ReconcileRequestAnnotation]; asked != "" && asked != obj.Status.LastHandledReconcileAt {
		u.Source.Trigger()
		obj.Status.LastHandledReconcileAt = asked
	}
	st := u.Source.Status()
	cur, ok := u.Source.Current()
	fill(&obj, st, cur, ok, u.Spec.Verify)
	recordMetrics(st, cur, ok, before.Status.LastRejected)
	if equality.Semantic.DeepEqual(before.Status, obj.Status) {
		return ctrl.Result{}, nil
	}
	if err := u.Client.Status().Patch(ctx, &obj, client.MergeFrom(before)); err != nil {
		return ctrl.Result{}, fmt.Errorf("update HerdSource %s status: %w", u.Name, err)
	}
	u.events(&obj, before)
	return ctrl.Result{}, nil
}

// Class sorts the source's reasons by what they mean for a reader.
type Class int

// Classes of reasons.
const (
	Pending   Class = iota // not checked yet
	Succeeded              // the head is the accepted revision
	Retrying               // the remote or the cache failed; tried again each interval
	Rejected               // the head was refused; only a new commit moves on
)

// Classify says what a source reason means. Every reason that is neither
// success nor a transient failure is a rejection of the head (so a new
// rejection reason is reported as one without a change here).
func Classify(st source.Status) Class {
	switch {
	case st.Checks == 0:
		return Pending
	case st.Reason == source.Succeeded:
		return Succeeded
	case st.Reason == source.FetchFailed || st.Reason == source.StorageFailed:
		return Retrying
	}
	return Rejected
}

// fill sets the status and kstatus conditions from the source's state.
func fill(obj *herdsource.HerdSource, st source.Status, cur source.Revision, hasCur, verify bool) {
	s := &obj.Status
	s.ObservedGeneration = obj.Generation
	s.LastFetchedRevision = st.LastFetched
	s.LastAppliedRevision = st.LastApplied
	s.LastFetchTime, s.LastSuccessTime = timeOrNil(st.LastFetchTime), timeOrNil(st.LastSuccessTime)
	s.LastAcceptedRevision = nil
	if hasCur {
		s.LastAcceptedRevision = &herdsource.Revision{Commit: cur.Commit, Subject: cur.Subject, Author: cur.Author, Time: metav1.NewTime(cur.Time.UTC()), Signer: cur.Signer}
	}
	s.LastRejected = nil
	if rj := st.LastRejected; rj != nil {
		s.LastRejected = &herdsource.Rejection{Commit: rj.Commit, Reason: string(rj.Reason), Message: rj.Message, Time: metav1.NewTime(rj.Time.UTC().Truncate(time.Second))}
	}
	reason, msg := string(st.Reason), st.Message
	switch Classify(st) {
	case Pending:
		conditions.MarkReconciling(obj, meta.ProgressingReason, "checking %s for the first time", obj.Spec.URL)
		conditions.MarkUnknown(obj, meta.ReadyCondition, meta.ProgressingReason, "checking %s for the first time", obj.Spec.URL)
		conditions.Delete(obj, meta.StalledCondition)
	case Succeeded:
		conditions.MarkTrue(obj, meta.ReadyCondition, reason, "%s", msg)
		conditions.Delete(obj, meta.ReconcilingCondition)
		conditions.Delete(obj, meta.StalledCondition)
	case Retrying:
		if st.Reason == source.FetchFailed {
			msg = stableFetchMessage(st, cur, hasCur)
		}
		conditions.MarkFalse(obj, meta.ReadyCondition, reason, "%s", msg)
		conditions.Delete(obj, meta.ReconcilingCondition)
		conditions.Delete(obj, meta.StalledCondition)
	case Rejected:
		conditions.MarkFalse(obj, meta.ReadyCondition, reason, "%s", msg)
		conditions.MarkStalled(obj, reason, "%s", msg)
		conditions.Delete(obj, meta.ReconcilingCondition)
	}
	if !verify {
		conditions.Delete(obj, herdsource.SourceVerifiedCondition)
		return
	}
	switch {
	case st.LastRejected != nil && st.LastRejected.Reason == source.VerificationFailed && st.LastRejected.Commit == st.LastFetched:
		conditions.MarkFalse(obj, herdsource.SourceVerifiedCondition, string(source.VerificationFailed), "%s", st.LastRejected.Message)
	case hasCur:
		conditions.MarkTrue(obj, herdsource.SourceVerifiedCondition, meta.SucceededReason, "%s signed by %s", schema.Short(cur.Commit), cur.Signer)
	}
}

// stableFetchMessage says the remote does not answer without a running
// age, so the condition (and its event) changes once per outage.
func stableFetchMessage(st source.Status, cur source.Revision, hasCur bool) string {
	keep := "no revision accepted yet"
	if hasCur {
		keep = "keeping " + schema.Short(cur.Commit)
	}
	since := "never reached"
	if !st.LastSuccessTime.IsZero() {
		since = "last answered at " + st.LastSuccessTime.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("fetch from %s failed (%s; %s)", Redact(st.URL), since, keep)
}

// events records each change of the Ready condition: a Warning when the
// source fails or rejects a head, Normal when it recovers.
func (u *Updater) events(obj, before *herdsource.HerdSource) {
	if u.Events == nil {
		return
	}
	now, was := conditions.Get(obj, meta.ReadyCondition), conditions.Get(before, meta.ReadyCondition)
	if now == nil || (was != nil && was.Status == now.Status && was.Reason == now.Reason) {
		return
	}
	switch {
	case now.Status == metav1.ConditionFalse:
		u.Events.Eventf(obj, nil, corev1.EventTypeWarning, now.Reason, "Fetch", "%s", now.Message)
	case now.Status == metav1.ConditionTrue && was != nil && was.Status == metav1.ConditionFalse:
		u.Events.Eventf(obj, nil, corev1.EventTypeNormal, now.Reason, "Fetch", "recovered: %s", now.Message)
	}
}

// Redact removes credentials from a URL for status, events and logs.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, hasPassword := u.User.Password(); hasPassword || u.Scheme == "http" || u.Scheme == "https" {
		u.User = nil // tokens travel as user names too
	}
	return u.String()
}

func timeOrNil(t time.Time) *metav1.Time {
	if t.IsZero() {
		return nil
	}
	mt := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &mt
}

// RequestReconcile asks the leader to check the remote now, as Flux's
// receiver does: it sets the reconcile.fluxcd.io/requestedAt annotation on
// the HerdSource called name, which the leader's Updater watches. Any replica may call
// it, so every replica can take webhook deliveries.
func RequestReconcile(ctx context.Context, c client.Client, name string, at time.Time) error {
	stamp := at.UTC().Format(time.RFC3339Nano)
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, meta.ReconcileRequestAnnotation, stamp)
	obj := &herdsource.HerdSource{ObjectMeta: metav1.ObjectMeta{Name: name}}
	err := c.Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(patch)))
	if apierrors.IsNotFound(err) {
		// No leader has written it yet: create it with the request.
		obj.Annotations = map[string]string{meta.ReconcileRequestAnnotation: stamp}
		err = c.Create(ctx, obj)
		if apierrors.IsAlreadyExists(err) {
			err = c.Patch(ctx, obj, client.RawPatch(types.MergePatchType, []byte(patch)))
		}
	}
	if err != nil {
		return fmt.Errorf("request a check of the source on HerdSource %s: %w", name, err)
	}
	return nil
}
