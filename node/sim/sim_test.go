package sim_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/sim"
	"herd.dev/herd/schema"
	"herd.dev/herd/test/controlplane"
	"herd.dev/herd/test/fleettest"
)

func TestMain(m *testing.M) {
	if _, err := exec.LookPath("ostree"); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: sim tests need the ostree CLI; install with: apt-get install -y ostree")
		os.Exit(1)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: sim tests need root: ostree admin deploy refuses to run otherwise")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// poll calls cond every 50ms until it is true or the deadline passes.
func poll(t testing.TB, timeout time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-tick.C:
		case <-t.Context().Done():
			return false
		}
	}
	return true
}

func ready(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Twelve nodes in three pools come up Ready, their agents (in the
// simulator) Idle on the first commit; one of them takes a new OS through a
// simulated reboot, then a kubelet change; the kubelet stand-in runs and
// evicts pods; Stop removes everything.
func TestFleet(t *testing.T) { testFleet(t, "") }

// The same with every node running the herd-agent binary as a process of
// its own, talking D-Bus to the simulator's systemd and logind, counted
// from its /metrics.
func TestFleetOfAgentProcesses(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "herd-agent")
	build := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", bin, "herd.dev/herd/cmd/herd-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build herd-agent: %v\n%s", err, out)
	}
	testFleet(t, bin)
}

