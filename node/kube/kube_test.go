package kube_test

import (
	"encoding/json"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/kube"
	"herd.dev/herd/test/controlplane"
)

// The lean client against a real API server: a Node read, patched and
// watched (one Node, by field selector, two feeds each told), its status
// patched, a ConfigMap read, pods listed by node, a node Lease read, and
// errors as client-go's typed clientset reports them.
func TestClient(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	admin, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	c, err := kube.New(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, name := range []string{"n1", "n2"} {
		if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	feed, err := kube.WatchNode(ctx, c, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if n := feed.Node(); n == nil || n.Name != "n1" {
		t.Fatalf("watched node %v", n)
	}
	w, err := kube.WatchNodes(ctx, c, "")
	if err != nil {
		t.Fatal(err)
	}
	feeds := []*kube.Feed{w.Feed("n1"), w.Feed("n1")}

	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{"example.com/a": "1"}}})
	n, err := c.PatchNode(ctx, "n1", types.MergePatchType, body, "herd-agent")
	if err != nil || n.Annotations["example.com/a"] != "1" {
		t.Fatalf("patch: %v, %v", n.Annotations, err)
	}
	// Not the same resourceVersion: kube-controller-manager's TTL
	// controller may annotate the new node in between.
	if got, err := c.Node(ctx, "n1"); err != nil || got.Annotations["example.com/a"] != "1" {
		t.Errorf("get after patch: %v, %v", got, err)
	}
	for i, f := range append(feeds, feed) {
		select {
		case <-f.Changed():
		case <-time.After(30 * time.Second):
			t.Fatalf("feed %d was not told of the patch", i)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for feed.Node().Annotations["example.com/a"] != "1" {
		if time.Now().After(deadline) {
			t.Fatal("the watch's cache never got the patch")
		}
		<-time.After(10 * time.Millisecond)
	}
	status, _ := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{Type: "HerdExample", Status: corev1.ConditionTrue}}}})
	if n, err := c.PatchNodeStatus(ctx, "n1", types.StrategicMergePatchType, status, "herd-agent"); err != nil || len(n.Status.Conditions) != 1 || n.Status.Conditions[0].Type != "HerdExample" {
		t.Errorf("patch status: %v, %v", n.Status.Conditions, err)
	}
	if _, err := c.Node(ctx, "none"); !apierrors.IsNotFound(err) {
		t.Errorf("get a missing node: %v, want NotFound", err)
	}

	if _, err := admin.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cm"}, Data: map[string]string{"k": "v"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if cm, err := c.ConfigMap(ctx, "default", "cm"); err != nil || cm.Data["k"] != "v" {
		t.Errorf("config map: %v, %v", cm, err)
	}
	if _, err := c.ConfigMap(ctx, "default", "none"); !apierrors.IsNotFound(err) {
		t.Errorf("get a missing config map: %v, want NotFound", err)
	}

	for _, p := range []struct{ name, node string }{{"a", "n1"}, {"b", "n2"}} {
		if _, err := admin.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.name},
			Spec: corev1.PodSpec{NodeName: p.node, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pods, err := c.ListPods(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", "n1").String()})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Name != "a" {
		t.Errorf("pods on n1: %v, %v", pods, err)
	}

	if _, err := admin.CoordinationV1().Leases("kube-node-lease").Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr("n1")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if l, err := c.Lease(ctx, "kube-node-lease", "n1"); err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != "n1" {
		t.Errorf("lease: %v, %v", l, err)
	}
	if _, err := c.Lease(ctx, "kube-node-lease", "none"); !apierrors.IsNotFound(err) {
		t.Errorf("get a missing lease: %v, want NotFound", err)
	}
}

func ptr[T any](v T) *T { return &v }
