package e2e

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/test/story"
)

var chaosSeed = flag.Uint64("chaos.seed", 0, "replay this kill schedule of TestControllerKilledDuringRollout (0: a new one)")

const (
	chaosNodes          = 30
	chaosMaxUnavailable = 5
	chaosKills          = 10
	// slowStop holds a pod after its deletion until the test lets it go:
	// its containers take their time to stop, so drains take time.
	slowStop = "e2e.herd.dev/slow-stop"
)

// killKind is where in the rollout a kill lands.
type killKind string

const (
	killMidDrain    killKind = "mid-drain"    // a node is draining: cordoned, pods leaving, not yet dispatched
	killMidDispatch killKind = "mid-dispatch" // a node was just dispatched: others of its batch may be next
	killAnytime     killKind = "anytime"      // a random moment
)

// kill is one planned SIGKILL: after at least `after` nodes are done, at
// the next moment of its kind, and delay later.
type kill struct {
	kind  killKind
	after int
	delay time.Duration
}

// TestControllerKilledDuringRollout runs `herd controller` as a process of
// its own (the real binary) and kills it with SIGKILL ten times during a
// 30-node OS rollout (maxUnavailable 5), at points spread over the whole
// rollout: mid-drain, mid-dispatch and at random moments. Half of the nodes
// run a pod that takes its time to stop, so drains last. After each kill a
// new controller starts, knowing only what the cluster and Git hold.
//
// A watch on the nodes, which fails the test if it ends early, checks that
// no more than maxUnavailable nodes are ever out, and that no node is
// cordoned, drained or dispatched twice for the target; the agents' counts
// that none pulled, deployed or rebooted twice. The seed and every kill are
// logged; -chaos.seed replays the schedule (the kill points, delays and pod
// stop times; not the machine's timing).
func TestControllerKilledDuringRollout(t *testing.T) {
	t.Parallel()
	seed := *chaosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("chaos seed %d (replay: go test ./test/e2e -run TestControllerKilledDuringRollout -chaos.seed %d)", seed, seed)
	rnd := rand.New(rand.NewPCG(seed, 1))
	r := startStory(t, story.Options{Pools: map[string]int{"general": chaosNodes}, RebootDelay: time.Second, ControllerBin: buildHerd(t)})
	r.edit("pools/general.cue", `maxUnavailable: "25%"`, fmt.Sprintf(`maxUnavailable: %d`, chaosMaxUnavailable))
	r.push(fmt.Sprintf("general: %d at a time", chaosMaxUnavailable))
	r.converge("first revision")
	general := nodesOf(r.Fleet, "general")
	withPods := pick(rnd, general, chaosNodes/2)
	held := slowPods(t, r, withPods, rand.New(rand.NewPCG(seed, 2)))

	nodes := watchNodes(t, r.Story, "general")
	before := counters(r.Fleet, general)
	v2 := r.Fleet.Commits()[1]
	start := time.Now()
	r.bump("")
	for i, k := range killSchedule(rnd) {
		why := k.await(nodes, v2)
		if k.delay > 0 {
			select {
			case <-time.After(k.delay): // the kill point: a random moment after the trigger
			case <-t.Context().Done():
				t.Fatal(t.Context().Err())
			}
		}
		pid := r.ControllerPID()
		if err := r.StopController(); err != nil {
			t.Fatalf("kill %d: %v", i+1, err)
		}
		t.Logf("kill %d/%d at +%s: SIGKILL to pid %d, %s (%s, %d nodes done; then +%s)", i+1, chaosKills,
			time.Since(start).Round(time.Millisecond), pid, k.kind, why, done(nodes, v2), k.delay)
		r.StartController()
	}
	r.converge("rollout through ten SIGKILLs")
	t.Logf("rollout of %d nodes through %d kills: %s", chaosNodes, chaosKills, time.Since(start).Round(time.Second))
	nodes.stop()

	// Every slow pod was evicted by a drain and held it up.
	if got := held.Load(); got != int64(len(withPods)) {
		t.Errorf("%d of the %d slow pods were evicted and held their drain", got, len(withPods))
	}
	if got := nodes.max(); got > chaosMaxUnavailable {
		t.Errorf("%d general nodes were unavailable at once; maxUnavailable is %d", got, chaosMaxUnavailable)
	}
	after := counters(r.Fleet, general)
	hist := nodes.history()
	for _, n := range general {
		h := hist[n]
		d := after[n].diff(before[n])
		dispatched := 0
		for target, k := range h.Dispatches {
			dispatched += k
			if k > 1 {
				t.Errorf("%s was dispatched to %s %d times", n, target, k)
			}
		}
		if h.Cordons != 1 || h.Drains != 1 || dispatched != 1 || d.Pulls != 1 || d.Deploys != 1 || d.Reboots != 1 {
			t.Errorf("%s: cordoned %d, drained %d, dispatched %d times, pulled %d, deployed %d, rebooted %d; want each once",
				n, h.Cordons, h.Drains, dispatched, d.Pulls, d.Deploys, d.Reboots)
		}
	}
}

