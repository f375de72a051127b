package node_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
)

// nodeEvents records every version of a Node a watch delivers from now on.
type nodeEvents struct {
	mu    sync.Mutex
	nodes []*corev1.Node
}

func watchNode(t *testing.T, cs kubernetes.Interface, name string) *nodeEvents {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w, err := cs.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{
		FieldSelector:   "metadata.name=" + name,
		ResourceVersion: n.ResourceVersion,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	ev := &nodeEvents{nodes: []*corev1.Node{n}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range w.ResultChan() {
			if no, ok := e.Object.(*corev1.Node); ok && (e.Type == watch.Added || e.Type == watch.Modified) {
				ev.mu.Lock()
				ev.nodes = append(ev.nodes, no)
				ev.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		w.Stop()
		<-done
	})
	return ev
}

func (ev *nodeEvents) list() []*corev1.Node {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	return slices.Clone(ev.nodes)
}

// states returns the distinct values of the state annotation seen so far.
func (ev *nodeEvents) states() []string {
	var out []string
	for _, n := range ev.list() {
		if s := n.Annotations[schema.AnnotationState]; !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// hookCounter counts the agent's hook points.
type hookCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *hookCounter) hook(point string, _ func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		h.n = map[string]int{}
	}
	h.n[point]++
}

func (h *hookCounter) count(point string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n[point]
}

func deploymentIDs(st ostree.Status) []string {
	var ids []string
	for _, d := range st.Deployments {
		ids = append(ids, fmt.Sprintf("%s booted=%v kargs=%q", d.ID(), d.Booted, d.KernelArgs))
	}
	return ids
}

func (n *testNode) waitAnnotation(key, value string, timeout time.Duration) map[string]string {
	n.t.Helper()
	var ann map[string]string
	if !poll(n.t, timeout, func() bool {
		ann = n.annotations()
		return ann[key] == value
	}) {
		n.t.Fatalf("node %s: %s = %q after %v, want %q; annotations %v", n.name, key, ann[key], timeout, value, ann)
	}
	return ann
}

// Pre-staging pulls the commit prestage-os names and nothing else: the node
// stays Idle, nothing is deployed, written or rebooted. A restarted agent
// does not pull again, and the apply that later deploys the commit pulls
// nothing (its remote leads nowhere: a pull would fail).
func TestAgentPrestage(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := repo.Commits[0], repo.Commits[1]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	base := spec{commit: v1, sysctl: map[string]string{"vm.max_map_count": "262144"},
		files: []schema.File{{Path: limitsFile, Content: "* soft nofile 4096\n", Mode: 0o644}}}
	h1 := publishRender(t, n.cs, render(t, repo, base))
	n.setDesired(h1, v1)
	hooks := &hookCounter{}
	n.start(hooks.hook)
	n.waitUpToDate(h1, v1)
	before := n.metrics.Snapshot()
	stBefore, err := n.sysroot.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if has, _ := n.sysroot.HasCommit(t.Context(), v2); has {
		t.Fatal("v2 is on disk before the pre-stage")
	}
	events := watchNode(t, n.cs, n.name)

	// The booted commit is on disk: reported at once, no pull.
	setAnnotations(t, n.cs, n.name, map[string]any{schema.AnnotationPrestageOS: v1})
	n.waitAnnotation(schema.AnnotationOSPulled, v1, 30*time.Second)
	if c := n.metrics.Snapshot(); c.Prestaged != 0 {
		t.Errorf("pre-staging the booted commit pulled: %+v", c)
	}

	// A commit not on disk: pulled from the current config's remote.
	setAnnotations(t, n.cs, n.name, map[string]any{schema.AnnotationPrestageOS: v2})
	ann := n.waitAnnotation(schema.AnnotationOSPulled, v2, 60*time.Second)
	if has, err := n.sysroot.HasCommit(t.Context(), v2); !has || err != nil {
		t.Errorf("v2 on disk after the pre-stage: %v, %v", has, err)
	}
	if got := events.states(); !slices.Equal(got, []string{string(schema.StateIdle)}) {
		t.Errorf("states while pre-staging: %v, want only Idle", got)
	}
	if ann[schema.AnnotationCurrentConfig] != h1 || ann[schema.AnnotationOSBooted] != v1 || ann[schema.AnnotationOSStaged] != "" {
		t.Errorf("annotations after the pre-stage: %v", ann)
	}
	c := n.metrics.Snapshot()
	if c.Prestaged != 1 || c.Pulls != before.Pulls+1 || c.Deploys != before.Deploys || c.Files != before.Files ||
		c.Sysctls != before.Sysctls || c.Reboots != 0 || c.Applied != before.Applied {
		t.Errorf("counters after the pre-stage %+v, before %+v: want one pre-stage pull and nothing else", c, before)
	}
	n.noRebootRequested()
	stAfter, err := n.sysroot.Status(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got, was := deploymentIDs(stAfter), deploymentIDs(stBefore); !slices.Equal(got, was) {
		t.Errorf("deployments changed by the pre-stage: %v, before %v", got, was)
	}

	// Idempotent across restarts: the new agent finds v2 on disk.
	n.stop()
	hooks = &hookCounter{}
	n.start(hooks.hook)
	if !poll(t, 30*time.Second, func() bool { return hooks.count(node.HookPrestaged) == 1 }) {
		t.Fatal("the restarted agent did not handle the pre-stage")
	}
	n.waitUpToDate(h1, v1)
	if ann := n.annotations(); ann[schema.AnnotationOSPulled] != v2 {
		t.Errorf("os-pulled after a restart: %v", ann)
	}
	if c := n.metrics.Snapshot(); c.Prestaged != 1 || c.Pulls != before.Pulls+1 {
		t.Errorf("the restarted agent pulled again: %+v", c)
	}
	if got := events.states(); !slices.Equal(got, []string{string(schema.StateIdle)}) {
		t.Errorf("states: %v, want only Idle", got)
	}

	// The rollout: desired-os is the pre-staged commit. The render's remote
	// leads nowhere, so a pull would fail.
	s2 := base
	s2.commit = v2
	s2.remote = &schema.RemoteConfig{Name: osfixture.DefaultRemote, URL: "file:///nonexistent/repo"}
	h2 := publishRender(t, n.cs, render(t, repo, s2))
	n.setDesired(h2, v2)
	n.awaitReboot()
	if msg := n.annotations()[schema.AnnotationMessage]; !strings.Contains(msg, "pre-staged: no pull") {
		t.Errorf("rebooting message %q does not say the commit was pre-staged", msg)
	}
	n.rebootNow(true)
	ann = n.waitUpToDate(h2, v2)
	if !strings.Contains(ann[schema.AnnotationMessage], "pre-staged: no pull") {
		t.Errorf("idle message %q", ann[schema.AnnotationMessage])
	}
	if c := n.metrics.Snapshot(); c.Pulls != before.Pulls+1 || c.Prestaged != 1 || c.FastPaths != before.FastPaths || c.Deploys != before.Deploys+1 || c.Refusals != 0 {
		t.Errorf("counters after the rollout %+v, before %+v: want no pull but the pre-stage's, no fast path, one deploy", c, before)
	}

	// The request is over: os-pulled goes.
	setAnnotations(t, n.cs, n.name, map[string]any{schema.AnnotationPrestageOS: nil})
	n.waitAnnotation(schema.AnnotationOSPulled, "", 30*time.Second)
}

// A pre-stage that fails says so in the message; the node stays Idle, not
// Degraded, and applies what it is told next.
func TestAgentPrestageFailure(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1})
	v1 := repo.Commits[0]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	h1 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, maxPods: 110}))
	n.setDesired(h1, v1)
	hooks := &hookCounter{}
	n.start(hooks.hook)
	n.waitUpToDate(h1, v1)
	events := watchNode(t, n.cs, n.name)

	sum := sha256.Sum256([]byte("a commit the remote does not have"))
	missing := hex.EncodeToString(sum[:])
	setAnnotations(t, n.cs, n.name, map[string]any{schema.AnnotationPrestageOS: missing})
	var ann map[string]string
	if !poll(t, 60*time.Second, func() bool {
		ann = n.annotations()
		return strings.Contains(ann[schema.AnnotationMessage], "pre-staging OS commit "+schema.Short(missing)+" failed")
	}) {
		t.Fatalf("no failure message: %v", ann)
	}
	if ann[schema.AnnotationState] != string(schema.StateIdle) || ann[schema.AnnotationOSPulled] != "" || ann[schema.AnnotationCurrentConfig] != h1 {
		t.Errorf("annotations after a failed pre-stage: %v", ann)
	}
	if got := events.states(); !slices.Equal(got, []string{string(schema.StateIdle)}) {
		t.Errorf("states: %v, want only Idle", got)
	}
	if c := n.metrics.Snapshot(); c.Refusals != 0 || c.Prestaged != 0 {
		t.Errorf("counters %+v", c)
	}
	// The hook runs after the message is reported: wait for it.
	if !poll(t, 30*time.Second, func() bool { return hooks.count(node.HookPrestaged) >= 1 }) {
		t.Errorf("pre-stage never handled")
	}
	if got := hooks.count(node.HookPrestaged); got != 1 {
		t.Errorf("pre-stage handled %d times, want once (no retry loop)", got)
	}

	h2 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, maxPods: 120}))
	n.setDesired(h2, v1)
	n.waitUpToDate(h2, v1)
	if got := hooks.count(node.HookPrestaged); got != 1 {
		t.Errorf("pre-stage handled %d times, want once: the apply retries it", got)
	}
}

