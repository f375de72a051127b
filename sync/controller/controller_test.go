package controller_test

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdpool"
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
// blocks the drain; the node is reported DrainBlocked and no pod is deleted.
func TestDrainBlockedByPDB(t *testing.T) {
	e := newEnv(t)
	e.addNodes("general", 2)
	ctx := t.Context()

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
	if err := e.c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// The pod runs on the node the first batch takes (zone spread: general-00).
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "db-0", Namespace: "shop", Labels: map[string]string{"app": "db"}},
		Spec:       corev1.PodSpec{NodeName: "general-00", Containers: []corev1.Container{{Name: "db", Image: "db:1"}}},
	}
	if err := e.c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := e.c.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	// minAvailable, not maxUnavailable: the pod has no controller to scale.
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
		return err == nil && pdb.Status.ObservedGeneration == pdb.Generation && pdb.Status.ExpectedPods == 1, err
	})

	e.startAgents(50 * time.Millisecond)
	ctrl := e.startController("herd", false)
	defer ctrl.stop(t)
	e.bumpGeneral("1")
	e.edit("pools/general.cue", `soak:           "1s"`, `soak: "1s", drain: timeout: "2s"`)
	e.push("general: 2026.11.0, 2s drain timeout")

	e.waitFor("general reported DrainBlocked", time.Minute, func() (bool, error) {
		var np herdpool.HerdPool
		err := e.c.Get(ctx, client.ObjectKey{Name: "general"}, &np)
		return err == nil && strings.Contains(np.Status.Message, "DrainBlocked: general-00: shop/db-0"), client.IgnoreNotFound(err)
	})
	e.waitFor("a DrainBlocked event", 30*time.Second, func() (bool, error) {
		evs, err := e.kube.EventsV1().Events("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, ev := range evs.Items {
			if ev.Reason == "DrainBlocked" && strings.Contains(ev.Note, "shop/db-0") {
				return true, nil
			}
		}
		return false, nil
	})
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