func testFleet(t *testing.T, agent string) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	cs, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	goroutines := runtime.NumGoroutine()
	f, err := sim.Start(ctx, sim.Options{
		Config:      cp.Config(),
		Pools:       map[string]int{"system": 3, "general": 6, "batch": 3},
		RebootDelay: 500 * time.Millisecond,
		Log:         slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		AgentBinary: agent,
		AgentLog:    logWriter{t},
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			f.Stop()
		}
	}()
	t.Logf("12 nodes started in %v; commits %v; repo %s", f.StartupTime(), f.Commits(), f.RepoURL())
	if len(f.Commits()) != 2 || !strings.HasPrefix(f.RepoURL(), "file://") {
		t.Fatalf("commits %v, repo %q", f.Commits(), f.RepoURL())
	}

	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	perPool := map[string]int{}
	zones := map[string]int{}
	for _, n := range nodes.Items {
		perPool[n.Labels[sim.LabelPool]]++
		zones[n.Labels[sim.LabelZone]]++
		if !ready(&n) || n.Labels[sim.LabelHostname] != n.Name {
			t.Errorf("node %s: ready %v, labels %v", n.Name, ready(&n), n.Labels)
		}
		if n.Annotations[schema.AnnotationState] != string(schema.StateIdle) || n.Annotations[schema.AnnotationOSBooted] != f.Commits()[0] {
			t.Errorf("node %s annotations %v", n.Name, n.Annotations)
		}
	}
	if perPool["system"] != 3 || perPool["general"] != 6 || perPool["batch"] != 3 || len(zones) != 3 {
		t.Errorf("pools %v, zones %v", perPool, zones)
	}
	leases, err := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).List(ctx, metav1.ListOptions{})
	if err != nil || len(leases.Items) != 12 {
		t.Errorf("%d node leases, %v; want 12", len(leases.Items), err)
	}

	// Pods bound to a simulated node run, and an eviction finishes.
	target := f.Nodes()[0]
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "work"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods("work").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app"},
		Spec:       corev1.PodSpec{NodeName: target, Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !poll(t, 30*time.Second, func() bool {
		p, err := cs.CoreV1().Pods("work").Get(ctx, pod.Name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning && len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].Ready
	}) {
		t.Fatal("pod on a simulated node never ran")
	}
	err = cs.PolicyV1().Evictions("work").Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: "work"}})
	if err != nil {
		t.Fatal(err)
	}
	if !poll(t, 30*time.Second, func() bool {
		_, err := cs.CoreV1().Pods("work").Get(ctx, "app", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	}) {
		t.Fatal("evicted pod never went away")
	}

	// A new OS for one node: the agent stages it, the node reboots (NotReady
	// for a while), boots it, and reports Idle at the target.
	v2 := f.Commits()[1]
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// desire publishes the render of cfg and sets the target's desired state.
	desire := func(cfg schema.NodeConfig) *schema.Rendered {
		t.Helper()
		r, err := schema.Render(cfg)
		if err != nil {
			t.Fatal(err)
		}
		data, _ := schema.MarshalRendered(r)
		if _, err := cs.CoreV1().ConfigMaps(schema.RenderedNamespace).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedName(r.Hash())},
			Data:       map[string]string{schema.RenderedDataKey: string(data)},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
			schema.AnnotationDesiredConfig: r.Hash(), schema.AnnotationDesiredOS: cfg.OS.Commit,
		}}})
		if _, err := cs.CoreV1().Nodes().Patch(ctx, target, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		return r
	}
	cfg := schema.NodeConfig{
		OS:     schema.OSConfig{Ref: f.Ref(), Commit: v2, Remote: &schema.RemoteConfig{Name: f.Remote(), URL: f.RepoURL()}},
		Sysctl: map[string]string{"vm.max_map_count": "262144", "net.ipv4.ip_forward": "1"},
	}
	r := desire(cfg)
	sawNotReady := false
	if !poll(t, 60*time.Second, func() bool {
		n, err := cs.CoreV1().Nodes().Get(ctx, target, metav1.GetOptions{})
		if err != nil {
			return false
		}
		if !ready(n) {
			sawNotReady = true
		}
		a := n.Annotations
		return ready(n) && a[schema.AnnotationState] == string(schema.StateIdle) &&
			a[schema.AnnotationCurrentConfig] == r.Hash() && a[schema.AnnotationOSBooted] == v2
	}) {
		n, _ := cs.CoreV1().Nodes().Get(ctx, target, metav1.GetOptions{})
		t.Fatalf("node %s never reached the target: %v", target, n.Annotations)
	}
	if !sawNotReady {
		t.Error("the node never went NotReady during its reboot")
	}
	c, _ := f.Counters(target)
	if c.Pulls != 1 || c.Deploys != 1 || c.Reboots != 1 || c.Boots != 1 || c.Sysctls != 2 {
		t.Errorf("counters %+v", c)
	}
	if b, _ := os.ReadFile(f.Root(target) + "/proc/sys/net/ipv4/ip_forward"); string(b) != "1\n" {
		t.Errorf("ip_forward = %q", b)
	}
	if total := f.Total(); total.Reboots != 1 || total.Pulls != 1 {
		t.Errorf("fleet totals %+v: other nodes did something", total)
	}

	// A kubelet change restarts the kubelet (over D-Bus, for agent
	// processes), and nothing else.
	maxPods := 64
	cfg.Kubelet = &schema.Kubelet{MaxPods: &maxPods}
	r = desire(cfg)
	if !poll(t, 60*time.Second, func() bool {
		n, err := cs.CoreV1().Nodes().Get(ctx, target, metav1.GetOptions{})
		return err == nil && n.Annotations[schema.AnnotationState] == string(schema.StateIdle) && n.Annotations[schema.AnnotationCurrentConfig] == r.Hash()
	}) {
		n, _ := cs.CoreV1().Nodes().Get(ctx, target, metav1.GetOptions{})
		t.Fatalf("node %s never took the kubelet change: %v", target, n.Annotations)
	}
	c, _ = f.Counters(target)
	if c.Restarts["kubelet.service"] != 1 || c.Reboots != 1 || c.Applied != 2 {
		t.Errorf("counters after the kubelet change %+v", c)
	}

	// Stop: agents and kubelet end, nodes and leases go, sysroots are removed.
	stopped = true
	if err := f.Stop(); err != nil {
		t.Fatal(err)
	}
	nodes, err = cs.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 0 {
		t.Errorf("%d nodes left after Stop (%v)", len(nodes.Items), err)
	}
	if _, err := os.Stat(f.Dir()); !os.IsNotExist(err) {
		t.Errorf("temporary dir %s left: %v", f.Dir(), err)
	}
	if !poll(t, 10*time.Second, func() bool { return runtime.NumGoroutine() <= goroutines+5 }) {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after Stop, %d before Start:\n%s", runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
	}
}

