package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"

	"herd.dev/herd/node/sim"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/test/story"
)

// BenchmarkJoinStorm adds HERD_JOIN_NODES (default 1,000) nodes to the
// general pool at once, as an autoscaler's scale-out does: their machines
// (linked sysroots, booted into the pool's OS commit) first, then every
// Node registered together with the taint herd.dev/converging:NoSchedule,
// and their agents started. One controller (its own process) gives each
// its target; each agent applies the pool's config and removes the taint.
// It reports, from the moment the last Node was created, when the nodes
// were converged and untainted (P50, P90, max), and how many rebooted.
//
//	go test ./test/e2e -run '^$' -bench JoinStorm -benchtime 1x -timeout 30m
func BenchmarkJoinStorm(b *testing.B) {
	count := 1000
	if s := os.Getenv("HERD_JOIN_NODES"); s != "" {
		var err error
		if count, err = strconv.Atoi(s); err != nil || count <= 0 {
			b.Fatalf("HERD_JOIN_NODES=%q", s)
		}
	}
	herd, err := herdBinary()
	if err != nil {
		b.Fatal(err)
	}
	s, err := story.Start(b.Context(), story.Options{
		Dir:           b.TempDir(),
		Pools:         map[string]int{"general": 3},
		ControllerBin: herd,
		Sim: func(o *sim.Options) {
			// Each real kubelet and agent has a client of its own; the
			// simulator's one client stands in for a thousand.
			o.QPS, o.Burst = 5000, 5000
			o.LinkSysroots = true
			// A kubelet's Lease every 10 s is 100 writes a second for a
			// thousand nodes; well within the node lifecycle
			// controller's grace (50 s), every 15 s is less load.
			o.LeaseRenew = 15 * time.Second
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Stop()
	if err := s.WaitUpToDate(b.Context(), 5*time.Minute); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		jt := watchJoins(b, s)
		j, err := s.Fleet.Join(b.Context(), "general", count)
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%d machines built in %v, their Nodes registered in %v", count, j.Prepared.Round(time.Millisecond), j.Registered.Round(time.Millisecond))
		lastLog := time.Now()
		if err := wait.PollUntilContextTimeout(b.Context(), time.Second, 10*time.Minute, true, func(context.Context) (bool, error) {
			if time.Since(lastLog) > 30*time.Second {
				b.Log(summary(b, s, j.Names))
				lastLog = time.Now()
			}
			return jt.converged(j.Names) == len(j.Names), nil
		}); err != nil {
			b.Fatalf("%d of %d joined nodes converged (%s): %v", jt.converged(j.Names), len(j.Names), summary(b, s, j.Names), err)
		}
		p50, p90, worst, own90 := jt.percentiles(j.Names)
		reboots := 0
		for _, name := range j.Names {
			c, _ := s.Fleet.Counters(name)
			reboots += c.Boots
		}
		b.ReportMetric(p50.Seconds(), "s/P50-after-last-create")
		b.ReportMetric(p90.Seconds(), "s/P90-after-last-create")
		b.ReportMetric(worst.Seconds(), "s/max-after-last-create")
		b.ReportMetric(own90.Seconds(), "s/P90-after-own-create")
		b.ReportMetric(j.Registered.Seconds(), "s/registration")
		b.ReportMetric(float64(reboots), "reboots")
	}
}

// joinTimes records, per node, when its Node appeared and when it was
// converged: untainted, Ready, its agent Idle at its desired config and OS.
type joinTimes struct {
	mu    sync.Mutex
	added map[string]time.Time
	done  map[string]time.Time
}

func watchJoins(b *testing.B, s *story.Story) *joinTimes {
	cs := kubernetes.NewForConfigOrDie(s.CP.Config())
	jt := &joinTimes{added: map[string]time.Time{}, done: map[string]time.Time{}}
	// An informer, not a bare watch: the API server ends a watch that
	// falls behind a thousand nodes' updates, and an informer watches on.
	factory := informers.NewSharedInformerFactory(cs, 0)
	see := func(obj any) {
		n, ok := obj.(*corev1.Node)
		if !ok {
			return
		}
		now := time.Now()
		a := n.Annotations
		done := !cluster.HasTaint(n, schema.TaintConverging) && cluster.IsReady(n) &&
			a[schema.AnnotationState] == string(schema.StateIdle) && a[schema.AnnotationDesiredConfig] != "" &&
			a[schema.AnnotationCurrentConfig] == a[schema.AnnotationDesiredConfig] &&
			a[schema.AnnotationOSBooted] == a[schema.AnnotationDesiredOS]
		jt.mu.Lock()
		if _, seen := jt.added[n.Name]; !seen {
			jt.added[n.Name] = now
		}
		if _, seen := jt.done[n.Name]; !seen && done {
			jt.done[n.Name] = now
		}
		jt.mu.Unlock()
	}
	inf := factory.Core().V1().Nodes().Informer()
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: see, UpdateFunc: func(_, obj any) { see(obj) }}); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	b.Cleanup(cancel)
	factory.Start(ctx.Done())
	if !toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		b.Fatal("node informer not synced")
	}
	return jt
}

// summary counts the joined nodes by how far they got, from the API server.
func summary(b *testing.B, s *story.Story, names []string) string {
	var list corev1.NodeList
	if err := s.Client.List(b.Context(), &list); err != nil {
		return err.Error()
	}
	joined := map[string]bool{}
	for _, n := range names {
		joined[n] = true
	}
	var desired, current, untainted, idle int
	for _, n := range list.Items {
		if !joined[n.Name] {
			continue
		}
		a := n.Annotations
		if a[schema.AnnotationDesiredConfig] != "" {
			desired++
		}
		if a[schema.AnnotationDesiredConfig] != "" && a[schema.AnnotationCurrentConfig] == a[schema.AnnotationDesiredConfig] {
			current++
		}
		if a[schema.AnnotationState] == string(schema.StateIdle) {
			idle++
		}
		if !cluster.HasTaint(&n, schema.TaintConverging) {
			untainted++
		}
	}
	return fmt.Sprintf("%d nodes: %d with a target, %d at it, %d Idle, %d untainted", len(names), desired, current, idle, untainted)
}

func (jt *joinTimes) converged(names []string) int {
	jt.mu.Lock()
	defer jt.mu.Unlock()
	n := 0
	for _, name := range names {
		if _, ok := jt.done[name]; ok {
			n++
		}
	}
	return n
}

// percentiles returns P50, P90 and the maximum of the nodes' convergence
// after the last of them was added (0 for those converged before), and P90
// after each node's own addition.
func (jt *joinTimes) percentiles(names []string) (p50, p90, worst, own90 time.Duration) {
	jt.mu.Lock()
	defer jt.mu.Unlock()
	var last time.Time
	for _, name := range names {
		if t := jt.added[name]; t.After(last) {
			last = t
		}
	}
	var after, own []time.Duration
	for _, name := range names {
		after = append(after, max(jt.done[name].Sub(last), 0))
		own = append(own, jt.done[name].Sub(jt.added[name]))
	}
	slices.Sort(after)
	slices.Sort(own)
	at := func(d []time.Duration, p int) time.Duration { return d[(len(d)*p+99)/100-1] }
	return at(after, 50), at(after, 90), after[len(after)-1], at(own, 90)
}
