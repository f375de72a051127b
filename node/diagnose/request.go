package diagnose

import (
	"context"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
)

// Request asks the agent on node for a report: it creates a NodeDiagnostic,
// waits until the agent has answered it or ctx ends, deletes it and returns
// the report. namespace "" means Namespace.
func Request(ctx context.Context, client dynamic.Interface, namespace, node string) (*Report, error) {
	if namespace == "" {
		namespace = Namespace
	}
	res := client.Resource(GVR).Namespace(namespace)
	created, err := res.Create(ctx, newRequest(namespace, node), metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("ask node %s for a diagnosis: create NodeDiagnostic: %w", node, err)
	}
	name := created.GetName()
	defer func() {
		// The report is read; the request is done. Delete even when ctx
		// ended, but not forever.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = res.Delete(dctx, name, metav1.DeleteOptions{})
	}()
	d, err := waitAnswered(ctx, res, created)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	if d.Status.Phase == PhaseFailed {
		return nil, fmt.Errorf("node %s: the agent could not answer NodeDiagnostic %s/%s: %s", node, namespace, name, d.Status.Message)
	}
	if d.Status.Report == nil {
		return nil, fmt.Errorf("node %s: NodeDiagnostic %s/%s is complete but holds no report", node, namespace, name)
	}
	return d.Status.Report, nil
}

// waitAnswered watches the request until it has a phase.
func waitAnswered(ctx context.Context, res dynamic.ResourceInterface, created *unstructured.Unstructured) (*NodeDiagnostic, error) {
	name, rv := created.GetName(), created.GetResourceVersion()
	for {
		w, err := res.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String(), ResourceVersion: rv})
		if err != nil {
			if ctx.Err() != nil {
				return nil, noAnswer(ctx, name)
			}
			return nil, fmt.Errorf("watch NodeDiagnostic %s: %w", name, err)
		}
		d, err := untilAnswered(ctx, w, &rv)
		w.Stop()
		if d != nil || err != nil {
			return d, err
		}
		if ctx.Err() != nil {
			return nil, noAnswer(ctx, name)
		}
	}
}

// untilAnswered reads events until the request has a phase (returned), the
// watch ends (nil, nil: watch again from *rv) or ctx ends.
func untilAnswered(ctx context.Context, w watch.Interface, rv *string) (*NodeDiagnostic, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case ev, ok := <-w.ResultChan():
			if !ok {
				return nil, nil
			}
			switch ev.Type {
			case watch.Deleted:
				return nil, errors.New("the NodeDiagnostic was deleted before the agent answered")
			case watch.Error:
				return nil, fmt.Errorf("watch: %v", ev.Object)
			}
			u, ok := ev.Object.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			*rv = u.GetResourceVersion()
			d, err := fromUnstructured(u)
			if err != nil {
				return nil, err
			}
			if d.Status.Phase != PhasePending {
				return d, nil
			}
		}
	}
}

func noAnswer(ctx context.Context, name string) error {
	return fmt.Errorf("no answer to NodeDiagnostic %s from the node's agent (%v): is herd-agent running there?", name, context.Cause(ctx))
}
