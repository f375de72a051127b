// Package e2e runs Herd's user story end to end on real parts: a real
// kube-apiserver and controller-manager, simulated nodes on real OSTree
// sysroots, a fleet repo served by git daemon, and changes made with the
// real git CLI.
package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/sim"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/test/controlplane"
	"herd.dev/herd/test/story"
)

func TestUserStory(t *testing.T) {
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
	// (25% of 6 nodes: 1), each node pulling and rebooting once.
	budget := watchBudget(t, s, "general")
	before := counters(s.Fleet, general)
	edit("pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	git("commit", "-qam", "general: 2026.11.0")
	bump := git("rev-parse", "HEAD")
	git("push", "-q", "origin", "main")
	converge("OS bump")
	if got := budget.max(); got != 1 {
		t.Errorf("at most %d general nodes were unavailable at once; maxUnavailable is 1 (and the rollout needs 1)", got)
	}
	after := counters(s.Fleet, general)
	prestaged := 0
	for _, n := range general {
		d := after[n].diff(before[n])
		if d.Pulls != 1 || d.Reboots != 1 || booted(t, s.Fleet, n) != v2 {
			t.Errorf("%s: %d pulls, %d reboots, booted %s; want 1, 1, %s", n, d.Pulls, d.Reboots, short(booted(t, s.Fleet, n)), short(v2))
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

	// 3. A sysctl-only change rolls out with no reboot and no pull.
	batch := nodesOf(s.Fleet, "batch")
	before = counters(s.Fleet, batch)
	edit("pools/batch.cue", `"262144"`, `"524288"`)
	git("commit", "-qam", "batch: vm.max_map_count 524288")
	git("push", "-q", "origin", "main")
	converge("sysctl change")
	after = counters(s.Fleet, batch)
	for _, n := range batch {
		d := after[n].diff(before[n])
		if d.Reboots != 0 || d.Pulls != 0 || d.Sysctls == 0 {
			t.Errorf("%s: %d reboots, %d pulls, %d sysctls for a sysctl change; want 0, 0, some", n, d.Reboots, d.Pulls, d.Sysctls)
		}
		if v := readFile(t, filepath.Join(s.Fleet.Root(n), "proc/sys/vm/max_map_count")); strings.TrimSpace(v) != "524288" {
			t.Errorf("%s: vm.max_map_count is %q", n, v)
		}
	}

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
			t.Errorf("%s: %d pulls, %d fast paths, booted %s after the revert; want 0, 1, %s", n, d.Pulls, d.FastPaths, short(booted(t, s.Fleet, n)), short(v1))
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
}

// buildHerd builds the herd binary for the commands the story runs.
func buildHerd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "herd")
	build := exec.Command("go", "build", "-o", bin, "herd.dev/herd/cmd/herd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build does
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("build herd: %v\n%s", err, out)
	}
	return bin
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

type count struct{ Pulls, FastPaths, Reboots, Sysctls, Prestaged int }

func (c count) diff(d count) count {
	return count{c.Pulls - d.Pulls, c.FastPaths - d.FastPaths, c.Reboots - d.Reboots, c.Sysctls - d.Sysctls, c.Prestaged - d.Prestaged}
}

func counters(f *sim.Fleet, nodes []string) map[string]count {
	out := map[string]count{}
	for _, n := range nodes {
		c, _ := f.Counters(n)
		out[n] = count{c.Pulls, c.FastPaths, c.Reboots, c.Sysctls, c.Prestaged}
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

// budgetWatch records the most nodes of a pool unavailable at once, from a
// watch on the real API server.
type budgetWatch struct {
	mu          sync.Mutex
	unavailable map[string]bool
	most        int
}

func watchBudget(t *testing.T, s *story.Story, pool string) *budgetWatch {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(s.CP.Config())
	w, err := cs.CoreV1().Nodes().Watch(t.Context(), metav1.ListOptions{LabelSelector: "herd.dev/pool=" + pool})
	if err != nil {
		t.Fatal(err)
	}
	b := &budgetWatch{unavailable: map[string]bool{}}
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	go func() {
		defer w.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.ResultChan():
				if !ok {
					return
				}
				n, ok := ev.Object.(*corev1.Node)
				if !ok {
					continue
				}
				b.mu.Lock()
				// A joining node takes no work until it is at its target:
				// it is outside the budget while it carries the taint.
				b.unavailable[n.Name] = !cluster.HasTaint(n, schema.TaintConverging) &&
					(!cluster.IsReady(n) || n.Spec.Unschedulable || schema.NodeState(n.Annotations[schema.AnnotationState]).Busy())
				count := 0
				for _, u := range b.unavailable {
					if u {
						count++
					}
				}
				b.most = max(b.most, count)
				b.mu.Unlock()
			}
		}
	}()
	return b
}

func (b *budgetWatch) max() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.most
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func short(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}

func firstLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	return strings.Join(lines[:min(n, len(lines))], "\n")
}