func TestParseAndScalePools(t *testing.T) {
	p, err := sim.ParsePools("system:3,general:6,batch:3")
	if err != nil || p["system"] != 3 || p["general"] != 6 || p["batch"] != 3 {
		t.Fatalf("ParsePools = %v, %v", p, err)
	}
	for _, bad := range []string{"", "x", "x:", "x:-1", ":3", "a:1,a:2", "a:1.5"} {
		if _, err := sim.ParsePools(bad); err == nil {
			t.Errorf("ParsePools(%q) accepted", bad)
		}
	}
	s := sim.ScalePools(p, 200)
	if s["system"]+s["general"]+s["batch"] != 200 || s["general"] != 100 || s["system"] != 50 {
		t.Errorf("ScalePools(200) = %v", s)
	}
	s = sim.ScalePools(map[string]int{"a": 1, "b": 1, "c": 1}, 10)
	if s["a"]+s["b"]+s["c"] != 10 || s["a"] != 4 {
		t.Errorf("ScalePools(10) = %v", s)
	}
	s = sim.ScalePools(map[string]int{"small": 1, "big": 100}, 10)
	if s["small"] != 1 || s["big"] != 9 {
		t.Errorf("ScalePools keeps no node in a small pool: %v", s)
	}
}

// The example fleet rolled out to simulated nodes (every node at once; the
// controller's batching is not part of this test), then rolled back: the
// pools' sysctls exist on the simulated kernels, the system pool's kernel
// arguments are deployed, and the rollback takes the fast path.
func TestExampleFleetOnSimulatedNodes(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	cs, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	f, err := sim.Start(ctx, sim.Options{
		Config:      cp.Config(),
		Pools:       map[string]int{"system": 2, "general": 3, "batch": 2},
		RebootDelay: 200 * time.Millisecond,
		Log:         slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	v1, v2 := f.Commits()[0], f.Commits()[1]
	const exampleRelease = "1fff1fd9a3c54e8c1b3d0e7f6a2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b"
	const exampleURL = "https://ostree.example.com/containeros"

	rollout := func(commit string, edit func(dir string)) map[string]string {
		t.Helper()
		dir := t.TempDir()
		fleettest.CopyExample(t, dir)
		fleettest.Edit(t, dir, "fleet.cue", exampleRelease, commit)
		fleettest.Edit(t, dir, "fleet.cue", exampleURL, f.RepoURL())
		if edit != nil {
			edit(dir)
		}
		res := fleettest.Load(t, dir)
		hashes := map[string]string{}
		for pool, r := range res.Rendered {
			data, _ := schema.MarshalRendered(r)
			_, err := cs.CoreV1().ConfigMaps(schema.RenderedNamespace).Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedName(r.Hash())},
				Data:       map[string]string{schema.RenderedDataKey: string(data)},
			}, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			hashes[pool] = r.Hash()
		}
		for _, name := range f.Nodes() {
			body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
				schema.AnnotationDesiredConfig: hashes[f.Pool(name)], schema.AnnotationDesiredOS: commit,
			}}})
			if _, err := cs.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		var last string
		if !poll(t, 90*time.Second, func() bool {
			nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false
			}
			for _, n := range nodes.Items {
				a := n.Annotations
				if !ready(&n) || a[schema.AnnotationState] != "Idle" || a[schema.AnnotationOSBooted] != commit ||
					a[schema.AnnotationCurrentConfig] != hashes[n.Labels[sim.LabelPool]] {
					last = fmt.Sprintf("%s: ready %v, %v", n.Name, ready(&n), a)
					return false
				}
			}
			return true
		}) {
			t.Fatalf("the fleet did not converge; e.g. %s", last)
		}
		t.Logf("rollout to %s: all nodes up to date in %v", schema.Short(commit), time.Since(start).Round(time.Millisecond))
		return hashes
	}

	rollout(v2, nil)
	tot := f.Total()
	if tot.Pulls != 7 || tot.Boots != 7 || tot.Refusals != 0 {
		t.Errorf("after the rollout: %+v", tot)
	}
	sys := f.Nodes()[len(f.Nodes())-1] // a system node
	if f.Pool(sys) != "system" {
		t.Fatalf("%s is in pool %s", sys, f.Pool(sys))
	}
	st, err := f.Sysroot(sys).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := st.Booted(); d.Checksum != v2 || strings.Join(d.KernelArgs, " ") != "console=ttyS0,115200n8 systemd.unified_cgroup_hierarchy=1" {
		t.Errorf("system node booted %s with %q", d.ID(), d.KernelArgs)
	}
	if b, _ := os.ReadFile(f.Root(sys) + "/proc/sys/net/bridge/bridge-nf-call-iptables"); string(b) != "1\n" {
		t.Errorf("bridge-nf-call-iptables = %q", b)
	}

	// git revert: back to v1, still on disk everywhere.
	rollout(v1, nil)
	tot = f.Total()
	if tot.Pulls != 7 || tot.FastPaths != 7 || tot.Boots != 14 {
		t.Errorf("after the rollback: %+v; want no new pull, 7 fast paths", tot)
	}

	// A kubelet-only change in one pool restarts the kubelet there, no reboot.
	rollout(v1, func(dir string) { fleettest.Edit(t, dir, "pools/general.cue", "maxPods: 110", "maxPods: 120") })
	tot = f.Total()
	if tot.Restarts["kubelet.service"] != 3 || tot.Boots != 14 {
		t.Errorf("after the kubelet change: %+v; want 3 kubelet restarts, no reboot", tot)
	}
}

