// Package controller is Herd's reconciler: it turns the fleet repo's last good
// revision into batched, PDB-aware rollouts, keeping all state in the cluster.
//
// A reconcile is a list of named steps, as in Flux's source-controller:
//
//	source   → the last good revision of the fleet repo
//	validate → evaluate it (the source validated it before accepting it)
//	render   → store each pool's render as an immutable ConfigMap
//	plan     → the planner, on the nodes as the cache sees them
//	dispatch → uncordon finished nodes, drive the current batch, start the next
//	report   → HerdPool status, events, metrics, the Git status branch
//
// Nothing lives only in memory: per-node progress is in node annotations
// (herd.dev/cordoned, drain-started, dispatched, desired-*), each rollout's
// start in its HerdPool's status, so a controller killed at any moment picks
// up where the cluster says it is.
package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"herd.dev/herd/schema/loader"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlcontroller "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	ctrlsource "sigs.k8s.io/controller-runtime/pkg/source"

	fluxmetrics "github.com/fluxcd/pkg/runtime/metrics"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/source"
)

// Source is where the fleet comes from: *source.Source in a cluster.
type Source interface {
	Current() (source.Revision, bool)
	MarkApplied(commit string)
	Status() source.Status
}

// Options configures a Reconciler.
type Options struct {
	Cluster string
	Source  Source
	// Status receives the state after every reconcile (the Git status
	// branch); nil for none.
	Status StatusSink
	// Events records Kubernetes events; nil for none.
	Events events.EventRecorder
	// Metrics records the Flux-compatible reconcile metrics; nil for none.
	Metrics *fluxmetrics.Recorder
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Resync is how soon a pool in progress is looked at again without an
	// event (drains are polled); default 2s.
	Resync time.Duration
	// Keep is how many earlier targets per pool keep their rendered
	// ConfigMaps; default 5.
	Keep int
}

// fleetKey is the only reconcile request: the fleet is planned as a whole.
var fleetKey = reconcile.Request{}

// Reconciler reconciles the fleet.
type Reconciler struct {
	Options
	client client.Client
	api    client.Reader // uncached: pods, and nodes before a batch starts
	nodes  *cluster.Nodes
	health *health
	log    logr.Logger

	mu       sync.Mutex
	loaded   map[string]*loader.Result // evaluated fleets by commit
	stored   map[string]bool           // rendered ConfigMaps known to exist
	seenRevs map[string]time.Time      // when each revision was first seen
}

// New returns a reconciler using the manager's client and API reader.
func New(mgr ctrl.Manager, opts Options) *Reconciler {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Resync == 0 {
		opts.Resync = 2 * time.Second
	}
	if opts.Keep == 0 {
		opts.Keep = 5
	}
	return &Reconciler{
		Options:  opts,
		client:   mgr.GetClient(),
		api:      mgr.GetAPIReader(),
		nodes:    &cluster.Nodes{Client: mgr.GetClient(), Pods: mgr.GetAPIReader()},
		health:   newHealth(),
		log:      mgr.GetLogger().WithName("herd"),
		loaded:   map[string]*loader.Result{},
		stored:   map[string]bool{},
		seenRevs: map[string]time.Time{},
	}
}

// SetupWithManager registers the controller. updates carries new revisions
// from the source; node and HerdPool changes that matter trigger it too.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, updates <-chan source.Revision) error {
	events := make(chan event.GenericEvent)
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-updates:
				select {
				case events <- event.GenericEvent{Object: &corev1.Node{}}:
				case <-ctx.Done():
					return nil
				}
			}
		}
	})); err != nil {
		return err
	}
	toFleet := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{fleetKey}
	})
	skip := true // several controllers in one process in tests and `herd sim`
	return ctrl.NewControllerManagedBy(mgr).
		Named("herd").
		WithOptions(ctrlcontroller.Options{SkipNameValidation: &skip}).
		Watches(&corev1.Node{}, toFleet, builder.WithPredicates(nodeChanged)).
		Watches(&herdpool.HerdPool{}, toFleet, builder.WithPredicates(specChanged)).
		WatchesRawSource(ctrlsource.Channel(events, toFleet)).
		Complete(r)
}

