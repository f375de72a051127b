package health_test

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	crclient "sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/config"
	"herd.dev/herd/node/health"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/schema"
	herdcluster "herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/controller"
)

// agentClient installs Herd's manifests and returns clients that are the
// agent on node: the herd-agent ServiceAccount with a token bound to a pod
// on that node; the agent's own (node/kube) and client-go's.
func agentClient(t *testing.T, cs kubernetes.Interface, node string) (*kube.Client, kubernetes.Interface) {
	t.Helper()
	ctx := t.Context()
	manifests, err := config.Render()
	if err != nil {
		t.Fatal(err)
	}
	sch := controller.Scheme()
	_ = apiextensionsv1.AddToScheme(sch)
	c, err := crclient.New(cp.Config(), crclient.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	if err := herdcluster.Apply(ctx, c, manifests); err != nil {
		t.Fatalf("herd install: %v", err)
	}
	pod, err := cs.CoreV1().Pods(schema.RenderedNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "herd-agent-", Namespace: schema.RenderedNamespace},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: "herd-agent",
			Containers: []corev1.Container{{Name: "agent", Image: "herd.dev/herd:test"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ttl := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(schema.RenderedNamespace).CreateToken(ctx, "herd-agent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &ttl,
			BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := cp.Config()
	cfg.BearerToken = tr.Status.Token
	agent, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	own, err := kube.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return own, agent
}

// TestIntegrationAgentRights: with the agent's own rights, the checks read
// the Lease and the pods on the node, and the publisher writes Herd's
// conditions; kubelet's conditions and the node's addresses stay out of
// reach, as does another node's status.
func TestIntegrationAgentRights(t *testing.T) {
	cs := client(t)
	ctx := t.Context()
	const node, other = "rights-node", "rights-other"
	newNode(t, cs, node, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady"})
	newNode(t, cs, other)
	renewLease(t, cs, node, time.Now())
	own, agent := agentClient(t, cs, node)

	// The policy takes a moment to be loaded: wait until it denies a dry
	// run, then check it type-checked against the Node schema cleanly.
	forged := []byte(`{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Forged"}]}}`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := agent.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, forged, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}, "status")
		if denied(err, "only the Herd conditions") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the admission policy never denied a forged Ready: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		vap, err := cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, "herd-agent-own-node", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if tc := vap.Status.TypeChecking; tc != nil && vap.Status.ObservedGeneration == vap.Generation {
			for _, w := range tc.ExpressionWarnings {
				t.Errorf("admission policy %s: %s", w.FieldRef, w.Warning)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the admission policy was never type-checked: %+v", vap.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}

	if _, err := health.NodeLease(own, node)(ctx); err != nil {
		t.Errorf("the agent reads its Lease: %v", err)
	}
	if _, err := health.PodsOnNode(own.ListPods, node)(ctx); err != nil {
		t.Errorf("the agent lists the pods on its node: %v", err)
	}
	pub := &health.Publisher{Client: own, NodeName: node}
	res := []health.Result{{Type: schema.ConditionDiskPressure, Status: corev1.ConditionFalse, Reason: schema.ReasonDiskOK}}
	if _, err := pub.Publish(ctx, nil, res, time.Now()); err != nil {
		t.Fatalf("the agent publishes its conditions: %v", err)
	}
	if _, err := (&health.Publisher{Client: own, NodeName: other}).Publish(ctx, nil, res, time.Now()); !denied(err, "may not change Node "+other) {
		t.Errorf("the agent publishing on another node: %v", err)
	}
	for name, patch := range map[string]string{
		"kubelet's Ready": `{"status":{"conditions":[{"type":"Ready","status":"False","reason":"Forged"}]}}`,
		"its addresses":   `{"status":{"addresses":[{"type":"InternalIP","address":"10.9.9.9"}]}}`,
	} {
		_, err := agent.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, "status")
		if !denied(err, "only the Herd conditions") {
			t.Errorf("the agent changing %s: %v", name, err)
		}
	}
	n, err := cs.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[corev1.NodeConditionType]string{}
	for _, c := range n.Status.Conditions {
		reasons[c.Type] = c.Reason
	}
	if len(reasons) != 2 || reasons[corev1.NodeReady] != "KubeletReady" || reasons["HerdDiskPressure"] != "DiskOK" || len(n.Status.Addresses) != 0 {
		t.Errorf("conditions after the agent's attempts: %+v", n.Status.Conditions)
	}
}

func denied(err error, msg string) bool {
	return (apierrors.IsForbidden(err) || apierrors.IsInvalid(err)) && strings.Contains(err.Error(), msg)
}
