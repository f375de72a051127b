package sim_test

import (
	"encoding/json"
	"log/slog"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/sim"
	"herd.dev/herd/schema"
	"herd.dev/herd/test/controlplane"
)

// Nodes join at once on linked sysroots: registered with the converging
// taint, their agents reporting the booted commit; one told its booted
// commit converges without a reboot, one told a new commit reboots into
// it, and neither changes its siblings' sysroots or repositories.
func TestJoinLinkedSysroots(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	cs, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	f, err := sim.Start(ctx, sim.Options{
		Config:       cp.Config(),
		Pools:        map[string]int{"general": 1},
		RebootDelay:  300 * time.Millisecond,
		LinkSysroots: true,
		Log:          slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	v1, v2 := f.Commits()[0], f.Commits()[1]
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: schema.RenderedNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h1, h2 := publishRender(t, cs, f, v1, 110), publishRender(t, cs, f, v2, 110)

	j, err := f.Join(ctx, "general", 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(j.Names) != 3 || j.Names[0] != "general-1" {
		t.Fatalf("joined %v", j.Names)
	}
	converging := func(n *corev1.Node) bool {
		for _, taint := range n.Spec.Taints {
			if taint.Key == schema.TaintConverging && taint.Effect == corev1.TaintEffectNoSchedule {
				return true
			}
		}
		return false
	}
	waitFor := func(name, what string, cond func(*corev1.Node) bool) {
		t.Helper()
		var last *corev1.Node
		if !poll(t, time.Minute, func() bool {
			n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			last = n
			return err == nil && cond(n)
		}) {
			t.Fatalf("node %s: not %s: %+v", name, what, last)
		}
	}
	for _, name := range j.Names {
		waitFor(name, "reported on v1, tainted", func(n *corev1.Node) bool {
			return converging(n) && ready(n) && n.Annotations[schema.AnnotationOSBooted] == v1 &&
				n.Annotations[schema.AnnotationState] == string(schema.StateIdle)
		})
	}
	at := func(config, commit string) func(*corev1.Node) bool {
		return func(n *corev1.Node) bool {
			a := n.Annotations
			return !converging(n) && ready(n) && a[schema.AnnotationState] == string(schema.StateIdle) &&
				a[schema.AnnotationCurrentConfig] == config && a[schema.AnnotationOSBooted] == commit
		}
	}
	annotate := func(name, config, commit string) {
		body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
			schema.AnnotationDesiredConfig: config, schema.AnnotationDesiredOS: commit}}})
		if _, err := cs.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	same, updated, idle := j.Names[0], j.Names[1], j.Names[2]
	annotate(same, h1, v1)
	annotate(updated, h2, v2)
	waitFor(same, "at h1 on v1, untainted", at(h1, v1))
	waitFor(updated, "at h2 on v2, untainted", at(h2, v2))
	if c, _ := f.Counters(same); c.Boots != 0 || c.Reboots != 0 || c.Untainted != 1 {
		t.Errorf("%s, booted on its target's commit: %+v, want no reboot and one untaint", same, c)
	}
	if c, _ := f.Counters(updated); c.Boots != 1 || c.Untainted != 1 {
		t.Errorf("%s, told a new commit: %+v, want one boot and one untaint", updated, c)
	}
	for _, name := range []string{idle, f.Nodes()[0]} {
		st, err := f.Sysroot(name).Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := st.Booted(); len(st.Deployments) != 1 || d.Checksum != v1 {
			t.Errorf("%s: its sysroot changed with a sibling's: %+v", name, st)
		}
		repo := filepath.Join(f.Sysroot(name).Path, "ostree/repo")
		if out, err := exec.CommandContext(ctx, "ostree", "fsck", "--repo="+repo).CombinedOutput(); err != nil {
			t.Errorf("%s: ostree fsck: %v\n%s", name, err, out)
		}
	}
}
