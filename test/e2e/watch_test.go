package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/test/story"
)

// nodeWatch follows a pool's Node objects through one watch on the API
// server and keeps, per node, what was done to it while it ran, and the
// most nodes of the pool unavailable at once. The watch must last until
// stop: if it ends before, the test fails, since what it did not see it
// cannot vouch for.
type nodeWatch struct {
	t    *testing.T
	pool string

	mu          sync.Mutex
	last        map[string]*corev1.Node
	seen        map[string]*nodeHistory
	unavailable map[string]bool
	most        int
	changed     chan struct{} // closed and replaced at every event
	stopped     bool
	cancel      context.CancelFunc
	done        chan struct{}
}

// nodeHistory counts what happened to a node, from the Node object's
// changes: cordons (spec.unschedulable set), drains begun
// (herd.dev/drain-started set), dispatches by target (herd.dev/desired-*
// changed to it), NotReady spells.
type nodeHistory struct {
	Cordons, Drains, NotReady int
	Dispatches                map[string]int // by "config/os"
}

func watchNodes(t *testing.T, s *story.Story, pool string) *nodeWatch {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(s.CP.Config())
	ctx, cancel := context.WithCancel(t.Context())
	w, err := cs.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{LabelSelector: "herd.dev/pool=" + pool})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	nw := &nodeWatch{t: t, pool: pool, last: map[string]*corev1.Node{}, seen: map[string]*nodeHistory{},
		unavailable: map[string]bool{}, changed: make(chan struct{}), cancel: cancel, done: make(chan struct{})}
	t.Cleanup(nw.stop)
	go nw.run(ctx, w)
	return nw
}

func (nw *nodeWatch) run(ctx context.Context, w watch.Interface) {
	defer close(nw.done)
	defer w.Stop()
	for ev := range w.ResultChan() {
		if ev.Type == watch.Error {
			nw.fail(fmt.Sprintf("the watch on %s's nodes failed: %v", nw.pool, ev.Object))
			return
		}
		n, ok := ev.Object.(*corev1.Node)
		if !ok || ev.Type == watch.Deleted {
			continue
		}
		nw.record(n)
	}
	if ctx.Err() == nil {
		nw.fail(fmt.Sprintf("the watch on %s's nodes ended early", nw.pool))
	}
}

func (nw *nodeWatch) fail(msg string) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if !nw.stopped {
		nw.t.Error(msg)
	}
}

func (nw *nodeWatch) record(n *corev1.Node) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	h := nw.seen[n.Name]
	if h == nil {
		h = &nodeHistory{Dispatches: map[string]int{}}
		nw.seen[n.Name] = h
	}
	a := n.Annotations
	if prev := nw.last[n.Name]; prev != nil {
		p := prev.Annotations
		if !prev.Spec.Unschedulable && n.Spec.Unschedulable {
			h.Cordons++
		}
		if p[schema.AnnotationDrainStarted] == "" && a[schema.AnnotationDrainStarted] != "" {
			h.Drains++
		}
		target := a[schema.AnnotationDesiredConfig] + "/" + a[schema.AnnotationDesiredOS]
		if target != p[schema.AnnotationDesiredConfig]+"/"+p[schema.AnnotationDesiredOS] && a[schema.AnnotationDesiredConfig] != "" {
			h.Dispatches[target]++
		}
		if cluster.IsReady(prev) && !cluster.IsReady(n) {
			h.NotReady++
		}
	}
	nw.last[n.Name] = n
	// A joining node takes no work until it is at its target: it is
	// outside the budget while it carries the taint.
	nw.unavailable[n.Name] = !cluster.HasTaint(n, schema.TaintConverging) &&
		(!cluster.IsReady(n) || n.Spec.Unschedulable || schema.NodeState(a[schema.AnnotationState]).Busy())
	count := 0
	for _, u := range nw.unavailable {
		if u {
			count++
		}
	}
	nw.most = max(nw.most, count)
	close(nw.changed)
	nw.changed = make(chan struct{})
}

// stop ends the watch; the counts stay. A watch that ended early before
// has failed the test.
func (nw *nodeWatch) stop() {
	nw.mu.Lock()
	nw.stopped = true
	nw.mu.Unlock()
	nw.cancel()
	<-nw.done
}

// max is the most nodes of the pool unavailable at once so far.
func (nw *nodeWatch) max() int {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.most
}

// history returns what happened to each node so far.
func (nw *nodeWatch) history() map[string]nodeHistory {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	out := make(map[string]nodeHistory, len(nw.seen))
	for name, h := range nw.seen {
		c := *h
		c.Dispatches = make(map[string]int, len(h.Dispatches))
		for k, v := range h.Dispatches {
			c.Dispatches[k] = v
		}
		out[name] = c
	}
	return out
}

// read calls f with the nodes as last seen.
func (nw *nodeWatch) read(f func(nodes map[string]*corev1.Node)) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	f(nw.last)
}

// until waits, checking after every event, until cond holds for the nodes
// as last seen; false when timeout passes first.
func (nw *nodeWatch) until(timeout time.Duration, cond func(nodes map[string]*corev1.Node) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		nw.mu.Lock()
		ok, changed := cond(nw.last), nw.changed
		nw.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-changed:
		case <-deadline.C:
			return false
		case <-nw.t.Context().Done():
			return false
		}
	}
}
