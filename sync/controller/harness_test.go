package controller_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"herd.dev/herd/schema/loader"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/fluxcd/pkg/runtime/leaderelection"

	"herd.dev/herd/config"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/controller"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/test/controlplane"
	"herd.dev/herd/test/fleettest"
)

// env is a real control plane with Herd installed and a fleet repo.
type env struct {
	t      testing.TB
	cp     *controlplane.ControlPlane
	c      client.Client
	kube   *kubernetes.Clientset
	work   string // working clone of the fleet repo
	remote string // file:// URL of the bare fleet repo
}

func newEnv(t *testing.T) *env { return newEnvTB(t) }

func newEnvTB(t testing.TB, controllerManagerFlags ...string) *env {
	t.Helper()
	cp := controlplane.StartTest(t, controlplane.Options{
		// No kubelet heartbeats here: keep nodes from being marked unreachable.
		ExtraControllerManagerFlags: append([]string{"--node-monitor-grace-period=1h"}, controllerManagerFlags...),
	})
	s := controller.Scheme()
	_ = apiextensionsv1.AddToScheme(s)
	rc := cp.Config()
	rc.QPS, rc.Burst = 1000, 2000 // the tests play a thousand kubelets
	c, err := client.New(rc, client.Options{Scheme: s})
	if err != nil {
		t.Fatal(err)
	}
	manifests, err := config.Render()
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Apply(t.Context(), c, manifests); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, cp: cp, c: c, kube: kubernetes.NewForConfigOrDie(rc)}
	dir := t.TempDir()
	e.work = filepath.Join(dir, "work")
	fleettest.NewRepo(t, e.work)
	bare := filepath.Join(dir, "fleet.git")
	fleettest.Git(t, dir, "clone", "-q", "--bare", e.work, bare)
	fleettest.Git(t, e.work, "remote", "add", "origin", bare)
	e.remote = "file://" + bare
	return e
}

// push commits the working clone's changes and pushes them.
func (e *env) push(msg string) string {
	e.t.Helper()
	commit := fleettest.Commit(e.t, e.work, msg)
	fleettest.Git(e.t, e.work, "push", "-q", "origin", "main")
	return commit
}

func (e *env) edit(file, old, new string) { fleettest.Edit(e.t, e.work, file, old, new) }

// fleet evaluates the working clone.
func (e *env) fleet() *loader.Result { return fleettest.Load(e.t, e.work) }

// addNodes creates Ready nodes of a pool, at the pool's current target.
func (e *env) addNodes(pool string, n int) []string {
	e.t.Helper()
	res := e.fleet()
	zones := []string{"zone-a", "zone-b", "zone-c"}
	var names []string
	for i := range n {
		name := fmt.Sprintf("%s-%02d", pool, i)
		fn := fleettest.Node{Name: name, Pool: pool, Zone: zones[i%3], Annotations: fleettest.AtTarget(res, pool)}
		node := fn.KubeNode()
		status := node.Status
		if err := e.c.Create(e.t.Context(), &node); err != nil {
			e.t.Fatal(err)
		}
		before := node.DeepCopy()
		node.Status = status
		node.Status.Conditions[0].LastHeartbeatTime = metav1.Now()
		if err := e.c.Status().Patch(e.t.Context(), &node, client.MergeFrom(before)); err != nil {
			e.t.Fatal(err)
		}
		names = append(names, name)
	}
	return names
}

// controllerRun is one running controller process, in this test process.
type controllerRun struct {
	cancel context.CancelFunc
	done   chan error
}

func (e *env) startController(name string, leader bool) *controllerRun {
	e.t.Helper()
	return e.startControllerWith(name, leader, nil)
}

// controllerConfig is what startControllerWith lets a test change.
type controllerConfig = controller.Config

func (e *env) startControllerWith(name string, leader bool, change func(*controllerConfig)) *controllerRun {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.t.Context())
	rc := rest.CopyConfig(e.cp.Config())
	rc.UserAgent = name // becomes the field manager of its writes
	cfg := controller.Config{
		Rest:           rc,
		Repo:           e.remote,
		Cluster:        "test",
		StatusBranch:   "herd/status",
		Interval:       500 * time.Millisecond,
		StatusInterval: 500 * time.Millisecond,
		CacheDir:       filepath.Join(e.t.TempDir(), name),
		MetricsAddr:    "0",
		Log:            logr.Discard(),
		LeaderElection: leaderelection.Options{
			Enable:          leader,
			ReleaseOnCancel: true,
			LeaseDuration:   4 * time.Second,
			RenewDeadline:   3 * time.Second,
			RetryPeriod:     500 * time.Millisecond,
		},
	}
	if os.Getenv("HERD_TEST_LOG") != "" {
		cfg.Log = testr.NewWithInterface(e.t, testr.Options{})
	}
	if change != nil {
		change(&cfg)
	}
	run := &controllerRun{cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := controller.Run(ctx, cfg)
		if ctx.Err() == nil {
			e.t.Errorf("controller %s stopped by itself: %v", name, err)
		}
		run.done <- err
	}()
	return run
}

// stop stops the controller and waits for it to end.
func (r *controllerRun) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("controller: %v\n%s", err, goroutines())
		}
	case <-time.After(time.Minute):
		t.Fatalf("controller did not stop within a minute\n%s", goroutines())
	}
}

// goroutines is a dump of every goroutine's stack: what a controller that
// does not stop is waiting for.
func goroutines() string {
	var b strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	return b.String()
}

// agents plays the node agent for the test's nodes: it takes each node from
// its current to its desired config and OS, through Working, and (when the
// OS changes) a reboot during which the node is NotReady.
type agents struct {
	e       *env
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	busy    map[string]bool
	delay   time.Duration
	applied map[string]int // node → number of applies
}

