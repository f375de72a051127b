package diagnose

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
)

// DefaultMaxAge: requests older than this are answered Failed, not
// collected: whoever asked has given up.
const DefaultMaxAge = 10 * time.Minute

// Responder is the agent's side of `herd diagnose`: it answers the
// NodeDiagnostics naming its node. It sees only those (a field selector on
// spec.nodeName) and writes only their status.
type Responder struct {
	Client    dynamic.Interface
	Namespace string // Namespace when empty
	Node      string
	// Collect makes the report; Collector.Collect on a node.
	Collect func(ctx context.Context, now time.Time) *Report
	MaxAge  time.Duration    // DefaultMaxAge when zero
	Now     func() time.Time // time.Now when nil
	Log     *slog.Logger     // slog.Default() when nil
}

func (r *Responder) ns() string {
	if r.Namespace == "" {
		return Namespace
	}
	return r.Namespace
}

func (r *Responder) now() time.Time {
	if r.Now == nil {
		return time.Now()
	}
	return r.Now()
}

func (r *Responder) listOptions() metav1.ListOptions {
	return metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", r.Node).String()}
}

// AnswerPending answers every pending request for the node once and
// returns how many it answered and the list's resource version.
func (r *Responder) AnswerPending(ctx context.Context) (int, string, error) {
	list, err := r.Client.Resource(GVR).Namespace(r.ns()).List(ctx, r.listOptions())
	if err != nil {
		return 0, "", fmt.Errorf("list NodeDiagnostics of node %s: %w", r.Node, err)
	}
	n := 0
	for i := range list.Items {
		answered, err := r.answer(ctx, &list.Items[i])
		if err != nil {
			return n, "", err
		}
		if answered {
			n++
		}
	}
	return n, list.GetResourceVersion(), nil
}

// Run answers requests as they come until ctx ends: a list, then a watch
// from it, again after the watch ends.
func (r *Responder) Run(ctx context.Context) error {
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	for ctx.Err() == nil {
		if err := r.runOnce(ctx); err != nil && ctx.Err() == nil {
			log.Warn("diagnose responder", "node", r.Node, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
		}
	}
	return nil
}

func (r *Responder) runOnce(ctx context.Context) error {
	_, rv, err := r.AnswerPending(ctx)
	if err != nil {
		return err
	}
	opts := r.listOptions()
	opts.ResourceVersion = rv
	w, err := r.Client.Resource(GVR).Namespace(r.ns()).Watch(ctx, opts)
	if err != nil {
		return fmt.Errorf("watch NodeDiagnostics of node %s: %w", r.Node, err)
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type != watch.Added && ev.Type != watch.Modified {
			continue
		}
		u, ok := ev.Object.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		if _, err := r.answer(ctx, u); err != nil {
			return err
		}
	}
	return nil
}

// answer fills one request if it is pending; it reports whether it did.
func (r *Responder) answer(ctx context.Context, u *unstructured.Unstructured) (bool, error) {
	d, err := fromUnstructured(u)
	if err != nil {
		return false, err
	}
	if d.Status.Phase != PhasePending || d.Spec.NodeName != r.Node {
		return false, nil
	}
	now := r.now()
	maxAge := r.MaxAge
	if maxAge <= 0 {
		maxAge = DefaultMaxAge
	}
	st := NodeDiagnosticStatus{Phase: PhaseComplete, CompletedAt: ptr(now.UTC().Truncate(time.Second))}
	if age := now.Sub(d.CreationTimestamp.Time); age > maxAge {
		st.Phase, st.Message = PhaseFailed, fmt.Sprintf("request is %s old, older than %s: ask again", age.Round(time.Second), maxAge)
	} else {
		st.Report = r.Collect(ctx, now)
	}
	body, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return false, fmt.Errorf("encode the answer to NodeDiagnostic %s: %w", d.Name, err)
	}
	_, err = r.Client.Resource(GVR).Namespace(r.ns()).Patch(ctx, d.Name, types.MergePatchType, body, metav1.PatchOptions{}, "status")
	if err != nil {
		return false, fmt.Errorf("answer NodeDiagnostic %s: %w", d.Name, err)
	}
	return true, nil
}

func ptr[T any](v T) *T { return &v }
