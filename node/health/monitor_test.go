package health_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/node/health"
	"herd.dev/herd/schema"
)

// switchCheck reports what the test sets.
type switchCheck struct{ bad atomic.Bool }

func (c *switchCheck) Type() schema.NodeConditionType { return schema.ConditionKubeletUnhealthy }

func (c *switchCheck) Check(_ context.Context, now time.Time) health.Result {
	r := health.Result{Type: c.Type(), Status: corev1.ConditionFalse, Reason: schema.ReasonKubeletHealthy, Checked: now}
	if c.bad.Load() {
		r.Status, r.Reason = corev1.ConditionTrue, schema.ReasonKubeletHealthzFailed
	}
	return r
}

// TestIntegrationMonitor: the monitor publishes a round at once, and a
// change within a round's interval, on a real API server.
func TestIntegrationMonitor(t *testing.T) {
	cs := client(t)
	const name = "monitor-node"
	newNode(t, cs, name)
	check := &switchCheck{}
	get := func() *corev1.Node {
		n, err := cs.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return n
	}
	m := &health.Monitor{Checks: []health.Check{check}, Publisher: &health.Publisher{Client: lean(t), NodeName: name},
		Node: get, Interval: 100 * time.Millisecond}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	wait := func(status corev1.ConditionStatus) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if n := get(); n != nil {
				for _, c := range n.Status.Conditions {
					if c.Type == corev1.NodeConditionType(schema.ConditionKubeletUnhealthy) && c.Status == status {
						return
					}
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("the condition never became %s", status)
			}
			<-time.After(50 * time.Millisecond)
		}
	}
	wait(corev1.ConditionFalse)
	check.bad.Store(true)
	wait(corev1.ConditionTrue)
	check.bad.Store(false)
	wait(corev1.ConditionFalse)
}
