package health

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

// Conditions turns results into the Node conditions to publish at now,
// keeping the lastTransitionTime of an existing condition whose status did
// not change. Only the results' types are returned, in their order.
func Conditions(existing []corev1.NodeCondition, results []Result, now time.Time) []corev1.NodeCondition {
	out := make([]corev1.NodeCondition, 0, len(results))
	for _, r := range results {
		c := corev1.NodeCondition{
			Type:               corev1.NodeConditionType(r.Type),
			Status:             r.Status,
			Reason:             string(r.Reason),
			Message:            r.Message,
			LastHeartbeatTime:  metav1.NewTime(now),
			LastTransitionTime: metav1.NewTime(now),
		}
		if old := findCondition(existing, c.Type); old != nil && old.Status == c.Status && !old.LastTransitionTime.IsZero() {
			c.LastTransitionTime = old.LastTransitionTime
		}
		out = append(out, c)
	}
	return out
}

// NeedsPublish reports whether results must be published over the existing
// conditions at now: a condition is missing or changed status or reason, or
// its heartbeat is a heartbeat period old. A message that changed alone
// waits for the heartbeat, so that a disk filling by the byte does not
// write the Node every round.
func NeedsPublish(existing []corev1.NodeCondition, results []Result, now time.Time, period time.Duration) bool {
	if period <= 0 {
		period = schema.DefaultHeartbeatPeriod
	}
	for _, r := range results {
		old := findCondition(existing, corev1.NodeConditionType(r.Type))
		if old == nil || old.Status != r.Status || old.Reason != string(r.Reason) || now.Sub(old.LastHeartbeatTime.Time) >= period {
			return true
		}
	}
	return false
}

// Stale reports whether a Node condition's heartbeat is too old to act on
// (schema.ConditionStale).
func Stale(c corev1.NodeCondition, now time.Time, period time.Duration) bool {
	return schema.ConditionStale(c.LastHeartbeatTime.Time, now, period)
}

// StatusPatcher patches a Node's status (kube.Client).
type StatusPatcher interface {
	PatchNodeStatus(ctx context.Context, name string, pt types.PatchType, body []byte, fieldManager string) (*corev1.Node, error)
}

// Publisher writes health conditions to one Node's status.
type Publisher struct {
	Client   StatusPatcher
	NodeName string
	// HeartbeatPeriod: schema.DefaultHeartbeatPeriod when zero.
	HeartbeatPeriod time.Duration
}

// Publish patches the conditions of results into the Node's status when
// NeedsPublish says so, given existing, the Node's conditions as last seen.
// The patch is a strategic merge patch of status.conditions, keyed by type:
// it names only Herd's conditions, so kubelet's own (Ready, MemoryPressure,
// ...) are left as kubelet wrote them, and kubelet's patches leave Herd's.
// It returns the patched Node, or nil when nothing needed publishing.
func (p *Publisher) Publish(ctx context.Context, existing []corev1.NodeCondition, results []Result, now time.Time) (*corev1.Node, error) {
	if !NeedsPublish(existing, results, now, p.HeartbeatPeriod) {
		return nil, nil
	}
	body, err := ConditionsPatch(Conditions(existing, results, now))
	if err != nil {
		return nil, err
	}
	n, err := p.Client.PatchNodeStatus(ctx, p.NodeName, types.StrategicMergePatchType, body, "herd-agent")
	if err != nil {
		return nil, fmt.Errorf("publish health conditions of node %s: %w", p.NodeName, err)
	}
	return n, nil
}

// ConditionsPatch is the strategic merge patch that sets conds in a Node's
// status and touches nothing else.
func ConditionsPatch(conds []corev1.NodeCondition) ([]byte, error) {
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
	if err != nil {
		return nil, fmt.Errorf("encode conditions patch: %w", err)
	}
	return body, nil
}
