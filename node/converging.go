package node

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"herd.dev/herd/schema"
)

// removeConvergingTaint removes the herd.dev/converging taint (effect
// NoSchedule), which a joining node registers with, once the node is at its
// target and reported Idle there. It removes nothing else; the admission
// policy lets the agent make exactly this change to its Node's spec. It
// returns when to try again after a failure (0: no retry pending).
func (a *Agent) removeConvergingTaint(ctx context.Context, n *corev1.Node, want key) time.Duration {
	if convergingTaint(n) < 0 {
		a.taintFails = 0
		return 0
	}
	if !a.atTarget(want) {
		return 0
	}
	if left := time.Until(a.taintRetryAt); left > 0 {
		return left
	}
	removed, err := a.untaint(ctx)
	if ctx.Err() != nil {
		return 0
	}
	if err != nil {
		a.taintFails++
		d := backoff(a.taintFails)
		a.taintRetryAt = time.Now().Add(d)
		a.log.Warn("removing the converging taint failed; will retry", "err", err, "attempt", a.taintFails, "in", d)
		return d
	}
	a.taintFails, a.taintRetryAt = 0, time.Time{}
	if removed {
		a.metrics.add(func(c *Counters) { c.Untainted++ })
		a.log.Info("at the target: removed the taint "+schema.TaintConverging, "config", schema.Short(want.Config))
	}
	return 0
}

// atTarget reports whether the node is at want and said so: current-config
// is desired-config, os-booted is desired-os (when set), state Idle.
func (a *Agent) atTarget(want key) bool {
	return a.hasReported && a.reported.State == schema.StateIdle && want.Config != "" &&
		a.reported.CurrentConfig == want.Config && a.j.Applied == want.Config &&
		(want.OS == "" || a.reported.OSBooted == want.OS)
}

// convergingTaint returns the index of the converging taint in n's taints,
// or -1.
func convergingTaint(n *corev1.Node) int {
	for i, t := range n.Spec.Taints {
		if t.Key == schema.TaintConverging && t.Effect == corev1.TaintEffectNoSchedule {
			return i
		}
	}
	return -1
}

// untaint removes the converging taint from the Node as it is on the API
// server now, with a JSON patch that first tests the taint is at the index
// it removes: a concurrent change of the taints fails it instead of
// removing another taint. It reports whether it removed one.
func (a *Agent) untaint(ctx context.Context) (bool, error) {
	nodes := a.opts.Client.CoreV1().Nodes()
	n, err := nodes.Get(ctx, a.opts.NodeName, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("read Node %s: %w", a.opts.NodeName, err)
	}
	i := convergingTaint(n)
	if i < 0 {
		return false, nil
	}
	at := fmt.Sprintf("/spec/taints/%d", i)
	body, err := json.Marshal([]map[string]any{
		{"op": "test", "path": at + "/key", "value": schema.TaintConverging},
		{"op": "test", "path": at + "/effect", "value": string(corev1.TaintEffectNoSchedule)},
		{"op": "remove", "path": at},
	})
	if err != nil {
		return false, err
	}
	if _, err := nodes.Patch(ctx, a.opts.NodeName, types.JSONPatchType, body, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		return false, fmt.Errorf("remove the taint %s from Node %s: %w", schema.TaintConverging, a.opts.NodeName, err)
	}
	return true, nil
}
