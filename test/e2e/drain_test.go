package e2e

import (
	"os/exec"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/writeback"
)

// barePodKeepsItsNode bumps general's OS with a pod that has no controller
// on one of its nodes. Under the default drain policy the pod is never
// evicted: its node stays cordoned on the old OS and is reported
// DrainBlocked, naming the pod, in the HerdPool, `herd status` and the
// status branch, while the other nodes roll out within maxUnavailable.
// When its owner deletes the pod, the node finishes too.
func barePodKeepsItsNode(r *run, herd string) {
	t := r.t
	t.Helper()
	ctx := t.Context()
	general := nodesOf(r.Fleet, "general")
	node := general[1]
	v2 := r.Fleet.Commits()[1]
	if err := r.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tools"}}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "debug", Namespace: "tools"},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "sh", Image: "busybox:1"}}},
	}
	if err := r.Client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	poll(t, time.Minute, "the bare pod running", func() bool {
		return r.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod) == nil && pod.Status.Phase == corev1.PodRunning
	})

	budget := watchNodes(t, r.Story, "general")
	r.edit("pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	r.edit("pools/general.cue", `maxUnavailable: "25%"`, `maxUnavailable: 2`)
	r.push("general: 2026.11.0, two at a time")

	want := []herdpool.DrainBlockedNode{{Node: node, State: cluster.Refused, Pods: []herdpool.BlockedPod{{Name: "tools/debug", Reason: "Unmanaged"}}}}
	np := r.waitPool("general", node+" reported DrainBlocked", 2*time.Minute, func(np *herdpool.HerdPool) bool {
		return slices.EqualFunc(np.Status.DrainBlocked, want, func(a, b herdpool.DrainBlockedNode) bool {
			return a.Node == b.Node && a.State == b.State && slices.Equal(a.Pods, b.Pods)
		})
	})
	if !strings.Contains(np.Status.Message, node+": tools/debug (Unmanaged)") {
		t.Errorf("general's message does not name the blocking pod: %s", np.Status.Message)
	}
	// The rollout goes on without it.
	for _, n := range general {
		if n == node {
			continue
		}
		waitNode(t, r, n, func(k *corev1.Node) bool {
			return k.Annotations[schema.AnnotationOSBooted] == v2 && !k.Spec.Unschedulable
		})
	}
	out, err := exec.Command(herd, "status", "--kubeconfig", r.Kubeconfig).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "DrainBlocked: "+node+": tools/debug (Unmanaged)") {
		t.Errorf("herd status does not name the blocking pod (%v):\n%s", err, out)
	}
	poll(t, 30*time.Second, "a status commit with "+node+" DrainBlocked", func() bool {
		r.git("fetch", "-q", "origin", "+refs/heads/herd/status:refs/remotes/origin/herd/status")
		b, err := r.Git("show", "origin/herd/status:clusters/demo/general.yaml")
		var ps writeback.PoolStatus
		return err == nil && yaml.Unmarshal([]byte(b), &ps) == nil &&
			slices.Contains(ps.Nodes, writeback.NodeStatus{Name: node, State: "DrainBlocked", Message: "blocked by tools/debug (Unmanaged)"})
	})
	var k corev1.Node
	if err := r.Client.Get(ctx, client.ObjectKey{Name: node}, &k); err != nil {
		t.Fatal(err)
	}
	if !k.Spec.Unschedulable || k.Annotations[schema.AnnotationDesiredOS] == v2 {
		t.Errorf("%s: unschedulable %v, desired OS %s; want it cordoned, not told the new OS", node, k.Spec.Unschedulable, schema.Short(k.Annotations[schema.AnnotationDesiredOS]))
	}
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil || pod.DeletionTimestamp != nil {
		t.Fatalf("the bare pod was evicted: %v", err)
	}

	// Its owner is done with it.
	if err := r.Client.Delete(ctx, pod); err != nil {
		t.Fatal(err)
	}
	r.converge("the bumped OS, after the bare pod left")
	if b := booted(t, r.Fleet, node); b != v2 {
		t.Errorf("%s booted %s, want %s", node, schema.Short(b), schema.Short(v2))
	}
	if got := budget.max(); got > 2 {
		t.Errorf("%d general nodes were unavailable at once; maxUnavailable is 2", got)
	}
}
