package diagnose_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/config"
	"herd.dev/herd/node/diagnose"
	herdcluster "herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/controller"
	"herd.dev/herd/test/controlplane"
)

// install applies everything `herd install` does (CRDs, RBAC, policies).
func install(t *testing.T, cfg *rest.Config) {
	t.Helper()
	manifests, err := config.Render()
	if err != nil {
		t.Fatal(err)
	}
	sch := controller.Scheme()
	_ = apiextensionsv1.AddToScheme(sch)
	c, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	if err := herdcluster.Apply(t.Context(), c, manifests); err != nil {
		t.Fatalf("herd install: %v", err)
	}
}

// agentConfig authenticates as herd-agent with a token bound to a pod on
// node, as the agent's pod would.
func agentConfig(t *testing.T, cfg *rest.Config, cs kubernetes.Interface, node string) *rest.Config {
	t.Helper()
	ctx := t.Context()
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods(diagnose.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "herd-agent-", Namespace: diagnose.Namespace},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "herd-agent",
			Containers: []corev1.Container{{Name: "agent", Image: "herd.dev/herd:test"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ttl := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(diagnose.Namespace).CreateToken(ctx, "herd-agent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &ttl,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agent := rest.CopyConfig(cfg)
	agent.BearerToken = tr.Status.Token
	return agent
}

func dyn(t *testing.T, cfg *rest.Config) dynamic.Interface {
	t.Helper()
	d, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestIntegrationDiagnose: `herd diagnose`'s request, answered by an agent
// responder with the agent's own rights on a real API server; another
// node's agent neither sees the request nor may answer it.
func TestIntegrationDiagnose(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	cfg := cp.Config()
	install(t, cfg)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	agentA := dyn(t, agentConfig(t, cfg, cs, "node-a"))
	agentB := dyn(t, agentConfig(t, cfg, cs, "node-b"))
	collected := make(chan string, 10)
	responder := &diagnose.Responder{Client: agentA, Node: "node-a", Collect: func(_ context.Context, now time.Time) *diagnose.Report {
		collected <- "node-a"
		return &diagnose.Report{Node: "node-a", CollectedAt: now.UTC().Truncate(time.Second), Load: &diagnose.LoadAvg{Load1: 1.5, Running: 2, Total: 300}}
	}}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- responder.Run(rctx) }()
	running := true
	stopResponder := func() {
		if running {
			running = false
			stop()
			<-done
		}
	}
	defer stopResponder()

	report, err := diagnose.Request(ctx, dyn(t, cfg), "", "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if report.Node != "node-a" || report.Load == nil || report.Load.Total != 300 {
		t.Fatalf("report: %+v", report)
	}
	list, err := dyn(t, cfg).Resource(diagnose.GVR).Namespace(diagnose.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil || len(list.Items) != 0 {
		t.Fatalf("requests left after the answer: %v, %v", len(list.Items), err)
	}

	// A request for node-b: node-a's agent does not see it, and node-b's
	// agent may not be impersonated by node-a's.
	req, err := dyn(t, cfg).Resource(diagnose.GVR).Namespace(diagnose.Namespace).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "herd.dev/v1alpha1", "kind": "NodeDiagnostic",
		"metadata": map[string]any{"name": "for-b", "namespace": diagnose.Namespace},
		"spec":     map[string]any{"nodeName": "node-b"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n, _, err := (&diagnose.Responder{Client: agentA, Node: "node-a", Collect: responder.Collect}).AnswerPending(ctx)
	if err != nil || n != 0 {
		t.Fatalf("node-a's agent answered %d requests (%v), want none", n, err)
	}
	// The policy takes a moment to be loaded: wait until it denies a dry
	// run, then try for real.
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"phase": "Complete", "report": map[string]any{"node": "forged"}}})
	forge := func(opts metav1.PatchOptions) bool {
		_, err = agentA.Resource(diagnose.GVR).Namespace(diagnose.Namespace).Patch(ctx, req.GetName(), types.MergePatchType, patch, opts, "status")
		return (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) && strings.Contains(err.Error(), "may not answer the NodeDiagnostic of node node-b")
	}
	for deadline := time.Now().Add(30 * time.Second); !forge(metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the policy never denied node-a's agent answering node-b's request: %v", err)
		}
	}
	if !forge(metav1.PatchOptions{}) {
		t.Fatalf("node-a's agent answering node-b's request: %v, want denied by the policy", err)
	}
	if n, _, err := (&diagnose.Responder{Client: agentB, Node: "node-b", Collect: responder.Collect}).AnswerPending(ctx); err != nil || n != 1 {
		t.Fatalf("node-b's agent answered %d (%v), want 1", n, err)
	}

	// A request nobody answered for too long is answered Failed.
	old := &diagnose.Responder{Client: agentA, Node: "node-a", Collect: responder.Collect, Now: func() time.Time { return time.Now().Add(time.Hour) }}
	stopResponder()
	if _, err := dyn(t, cfg).Resource(diagnose.GVR).Namespace(diagnose.Namespace).Create(ctx, &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "herd.dev/v1alpha1", "kind": "NodeDiagnostic",
		"metadata": map[string]any{"name": "stale", "namespace": diagnose.Namespace},
		"spec":     map[string]any{"nodeName": "node-a"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if n, _, err := old.AnswerPending(ctx); err != nil || n != 1 {
		t.Fatalf("stale request: answered %d, %v", n, err)
	}
	got, err := dyn(t, cfg).Resource(diagnose.GVR).Namespace(diagnose.Namespace).Get(ctx, "stale", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if phase, _, _ := unstructured.NestedString(got.Object, "status", "phase"); phase != "Failed" {
		t.Errorf("stale request phase %q, want Failed", phase)
	}
	if len(collected) != 2 {
		t.Errorf("collected %d reports, want 2 (node-a's and node-b's)", len(collected))
	}
}