// killSchedule spreads the kills over the rollout: kill i waits until
// i/(kills+1) of the nodes are done. Each kind comes up at least three
// times, in a random order.
func killSchedule(rnd *rand.Rand) []kill {
	kinds := []killKind{killMidDrain, killMidDrain, killMidDrain, killMidDispatch, killMidDispatch, killMidDispatch, killAnytime, killAnytime, killAnytime, killAnytime}
	rnd.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	var out []kill
	for i, kind := range kinds {
		k := kill{kind: kind, after: i * chaosNodes / (chaosKills + 1)}
		switch kind {
		case killMidDrain:
			k.delay = time.Duration(rnd.IntN(300)) * time.Millisecond
		case killMidDispatch:
			k.delay = time.Duration(rnd.IntN(20)) * time.Millisecond
		case killAnytime:
			k.delay = time.Duration(200+rnd.IntN(2000)) * time.Millisecond
		}
		out = append(out, k)
	}
	return out
}

// await waits until the kill's moment comes, and says what it saw. A
// moment that does not come within a minute (the rollout moved past it)
// is logged and the kill happens at once.
func (k kill) await(nodes *nodeWatch, target string) string {
	if !nodes.until(5*time.Minute, func(ns map[string]*corev1.Node) bool { return doneIn(ns, target) >= k.after }) {
		return fmt.Sprintf("%d nodes were not done within 5m", k.after)
	}
	var why string
	dispatched := dispatchedTo(nodes, target)
	ok := nodes.until(time.Minute, func(ns map[string]*corev1.Node) bool {
		switch k.kind {
		case killMidDrain:
			for _, n := range ns {
				a := n.Annotations
				if a[schema.AnnotationDrainStarted] != "" && a[schema.AnnotationDesiredOS] != target {
					why = n.Name + " draining"
					return true
				}
			}
			return false
		case killMidDispatch:
			for _, n := range ns {
				if n.Annotations[schema.AnnotationDesiredOS] == target && !slices.Contains(dispatched, n.Name) {
					why = n.Name + " just dispatched"
					return true
				}
			}
			return false
		}
		why = "a random moment"
		return true
	})
	if !ok {
		why = "its moment did not come within 1m"
	}
	return why
}

// dispatchedTo lists the nodes told the target OS so far.
func dispatchedTo(nodes *nodeWatch, target string) []string {
	var out []string
	nodes.read(func(ns map[string]*corev1.Node) {
		for _, n := range ns {
			if n.Annotations[schema.AnnotationDesiredOS] == target {
				out = append(out, n.Name)
			}
		}
	})
	return out
}

func done(nodes *nodeWatch, target string) int {
	k := 0
	nodes.read(func(ns map[string]*corev1.Node) { k = doneIn(ns, target) })
	return k
}

// doneIn counts the nodes back at work on the target.
func doneIn(ns map[string]*corev1.Node, target string) int {
	k := 0
	for _, n := range ns {
		a := n.Annotations
		if a[schema.AnnotationOSBooted] == target && a[schema.AnnotationCurrentConfig] == a[schema.AnnotationDesiredConfig] &&
			cluster.IsReady(n) && !n.Spec.Unschedulable && a[schema.AnnotationState] == string(schema.StateIdle) {
			k++
		}
	}
	return k
}

func pick(rnd *rand.Rand, names []string, k int) []string {
	out := slices.Clone(names)
	rnd.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out[:k]
}

// slowPods runs a ReplicaSet's pod on each of the nodes, bound as a
// scheduler would. Its pods carry a finalizer: once deleted (evicted by a
// drain), each stays, terminating, until a random 0.3 to 2.5 s later, as
// containers that take their time to stop. The ReplicaSet's replacements
// stay Pending: no scheduler runs. It returns the count of pods held so.
func slowPods(t *testing.T, r *run, nodes []string, rnd *rand.Rand) *atomic.Int64 {
	t.Helper()
	ctx := t.Context()
	const ns = "chaos"
	if err := r.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "slow"}
	replicas := int32(len(nodes))
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: "slow", Namespace: ns},
		Spec: appsv1.ReplicaSetSpec{Replicas: &replicas, Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Finalizers: []string{slowStop}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
			}},
	}
	if err := r.Client.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(r.CP.Config())
	var pods corev1.PodList
	poll(t, time.Minute, "the ReplicaSet's pods", func() bool {
		return r.Client.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels(labels)) == nil && len(pods.Items) == len(nodes)
	})
	for i, p := range pods.Items {
		if err := cs.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name}, Target: corev1.ObjectReference{Kind: "Node", Name: nodes[i]}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := cs.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	held := new(atomic.Int64)
	go func() {
		defer w.Stop()
		releasing := map[string]bool{}
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || ev.Type == watch.Deleted || p.DeletionTimestamp == nil || releasing[p.Name] || !slices.Contains(p.Finalizers, slowStop) {
				continue
			}
			releasing[p.Name] = true
			held.Add(1)
			after := time.Duration(300+rnd.IntN(2200)) * time.Millisecond
			name := p.Name
			time.AfterFunc(after, func() { release(cs, ns, name) })
		}
	}()
	return held
}

// release lets a slow pod go: its containers have stopped.
func release(cs kubernetes.Interface, ns, name string) {
	for range 5 {
		ctx := context.Background()
		p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return
		}
		p.Finalizers = slices.DeleteFunc(p.Finalizers, func(f string) bool { return f == slowStop })
		if _, err = cs.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			return
		}
	}
}
