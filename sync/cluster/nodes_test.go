package cluster

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
)

// referencePlannerNode is PlannerNode as it read nodes before its one
// pass: a map lookup per annotation, every repair annotation parsed.
func referencePlannerNode(n *corev1.Node) planner.Node {
	a := n.Annotations
	pn := planner.Node{
		Name: n.Name, Labels: n.Labels, Ready: IsReady(n), Unschedulable: n.Spec.Unschedulable,
		DesiredConfig: a[schema.AnnotationDesiredConfig],
		DesiredOS:     a[schema.AnnotationDesiredOS],
		Cordoned:      a[schema.AnnotationCordoned] == "true",
		DrainStarted:  annotationTime(a, schema.AnnotationDrainStarted),
		DrainBlocked:  a[schema.AnnotationDrainBlocked] != "",
		CurrentConfig: a[schema.AnnotationCurrentConfig],
		OSBooted:      a[schema.AnnotationOSBooted],
		OSStaged:      a[schema.AnnotationOSStaged],
		State:         schema.NodeState(a[schema.AnnotationState]),
		Message:       a[schema.AnnotationMessage],
		Dispatched:    annotationTime(a, schema.AnnotationDispatched),
		AtTarget:      annotationTime(a, schema.AnnotationAtTarget),
		FailedTarget:  a[schema.AnnotationFailedTarget],
		Quarantined:   a[schema.AnnotationQuarantined],
		PrestageOS:    a[schema.AnnotationPrestageOS],
		OSPulled:      a[schema.AnnotationOSPulled],
		Converging:    HasTaint(n, schema.TaintConverging),
	}
	pn.Failures, _ = strconv.Atoi(a[schema.AnnotationFailures])
	for _, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady && !schema.IsHealthCondition(string(c.Type)) {
			continue
		}
		pn.Conditions = append(pn.Conditions, planner.Condition{
			Type: string(c.Type), Status: string(c.Status), Reason: schema.HealthReason(c.Reason),
			Since: c.LastTransitionTime.Time, Heartbeat: c.LastHeartbeatTime.Time,
		})
	}
	if st, err := schema.ParseRemediationState(a[schema.AnnotationRemediation]); err == nil {
		pn.Remediation = st
	}
	if h, err := schema.ParseRemediationRecords(a[schema.AnnotationRemediations]); err == nil {
		pn.Remediations = h
	}
	if r, err := schema.ParseRemediationReport(a[schema.AnnotationRemediated]); err == nil {
		pn.Remediated = &r
	}
	return pn
}

// TestPlannerNodeOnePass reads random nodes, each annotation present,
// absent, empty or malformed, and requires what a lookup per annotation
// read.
func TestPlannerNodeOnePass(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 16))
	now := time.Date(2026, 11, 2, 10, 0, 0, 0, time.UTC)
	st := schema.RemediationState{Problem: "KubeletUnhealthy", Rung: 1, Action: schema.RepairReboot, ID: "1793000000", Started: now}
	stJSON, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string][]string{
		schema.AnnotationDesiredConfig: {"abc", ""},
		schema.AnnotationDesiredOS:     {"c0ffee"},
		schema.AnnotationCordoned:      {"true", "false", "yes"},
		schema.AnnotationDrainStarted:  {now.Format(time.RFC3339), "yesterday", ""},
		schema.AnnotationDrainBlocked:  {"Refused", ""},
		schema.AnnotationCurrentConfig: {"abc", "def"},
		schema.AnnotationOSBooted:      {"c0ffee"},
		schema.AnnotationOSStaged:      {"beef"},
		schema.AnnotationState:         {string(schema.StateIdle), string(schema.StateDegraded)},
		schema.AnnotationMessage:       {"applying"},
		schema.AnnotationDispatched:    {now.Format(time.RFC3339), "0"},
		schema.AnnotationAtTarget:      {now.Add(time.Minute).Format(time.RFC3339), "soon"},
		schema.AnnotationFailures:      {"2", "-1", "x", ""},
		schema.AnnotationFailedTarget:  {"abc"},
		schema.AnnotationQuarantined:   {"failed twice"},
		schema.AnnotationPrestageOS:    {"beef"},
		schema.AnnotationOSPulled:      {"beef"},
		schema.AnnotationRemediation:   {string(stJSON), "{", `{"action":"dance","id":"1"}`, ""},
		schema.AnnotationRemediations:  {`[{"id":"1793000000","time":"2026-11-02T10:00:00Z","problem":"KubeletUnhealthy","rung":0,"action":"RestartKubelet"}]`, "[", ""},
		schema.AnnotationRemediated:    {schema.RemediationReport{Request: st.Request(), Result: schema.ResultSucceeded, Message: "ok"}.String(), "Reboot@1793000000 Maybe", ""},
		"node.alpha.kubernetes.io/ttl": {"0"},
		schema.AnnotationPrefix:        {"?"},
	}
	for i := range 500 {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"herd.dev/pool": "general"}, Annotations: map[string]string{}}}
		for k, vs := range values {
			if r.IntN(3) > 0 {
				n.Annotations[k] = vs[r.IntN(len(vs))]
			}
		}
		if r.IntN(2) == 0 {
			n.Spec.Taints = []corev1.Taint{{Key: schema.TaintConverging, Effect: corev1.TaintEffectNoSchedule}}
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}, {Type: corev1.NodeConditionType(schema.ConditionKubeletUnhealthy), Status: corev1.ConditionFalse}}
		want, got := referencePlannerNode(n), PlannerNode(n)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("node %d %v: one pass differs from a lookup per key (-lookup +one pass):\n%s", i, n.Annotations, diff)
		}
	}
}
