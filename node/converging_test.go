package node_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/node"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
)

func hasTaint(n *corev1.Node, key string) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

// A joining node registers with the converging taint. Its agent keeps it
// while the node has no target and while it applies one (through a
// reboot), removes it once the node reports Idle at the target, and
// leaves every other taint alone.
func TestAgentRemovesConvergingTaint(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	v2 := repo.Commits[1]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	other := corev1.Taint{Key: "example.com/dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}
	setTaints(t, n.cs, n.name, corev1.Taint{Key: schema.TaintConverging, Effect: corev1.TaintEffectNoSchedule}, other)
	events := watchNode(t, n.cs, n.name)
	n.start(nil)

	// No target yet: Idle, tainted.
	ann := n.waitState(schema.StateIdle, 30*time.Second)
	if ann[schema.AnnotationCurrentConfig] != "" {
		t.Fatalf("fresh node: %v", ann)
	}

	h := publishRender(t, n.cs, render(t, repo, spec{commit: v2, maxPods: 110, sysctl: map[string]string{"vm.max_map_count": "262144"}}))
	n.setDesired(h, v2)
	n.awaitReboot()
	n.rebootNow(true)
	n.waitUpToDate(h, v2)
	if !poll(t, 30*time.Second, func() bool {
		no, err := n.cs.CoreV1().Nodes().Get(t.Context(), n.name, metav1.GetOptions{})
		return err == nil && !hasTaint(no, schema.TaintConverging)
	}) {
		t.Fatal("the converging taint is still there at the target")
	}
	if got := taintKeys(t, n.cs, n.name); len(got) != 1 || got[0] != other.Key {
		t.Errorf("taints at the target: %v, want only %s", got, other.Key)
	}

	// Every version of the Node: tainted until it says Idle at the target.
	sawTaintedStates := map[string]bool{}
	for _, no := range events.list() {
		a := no.Annotations
		if hasTaint(no, schema.TaintConverging) {
			sawTaintedStates[a[schema.AnnotationState]] = true
			continue
		}
		if a[schema.AnnotationState] != string(schema.StateIdle) || a[schema.AnnotationCurrentConfig] != h ||
			a[schema.AnnotationOSBooted] != v2 || a[schema.AnnotationDesiredConfig] != h || a[schema.AnnotationDesiredOS] != v2 {
			t.Errorf("the converging taint was gone before the node was at its target: %v", a)
		}
		if !hasTaint(no, other.Key) {
			t.Errorf("the taint %s went too: %v", other.Key, no.Spec.Taints)
		}
	}
	for _, s := range []schema.NodeState{schema.StateIdle, schema.StateWorking, schema.StateRebooting} {
		if !sawTaintedStates[string(s)] {
			t.Errorf("never saw the node tainted and %s; tainted in states %v", s, sawTaintedStates)
		}
	}
	if c := n.metrics.Snapshot(); c.Untainted != 1 {
		t.Errorf("counters %+v: want one taint removed", c)
	}

	// A taint put back (by someone else) at the target goes again; one
	// with another effect stays.
	noExec := corev1.Taint{Key: schema.TaintConverging, Effect: corev1.TaintEffectNoExecute}
	setTaints(t, n.cs, n.name, other, noExec, corev1.Taint{Key: schema.TaintConverging, Effect: corev1.TaintEffectNoSchedule})
	if !poll(t, 30*time.Second, func() bool {
		no, err := n.cs.CoreV1().Nodes().Get(t.Context(), n.name, metav1.GetOptions{})
		return err == nil && len(no.Spec.Taints) == 2
	}) {
		t.Fatalf("the converging NoSchedule taint put back was not removed: %v", taintKeys(t, n.cs, n.name))
	}
	no, err := n.cs.CoreV1().Nodes().Get(t.Context(), n.name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if no.Spec.Taints[0] != other || no.Spec.Taints[1].Key != noExec.Key || no.Spec.Taints[1].Effect != noExec.Effect {
		t.Errorf("taints %v, want %v and %v", no.Spec.Taints, other, noExec)
	}
}

// The controller moves a joining node's target on just as the agent
// reaches the old one and is about to remove the taint: the taint stays
// until the node is at the new target, on the real API server.
func TestAgentKeepsTaintWhenTargetMoves(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1})
	v1 := repo.Commits[0]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	setTaints(t, n.cs, n.name, corev1.Taint{Key: schema.TaintConverging, Effect: corev1.TaintEffectNoSchedule})
	h1 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, sysctl: map[string]string{"vm.max_map_count": "262144"}}))
	h2 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, sysctl: map[string]string{"vm.max_map_count": "524288"}}))
	n.setDesired(h1, v1)
	events := watchNode(t, n.cs, n.name)
	moved := false
	n.start(func(p string, _ func()) {
		if p == node.HookUntainting && !moved {
			moved = true
			n.setDesired(h2, v1) // the controller, between the agent's view and its patch
		}
	})
	n.waitUpToDate(h2, v1)
	if !poll(t, 30*time.Second, func() bool {
		no, err := n.cs.CoreV1().Nodes().Get(t.Context(), n.name, metav1.GetOptions{})
		return err == nil && !hasTaint(no, schema.TaintConverging)
	}) {
		t.Fatal("the converging taint is still there at the new target")
	}
	if !moved {
		t.Fatal("the agent never came to remove the taint at the first target")
	}
	for _, no := range events.list() {
		a := no.Annotations
		if !hasTaint(no, schema.TaintConverging) && (a[schema.AnnotationCurrentConfig] != a[schema.AnnotationDesiredConfig] || a[schema.AnnotationState] != string(schema.StateIdle)) {
			t.Errorf("the converging taint was gone while the node was not at its target: %v", a)
		}
	}
	if c := n.metrics.Snapshot(); c.Untainted != 1 {
		t.Errorf("counters %+v: want one taint removed", c)
	}
}
