package node_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/config"
	"herd.dev/herd/node"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
	herdcluster "herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/controller"
)

// installAgentRBAC creates the objects of config/agent/*.yaml.
func installAgentRBAC(t *testing.T, _ kubernetes.Interface) {
	t.Helper()
	manifests, err := config.Render()
	if err != nil {
		t.Fatal(err)
	}
	sch := controller.Scheme()
	_ = apiextensionsv1.AddToScheme(sch)
	c, err := client.New(cluster(t).Config(), client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	if err := herdcluster.Apply(t.Context(), c, manifests); err != nil {
		t.Fatalf("herd install: %v", err)
	}
}

func create(ctx context.Context, cs kubernetes.Interface, obj runtime.Object) error {
	var err error
	switch o := obj.(type) {
	case *corev1.ServiceAccount:
		_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRole:
		_, err = cs.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.ClusterRoleBinding:
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.Role:
		_, err = cs.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *rbacv1.RoleBinding:
		_, err = cs.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *admissionv1.ValidatingAdmissionPolicy:
		_, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, o, metav1.CreateOptions{})
	case *admissionv1.ValidatingAdmissionPolicyBinding:
		_, err = cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, o, metav1.CreateOptions{})
	default:
		return fmt.Errorf("unexpected object %T", obj)
	}
	return err
}

