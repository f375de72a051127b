package health

import (
	"context"
	"fmt"
	"time"

	"herd.dev/herd/schema"
)

// OSDrift checks that a node not in a rollout boots the desired OSTree
// commit. It reads only the Node's annotations.
type OSDrift struct {
	Node NodeGetter
}

// Type is HerdOSDrift.
func (o *OSDrift) Type() schema.NodeConditionType { return schema.ConditionOSDrift }

// Check reads the Node's annotations.
func (o *OSDrift) Check(ctx context.Context, now time.Time) Result {
	n, err := o.Node(ctx)
	if err != nil || n == nil {
		return unknown(o.Type(), schema.ReasonOSUnknown, now, fmt.Sprintf("the Node cannot be read: %v", err))
	}
	return OSDriftResult(n.Annotations, now)
}

// OSDriftResult judges a Node's annotations: the booted commit differs
// from the desired one while no rollout moves the node. A node is in a
// rollout while its agent is Working or Rebooting, or from the moment the
// controller dispatched a target until it saw the node at it (herd.dev/
// dispatched without herd.dev/at-target); a failure in between is the
// rollout's to handle, not drift.
func OSDriftResult(a map[string]string, now time.Time) Result {
	t := schema.ConditionOSDrift
	desired, booted := a[schema.AnnotationDesiredOS], a[schema.AnnotationOSBooted]
	state := schema.NodeState(a[schema.AnnotationState])
	switch {
	case desired == "":
		return ok(t, schema.ReasonOSNoDesired, now, "no desired OS commit")
	case booted == "":
		return unknown(t, schema.ReasonOSUnknown, now, "the agent has not reported the booted OS commit")
	case booted == desired:
		return ok(t, schema.ReasonOSAtDesired, now, "booted "+schema.Short(booted)+", as desired")
	case state == schema.StateWorking || state == schema.StateRebooting ||
		(a[schema.AnnotationDispatched] != "" && a[schema.AnnotationAtTarget] == ""):
		return ok(t, schema.ReasonOSInRollout, now, fmt.Sprintf("booted %s, rolling out to %s", schema.Short(booted), schema.Short(desired)))
	}
	return problem(t, schema.ReasonOSDrifted, now,
		fmt.Sprintf("booted %s, but %s is desired and no rollout is under way (agent %s)", schema.Short(booted), schema.Short(desired), state))
}
