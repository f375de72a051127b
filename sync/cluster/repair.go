package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
)

// repairAnnotations are a node's repair annotations, as PlannerNode
// found them ("" when absent).
type repairAnnotations struct{ state, history, report string }

// repairFields reads what repairs decide on into a planner node: the
// node's Ready condition and the agent's health conditions, the repair in
// progress, its history and the agent's last report. Annotations that do
// not parse are left out, as if absent; absent ones are not parsed (most
// nodes, most of the time: no error to make).
func repairFields(n *corev1.Node, a repairAnnotations, pn *planner.Node) {
	for _, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady && !schema.IsHealthCondition(string(c.Type)) {
			continue
		}
		pn.Conditions = append(pn.Conditions, planner.Condition{
			Type: string(c.Type), Status: string(c.Status), Reason: schema.HealthReason(c.Reason),
			Since: c.LastTransitionTime.Time, Heartbeat: c.LastHeartbeatTime.Time,
		})
	}
	if a.state != "" {
		if st, err := schema.ParseRemediationState(a.state); err == nil {
			pn.Remediation = st
		}
	}
	if a.history != "" {
		if h, err := schema.ParseRemediationRecords(a.history); err == nil {
			pn.Remediations = h
		}
	}
	if a.report != "" {
		if r, err := schema.ParseRemediationReport(a.report); err == nil {
			pn.Remediated = &r
		}
	}
}

// StartRepair records the rung st on the node, in one write: the state,
// the rung that ended (ended, into its history), a cordon when asked, and
// the request to its agent when the rung needs no drain first
// (st.Requested is set). A node already at this rung is left as it is. It
// returns the node as written.
func (n *Nodes) StartRepair(ctx context.Context, node *corev1.Node, st schema.RemediationState, ended *schema.RemediationRecord, cordon bool) (*corev1.Node, error) {
	if cur, _ := schema.ParseRemediationState(node.Annotations[schema.AnnotationRemediation]); cur != nil && cur.ID == st.ID {
		return node, nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	if err := setRepairState(node, st); err != nil {
		return nil, err
	}
	delete(node.Annotations, schema.AnnotationRemediate) // an earlier rung's, handled
	if !st.Requested.IsZero() {
		setAnnotation(node, schema.AnnotationRemediate, st.Request().String())
	}
	if ended != nil {
		if err := appendRecord(node, *ended); err != nil {
			return nil, err
		}
	}
	if cordon && !node.Spec.Unschedulable {
		node.Spec.Unschedulable = true
		setAnnotation(node, schema.AnnotationCordoned, "true")
	}
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return nil, fmt.Errorf("start repair %s of node %s: %w", st.Request(), node.Name, err)
	}
	return node, nil
}

// RequestRepair asks the node's agent for the rung it is at, once drained:
// the request and the time it was made, in one write.
func (n *Nodes) RequestRepair(ctx context.Context, node *corev1.Node, st schema.RemediationState, now time.Time) (*corev1.Node, error) {
	if node.Annotations[schema.AnnotationRemediate] == st.Request().String() {
		return node, nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	st.Requested = now.UTC()
	if err := setRepairState(node, st); err != nil {
		return nil, err
	}
	setAnnotation(node, schema.AnnotationRemediate, st.Request().String())
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return nil, fmt.Errorf("request repair %s of node %s: %w", st.Request(), node.Name, err)
	}
	return node, nil
}

// EndRepair ends the node's repair, in one write: the state and the
// request go, ended joins its history, and the node is uncordoned if the
// repair cordoned it, or quarantined (cordoned, with the why) when
// quarantine is set. A repair ended already is left as it is.
func (n *Nodes) EndRepair(ctx context.Context, node *corev1.Node, st schema.RemediationState, ended schema.RemediationRecord, quarantine string) error {
	cur, _ := schema.ParseRemediationState(node.Annotations[schema.AnnotationRemediation])
	if cur == nil || cur.ID != st.ID {
		return nil
	}
	patch := client.MergeFrom(node)
	node = node.DeepCopy()
	delete(node.Annotations, schema.AnnotationRemediation)
	delete(node.Annotations, schema.AnnotationRemediate)
	delete(node.Annotations, schema.AnnotationDrainBlocked) // the rung's drain ends with it
	if err := appendRecord(node, ended); err != nil {
		return err
	}
	switch {
	case quarantine != "":
		setAnnotation(node, schema.AnnotationQuarantined, quarantine)
		if !node.Spec.Unschedulable {
			node.Spec.Unschedulable = true
			setAnnotation(node, schema.AnnotationCordoned, "true")
		}
	case cur.Cordoned && node.Annotations[schema.AnnotationCordoned] == "true":
		node.Spec.Unschedulable = false
		delete(node.Annotations, schema.AnnotationCordoned)
		delete(node.Annotations, schema.AnnotationDrainStarted)
	}
	if err := n.Client.Patch(ctx, node, patch); err != nil {
		return fmt.Errorf("end repair %s of node %s: %w", st.Request(), node.Name, err)
	}
	return nil
}

// MarkReplace marks the node for replacement: herd.dev/replace says why
// and when, and the repair's state says it is marked. With deleteNode the
// Node is deleted then (its machine's owner replaces it).
func (n *Nodes) MarkReplace(ctx context.Context, node *corev1.Node, st schema.RemediationState, why string, deleteNode bool) error {
	if node.Annotations[schema.AnnotationReplace] == "" {
		patch := client.MergeFrom(node)
		node = node.DeepCopy()
		if err := setRepairState(node, st); err != nil {
			return err
		}
		setAnnotation(node, schema.AnnotationReplace, st.Marked.UTC().Format(time.RFC3339)+" "+why)
		if err := n.Client.Patch(ctx, node, patch); err != nil {
			return fmt.Errorf("mark node %s for replacement: %w", node.Name, err)
		}
	}
	if !deleteNode {
		return nil
	}
	if err := n.Client.Delete(ctx, node); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete node %s for replacement: %w", node.Name, err)
	}
	return nil
}

func setRepairState(node *corev1.Node, st schema.RemediationState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode %s: %w", schema.AnnotationRemediation, err)
	}
	setAnnotation(node, schema.AnnotationRemediation, string(b))
	return nil
}

// appendRecord adds a rung to the node's history annotation.
func appendRecord(node *corev1.Node, r schema.RemediationRecord) error {
	h, _ := schema.ParseRemediationRecords(node.Annotations[schema.AnnotationRemediations])
	b, err := json.Marshal(schema.AppendRecord(h, r))
	if err != nil {
		return fmt.Errorf("encode %s: %w", schema.AnnotationRemediations, err)
	}
	setAnnotation(node, schema.AnnotationRemediations, string(b))
	return nil
}
