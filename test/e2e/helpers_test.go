package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"

	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/test/controlplane"
	"herd.dev/herd/test/story"
)

// agentBinary is the herd-agent every simulated node runs, built once per
// test binary as make build builds it.
func agentBinary(tb testing.TB) string {
	tb.Helper()
	bin, err := agentBuild()
	if err != nil {
		tb.Fatal(err)
	}
	return bin
}

var agentBuild = sync.OnceValues(func() (string, error) { return story.BuildAgent(binDir) })

// run is one end-to-end story with helpers to change the fleet repo with
// the git CLI, as a person would.
type run struct {
	t *testing.T
	*story.Story
}

func startStory(t *testing.T, opts story.Options) *run {
	t.Helper()
	if os.Getenv(controlplane.SkipEnv) == "1" {
		t.Skipf("%s=1", controlplane.SkipEnv)
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.AgentBinary == "" {
		opts.AgentBinary = agentBinary(t)
	}
	s, err := story.Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return &run{t: t, Story: s}
}

func (r *run) git(args ...string) string {
	r.t.Helper()
	out, err := r.Git(args...)
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

// edit replaces old with new in a file of the working clone.
func (r *run) edit(file, old, new string) {
	r.t.Helper()
	p := filepath.Join(r.Work, file)
	b, err := os.ReadFile(p)
	if err != nil || !strings.Contains(string(b), old) {
		r.t.Fatalf("%s has no %q (%v)", file, old, err)
	}
	if err := os.WriteFile(p, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// push commits every change and pushes it; it returns the commit.
func (r *run) push(msg string) string {
	r.t.Helper()
	r.git("commit", "-qam", msg)
	commit := r.git("rev-parse", "HEAD")
	r.git("push", "-q", "origin", "main")
	return commit
}

func (r *run) converge(what string) {
	r.t.Helper()
	start := time.Now()
	if err := r.WaitUpToDate(r.t.Context(), 5*time.Minute); err != nil {
		r.t.Fatalf("%s: %v\n%s", what, err, r.describe())
	}
	r.t.Logf("%s: converged in %s", what, time.Since(start).Round(100*time.Millisecond))
}

// pool reads a HerdPool.
func (r *run) pool(name string) *herdpool.HerdPool {
	r.t.Helper()
	var np herdpool.HerdPool
	if err := r.Client.Get(r.t.Context(), client.ObjectKey{Name: name}, &np); err != nil {
		r.t.Fatal(err)
	}
	return &np
}

// waitPool polls a HerdPool until cond holds.
func (r *run) waitPool(name, what string, timeout time.Duration, cond func(*herdpool.HerdPool) bool) *herdpool.HerdPool {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var np herdpool.HerdPool
		err := r.Client.Get(r.t.Context(), client.ObjectKey{Name: name}, &np)
		if err == nil && cond(&np) {
			return &np
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("waiting %s for %s: HerdPool %s is %s: %s", timeout, what, name, np.Status.Phase, np.Status.Message)
		}
		select {
		case <-r.t.Context().Done():
			r.t.Fatal(r.t.Context().Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// describe says where every pool and node stands, for failure messages.
func (r *run) describe() string {
	var b strings.Builder
	var pools herdpool.HerdPoolList
	_ = r.Client.List(context.Background(), &pools)
	for _, np := range pools.Items {
		fmt.Fprintf(&b, "pool %s: %s: %s (rollout %+v)\n", np.Name, np.Status.Phase, np.Status.Message, np.Status.Rollout)
	}
	var nodes corev1.NodeList
	_ = r.Client.List(context.Background(), &nodes)
	for _, n := range nodes.Items {
		a := n.Annotations
		fmt.Fprintf(&b, "  %s ready=%v unsched=%v state=%s desired=%.8s/%.8s current=%.8s booted=%.8s failed=%.8s msg=%q\n", n.Name, cluster.IsReady(&n), n.Spec.Unschedulable,
			a[schema.AnnotationState], a[schema.AnnotationDesiredConfig], a[schema.AnnotationDesiredOS], a[schema.AnnotationCurrentConfig], a[schema.AnnotationOSBooted], a[schema.AnnotationFailedTarget], a[schema.AnnotationMessage])
	}
	return b.String()
}
