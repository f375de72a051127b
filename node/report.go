package node

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"herd.dev/herd/schema"
)

// maxMessage bounds the message annotation.
const maxMessage = 1024

// report is what the agent's annotations say.
type report struct {
	CurrentConfig string
	OSBooted      string
	OSStaged      string
	OSPulled      string
	State         schema.NodeState
	Message       string
}

func (r report) annotations() map[string]string {
	return map[string]string{
		schema.AnnotationCurrentConfig: r.CurrentConfig,
		schema.AnnotationOSBooted:      r.OSBooted,
		schema.AnnotationOSStaged:      r.OSStaged,
		schema.AnnotationOSPulled:      r.OSPulled,
		schema.AnnotationState:         string(r.State),
		schema.AnnotationMessage:       r.Message,
	}
}

// matches reports whether the Node's annotations say what r says (an empty
// value is an absent annotation).
func (r report) matches(ann map[string]string) bool {
	for k, v := range r.annotations() {
		if ann[k] != v {
			return false
		}
	}
	return true
}

// report returns the truth as the agent knows it, in the given state.
func (a *Agent) report(state schema.NodeState, msg string) report {
	return report{
		CurrentConfig: a.j.Applied,
		OSBooted:      a.booted,
		OSStaged:      a.staged,
		OSPulled:      a.j.OSPulled,
		State:         state,
		Message:       msg,
	}
}

// publish patches the agent's annotations to r, unless they already say so.
// One merge patch carries all of them; empty values remove the annotation.
func (a *Agent) publish(ctx context.Context, r report) error {
	r.Message = truncate(r.Message, maxMessage)
	if a.hasReported && r == a.reported {
		return nil
	}
	if err := a.patch(ctx, r); err != nil {
		return err
	}
	if !a.hasReported || a.reported.State != r.State {
		a.log.Info("state", "state", r.State, "message", r.Message)
	}
	a.reported, a.hasReported = r, true
	return nil
}

func (a *Agent) patch(ctx context.Context, r report) error {
	ann := map[string]any{}
	for k, v := range r.annotations() {
		if v == "" {
			ann[k] = nil
		} else {
			ann[k] = v
		}
	}
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	n, err := a.opts.Client.CoreV1().Nodes().Patch(ctx, a.opts.NodeName, types.MergePatchType, body,
		metav1.PatchOptions{FieldManager: FieldManager})
	if err != nil {
		return fmt.Errorf("report to Node %s: %w", a.opts.NodeName, err)
	}
	a.patchedRV = n.ResourceVersion
	return nil
}

// ensureReported re-patches the annotations when the Node lost what the
// agent last reported (someone else changed them). It returns wait, or a
// short retry when the patch failed.
func (a *Agent) ensureReported(ctx context.Context, n *corev1.Node, wait time.Duration) time.Duration {
	if !a.hasReported || a.reported.matches(n.Annotations) || olderThan(n.ResourceVersion, a.patchedRV) {
		return wait
	}
	if err := a.patch(ctx, a.reported); err != nil {
		if ctx.Err() == nil {
			a.log.Warn("report failed", "err", err)
		}
		return 5 * time.Second
	}
	return wait
}

// olderThan reports whether resource version rv is older than ref: the
// watch can deliver a Node from before the agent's own last patch. Resource
// versions are opaque; when they are not numbers this says false, and the
// agent merely patches once more than needed.
func olderThan(rv, ref string) bool {
	a, errA := strconv.ParseUint(rv, 10, 64)
	b, errB := strconv.ParseUint(ref, 10, 64)
	return errA == nil && errB == nil && a < b
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
