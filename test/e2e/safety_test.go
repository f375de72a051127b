package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/test/story"
)

// bump moves general to the second OS release, with extra rollout settings
// written after its canary line.
func (r *run) bump(rollout string) string {
	r.t.Helper()
	r.edit("pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	if rollout != "" {
		r.edit("pools/general.cue", `canary:         1`, "canary:         1\n\t\t"+rollout)
	}
	return r.push("general: 2026.11.0")
}

// statusPhase reads general's phase on the status branch, as a person with a
// clone would.
func (r *run) statusPhases(pool string) []string {
	r.t.Helper()
	r.git("fetch", "-q", "origin", "+refs/heads/herd/status:refs/remotes/origin/herd/status")
	var phases []string
	for _, c := range strings.Fields(r.git("log", "--format=%H", "origin/herd/status")) {
		out, err := r.Git("show", c+":clusters/demo/"+pool+".yaml")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			if p, ok := strings.CutPrefix(line, "phase: "); ok {
				phases = append(phases, p)
			}
		}
	}
	return phases
}

// An OS commit that fails to boot on the canary halts the pool (maxFailures
// 0), with a status commit that says so; nothing else starts. herd resume,
// once the cause is gone, retries and finishes the rollout.
func TestBootFailureHalts(t *testing.T) {
	t.Parallel()
	r := startStory(t, story.Options{Pools: map[string]int{"general": 6}, RebootDelay: time.Second})
	r.converge("first revision")
	v1, v2 := r.Fleet.Commits()[0], r.Fleet.Commits()[1]
	if err := r.Fleet.FailBoot(v2, "general-0"); err != nil {
		t.Fatal(err)
	}
	r.bump("maxFailures: 0")

	np := r.waitPool("general", "a halt", 3*time.Minute, func(np *herdpool.HerdPool) bool { return np.Status.Phase == herdpool.PhaseHalted })
	if !strings.Contains(np.Status.Message, "general-0") {
		t.Errorf("the halt does not name the failed node: %s", np.Status.Message)
	}
	for _, n := range nodesOf(r.Fleet, "general")[1:] {
		if b := booted(t, r.Fleet, n); b != v1 {
			t.Errorf("%s booted %s while the pool is halted after its canary failed", n, schema.Short(b))
		}
	}
	// The status writer commits a phase change at once; allow for the push.
	poll(t, 30*time.Second, "a status commit that says general is Halted", func() bool {
		return containsPhase(r.statusPhases("general"), "Halted")
	})

	// The cause is fixed; someone resumes.
	r.Fleet.ClearFailBoot()
	out, err := exec.Command(buildHerd(t), "resume", "general", "--kubeconfig", r.Kubeconfig).CombinedOutput()
	if err != nil {
		t.Fatalf("herd resume: %v\n%s", err, out)
	}
	r.converge("after herd resume")
	for _, n := range nodesOf(r.Fleet, "general") {
		if b := booted(t, r.Fleet, n); b != v2 {
			t.Errorf("%s booted %s after the resume, want %s", n, schema.Short(b), schema.Short(v2))
		}
	}
}

func containsPhase(phases []string, p string) bool {
	for _, q := range phases {
		if q == p {
			return true
		}
	}
	return false
}

// With failurePolicy rollback, the nodes that failed come back on the
// previous commit (the deployment on disk: no pull), and the pool halts.
func TestBootFailureRollsBack(t *testing.T) {
	t.Parallel()
	r := startStory(t, story.Options{Pools: map[string]int{"general": 6}, RebootDelay: time.Second})
	r.converge("first revision")
	v1, v2 := r.Fleet.Commits()[0], r.Fleet.Commits()[1]
	if err := r.Fleet.FailBoot(v2, "general-0"); err != nil {
		t.Fatal(err)
	}
	before := counters(r.Fleet, []string{"general-0"})
	r.bump(`maxFailures: 0, failurePolicy: "rollback"`)

	np := r.waitPool("general", "the rollback to finish", 3*time.Minute, func(np *herdpool.HerdPool) bool {
		return np.Status.Phase == herdpool.PhaseHalted && strings.Contains(np.Status.Message, "rolled back")
	})
	t.Logf("general: %s", np.Status.Message)
	waitNode(t, r, "general-0", func(n *corev1.Node) bool {
		return n.Annotations[schema.AnnotationOSBooted] == v1 && n.Annotations[schema.AnnotationState] == string(schema.StateIdle)
	})
	if b := booted(t, r.Fleet, "general-0"); b != v1 {
		t.Errorf("general-0 booted %s after the rollback, want %s", schema.Short(b), schema.Short(v1))
	}
	d := counters(r.Fleet, []string{"general-0"})["general-0"].diff(before["general-0"])
	if d.Pulls != 1 { // v2, once; the way back needs none
		t.Errorf("general-0 pulled %d times; want 1 (v2), none for the way back", d.Pulls)
	}
	if phases := r.statusPhases("general"); !containsPhase(phases, "RollingBack") && !containsPhase(phases, "Halted") {
		t.Errorf("no status commit records the rollback: %v", phases)
	}
}

