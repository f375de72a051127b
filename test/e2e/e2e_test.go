// Package e2e runs Herd's user story end to end on real parts: a real
// kube-apiserver and controller-manager, simulated nodes on real OSTree
// sysroots, a fleet repo served by git daemon, and changes made with the
// real git CLI.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"herd.dev/herd/node"
	"herd.dev/herd/node/sim"
	"herd.dev/herd/schema"
	"herd.dev/herd/test/controlplane"
	"herd.dev/herd/test/story"
)

func TestUserStory(t *testing.T) {
	t.Parallel()
	if os.Getenv(controlplane.SkipEnv) == "1" {
		t.Skipf("%s=1", controlplane.SkipEnv)
	}
	ctx := t.Context()
	s, err := story.Start(ctx, story.Options{Dir: t.TempDir(), RebootDelay: time.Second, Interval: 10 * time.Second, AgentBinary: agentBinary(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	herd := buildHerd(t)
	git := func(args ...string) string {
		t.Helper()
		out, err := s.Git(args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	edit := func(file, old, new string) {
		t.Helper()
		p := filepath.Join(s.Work, file)
		b, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(b), old) {
			t.Fatalf("%s has no %q (%v)", file, old, err)
		}
		if err := os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	converge := func(what string) {
		t.Helper()
		start := time.Now()
		if err := s.WaitUpToDate(ctx, 5*time.Minute); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%s: converged in %s", what, time.Since(start).Round(100*time.Millisecond))
	}
	v1, v2 := s.Fleet.Commits()[0], s.Fleet.Commits()[1]
	general := nodesOf(s.Fleet, "general")

	// The fleet converges on its first revision.
	converge("first revision")

	// 1. An OS bump of general rolls out in batches within maxUnavailable
	// (25% of 6 nodes: 1), each node cordoned, drained, dispatched,
	// pulling and rebooting once, as a watch on the Node objects and the
	// agents' counts show.
	budget := watchNodes(t, s, "general")
	before := counters(s.Fleet, general)
	edit("pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	git("commit", "-qam", "general: 2026.11.0")
	bump := git("rev-parse", "HEAD")
	git("push", "-q", "origin", "main")
	converge("OS bump")
	budget.stop()
	if got := budget.max(); got != 1 {
		t.Errorf("at most %d general nodes were unavailable at once; maxUnavailable is 1 (and the rollout needs 1)", got)
	}
	after := counters(s.Fleet, general)
	checkDisruption(t, "an OS bump", budget, before, after, disruption{cordons: 1, drains: 1, reboots: 1, notReady: 1})
	prestaged := 0
	for _, n := range general {
		d := after[n].diff(before[n])
		if d.Pulls != 1 || d.Reboots != 1 || booted(t, s.Fleet, n) != v2 {
			t.Errorf("%s: %d pulls, %d reboots, booted %s; want 1, 1, %s", n, d.Pulls, d.Reboots, schema.Short(booted(t, s.Fleet, n)), schema.Short(v2))
		}
		prestaged += d.Prestaged
	}
	// Nodes of later batches pulled the commit ahead (rollout.prestage).
	if prestaged == 0 {
		t.Errorf("no general node pre-staged the new OS ahead of its batch")
	}

	// 2. Status commits on herd/status name the spec commit.
	git("fetch", "-q", "origin", "+refs/heads/herd/status:refs/remotes/origin/herd/status")
	log := git("log", "--format=%B", "origin/herd/status")
	if !strings.Contains(log, "Herd-Spec-Commit: "+bump) || !strings.Contains(log, "Herd-Cluster: demo") {
		t.Errorf("no status commit names the spec commit %s:\n%s", bump, firstLines(log, 20))
	}

	// 3. A sysctl-only change rolls out with no reboot and no pull, and
	// cordons and drains no node.
	batch := nodesOf(s.Fleet, "batch")
	before = counters(s.Fleet, batch)
	nodes := watchNodes(t, s, "batch")
	edit("pools/batch.cue", `"262144"`, `"524288"`)
	git("commit", "-qam", "batch: vm.max_map_count 524288")
	git("push", "-q", "origin", "main")
	converge("sysctl change")
	nodes.stop()
	after = counters(s.Fleet, batch)
	checkDisruption(t, "a sysctl change", nodes, before, after, disruption{})
	for _, n := range batch {
		d := after[n].diff(before[n])
		if d.Reboots != 0 || d.Pulls != 0 || d.Sysctls == 0 {
			t.Errorf("%s: %d reboots, %d pulls, %d sysctls for a sysctl change; want 0, 0, some", n, d.Reboots, d.Pulls, d.Sysctls)
		}
		if v := readFile(t, filepath.Join(s.Fleet.Root(n), "proc/sys/vm/max_map_count")); strings.TrimSpace(v) != "524288" {
			t.Errorf("%s: vm.max_map_count is %q", n, v)
		}
	}

	// A kubelet-only change restarts kubelet on each node once, and
	// cordons, drains and reboots none: the pods keep running.
	before = counters(s.Fleet, batch)
	nodes = watchNodes(t, s, "batch")
	edit("pools/batch.cue", `maxPods:                     250`, `maxPods:                     300`)
	git("commit", "-qam", "batch: kubelet maxPods 300")
	git("push", "-q", "origin", "main")
	converge("kubelet change")
	nodes.stop()
	checkDisruption(t, "a kubelet change", nodes, before, counters(s.Fleet, batch), disruption{kubeletRestarts: 1})

	// 4. Reverting the OS bump with git brings every general node back
	// through the rollback fast path: the old deployment, no pull.
	before = counters(s.Fleet, general)
	git("revert", "--no-edit", bump)
	revert := git("rev-parse", "HEAD")
	git("push", "-q", "origin", "main")
	converge("revert")
	after = counters(s.Fleet, general)
	for _, n := range general {
		d := after[n].diff(before[n])
		if d.Pulls != 0 || d.FastPaths != 1 || booted(t, s.Fleet, n) != v1 {
			t.Errorf("%s: %d pulls, %d fast paths, booted %s after the revert; want 0, 1, %s", n, d.Pulls, d.FastPaths, schema.Short(booted(t, s.Fleet, n)), schema.Short(v1))
		}
	}

	// 5. herd history shows all of it.
	out, err := exec.Command(herd, "history", s.Work, "--cluster", "demo").CombinedOutput()
	if err != nil {
		t.Fatalf("herd history: %v\n%s", err, out)
	}
	for _, want := range []string{
		revert[:8], "(reverts " + bump[:8] + ")",
		bump[:8], "general: os " + v1[:8] + " -> " + v2[:8], "reverted by " + revert[:8],
		`batch: sysctl."vm.max_map_count" 262144 -> 524288`,
		"demo/general: applying", "demo/general: completed",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("herd history lacks %q:\n%s", want, out)
		}
	}

	// 6. A pod without a controller keeps its node: the next OS bump
	// rolls out around it, and finishes once its owner deletes it.
	barePodKeepsItsNode(&run{t: t, Story: s}, herd)
}

// buildHerd builds the herd binary once for the tests of the package: the
// commands the stories run, and the controller as a process of its own.
func buildHerd(t *testing.T) string {
	t.Helper()
	bin, err := herdBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

var binDir string // see withHerdBinary; herd and herd-agent are built there

var herdBinary = sync.OnceValues(func() (string, error) {
	bin := filepath.Join(binDir, "herd")
	build := exec.Command("go", "build", "-o", bin, "herd.dev/herd/cmd/herd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build does
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build herd: %v\n%s", err, out)
	}
	return bin, nil
})

// withHerdBinary runs the package's tests with a directory for the herd
// and herd-agent binaries, removed afterwards.
func withHerdBinary(m *testing.M) int {
	var err error
	if binDir, err = os.MkdirTemp("", "herd-e2e-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(binDir)
	return m.Run()
}

// disruption is what a change does to each node of its pool: cordons,
// drains begun, NotReady spells (from the Node objects), reboots and
// kubelet restarts (from the agents). Every node is dispatched once.
type disruption struct {
	cordons, drains, notReady, reboots, kubeletRestarts int
}

// checkDisruption holds every node a watch saw to the disruption want.
func checkDisruption(t *testing.T, change string, nodes *nodeWatch, before, after map[string]count, want disruption) {
	t.Helper()
	hist := nodes.history()
	if len(hist) == 0 {
		t.Errorf("%s: the watch saw no node", change)
	}
	for n, h := range hist {
		d := after[n].diff(before[n])
		dispatched := 0
		for _, k := range h.Dispatches {
			dispatched += k
		}
		got := disruption{h.Cordons, h.Drains, h.NotReady, d.Reboots, d.KubeletRestarts}
		if got != want || dispatched != 1 {
			t.Errorf("%s: %s was dispatched %d times, %+v; want once, %+v", change, n, dispatched, got, want)
		}
	}
}

func nodesOf(f *sim.Fleet, pool string) []string {
	var out []string
	for _, n := range f.Nodes() {
		if f.Pool(n) == pool {
			out = append(out, n)
		}
	}
	return out
}

// count is what a node's agent did: from sim.Fleet.Counters.
type count struct {
	Pulls, Deploys, FastPaths, Reboots, Sysctls, Prestaged int
	KubeletRestarts                                        int
}

func (c count) diff(d count) count {
	return count{c.Pulls - d.Pulls, c.Deploys - d.Deploys, c.FastPaths - d.FastPaths, c.Reboots - d.Reboots, c.Sysctls - d.Sysctls, c.Prestaged - d.Prestaged,
		c.KubeletRestarts - d.KubeletRestarts}
}

func counters(f *sim.Fleet, nodes []string) map[string]count {
	out := map[string]count{}
	for _, n := range nodes {
		c, _ := f.Counters(n)
		out[n] = count{c.Pulls, c.Deploys, c.FastPaths, c.Reboots, c.Sysctls, c.Prestaged, c.Restarts[node.KubeletUnit]}
	}
	return out
}

func booted(t *testing.T, f *sim.Fleet, node string) string {
	t.Helper()
	st, err := f.Sysroot(node).Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	d, ok := st.Booted()
	if !ok {
		return ""
	}
	return d.Checksum
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[:min(n, len(lines))], "\n")
}
