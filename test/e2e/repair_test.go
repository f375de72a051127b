package e2e

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/node/sim"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/test/containerd"
	"herd.dev/herd/test/story"
)

// Quick ladders for the story's pools: seconds where a fleet says minutes.
const (
	generalRepairs = `remediation: {
		maxUnhealthy: "34%"
		quarantine: {after: 2, window: "1h"}
		problems: {
			NotReady: {duration: "1m", rungs: [{action: "restart-kubelet", timeout: "20s"}]}
			HerdKubeletUnhealthy: {duration: "2s", rungs: [{action: "restart-kubelet", timeout: "6s"}, {action: "reboot", timeout: "1m"}]}
			HerdPLEGUnhealthy: {duration: "2s", rungs: [{action: "restart-containerd", timeout: "6s"}, {action: "restart-kubelet", timeout: "6s"}]}
			HerdRuntimeUnhealthy: {duration: "2s", rungs: [{action: "restart-containerd", timeout: "20s"}]}
			HerdLeftoverSandboxes: {duration: "2s", rungs: [{action: "clean-sandboxes", timeout: "20s"}]}
		}
	}`
	systemRepairs = `remediation: {
		dryRun:       true
		maxUnhealthy: 1
		problems: HerdKubeletUnhealthy: {duration: "2s", rungs: [{action: "restart-kubelet", timeout: "3s"}, {action: "reboot", timeout: "3s"}]}
	}`
	batchRepairs = `remediation: {
		replace: deleteNode: true
		problems: HerdKubeletUnhealthy: {duration: "2s", rungs: [{action: "reboot", timeout: "1m"}]}
	}`
)

// TestRepairs runs the repairs of issue #13 end to end: real agents'
// health sides on herd sim's nodes (kubelet faults injected into its
// kubelet), one node with a real containerd, the real controller. Each
// fault is repaired by its rung and the node is Ready again; a fault the
// first rung does not fix goes on to a reboot; a flapping node is
// quarantined; half the pool sick at once stops every repair (Stalled);
// a dry run changes nothing; a rollout and a repair together stay within
// maxUnavailable.
func TestRepairs(t *testing.T) {
	ctd := containerd.StartTest(t, containerd.Options{CNI: true})
	r := startStory(t, story.Options{
		Pools:         map[string]int{"general": 6, "system": 3, "batch": 3},
		RebootDelay:   time.Second,
		Healer:        true,
		CheckInterval: time.Second,
		LeaseDuration: 8 * time.Second,
		SandboxGrace:  time.Second,
		Runtimes:      map[string]sim.Runtime{"general-5": {Socket: ctd.Socket(), Restart: ctd.Restart}},
	})
	r.edit("pools/general.cue", `remediation: maxUnhealthy: "34%"`, generalRepairs)
	r.edit("pools/system.cue", "remediation: {\n\t\tdryRun:       true\n\t\tmaxUnhealthy: 1\n\t}", systemRepairs)
	r.edit("pools/batch.cue", "remediation: {\n\t\treplace: deleteNode: true", batchRepairs+"\n\tremediation: {")
	r.push("quick repairs")
	r.converge("quick repairs")

	t.Run("ladder", func(t *testing.T) {
		t.Parallel()
		r.ladder(t, ctd)
	})
	t.Run("dry run", func(t *testing.T) {
		t.Parallel()
		r.dryRun(t)
	})
	t.Run("rollout and repair", func(t *testing.T) {
		t.Parallel()
		r.budget(t)
	})
}