// A node that joins during a rollout gets the pool's target before it takes
// work, outside the budget, and loses its converging taint there; a commit
// pushed mid-rollout is where every node ends.
func TestJoinAndNewCommitMidRollout(t *testing.T) {
	t.Parallel()
	r := startStory(t, story.Options{Pools: map[string]int{"general": 4}, RebootDelay: 2 * time.Second})
	r.converge("first revision")
	v2 := r.Fleet.Commits()[1]
	budget := watchNodes(t, r.Story, "general")
	r.bump("")
	r.waitPool("general", "the rollout to start", time.Minute, func(np *herdpool.HerdPool) bool { return np.Status.Phase == herdpool.PhaseProgressing })

	joined, err := r.Fleet.AddNodes(t.Context(), "general", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	// A second commit while the first rolls out: a sysctl change.
	r.edit("pools/general.cue", `"net.core.somaxconn": "4096"`, `"net.core.somaxconn": "8192"`)
	r.push("general: somaxconn 8192")
	r.converge("both commits")

	var node corev1.Node
	if err := r.Client.Get(t.Context(), client.ObjectKey{Name: joined[0]}, &node); err != nil {
		t.Fatal(err)
	}
	if cluster.HasTaint(&node, schema.TaintConverging) || node.Annotations[schema.AnnotationOSBooted] != v2 {
		t.Errorf("joined node %s: taints %v, booted %s; want no converging taint, %s", joined[0], node.Spec.Taints, schema.Short(node.Annotations[schema.AnnotationOSBooted]), schema.Short(v2))
	}
	for _, n := range nodesOf(r.Fleet, "general") {
		if v := strings.TrimSpace(readFile(t, r.Fleet.Root(n)+"/proc/sys/net/core/somaxconn")); v != "8192" {
			t.Errorf("%s: net.core.somaxconn is %q, want the newest commit's 8192", n, v)
		}
	}
	// maxUnavailable is 25% of the pool: 1 of 4 or 5. The joining node
	// takes no work until it is at the target: it does not count.
	if got := budget.max(); got > 1 {
		t.Errorf("%d general nodes were unavailable at once; maxUnavailable is 1", got)
	}
}

// Batches start only inside the pool's maintenance windows; a node that
// fails is quarantined and the pool goes on without it.
func TestWindowsAndQuarantine(t *testing.T) {
	t.Parallel()
	r := startStory(t, story.Options{Pools: map[string]int{"general": 4}, RebootDelay: time.Second})
	r.converge("first revision")
	v2 := r.Fleet.Commits()[1]
	if err := r.Fleet.FailBoot(v2, "general-0"); err != nil {
		t.Fatal(err)
	}
	// A window that opens in two hours.
	now := time.Now().UTC()
	closed := fmt.Sprintf(`windows: [{start: %q, end: %q}]`, now.Add(2*time.Hour).Format("15:04"), now.Add(3*time.Hour).Format("15:04"))
	r.bump("maxFailures: 0, quarantine: after: 1, " + closed)
	np := r.waitPool("general", "the pool to wait for its window", time.Minute, func(np *herdpool.HerdPool) bool {
		return np.Status.Phase == herdpool.PhaseWaiting
	})
	t.Logf("general: %s", np.Status.Message)
	for _, n := range nodesOf(r.Fleet, "general") {
		var node corev1.Node
		if err := r.Client.Get(t.Context(), client.ObjectKey{Name: n}, &node); err != nil {
			t.Fatal(err)
		}
		if node.Annotations[schema.AnnotationDesiredOS] == v2 || node.Spec.Unschedulable {
			t.Errorf("%s was started outside the window", n)
		}
	}

	// The window opens (someone moves it to now).
	r.edit("pools/general.cue", closed, fmt.Sprintf(`windows: [{start: %q, end: %q}]`, now.Add(-time.Hour).Format("15:04"), now.Add(2*time.Hour).Format("15:04")))
	r.push("general: the window is open")
	r.converge("rollout with a quarantined node")
	np = r.pool("general")
	if len(np.Status.Quarantined) != 1 || np.Status.Quarantined[0] != "general-0" {
		t.Errorf("quarantined %v, want [general-0]; status: %s", np.Status.Quarantined, np.Status.Message)
	}
	var node corev1.Node
	if err := r.Client.Get(t.Context(), client.ObjectKey{Name: "general-0"}, &node); err != nil {
		t.Fatal(err)
	}
	if node.Annotations[schema.AnnotationQuarantined] == "" || !node.Spec.Unschedulable {
		t.Errorf("general-0 is not quarantined and cordoned: %v", node.Annotations)
	}
	for _, n := range nodesOf(r.Fleet, "general")[1:] {
		if b := booted(t, r.Fleet, n); b != v2 {
			t.Errorf("%s booted %s, want %s: the pool should go on without the quarantined node", n, schema.Short(b), schema.Short(v2))
		}
	}
}

func waitNode(t *testing.T, r *run, name string, cond func(*corev1.Node) bool) {
	t.Helper()
	poll(t, 2*time.Minute, "node "+name, func() bool {
		var node corev1.Node
		return r.Client.Get(t.Context(), client.ObjectKey{Name: name}, &node) == nil && cond(&node)
	})
}

// poll checks cond every 200 ms until it holds, or fails the test.
func poll(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting %s for %s", timeout, what)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
