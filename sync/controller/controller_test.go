package controller_test

import (
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/runtime/conditions"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/writeback"
	"herd.dev/herd/test/fleettest"
)

// bumpGeneral moves the general pool to the newer OS release with the given
// maxUnavailable and no canary.
func (e *env) bumpGeneral(maxUnavailable string) {
	e.edit("pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	e.edit("pools/general.cue", `maxUnavailable: "25%"`, `maxUnavailable: `+maxUnavailable)
	e.edit("pools/general.cue", `canary:         1`, ``)
	e.edit("pools/general.cue", `soak:           "5m"`, `soak:           "1s"`)
}

// TestRolloutHonoursBudget: 20 nodes, maxUnavailable 3. A watch checks the
// budget at every change; the rollout finishes with every node uncordoned.
func TestRolloutHonoursBudget(t *testing.T) {
	e := newEnv(t)
	nodes := e.addNodes("general", 20)
	budget := e.watchBudget("general")
	e.startAgents(100 * time.Millisecond)
	ctrl := e.startController("herd", false)
	defer ctrl.stop(t)

	e.waitFor("HerdPool general up to date at the first revision", time.Minute, func() (bool, error) {
		var np herdpool.HerdPool
		err := e.c.Get(t.Context(), client.ObjectKey{Name: "general"}, &np)
		return err == nil && np.Status.Phase == herdpool.PhaseUpToDate, client.IgnoreNotFound(err)
	})

	e.bumpGeneral("3")
	e.push("general: 2026.11.0")
	e.waitFor("every general node at the new target", 3*time.Minute, e.poolAtTarget("general"))

	if got := budget.maxUnavailable(); got > 3 || got == 0 {
		t.Errorf("at most %d nodes were unavailable at once; want between 1 and 3", got)
	}
	e.waitFor("HerdPool general up to date", 30*time.Second, func() (bool, error) {
		return e.nodePool("general").Status.Phase == herdpool.PhaseUpToDate, nil
	})
	np := e.nodePool("general")
	if !strings.HasPrefix(np.Status.Message, "20/20 nodes at 7a3283c6") || np.Status.Progress != "20/20" {
		t.Errorf("HerdPool status: %+v", np.Status)
	}
	budget.mu.Lock()
	defer budget.mu.Unlock()
	for _, n := range nodes {
		if budget.cordons[n] != 1 || budget.dispatches[n] != 1 {
			t.Errorf("node %s: cordoned %d times, dispatched %d times; want once each", n, budget.cordons[n], budget.dispatches[n])
		}
	}
	if np.Status.Rollout.Batches != 7 {
		t.Errorf("%d batches, want ⌈20/3⌉ = 7", np.Status.Rollout.Batches)
	}
}

// TestDrainBlockedByPDB: a PodDisruptionBudget that allows no disruption
// blocks the drain; past the drain timeout the node is reported
// DrainBlocked and no pod is deleted.
func TestDrainBlockedByPDB(t *testing.T) {
	e := newEnv(t)
	e.addNodes("general", 2)
	ctx := t.Context()

	// The pod runs on the node the first batch takes (zone spread: general-00).
	pod := e.replicaPod("shop", "db", "general-00")
	// minAvailable, not maxUnavailable: no scale to look up.
	one := intstr.FromInt32(1)
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "shop"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
	}
	if err := e.c.Create(ctx, pdb); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the disruption controller to process the PDB", time.Minute, func() (bool, error) {
		err := e.c.Get(ctx, client.ObjectKeyFromObject(pdb), pdb)
		return err == nil && pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.ExpectedPods == 1 && pdb.Status.CurrentHealthy == 1, err
	})

	e.startAgents(50 * time.Millisecond)
	ctrl := e.startController("herd", false)
	defer ctrl.stop(t)
	e.bumpGeneral("1")
	e.edit("pools/general.cue", `soak:           "1s"`, `soak: "1s", drain: timeout: "2s"`)
	e.push("general: 2026.11.0, 2s drain timeout")

	want := []herdpool.DrainBlockedNode{{Node: "general-00", State: cluster.TimedOut, Pods: []herdpool.BlockedPod{{Name: "shop/" + pod.Name, Reason: "DisruptionBudget", Message: "The disruption budget db needs 1 healthy pods and has 1 currently"}}}}
	e.waitFor("general reported DrainBlocked", time.Minute, func() (bool, error) {
		var np herdpool.HerdPool
		err := e.c.Get(ctx, client.ObjectKey{Name: "general"}, &np)
		return err == nil && reflect.DeepEqual(np.Status.DrainBlocked, want) && strings.Contains(np.Status.Message, "DrainBlocked: general-00: shop/"+pod.Name+" (DisruptionBudget"), client.IgnoreNotFound(err)
	})
	e.waitPoolEvent("DrainBlocked", "drain of general-00 blocked past its timeout: shop/"+pod.Name)
	if err := e.c.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil || pod.DeletionTimestamp != nil {
		t.Errorf("the protected pod was deleted or is being deleted: %v", err)
	}
	var node corev1.Node
	if err := e.c.Get(ctx, client.ObjectKey{Name: "general-00"}, &node); err != nil {
		t.Fatal(err)
	}
	if !node.Spec.Unschedulable || node.Annotations[schema.AnnotationDesiredOS] == fleettest.Release202611 {
		t.Errorf("general-00 should stay cordoned and not be told the new OS while its drain is blocked")
	}
	var other corev1.Node
	if err := e.c.Get(ctx, client.ObjectKey{Name: "general-01"}, &other); err != nil {
		t.Fatal(err)
	}
	if other.Spec.Unschedulable {
		t.Errorf("general-01 was cordoned while the budget of 1 is taken by general-00")
	}
}