// A desired change interrupts a pre-stage pull: the apply does not wait for
// it, and two pulls never run at once.
func TestAgentPrestageYieldsToApply(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := repo.Commits[0], repo.Commits[1]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})

	// A remote that answers nothing: pulls from it hang until killed.
	release := make(chan struct{})
	var requests, inFlight, maxInFlight atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		k := inFlight.Add(1)
		defer inFlight.Add(-1)
		for {
			m := maxInFlight.Load()
			if k <= m || maxInFlight.CompareAndSwap(m, k) {
				break
			}
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() {
		n.stop()
		close(release)
		srv.Close()
	})
	hanging := &schema.RemoteConfig{Name: osfixture.DefaultRemote, URL: srv.URL}
	h1 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, remote: hanging, maxPods: 110}))
	n.setDesired(h1, v1)
	n.start(nil)
	n.waitUpToDate(h1, v1)

	setAnnotations(t, n.cs, n.name, map[string]any{schema.AnnotationPrestageOS: v2})
	var ann map[string]string
	if !poll(t, 30*time.Second, func() bool {
		ann = n.annotations()
		return strings.Contains(ann[schema.AnnotationMessage], "ahead of its rollout") && inFlight.Load() > 0
	}) {
		t.Fatalf("the pre-stage pull did not start: %v, %d requests", ann, requests.Load())
	}
	if ann[schema.AnnotationState] != string(schema.StateIdle) {
		t.Errorf("state while pre-staging: %v", ann)
	}

	restarts := len(n.services.list())
	start := time.Now()
	h2 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, remote: hanging, maxPods: 120}))
	n.setDesired(h2, v1)
	n.waitUpToDate(h2, v1)
	t.Logf("applied %v after the desired change, during a pre-stage pull", time.Since(start))
	if got := n.services.list()[restarts:]; !slices.Equal(got, []string{node.KubeletUnit}) {
		t.Errorf("restarts for the change %v, want one of the kubelet", got)
	}
	if m := maxInFlight.Load(); m > 1 {
		t.Errorf("%d pulls ran at once", m)
	}
	if ann := n.annotations(); ann[schema.AnnotationOSPulled] != "" {
		t.Errorf("os-pulled %q for a pull that never finished", ann[schema.AnnotationOSPulled])
	}
	if c := n.metrics.Snapshot(); c.Prestaged != 0 || c.Pulls != 0 {
		t.Errorf("counters %+v", c)
	}
}