// Pre-staging, joining nodes and boot failures on simulated nodes: a node
// pre-stages the new commit and then rolls out without a pull; a node where
// the new commit fails to boot comes back Ready on the previous deployment
// and Degraded; a node added to the running fleet registers with the
// converging taint, which its agent removes at the target.
func TestFleetPrestageJoinFailBoot(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	cs, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	f, err := sim.Start(ctx, sim.Options{
		Config:      cp.Config(),
		Pools:       map[string]int{"general": 2},
		RebootDelay: 300 * time.Millisecond,
		Log:         slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	v1, v2 := f.Commits()[0], f.Commits()[1]
	failing, prestaged := f.Nodes()[0], f.Nodes()[1]

	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	publish := func(commit string, maxPods int) string {
		t.Helper()
		return publishRender(t, cs, f, commit, maxPods)
	}
	annotate := func(name string, ann map[string]any) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
		if _, err := cs.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(name string) *corev1.Node {
		t.Helper()
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// waitFor polls the node until cond holds, noting whether it was ever NotReady.
	waitFor := func(name, what string, cond func(n *corev1.Node) bool) (sawNotReady bool) {
		t.Helper()
		var last *corev1.Node
		if !poll(t, 60*time.Second, func() bool {
			n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			last = n
			if !ready(n) {
				sawNotReady = true
			}
			return cond(n)
		}) {
			t.Fatalf("node %s: not %s: annotations %v, taints %v", name, what, last.Annotations, last.Spec.Taints)
		}
		return sawNotReady
	}
	atTarget := func(config, commit string) func(n *corev1.Node) bool {
		return func(n *corev1.Node) bool {
			a := n.Annotations
			return ready(n) && a[schema.AnnotationState] == string(schema.StateIdle) &&
				a[schema.AnnotationCurrentConfig] == config && a[schema.AnnotationOSBooted] == commit
		}
	}
	converging := func(n *corev1.Node) bool {
		for _, t := range n.Spec.Taints {
			if t.Key == schema.TaintConverging && t.Effect == corev1.TaintEffectNoSchedule {
				return true
			}
		}
		return false
	}

	if err := f.FailBoot("v2", failing); err == nil {
		t.Error("FailBoot accepted a commit that is no checksum")
	}
	if err := f.FailBoot(v2, "no-such-node"); err == nil {
		t.Error("FailBoot accepted an unknown node")
	}
	if err := f.FailBoot(v2, failing); err != nil {
		t.Fatal(err)
	}

	// Pre-stage v2 on one node: pulled, nothing else.
	h1 := publish(v1, 110)
	for _, name := range f.Nodes() {
		annotate(name, map[string]any{schema.AnnotationDesiredConfig: h1, schema.AnnotationDesiredOS: v1})
		waitFor(name, "at h1", atTarget(h1, v1))
	}
	annotate(prestaged, map[string]any{schema.AnnotationPrestageOS: v2})
	waitFor(prestaged, "pre-staged", func(n *corev1.Node) bool { return n.Annotations[schema.AnnotationOSPulled] == v2 })
	if c, _ := f.Counters(prestaged); c.Prestaged != 1 || c.Pulls != 1 || c.Deploys != 0 || c.Boots != 0 {
		t.Errorf("counters after the pre-stage: %+v", c)
	}
	if a := get(prestaged).Annotations; a[schema.AnnotationState] != string(schema.StateIdle) || a[schema.AnnotationOSStaged] != "" {
		t.Errorf("annotations after the pre-stage: %v", a)
	}

	// The rollout of v2 to both.
	st, err := f.Sysroot(failing).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bootedBefore, _ := st.Booted()
	h2 := publish(v2, 110)
	for _, name := range f.Nodes() {
		annotate(name, map[string]any{schema.AnnotationDesiredConfig: h2, schema.AnnotationDesiredOS: v2})
	}
	sawNotReady := waitFor(failing, "Degraded after the boot", func(n *corev1.Node) bool {
		return ready(n) && n.Annotations[schema.AnnotationState] == string(schema.StateDegraded)
	})
	if !sawNotReady {
		t.Error("the failing node never went NotReady")
	}
	a := get(failing).Annotations
	if !strings.Contains(a[schema.AnnotationMessage], "fell back to the previous deployment") || a[schema.AnnotationOSBooted] != v1 ||
		a[schema.AnnotationOSStaged] != v2 {
		t.Errorf("the failing node's annotations: %v", a)
	}
	waitFor(prestaged, "at h2", atTarget(h2, v2))
	if c, _ := f.Counters(prestaged); c.Prestaged != 1 || c.Pulls != 1 || c.FastPaths != 0 || c.Deploys != 1 || c.Boots != 1 || c.BootFailures != 0 {
		t.Errorf("counters of the pre-staged node after the rollout: %+v; want no pull but the pre-stage's", c)
	}
	st, err = f.Sysroot(failing).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := st.Booted(); b.ID() != bootedBefore.ID() {
		t.Errorf("booted %s after the failed boot, want the previous deployment %s", b.ID(), bootedBefore.ID())
	}
	if c, _ := f.Counters(failing); c.Boots != 1 || c.BootFailures != 1 || c.Refusals != 1 || c.Pulls != 1 {
		t.Errorf("counters of the failing node: %+v", c)
	}

	// A node joins: registered with the converging taint, which goes at the target.
	added, err := f.AddNodes(ctx, "general", 1, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(added) != 1 || added[0] != "general-2" || f.Pool(added[0]) != "general" || len(f.Nodes()) != 3 {
		t.Fatalf("added %v; nodes %v", added, f.Nodes())
	}
	joined := get(added[0])
	if !ready(joined) || !converging(joined) || joined.Annotations[schema.AnnotationState] != string(schema.StateIdle) ||
		joined.Labels[sim.LabelPool] != "general" || joined.Labels[sim.LabelZone] != "c" {
		t.Errorf("joined node: ready %v, taints %v, labels %v, annotations %v", ready(joined), joined.Spec.Taints, joined.Labels, joined.Annotations)
	}
	annotate(added[0], map[string]any{schema.AnnotationDesiredConfig: h2, schema.AnnotationDesiredOS: v2})
	waitFor(added[0], "at h2 and untainted", func(n *corev1.Node) bool { return atTarget(h2, v2)(n) && !converging(n) })
	if c, _ := f.Counters(added[0]); c.Untainted != 1 || c.Boots != 1 {
		t.Errorf("counters of the joined node: %+v", c)
	}

	// Undo: the failing node goes back to h1, then boots v2 fine.
	f.ClearFailBoot()
	annotate(failing, map[string]any{schema.AnnotationDesiredConfig: h1, schema.AnnotationDesiredOS: v1})
	waitFor(failing, "back at h1", func(n *corev1.Node) bool {
		return atTarget(h1, v1)(n) && n.Annotations[schema.AnnotationOSStaged] == ""
	})
	annotate(failing, map[string]any{schema.AnnotationDesiredConfig: h2, schema.AnnotationDesiredOS: v2})
	waitFor(failing, "at h2", atTarget(h2, v2))

	tot := f.Total()
	if tot.BootFailures != 1 || tot.Prestaged != 1 || tot.Untainted != 1 || tot.Boots != 4 {
		t.Errorf("totals %+v", tot)
	}
}

// publishRender stores, as the controller does, the render of a node config
// at commit of the simulator's OS repository, and returns its hash.
func publishRender(t *testing.T, cs kubernetes.Interface, f *sim.Fleet, commit string, maxPods int) string {
	t.Helper()
	r, err := schema.Render(schema.NodeConfig{
		OS:      schema.OSConfig{Ref: f.Ref(), Commit: commit, Remote: &schema.RemoteConfig{Name: f.Remote(), URL: f.RepoURL(), GPGVerify: true}},
		Kubelet: &schema.Kubelet{MaxPods: &maxPods},
	})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := schema.MarshalRendered(r)
	_, err = cs.CoreV1().ConfigMaps(schema.RenderedNamespace).Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedName(r.Hash())},
		Data:       map[string]string{schema.RenderedDataKey: string(data)},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return r.Hash()
}
