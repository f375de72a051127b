// Package health holds the agent's node health checks, each a small type
// that returns a typed Result, and publishes the results as Node conditions.
//
// The checks see: kubelet (/healthz and its Lease), PLEG (kubelet's Ready
// message and metrics), the container runtime (CRI Status), leftover pod
// sandboxes, disk and inode use (statfs), memory stalls (PSI) and OS drift
// (annotations). A Result is an observation of one round; how long a
// problem must last before anything is done about it is the remediation's
// business (the planner's), not the check's. docs/health.md has the table.
package health

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/schema"
)

// Result is what one check saw in one round: the condition it sets.
type Result struct {
	Type    schema.NodeConditionType `json:"type"`
	Status  corev1.ConditionStatus   `json:"status"`
	Reason  schema.HealthReason      `json:"reason"`
	Message string                   `json:"message,omitempty"`
	// Checked is when the check ran: the condition's heartbeat.
	Checked time.Time `json:"checked"`
}

// Problem reports whether the result says the problem is there.
func (r Result) Problem() bool { return r.Status == corev1.ConditionTrue }

func result(t schema.NodeConditionType, s corev1.ConditionStatus, reason schema.HealthReason, now time.Time, msg string) Result {
	return Result{Type: t, Status: s, Reason: reason, Message: msg, Checked: now}
}

func ok(t schema.NodeConditionType, reason schema.HealthReason, now time.Time, msg string) Result {
	return result(t, corev1.ConditionFalse, reason, now, msg)
}

func problem(t schema.NodeConditionType, reason schema.HealthReason, now time.Time, msg string) Result {
	return result(t, corev1.ConditionTrue, reason, now, msg)
}

func unknown(t schema.NodeConditionType, reason schema.HealthReason, now time.Time, msg string) Result {
	return result(t, corev1.ConditionUnknown, reason, now, msg)
}

// Check is one health check.
type Check interface {
	// Type is the condition the check sets.
	Type() schema.NodeConditionType
	// Check looks once. It never fails: what it cannot see is an Unknown
	// result with the reason. It returns by ctx's deadline.
	Check(ctx context.Context, now time.Time) Result
}

// DefaultRoundTimeout bounds one round of checks.
const DefaultRoundTimeout = 8 * time.Second

// Round runs every check concurrently under one deadline (timeout, or
// DefaultRoundTimeout when zero) and returns their results in the order of
// checks. Each check honours the deadline and reports what it could not
// see in time as a problem or Unknown, with the reason.
func Round(ctx context.Context, checks []Check, now time.Time, timeout time.Duration) []Result {
	if timeout <= 0 {
		timeout = DefaultRoundTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	out := make([]Result, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = c.Check(ctx, now)
		}()
	}
	wg.Wait()
	return out
}