// TestDrainRefusesBarePod: under the default drain policy a pod without a
// controller is never evicted. Its node stays cordoned and is reported
// DrainBlocked at once, naming the pod, in the HerdPool, an event and the
// status branch; the rollout goes on with the other nodes within
// maxUnavailable. Once the pod is gone, the node finishes.
func TestDrainRefusesBarePod(t *testing.T) {
	e := newEnv(t)
	e.addNodes("general", 3)
	ctx := t.Context()
	bare := e.runningPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "debug", Namespace: "shop"},
		Spec:       corev1.PodSpec{NodeName: "general-00", Containers: []corev1.Container{{Name: "sh", Image: "busybox:1"}}},
	})
	budget := e.watchBudget("general")
	e.startAgents(50 * time.Millisecond)
	ctrl := e.startController("herd", false)
	defer ctrl.stop(t)
	e.bumpGeneral("2")
	e.push("general: 2026.11.0")

	want := []herdpool.DrainBlockedNode{{Node: "general-00", State: cluster.Refused, Pods: []herdpool.BlockedPod{{Name: "shop/debug", Reason: "Unmanaged"}}}}
	e.waitFor("general-00 reported DrainBlocked by its bare pod", time.Minute, func() (bool, error) {
		var np herdpool.HerdPool
		err := e.c.Get(ctx, client.ObjectKey{Name: "general"}, &np)
		return err == nil && reflect.DeepEqual(np.Status.DrainBlocked, want) && strings.Contains(np.Status.Message, "DrainBlocked: general-00: shop/debug (Unmanaged)") &&
			conditions.IsStalled(&np), client.IgnoreNotFound(err)
	})
	e.waitPoolEvent("DrainBlocked", "drain of general-00 blocked by its pool's drain policy: shop/debug (Unmanaged)")
	// The rollout goes on with the others, general-00 keeping its slot.
	e.waitFor("general-01 and general-02 at the new target", 2*time.Minute, func() (bool, error) {
		return e.nodesAtTarget("general") == 2, nil
	})
	e.waitFor("the status branch naming the blocked node and pod", 30*time.Second, func() (bool, error) {
		out, err := exec.Command("git", "--git-dir", strings.TrimPrefix(e.remote, "file://"), "show", "herd/status:clusters/test/general.yaml").Output()
		var ps writeback.PoolStatus
		if err != nil || yaml.Unmarshal(out, &ps) != nil {
			return false, nil
		}
		return slices.Contains(ps.Nodes, writeback.NodeStatus{Name: "general-00", State: "DrainBlocked", Message: "blocked by shop/debug (Unmanaged)"}), nil
	})
	if err := e.c.Get(ctx, client.ObjectKeyFromObject(bare), bare); err != nil || bare.DeletionTimestamp != nil {
		t.Fatalf("the bare pod was evicted: %v", err)
	}
	var node corev1.Node
	if err := e.c.Get(ctx, client.ObjectKey{Name: "general-00"}, &node); err != nil {
		t.Fatal(err)
	}
	if !node.Spec.Unschedulable || node.Annotations[schema.AnnotationDesiredOS] == fleettest.Release202611 {
		t.Errorf("general-00 should stay cordoned and not be told the new OS while its drain is refused")
	}

	// Its owner deletes the pod: the node finishes the rollout.
	if err := e.c.Delete(ctx, bare, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	e.waitFor("every general node at the new target", 2*time.Minute, e.poolAtTarget("general"))
	e.waitFor("HerdPool general up to date, no drain blocked", 30*time.Second, func() (bool, error) {
		np := e.nodePool("general")
		return np.Status.Phase == herdpool.PhaseUpToDate && len(np.Status.DrainBlocked) == 0, nil
	})
	if got := budget.maxUnavailable(); got > 2 {
		t.Errorf("%d nodes were unavailable at once; maxUnavailable is 2", got)
	}
}

// runningPod creates the pod (and its namespace) and marks it Running and
// Ready, as its kubelet would.
func (e *env) runningPod(pod *corev1.Pod) *corev1.Pod {
	e.t.Helper()
	ctx := e.t.Context()
	if err := e.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: pod.Namespace}}); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
	if err := e.c.Create(ctx, pod); err != nil {
		e.t.Fatal(err)
	}
	e.markRunning(pod)
	return pod
}