// ladder: general's faults, one by one, then flapping and the breaker.
func (r *run) ladder(t *testing.T, ctd *containerd.Containerd) {
	cases := []struct {
		node   string
		fault  sim.KubeletFault
		reason schema.HealthReason
		rung   schema.RemediationAction
	}{
		{"general-0", sim.KubeletFault{NoHealthz: true}, schema.ReasonKubeletHealthzFailed, schema.RepairRestartKubelet},
		{"general-1", sim.KubeletFault{NoLease: true}, schema.ReasonKubeletLeaseExpired, schema.RepairRestartKubelet},
		{"general-2", sim.KubeletFault{PLEG: true}, schema.ReasonPLEGNotHealthy, schema.RepairRestartContainerd},
	}
	for _, c := range cases {
		injected := time.Now()
		if err := r.Fleet.InjectKubeletFault(c.node, c.fault); err != nil {
			t.Fatal(err)
		}
		st := r.waitRepair(t, c.node, c.rung)
		if st.Reason != c.reason {
			t.Errorf("%s: repaired for %s, want %s", c.node, st.Reason, c.reason)
		}
		// The figure of docs/benchmarks.md: fault to the first repair, and
		// the condition's hold to it (the ladder's duration is 2s).
		t.Logf("%s: fault %+v to %s: %s; condition %s on to it: %s", c.node, c.fault, c.rung,
			st.Started.Sub(injected).Round(10*time.Millisecond), st.Problem, st.Started.Sub(st.Since).Round(10*time.Millisecond))
		r.waitHealed(t, c.node, 1)
	}

	// A kubelet restart that does not fix /healthz: after its timeout, a
	// reboot, with the node cordoned and drained first, and given back.
	const stubborn = "general-3"
	if err := r.Fleet.InjectKubeletFault(stubborn, sim.KubeletFault{NoHealthz: true, Survives: sim.SurvivesRestart}); err != nil {
		t.Fatal(err)
	}
	r.waitRepair(t, stubborn, schema.RepairRestartKubelet)
	r.waitRepair(t, stubborn, schema.RepairReboot)
	if n := r.node(t, stubborn); !n.Spec.Unschedulable {
		t.Errorf("%s asked to reboot uncordoned", stubborn)
	}
	r.waitHealed(t, stubborn, 2)
	if c, _ := r.Fleet.Counters(stubborn); c.Boots != 1 {
		t.Errorf("%s booted %d times, want 1", stubborn, c.Boots)
	}
	if h := r.history(t, stubborn); h[0].Outcome != schema.OutcomeTimedOut || h[1].Outcome != schema.OutcomeHealed {
		t.Errorf("%s's history %+v", stubborn, h)
	}

	// The node with a real containerd: the runtime killed is restarted;
	// a leftover pod sandbox is removed.
	const withRuntime = "general-5"
	if err := ctd.Kill(); err != nil {
		t.Fatal(err)
	}
	r.waitRepair(t, withRuntime, schema.RepairRestartContainerd)
	r.waitHealed(t, withRuntime, 1)
	if ctd.Exited() {
		t.Errorf("containerd not running after its repair")
	}
	id, err := ctd.RunSandbox(t.Context(), containerd.Pod{Name: "gone", Namespace: "default", UID: "a-pod-long-gone"})
	if err != nil {
		t.Fatal(err)
	}
	r.waitRepair(t, withRuntime, schema.RepairCleanSandboxes)
	r.waitHealed(t, withRuntime, 2)
	c, err := cri.New(ctd.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sbs, err := c.Sandboxes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range sbs {
		if sb.ID == id {
			t.Errorf("the leftover sandbox %s is still there", id)
		}
	}

	// herd diagnose shows a node's repairs; herd history every repair.
	herd := buildHerd(t)
	out, err := exec.Command(herd, "diagnose", stubborn, "--kubeconfig", r.Kubeconfig).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "reboot") || !strings.Contains(string(out), "TimedOut") {
		t.Errorf("herd diagnose %s: %v\n%s", stubborn, err, out)
	}
	poll(t, time.Minute, "herd history to show the repairs", func() bool {
		out, err := exec.Command(herd, "history", r.Work, "--cluster", "demo", "--pool", "general").CombinedOutput()
		return err == nil && strings.Contains(string(out), "demo/general: repair ") && strings.Contains(string(out), stubborn+": reboot, rung 2")
	})

	// Flapping: sick again after two repairs within the hour, quarantined.
	const flapping = "general-4"
	for i := range 2 {
		if err := r.Fleet.InjectKubeletFault(flapping, sim.KubeletFault{NoHealthz: true}); err != nil {
			t.Fatal(err)
		}
		r.waitHealed(t, flapping, i+1)
	}
	if err := r.Fleet.InjectKubeletFault(flapping, sim.KubeletFault{NoHealthz: true}); err != nil {
		t.Fatal(err)
	}
	waitNode(t, r, flapping, func(n *corev1.Node) bool {
		return n.Annotations[schema.AnnotationQuarantined] != "" && n.Spec.Unschedulable
	})
	if h := r.history(t, flapping); len(h) != 2 {
		t.Errorf("%s repaired %d times before its quarantine, want 2", flapping, len(h))
	}

	// Half the pool NotReady at once (PLEG): no repair, the pool Stalled.
	// The faults are injected while the controller is stopped, and it
	// starts again once every agent reports them, so that it sees them
	// together: a node sick alone for the ladder's duration, while its
	// agents' next check rounds are late, would rightly be repaired.
	half := []string{"general-0", "general-1", "general-2"}
	before := map[string]int{}
	if err := r.StopController(); err != nil {
		t.Fatal(err)
	}
	for _, n := range half {
		before[n] = len(r.history(t, n))
		if err := r.Fleet.InjectKubeletFault(n, sim.KubeletFault{PLEG: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range half {
		waitNode(t, r, n, func(n *corev1.Node) bool {
			return slices.ContainsFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool {
				return string(c.Type) == string(schema.ConditionPLEGUnhealthy) && c.Status == corev1.ConditionTrue
			})
		})
	}
	r.StartController()
	r.waitPool("general", "repairs stopped", time.Minute, func(np *herdpool.HerdPool) bool {
		c := conditions.Get(np, meta.StalledCondition)
		return c != nil && c.Reason == "RepairsStopped"
	})
	deadline := time.Now().Add(8 * time.Second) // four times the problem's duration
	for time.Now().Before(deadline) {
		for _, n := range half {
			if a := r.node(t, n).Annotations; a[schema.AnnotationRemediation] != "" {
				t.Fatalf("%s repaired while the breaker holds: %s", n, a[schema.AnnotationRemediation])
			}
		}
		<-time.After(250 * time.Millisecond)
	}
	for _, n := range half {
		if got := len(r.history(t, n)); got != before[n] {
			t.Errorf("%s repaired during the partition (%d repairs, had %d)", n, got, before[n])
		}
	}
	// Once it ends, the breaker closes. (A node whose condition still
	// shows the fault for a check interval may be repaired then: its
	// agent has not seen the end yet.)
	for _, n := range half {
		if err := r.Fleet.ClearKubeletFault(n); err != nil {
			t.Fatal(err)
		}
	}
	r.waitPool("general", "repairs resumed", time.Minute, func(np *herdpool.HerdPool) bool {
		c := conditions.Get(np, meta.StalledCondition)
		return c == nil || c.Reason != "RepairsStopped"
	})
}

// dryRun: system's repairs are planned and recorded, nothing is done.
func (r *run) dryRun(t *testing.T) {
	const sick = "system-1"
	startsBefore := r.Fleet.KubeletStarts(sick)
	countersBefore, _ := r.Fleet.Counters(sick) // its first rollout rebooted it (kernel arguments)
	if err := r.Fleet.InjectKubeletFault(sick, sim.KubeletFault{NoHealthz: true}); err != nil {
		t.Fatal(err)
	}
	// Rung 1 and, on its timeout, rung 2, recorded in the pool's status.
	np := r.waitPool("system", "the dry run's reboot", time.Minute, func(np *herdpool.HerdPool) bool {
		st := np.Status.Repairs.DryRun[sick].Repair
		return st != nil && st.Action == schema.RepairReboot
	})
	if log := np.Status.Repairs.Log; len(log) < 2 || !log[0].DryRun || log[0].Action != schema.RepairRestartKubelet {
		t.Errorf("the dry run's log: %+v", log)
	}
	n := r.node(t, sick)
	for _, k := range []string{schema.AnnotationRemediation, schema.AnnotationRemediate, schema.AnnotationRemediations, schema.AnnotationRemediated} {
		if v := n.Annotations[k]; v != "" {
			t.Errorf("a dry run wrote %s=%q on %s", k, v, sick)
		}
	}
	if n.Spec.Unschedulable {
		t.Errorf("a dry run cordoned %s", sick)
	}
	if got := r.Fleet.KubeletStarts(sick); got != startsBefore {
		t.Errorf("a dry run restarted %s's kubelet (%d starts, had %d)", sick, got, startsBefore)
	}
	if c, _ := r.Fleet.Counters(sick); c.Boots != countersBefore.Boots {
		t.Errorf("a dry run rebooted %s", sick)
	}
	if err := r.Fleet.ClearKubeletFault(sick); err != nil {
		t.Fatal(err)
	}
}

// budget: batch's rollout (maxUnavailable 50% of 3: 1) pushed while a
// repair reboots one of its nodes, which holds the one slot: the rollout
// waits for it, and never more than one node is out.
func (r *run) budget(t *testing.T) {
	watch := watchNodes(t, r.Story, "batch")
	const sick = "batch-2"
	if err := r.Fleet.InjectKubeletFault(sick, sim.KubeletFault{NoHealthz: true, Survives: sim.SurvivesRestart}); err != nil {
		t.Fatal(err)
	}
	r.waitRepair(t, sick, schema.RepairReboot)
	r.edit("pools/batch.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	r.push("batch: 2026.11.0")
	r.waitHealed(t, sick, 1)
	poll(t, 3*time.Minute, "batch at its new release", func() bool {
		var np herdpool.HerdPool
		err := r.Client.Get(t.Context(), client.ObjectKey{Name: "batch"}, &np)
		return err == nil && np.Status.Phase == herdpool.PhaseUpToDate && np.Status.OSCommit == r.Fleet.Commits()[1]
	})
	if most := watch.max(); most > 1 {
		t.Errorf("%d batch nodes out at once, maxUnavailable 1", most)
	}
}

func (r *run) node(t *testing.T, name string) *corev1.Node {
	t.Helper()
	var n corev1.Node
	if err := r.Client.Get(t.Context(), client.ObjectKey{Name: name}, &n); err != nil {
		t.Fatal(err)
	}
	return &n
}

// waitRepair waits until the node is at a rung of action, and returns it.
func (r *run) waitRepair(t *testing.T, name string, action schema.RemediationAction) schema.RemediationState {
	t.Helper()
	var st *schema.RemediationState
	poll(t, 2*time.Minute, name+"'s "+string(action), func() bool {
		var err error
		st, err = schema.ParseRemediationState(r.node(t, name).Annotations[schema.AnnotationRemediation])
		return err == nil && st != nil && st.Action == action
	})
	return *st
}

// waitHealed waits until the node's repairs are over, records of records
// repairs, and it is Ready and schedulable.
func (r *run) waitHealed(t *testing.T, name string, records int) {
	t.Helper()
	poll(t, 2*time.Minute, name+" healed", func() bool {
		n := r.node(t, name)
		h, _ := schema.ParseRemediationRecords(n.Annotations[schema.AnnotationRemediations])
		return n.Annotations[schema.AnnotationRemediation] == "" && len(h) == records && h[len(h)-1].Outcome == schema.OutcomeHealed &&
			cluster.IsReady(n) && !n.Spec.Unschedulable
	})
}

func (r *run) history(t *testing.T, name string) []schema.RemediationRecord {
	t.Helper()
	h, err := schema.ParseRemediationRecords(r.node(t, name).Annotations[schema.AnnotationRemediations])
	if err != nil {
		t.Fatal(err)
	}
	return h
}