func (e *env) startAgents(delay time.Duration) *agents {
	ctx, cancel := context.WithCancel(e.t.Context())
	a := &agents{e: e, cancel: cancel, busy: map[string]bool{}, delay: delay, applied: map[string]int{}}
	w, err := e.kube.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for ev := range w.ResultChan() {
			node, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			an := node.Annotations
			want, os := an[schema.AnnotationDesiredConfig], an[schema.AnnotationDesiredOS]
			if want == "" || want == an[schema.AnnotationCurrentConfig] && os == an[schema.AnnotationOSBooted] {
				continue
			}
			a.mu.Lock()
			if a.busy[node.Name] {
				a.mu.Unlock()
				continue
			}
			a.busy[node.Name] = true
			a.applied[node.Name]++
			a.mu.Unlock()
			a.wg.Add(1)
			go a.apply(ctx, node.Name, want, os, os != an[schema.AnnotationOSBooted])
		}
	}()
	e.t.Cleanup(a.stop)
	return a
}

func (a *agents) stop() {
	a.cancel()
	a.wg.Wait()
}

func (a *agents) apply(ctx context.Context, name, config, commit string, reboot bool) {
	defer a.wg.Done()
	defer func() {
		a.mu.Lock()
		delete(a.busy, name)
		a.mu.Unlock()
	}()
	step := func(f func(*corev1.Node)) {
		_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			node, err := a.e.kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			f(node)
			if _, err := a.e.kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
				return false, nil
			}
			return true, nil
		})
	}
	setState := func(n *corev1.Node, s schema.NodeState) { n.Annotations[schema.AnnotationState] = string(s) }
	pause := func() {
		select {
		case <-ctx.Done():
		case <-time.After(a.delay):
		}
	}
	step(func(n *corev1.Node) { setState(n, schema.StateWorking) })
	pause()
	if reboot {
		step(func(n *corev1.Node) {
			setState(n, schema.StateRebooting)
			n.Annotations[schema.AnnotationOSStaged] = commit
			n.Status.Conditions[0].Status = corev1.ConditionFalse
		})
		pause()
	}
	step(func(n *corev1.Node) {
		setState(n, schema.StateIdle)
		n.Annotations[schema.AnnotationCurrentConfig] = config
		n.Annotations[schema.AnnotationOSBooted] = commit
		n.Status.Conditions[0].Status = corev1.ConditionTrue
	})
}

// budgetWatch watches a pool's nodes and records the most that were ever
// unavailable at once, and each node's cordons and dispatches.
type budgetWatch struct {
	mu          sync.Mutex
	unavailable map[string]bool
	max         int
	cordons     map[string]int // false → true transitions of spec.unschedulable
	dispatches  map[string]int // changes of herd.dev/desired-config
	last        map[string]*corev1.Node
}

func (e *env) watchBudget(pool string) *budgetWatch {
	b := &budgetWatch{unavailable: map[string]bool{}, cordons: map[string]int{}, dispatches: map[string]int{}, last: map[string]*corev1.Node{}}
	w, err := e.kube.CoreV1().Nodes().Watch(e.t.Context(), metav1.ListOptions{LabelSelector: "herd.dev/pool=" + pool})
	if err != nil {
		e.t.Fatal(err)
	}
	go func() {
		for ev := range w.ResultChan() {
			node, ok := ev.Object.(*corev1.Node)
			if !ok {
				continue
			}
			b.mu.Lock()
			prev := b.last[node.Name]
			if prev != nil {
				if !prev.Spec.Unschedulable && node.Spec.Unschedulable {
					b.cordons[node.Name]++
				}
				if prev.Annotations[schema.AnnotationDesiredConfig] != node.Annotations[schema.AnnotationDesiredConfig] {
					b.dispatches[node.Name]++
				}
			}
			b.last[node.Name] = node
			b.unavailable[node.Name] = !cluster.IsReady(node) || node.Spec.Unschedulable || schema.NodeState(node.Annotations[schema.AnnotationState]).Busy()
			n := 0
			for _, u := range b.unavailable {
				if u {
					n++
				}
			}
			b.max = max(b.max, n)
			b.mu.Unlock()
		}
	}()
	e.t.Cleanup(w.Stop)
	return b
}

func (b *budgetWatch) maxUnavailable() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.max
}

// waitFor polls cond until it holds or the deadline passes.
func (e *env) waitFor(what string, timeout time.Duration, cond func() (bool, error)) {
	e.t.Helper()
	err := wait.PollUntilContextTimeout(e.t.Context(), 100*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return cond()
	})
	if err != nil {
		e.t.Fatalf("waiting for %s: %v", what, err)
	}
}

// poolAtTarget reports whether every node of the pool runs its current
// target, uncordoned.
func (e *env) poolAtTarget(pool string) func() (bool, error) {
	return func() (bool, error) {
		res := e.fleet()
		var nodes corev1.NodeList
		if err := e.c.List(e.t.Context(), &nodes, client.MatchingLabels{"herd.dev/pool": pool}); err != nil {
			return false, err
		}
		for _, n := range nodes.Items {
			a := n.Annotations
			if a[schema.AnnotationCurrentConfig] != res.Hash(pool) || a[schema.AnnotationOSBooted] != res.Fleet.Pools[pool].OS.Commit || n.Spec.Unschedulable {
				return false, nil
			}
		}
		return len(nodes.Items) > 0, nil
	}
}

func (e *env) nodePool(name string) *herdpool.HerdPool {
	var np herdpool.HerdPool
	if err := e.c.Get(e.t.Context(), client.ObjectKey{Name: name}, &np); err != nil {
		e.t.Fatal(err)
	}
	return &np
}
