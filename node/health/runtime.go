package health

import (
	"context"
	"fmt"
	"time"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/schema"
)

// DefaultRuntimeTimeout bounds the CRI Status call.
const DefaultRuntimeTimeout = 5 * time.Second

// RuntimeStatus is the part of the CRI the runtime check needs.
type RuntimeStatus interface {
	Status(ctx context.Context) (cri.Status, error)
}

// Runtime checks the container runtime through the CRI Status call: it
// must answer within Timeout with RuntimeReady and NetworkReady true.
type Runtime struct {
	CRI     RuntimeStatus
	Timeout time.Duration // DefaultRuntimeTimeout when zero
}

// Type is HerdRuntimeUnhealthy.
func (r *Runtime) Type() schema.NodeConditionType { return schema.ConditionRuntimeUnhealthy }

// Check calls Status once.
func (r *Runtime) Check(ctx context.Context, now time.Time) Result {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultRuntimeTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := r.CRI.Status(ctx)
	return runtimeResult(st, err, now)
}

func runtimeResult(st cri.Status, err error, now time.Time) Result {
	t := schema.ConditionRuntimeUnhealthy
	switch {
	case err != nil:
		return problem(t, schema.ReasonRuntimeUnreachable, now, fmt.Sprintf("the container runtime does not answer: %v", err))
	case !st.RuntimeReady:
		return problem(t, schema.ReasonRuntimeNotReady, now, fmt.Sprintf("the container runtime is not ready: %s %s", st.Reason, st.Message))
	case !st.NetworkReady:
		return problem(t, schema.ReasonRuntimeNetworkDown, now, fmt.Sprintf("the container runtime's network is not ready: %s %s", st.Reason, st.Message))
	}
	return ok(t, schema.ReasonRuntimeHealthy, now, "the container runtime and its network are ready")
}