// run is the state one reconcile builds up, step by step.
type run struct {
	now       time.Time
	rev       source.Revision
	fleet     *loader.Result
	pools     []planner.Pool
	nodes     []corev1.Node
	byName    map[string]*corev1.Node
	plan      *planner.Plan
	unhealthy map[string]string             // nodes failing their health checks, and why
	rollouts  map[string]*herdpool.HerdPool // HerdPool objects by pool
	original  map[string]*herdpool.HerdPool // the same, as read
	outcomes  map[string]*outcome           // what dispatch did, by pool
	requeue   bool
}

// step is one named step of a reconcile.
type step struct {
	name string
	fn   func(context.Context, *run) error
}

// errNoRevision stops a reconcile quietly: there is nothing to roll out yet.
var errNoRevision = errors.New("no fleet revision yet")

// Reconcile runs the steps in order.
func (r *Reconciler) Reconcile(ctx context.Context, _ reconcile.Request) (ctrl.Result, error) {
	st := &run{now: r.Now(), outcomes: map[string]*outcome{}}
	steps := []step{
		{"source", r.source},
		{"validate", r.validate},
		{"render", r.render},
		{"plan", r.planStep},
		{"dispatch", r.dispatch},
		{"report", r.report},
	}
	for _, s := range steps {
		if err := s.fn(ctx, st); err != nil {
			if errors.Is(err, errNoRevision) {
				return ctrl.Result{}, nil
			}
			return ctrl.Result{}, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	if st.requeue {
		return ctrl.Result{RequeueAfter: r.Resync}, nil
	}
	return ctrl.Result{}, nil
}

// source takes the last good revision. The source rejects what fails to
// fetch, verify or validate, so this is always a revision that passed.
func (r *Reconciler) source(_ context.Context, st *run) error {
	rev, ok := r.Source.Current()
	if !ok {
		return errNoRevision
	}
	st.rev = rev
	r.mu.Lock()
	if _, ok := r.seenRevs[rev.Commit]; !ok {
		r.seenRevs[rev.Commit] = st.now
	}
	r.mu.Unlock()
	return nil
}

// validate evaluates the revision (once per commit).
func (r *Reconciler) validate(_ context.Context, st *run) error {
	r.mu.Lock()
	res, ok := r.loaded[st.rev.Commit]
	r.mu.Unlock()
	if !ok {
		var err error
		if res, err = loader.LoadDir(st.rev.Dir); err != nil {
			return fmt.Errorf("evaluate fleet at %s: %w", short(st.rev.Commit), err)
		}
		r.mu.Lock()
		r.loaded = map[string]*loader.Result{st.rev.Commit: res} // keep only the current one
		r.mu.Unlock()
	}
	st.fleet = res
	for _, name := range res.PoolNames() {
		rd := res.Rendered[name]
		ws, err := res.Fleet.PoolWindows(name)
		if err != nil {
			return fmt.Errorf("pool %s: %w", name, err) // validated before: cannot happen
		}
		st.pools = append(st.pools, planner.Pool{Name: name, Spec: res.Fleet.Pools[name], Rendered: rd, Hash: rd.Hash(), Windows: ws})
	}
	return nil
}

// render stores each pool's render as its immutable ConfigMap before any
// node is told to apply it.
func (r *Reconciler) render(ctx context.Context, st *run) error {
	for _, p := range st.pools {
		r.mu.Lock()
		done := r.stored[p.Hash]
		r.mu.Unlock()
		if done {
			continue
		}
		if err := cluster.EnsureRendered(ctx, r.client, p.Rendered, p.Hash); err != nil {
			return err
		}
		r.mu.Lock()
		r.stored[p.Hash] = true
		r.mu.Unlock()
	}
	return nil
}

// planStep mirrors the pools as HerdPools and plans on the cached nodes.
func (r *Reconciler) planStep(ctx context.Context, st *run) error {
	if err := r.mirrorPools(ctx, st); err != nil {
		return err
	}
	// The cache's own objects, not copies: planning only reads them, and
	// every write (sync/cluster) works on a copy of the node.
	var list corev1.NodeList
	if err := r.client.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	st.setNodes(list.Items)
	r.checkHealth(ctx, st)
	st.plan = planner.Compute(r.plannerInput(st))
	return nil
}

// checkHealth runs the pools' health checks on the nodes in their soak:
// at the target they were dispatched to, and not yet done.
func (r *Reconciler) checkHealth(ctx context.Context, st *run) {
	st.unhealthy = map[string]string{}
	for _, p := range st.pools {
		hc := p.Spec.Rollout.HealthChecks
		if hc == nil {
			continue
		}
		soak := p.Spec.Rollout.SoakDuration()
		for i := range st.nodes {
			n := &st.nodes[i]
			pn := cluster.PlannerNode(n)
			if !p.Spec.Selector.Matches(n.Labels) || pn.DesiredConfig != p.Hash || pn.CurrentConfig != p.Hash || pn.OSBooted != p.Spec.OS.Commit {
				continue
			}
			if !pn.AtTarget.IsZero() && !st.now.Before(pn.AtTarget.Add(soak)) {
				continue // soaked: done
			}
			if why := r.health.check(ctx, hc, n); why != "" {
				st.unhealthy[n.Name] = why
			}
		}
	}
}

func (st *run) setNodes(nodes []corev1.Node) {
	st.nodes = nodes
	st.byName = make(map[string]*corev1.Node, len(nodes))
	for i := range st.nodes {
		st.byName[st.nodes[i].Name] = &st.nodes[i]
	}
}

// plannerInput builds the planner's input from the run's nodes and rollouts.
func (r *Reconciler) plannerInput(st *run) planner.Input {
	in := planner.Input{Pools: st.pools, Now: st.now, Rollouts: map[string]planner.Rollout{}, Rollbacks: map[string]bool{}, Freeze: st.fleet.Fleet.Frozen()}
	in.Nodes = make([]planner.Node, len(st.nodes))
	for i := range st.nodes {
		in.Nodes[i] = cluster.PlannerNode(&st.nodes[i])
		in.Nodes[i].Unhealthy = st.unhealthy[st.nodes[i].Name]
	}
	for _, p := range st.pools {
		np := st.rollouts[p.Name]
		if np == nil {
			continue
		}
		for _, prev := range np.Status.Previous {
			if prev.Hash == p.Hash {
				in.Rollbacks[p.Hash] = true // back to an earlier target
			}
		}
		ro := np.Status.Rollout
		rollout := planner.Rollout{Hash: ro.Hash, Halted: ro.Halted, RollingBack: ro.RollingBack, Forgiven: ro.Forgiven}
		if lg := np.Status.LastGood; lg != nil {
			rollout.LastGood = planner.Target{Hash: lg.Hash, OSCommit: lg.OSCommit}
		}
		if ro.Hash == p.Hash {
			rollout.Done = doneSince(st.nodes, p, ro.StartedAt)
		}
		in.Rollouts[p.Name] = rollout
	}
	return in
}

// doneSince counts the nodes at the pool's target that Herd dispatched to it
// since the rollout started: derived from the nodes, so it survives restarts.
func doneSince(nodes []corev1.Node, p planner.Pool, started *metav1.Time) int {
	n := 0
	for i := range nodes {
		node := &nodes[i]
		a := node.Annotations
		if !p.Spec.Selector.Matches(node.Labels) || a[schema.AnnotationCurrentConfig] != p.Hash || a[schema.AnnotationOSBooted] != p.Spec.OS.Commit {
			continue
		}
		if a[schema.AnnotationDesiredConfig] != p.Hash {
			continue
		}
		at, err := time.Parse(time.RFC3339, a[schema.AnnotationDispatched])
		if err != nil || started != nil && at.Before(started.Add(-time.Second)) {
			continue
		}
		n++
	}
	return n
}

func short(s string) string {
	if len(s) > 8 {
		return s[:8]
	}
	return s
}