func (e *env) markRunning(pod *corev1.Pod) {
	e.t.Helper()
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := e.c.Status().Update(e.t.Context(), pod); err != nil {
		e.t.Fatal(err)
	}
}

// replicaPod makes a ReplicaSet of one pod labelled app=name, binds its pod
// to the node as a scheduler would, and marks it running.
func (e *env) replicaPod(ns, name, node string) *corev1.Pod {
	e.t.Helper()
	ctx := e.t.Context()
	if err := e.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		e.t.Fatal(err)
	}
	labels := map[string]string{"app": name}
	one := int32(1)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: appsv1.ReplicaSetSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: name, Image: name + ":1"}}}}},
	}
	if err := e.c.Create(ctx, rs); err != nil {
		e.t.Fatal(err)
	}
	var pod corev1.Pod
	e.waitFor("the ReplicaSet's pod", time.Minute, func() (bool, error) {
		var pods corev1.PodList
		if err := e.c.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels(labels)); err != nil || len(pods.Items) == 0 {
			return false, err
		}
		pod = pods.Items[0]
		return true, nil
	})
	if err := e.kube.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name}, Target: corev1.ObjectReference{Kind: "Node", Name: node}}, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	if err := e.c.Get(ctx, client.ObjectKeyFromObject(&pod), &pod); err != nil {
		e.t.Fatal(err)
	}
	e.markRunning(&pod)
	return &pod
}

// waitPoolEvent waits for an event of the reason whose note holds text.
func (e *env) waitPoolEvent(reason, text string) {
	e.t.Helper()
	e.waitFor("a "+reason+" event: "+text, 30*time.Second, func() (bool, error) {
		evs, err := e.kube.EventsV1().Events("default").List(e.t.Context(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, ev := range evs.Items {
			if ev.Reason == reason && strings.Contains(ev.Note, text) {
				return true, nil
			}
		}
		return false, nil
	})
}

// TestRestartMidRollout stops the controller at several points of a rollout
// and starts a new one: the budget holds and no node is cordoned or
// dispatched twice.
func TestRestartMidRollout(t *testing.T) {
	e := newEnv(t)
	nodes := e.addNodes("general", 12)
	budget := e.watchBudget("general")
	e.startAgents(300 * time.Millisecond)

	e.bumpGeneral("2")
	e.push("general: 2026.11.0")
	ctrl := e.startController("herd-1", false)
	for i, done := range []int{1, 4, 7, 10} {
		e.waitFor("progress", 2*time.Minute, func() (bool, error) {
			return e.nodesAtTarget("general") >= done, nil
		})
		ctrl.stop(t)
		ctrl = e.startController("herd-"+string(rune('2'+i)), false)
	}
	e.waitFor("every general node at the new target", 3*time.Minute, e.poolAtTarget("general"))
	ctrl.stop(t)

	if got := budget.maxUnavailable(); got > 2 {
		t.Errorf("%d nodes were unavailable at once; maxUnavailable is 2", got)
	}
	budget.mu.Lock()
	defer budget.mu.Unlock()
	for _, n := range nodes {
		if budget.cordons[n] != 1 || budget.dispatches[n] != 1 {
			t.Errorf("node %s: cordoned %d times, dispatched %d times; want once each", n, budget.cordons[n], budget.dispatches[n])
		}
	}
}

func (e *env) nodesAtTarget(pool string) int {
	res := e.fleet()
	var nodes corev1.NodeList
	if err := e.c.List(e.t.Context(), &nodes, client.MatchingLabels{"herd.dev/pool": pool}); err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for _, node := range nodes.Items {
		if node.Annotations[schema.AnnotationOSBooted] == res.Fleet.Pools[pool].OS.Commit {
			n++
		}
	}
	return n
}

// TestLeaderElection: two controllers with leader election; only the leader
// writes to nodes.
func TestLeaderElection(t *testing.T) {
	e := newEnv(t)
	e.addNodes("general", 4)
	e.startAgents(50 * time.Millisecond)
	a := e.startController("herd-a", true)
	defer a.stop(t)
	b := e.startController("herd-b", true)
	defer b.stop(t)

	e.bumpGeneral("1")
	e.push("general: 2026.11.0")
	e.waitFor("every general node at the new target", 3*time.Minute, e.poolAtTarget("general"))

	managers := map[string]bool{}
	var nodes corev1.NodeList
	if err := e.c.List(t.Context(), &nodes, client.MatchingLabels{"herd.dev/pool": "general"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes.Items {
		for _, mf := range n.ManagedFields {
			if strings.HasPrefix(mf.Manager, "herd-") {
				managers[mf.Manager] = true
			}
		}
	}
	if len(managers) != 1 {
		t.Errorf("nodes were written by %v; want exactly one controller", managers)
	}
}