// agentClientFor returns a client authenticated as herd-agent with a token
// bound to a pod scheduled on nodeName, as the agent's pod would have.
func agentClientFor(t *testing.T, cs kubernetes.Interface, nodeName string) kubernetes.Interface {
	t.Helper()
	ctx := t.Context()
	pod, err := cs.CoreV1().Pods(schema.RenderedNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "herd-agent-", Namespace: schema.RenderedNamespace},
		Spec: corev1.PodSpec{
			NodeName:           nodeName,
			ServiceAccountName: "herd-agent",
			Containers:         []corev1.Container{{Name: "agent", Image: "herd.dev/herd:test"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		_ = cs.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	ttl := int64(3600)
	tr, err := cs.CoreV1().ServiceAccounts(schema.RenderedNamespace).CreateToken(ctx, "herd-agent", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			ExpirationSeconds: &ttl,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agentTokens.Store(nodeName, tr.Status.Token)
	return clientWithToken(t, tr.Status.Token)
}

// agentTokens holds the pod-bound token agentClientFor made, by node.
var agentTokens sync.Map

// agentKubeFor is the agent's own client with the token agentClientFor
// made for nodeName.
func agentKubeFor(t *testing.T, nodeName string) *kube.Client {
	t.Helper()
	token, ok := agentTokens.Load(nodeName)
	if !ok {
		t.Fatalf("no agent token for node %s", nodeName)
	}
	cfg := cluster(t).Config()
	cfg.BearerToken = token.(string)
	c, err := kube.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func clientWithToken(t *testing.T, token string) kubernetes.Interface {
	t.Helper()
	cfg := cluster(t).Config()
	cfg.BearerToken = token
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func patchJSON(ctx context.Context, cs kubernetes.Interface, name string, ops []map[string]any) error {
	body, _ := json.Marshal(ops)
	_, err := cs.CoreV1().Nodes().Patch(ctx, name, types.JSONPatchType, body, metav1.PatchOptions{})
	return err
}

// setTaints sets the Node's taints, as an admin.
func setTaints(t *testing.T, cs kubernetes.Interface, name string, taints ...corev1.Taint) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"spec": map[string]any{"taints": taints}})
	if _, err := cs.CoreV1().Nodes().Patch(t.Context(), name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// taintKeys returns the keys of the Node's taints.
func taintKeys(t *testing.T, cs kubernetes.Interface, name string) []string {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, tt := range n.Spec.Taints {
		keys = append(keys, tt.Key)
	}
	return keys
}

func patchAnnotations(ctx context.Context, cs kubernetes.Interface, name string, ann map[string]any, dryRun bool) error {
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	opts := metav1.PatchOptions{}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	_, err := cs.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, body, opts)
	return err
}

// The agent's RBAC and admission policy (config/agent) on the real API
// server: an agent may patch only its own Node's agent annotations, and the
// real agent works with exactly these permissions.
func TestAgentRBAC(t *testing.T) {
	repo := newRepo(t, osfixture.Options{Versions: 1})
	a := newTestNode(t, repo, osfixture.SysrootOptions{}) // the agent's node
	b := newTestNode(t, repo, osfixture.SysrootOptions{}) // another node
	admin := a.cs
	installAgentRBAC(t, admin)
	agent := agentClientFor(t, admin, a.name)
	ctx := t.Context()

	// The policy takes a moment to be loaded: wait until it denies (dry run).
	var last error
	if !poll(t, 30*time.Second, func() bool {
		last = patchAnnotations(ctx, agent, b.name, map[string]any{schema.AnnotationState: "Idle"}, true)
		return apierrors.IsForbidden(last) || apierrors.IsInvalid(last)
	}) {
		t.Fatalf("the admission policy never denied a patch of another node: %v", last)
	}

	// The policy type-checks against the Node schema without warnings: a
	// misspelt field would otherwise only show at run time.
	var vap *admissionv1.ValidatingAdmissionPolicy
	if !poll(t, 30*time.Second, func() bool {
		var err error
		vap, err = admin.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, "herd-agent-own-node", metav1.GetOptions{})
		return err == nil && vap.Status.ObservedGeneration == vap.Generation && vap.Status.TypeChecking != nil
	}) {
		t.Fatalf("the admission policy was never type-checked: %+v", vap.Status)
	}
	for _, w := range vap.Status.TypeChecking.ExpressionWarnings {
		t.Errorf("admission policy %s: %s", w.FieldRef, w.Warning)
	}

	ok := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v, want allowed", what, err)
		}
	}
	denied := func(what string, err error) {
		t.Helper()
		if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
			t.Errorf("%s: %v, want denied", what, err)
		} else {
			t.Logf("%s: denied: %v", what, err)
		}
	}
	ok("patch own agent annotations", patchAnnotations(ctx, agent, a.name, map[string]any{
		schema.AnnotationState: "Idle", schema.AnnotationMessage: "hello", schema.AnnotationCurrentConfig: "x",
		schema.AnnotationOSBooted: "y", schema.AnnotationOSStaged: "z",
	}, false))
	ok("remove own agent annotation", patchAnnotations(ctx, agent, a.name, map[string]any{schema.AnnotationOSStaged: nil}, false))
	denied("patch another node's agent annotations", patchAnnotations(ctx, agent, b.name, map[string]any{schema.AnnotationState: "Idle"}, false))
	denied("patch own desired-config", patchAnnotations(ctx, agent, a.name, map[string]any{schema.AnnotationDesiredConfig: "evil"}, false))
	denied("patch own desired-os", patchAnnotations(ctx, agent, a.name, map[string]any{schema.AnnotationDesiredOS: "evil"}, false))
	denied("patch another annotation", patchAnnotations(ctx, agent, a.name, map[string]any{"example.com/x": "1"}, false))
	setAnnotations(t, admin, a.name, map[string]any{"example.com/keep": "1"})
	denied("remove another annotation", patchAnnotations(ctx, agent, a.name, map[string]any{"example.com/keep": nil}, false))
	ok("patch own os-pulled", patchAnnotations(ctx, agent, a.name, map[string]any{schema.AnnotationOSPulled: "p"}, false))
	denied("patch own prestage-os", patchAnnotations(ctx, agent, a.name, map[string]any{schema.AnnotationPrestageOS: "evil"}, false))
	_, err := agent.CoreV1().Nodes().Patch(ctx, a.name, types.MergePatchType, []byte(`{"metadata":{"labels":{"herd.dev/pool":"evil"}}}`), metav1.PatchOptions{})
	denied("patch own labels", err)
	_, err = agent.CoreV1().Nodes().Patch(ctx, a.name, types.MergePatchType, []byte(`{"spec":{"unschedulable":true}}`), metav1.PatchOptions{})
	denied("cordon own node", err)
	err = agent.CoreV1().Nodes().Delete(ctx, b.name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
	denied("delete a node", err)

	// Taints: the agent may remove herd.dev/converging from its own Node,
	// and make no other change to the spec.
	converging := corev1.Taint{Key: schema.TaintConverging, Effect: corev1.TaintEffectNoSchedule}
	other := corev1.Taint{Key: "example.com/other", Value: "x", Effect: corev1.TaintEffectNoSchedule}
	setTaints(t, admin, a.name, converging, other)
	setTaints(t, admin, b.name, converging)
	remove := func(i int) []map[string]any {
		return []map[string]any{{"op": "remove", "path": fmt.Sprintf("/spec/taints/%d", i)}}
	}
	denied("add a taint to own node", patchJSON(ctx, agent, a.name, []map[string]any{
		{"op": "add", "path": "/spec/taints/-", "value": map[string]any{"key": "example.com/new", "effect": "NoSchedule"}}}))
	denied("remove another taint from own node", patchJSON(ctx, agent, a.name, remove(1)))
	denied("remove the converging taint from another node", patchJSON(ctx, agent, b.name, remove(0)))
	denied("change the converging taint's effect on own node", patchJSON(ctx, agent, a.name, []map[string]any{
		{"op": "replace", "path": "/spec/taints/0/effect", "value": "NoExecute"}}))
	denied("remove the converging taint and cordon own node", patchJSON(ctx, agent, a.name, append(remove(0),
		map[string]any{"op": "add", "path": "/spec/unschedulable", "value": true})))
	denied("remove the converging taint and set own podCIDR", patchJSON(ctx, agent, a.name, append(remove(0),
		map[string]any{"op": "add", "path": "/spec/podCIDR", "value": "10.9.0.0/24"})))
	denied("swap the converging taint for another on own node", patchJSON(ctx, agent, a.name, []map[string]any{
		{"op": "replace", "path": "/spec/taints/0", "value": map[string]any{"key": "example.com/new", "effect": "NoSchedule"}}}))
	_, err = agent.CoreV1().Nodes().Patch(ctx, a.name, types.MergePatchType, []byte(`{"spec":{"taints":null}}`), metav1.PatchOptions{})
	denied("remove all taints of own node", err)
	if got := taintKeys(t, admin, a.name); !slices.Equal(got, []string{schema.TaintConverging, other.Key}) {
		t.Errorf("own node's taints after the denied patches: %v", got)
	}
	ok("remove the converging taint from own node", patchJSON(ctx, agent, a.name, remove(0)))
	if got := taintKeys(t, admin, a.name); !slices.Equal(got, []string{other.Key}) {
		t.Errorf("own node's taints after removing the converging one: %v", got)
	}
	if got := taintKeys(t, admin, b.name); !slices.Equal(got, []string{schema.TaintConverging}) {
		t.Errorf("the other node's taints: %v", got)
	}
	setTaints(t, admin, a.name, converging)
	ok("remove the only taint, the converging one, from own node", patchJSON(ctx, agent, a.name, remove(0)))
	setTaints(t, admin, a.name, other, converging) // for the agent below

	// Reads: its own Node by a field-selector watch, rendered configs by name only.
	w, err := agent.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", a.name).String()})
	ok("watch own node", err)
	if err == nil {
		w.Stop()
	}
	_, err = agent.CoreV1().ConfigMaps(schema.RenderedNamespace).Get(ctx, schema.RenderedName("none"), metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("get a rendered ConfigMap: %v, want NotFound (allowed)", err)
	}
	_, err = agent.CoreV1().ConfigMaps(schema.RenderedNamespace).List(ctx, metav1.ListOptions{})
	denied("list ConfigMaps", err)
	_, err = agent.CoreV1().ConfigMaps(metav1.NamespaceDefault).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
	denied("get a ConfigMap elsewhere", err)
	_, err = agent.CoreV1().Secrets(schema.RenderedNamespace).Get(ctx, "x", metav1.GetOptions{})
	denied("get a Secret", err)

	// A token of the same ServiceAccount that is not bound to a pod carries
	// no node: it may patch no Node.
	plain, err := cluster(t).ServiceAccountToken(ctx, schema.RenderedNamespace, "herd-agent", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	denied("patch with an unbound token", patchAnnotations(ctx, clientWithToken(t, plain), a.name, map[string]any{schema.AnnotationState: "Idle"}, false))

	// The real agent, with only these permissions, applies a config and reports.
	h := publishRender(t, admin, render(t, repo, spec{commit: repo.Commits[0], sysctl: map[string]string{"vm.max_map_count": "262144"}}))
	a.setDesired(h, repo.Commits[0])
	a.startWith(func(o *node.Options, _ func()) { o.Client = agentKubeFor(t, a.name) })
	a.waitUpToDate(h, repo.Commits[0])
	if !poll(t, 30*time.Second, func() bool { return slices.Equal(taintKeys(t, admin, a.name), []string{other.Key}) }) {
		t.Errorf("the agent did not remove the converging taint at its target: taints %v", taintKeys(t, admin, a.name))
	}
	if got := a.readRootFile("proc/sys/vm/max_map_count"); got != "262144\n" {
		t.Errorf("vm.max_map_count = %q", got)
	}
	if strings.Contains(fmt.Sprint(a.annotations()), "evil") {
		t.Errorf("a denied change got through: %v", a.annotations())
	}
}