// An agent killed in the middle of a pre-stage pull pulls the commit when
// it starts again, once; the pull is resumable.
func TestAgentPrestageAfterKill(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	v1, v2 := repo.Commits[0], repo.Commits[1]
	n := newTestNode(t, repo, osfixture.SysrootOptions{})

	// The repository over HTTP, which hangs until serve is set.
	var serve atomic.Bool
	release := make(chan struct{})
	files := http.FileServer(http.Dir(repo.Path))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if serve.Load() {
			files.ServeHTTP(w, r)
			return
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() {
		n.stop()
		close(release)
		srv.Close()
	})
	h1 := publishRender(t, n.cs, render(t, repo, spec{commit: v1, maxPods: 110,
		remote: &schema.RemoteConfig{Name: osfixture.DefaultRemote, URL: srv.URL}}))
	n.setDesired(h1, v1)
	n.start(nil)
	n.waitUpToDate(h1, v1)

	setAnnotations(t, n.cs, n.name, map[string]any{schema.AnnotationPrestageOS: v2})
	var ann map[string]string
	if !poll(t, 30*time.Second, func() bool {
		ann = n.annotations()
		return strings.Contains(ann[schema.AnnotationMessage], "ahead of its rollout")
	}) {
		t.Fatalf("the pre-stage pull did not start: %v", ann)
	}
	n.stop() // killed mid-pull
	if has, _ := n.sysroot.HasCommit(t.Context(), v2); has {
		t.Fatal("v2 is on disk after a pull that never got an answer")
	}

	serve.Store(true)
	n.start(nil)
	n.waitAnnotation(schema.AnnotationOSPulled, v2, 60*time.Second)
	ann = n.waitUpToDate(h1, v1)
	if strings.Contains(ann[schema.AnnotationMessage], "ahead of its rollout") {
		t.Errorf("message after the pre-stage: %q", ann[schema.AnnotationMessage])
	}
	if c := n.metrics.Snapshot(); c.Prestaged != 1 || c.Pulls != 1 || c.Deploys != 0 {
		t.Errorf("counters %+v: want one pull, the pre-stage's", c)
	}
	if has, err := n.sysroot.HasCommit(t.Context(), v2); !has || err != nil {
		t.Errorf("v2 on disk: %v, %v", has, err)
	}
}
