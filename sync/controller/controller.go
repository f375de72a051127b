// Package controller is Herd's reconciler: it turns the fleet repo's last good
// revision into batched, PDB-aware rollouts, keeping all state in the cluster.
//
// A reconcile is four steps, as etcd's raft hands decisions to its caller:
//
//	observe → the revision, its earlier renders (Git history and the
//	          cluster's herd-rendered-<hash> ConfigMaps), the nodes, each
//	          pool's rollout state (HerdPool status), health checks
//	decide  → one planner.Compute call on planinput.Build's input, the
//	          same call `herd plan` makes: every decision, typed
//	act     → per pool: mirror the HerdPool, store the render, keep the
//	          planner's next rollout and repair state in its status
//	          (before acting, as raft persists before it sends), carry the
//	          pool's actions out (cordon, drain, dispatch, repair, ...)
//	persist → per pool, deferred so it always runs (as Flux's
//	          SummarizeAndPatch): HerdPool status with the planner's next
//	          rollout state and kstatus conditions, events, metrics, the
//	          Git status branch
//
// One pool's failure is that pool's Ready=False condition; the other pools
// go on. Nothing lives only in memory: per-node progress is in node
// annotations, each rollout's state in its HerdPool's status, so a
// controller killed at any moment picks up where the cluster says it is.
package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
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
	"herd.dev/herd/schema/loader"
	"herd.dev/herd/schema/sandbox"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/planinput"
	"herd.dev/herd/sync/revisions"
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
	Source Source
	// History evaluates the fleet's earlier revisions up to a commit, for
	// exact diffs and rollbacks, as `herd plan` does; nil for none.
	History func(ctx context.Context, commit string) (*revisions.History, error)
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
	// Evaluate evaluates the fleet of an accepted revision; default: in a
	// child process within sandbox.DefaultBudget.
	Evaluate func(ctx context.Context, dir string) (*loader.Result, error)
	// Cluster names the cluster, for the replacement webhook.
	Cluster string
	// ReplaceWebhook, set by the operator (never by the fleet repo), is
	// posted a ReplaceRequest for every node a repair marks for
	// replacement; "" for none.
	ReplaceWebhook string
	// Shard is the pools this controller acts on; the zero Shard: all.
	Shard Shard
}

// HistoryDepth is how many earlier fleet revisions the controller
// evaluates, as `herd plan --history` does by default.
const HistoryDepth = 50

// fleetKey is the only reconcile request: the fleet is planned as a whole
// (a node is in exactly one pool, which only the whole fleet tells), and
// acted on and recorded pool by pool.
var fleetKey = reconcile.Request{}

// Reconciler reconciles the fleet.
type Reconciler struct {
	Options
	client client.Client // reads from the cache; node writes are tracked by fresh
	api    client.Reader // uncached: HerdPools, pods, nodes the cache lags on
	nodes  *cluster.Nodes
	list   nodeLister // the cached nodes
	fresh  *freshness
	health *health
	log    logr.Logger

	// Derived from Git and the cluster, kept to save work; never state.
	mu      sync.Mutex
	loaded  map[string]*loader.Result     // the evaluated fleet, by commit (the current one)
	history map[string]*revisions.History // its earlier revisions, by commit (the current one)
	renders map[string]*schema.Rendered   // parsed rendered ConfigMaps, by name
	forms   *planinput.NodeForms          // the nodes' planner forms, by name and version
}

// New returns a reconciler using the manager's client and API reader.
func New(mgr ctrl.Manager, opts Options) *Reconciler {
	r := newReconciler(mgr.GetClient(), mgr.GetAPIReader(), mgr.GetLogger().WithName("herd"), opts)
	r.list = &informerNodes{informers: mgr.GetCache(), fallback: listedNodes{r.client}}
	return r
}

func newReconciler(c client.Client, api client.Reader, log logr.Logger, opts Options) *Reconciler {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Resync == 0 {
		opts.Resync = 2 * time.Second
	}
	if opts.Evaluate == nil {
		opts.Evaluate = func(ctx context.Context, dir string) (*loader.Result, error) {
			return sandbox.LoadDir(ctx, dir, sandbox.DefaultBudget)
		}
	}
	fresh := newFreshness()
	return &Reconciler{
		Options: opts,
		client:  c,
		api:     api,
		nodes:   &cluster.Nodes{Client: fresh.track(c), Pods: api},
		list:    listedNodes{c},
		fresh:   fresh,
		health:  newHealth(),
		log:     log,
		loaded:  map[string]*loader.Result{},
		history: map[string]*revisions.History{},
		renders: map[string]*schema.Rendered{},
		forms:   planinput.NewNodeForms(),
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

// errNoRevision stops a reconcile quietly: there is nothing to roll out yet.
var errNoRevision = errors.New("no fleet revision yet")

// Reconcile observes the fleet, decides with one planner call, then acts
// on and records each of its shard's pools on its own.
func (r *Reconciler) Reconcile(ctx context.Context, _ reconcile.Request) (ctrl.Result, error) {
	start := time.Now()
	obs, err := r.observe(ctx, r.Now())
	if errors.Is(err, errNoRevision) {
		return ctrl.Result{}, nil
	}
	if err != nil {
		r.markAll(ctx, obs, ReasonObserveFailed, err)
		return ctrl.Result{}, fmt.Errorf("observe: %w", err)
	}
	observed := time.Now()
	plan := planner.Compute(obs.input)
	r.Source.MarkApplied(obs.rev.Commit)
	r.log.V(1).Info("planned", "revision", schema.Short(obs.rev.Commit), "nodes", len(obs.nodes),
		"observe", observed.Sub(start).String(), "plan", time.Since(observed).String())

	var errs []error
	wake := time.Duration(0)
	for i := range plan.Pools {
		pp := &plan.Pools[i]
		if !r.owns(obs, pp.Name) {
			if err := r.handOver(ctx, obs, pp.Name); err != nil {
				errs = append(errs, err)
			}
			if r.Status != nil {
				r.Status.ReleasePool(pp.Name) // another shard's now, if it was ours
			}
			r.forgetMetrics(pp.Name)
			continue
		}
		after, err := r.reconcilePool(ctx, obs, pp)
		if err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", pp.Name, err))
		}
		if after > 0 && (wake == 0 || after < wake) {
			wake = after
		}
	}
	errs = append(errs, r.removeGone(ctx, obs), r.collect(ctx, obs, plan))
	r.recordSource(obs)
	r.log.V(1).Info("reconciled", "revision", schema.Short(obs.rev.Commit), "took", time.Since(start).String())
	if err := errors.Join(errs...); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: wake}, nil
}

// reconcilePool acts on one pool's plan and always records the outcome:
// the deferred persist runs whatever act did. It returns how soon the pool
// wants looking at again (0: when something changes).
func (r *Reconciler) reconcilePool(ctx context.Context, obs *observation, pp *planner.PoolPlan) (wake time.Duration, err error) {
	out := newOutcome()
	np := obs.herdPool(pp.Name)
	defer func() {
		if perr := r.persist(ctx, obs, pp, np, out, err); perr != nil {
			err = errors.Join(err, perr)
		}
		wake = r.wake(obs, pp, out)
	}()
	if err := r.mirror(ctx, obs, np); err != nil {
		return 0, err
	}
	if err := r.store(ctx, obs, obs.pool(pp.Name)); err != nil {
		return 0, err
	}
	if err := r.keep(ctx, np, pp); err != nil {
		return 0, err
	}
	return 0, r.act(ctx, obs, pp, out)
}

// wake says how soon a pool wants another look without an event: every
// Resync while anything is in progress (drains and health checks are
// polled), and at the moment the plan changes by the clock alone (a soak
// ends, a node times out, a window opens, a problem lasts long enough, a
// rung times out), so no batch or repair waits for a poll.
func (r *Reconciler) wake(obs *observation, pp *planner.PoolPlan, out *outcome) time.Duration {
	busy := len(pp.Actions) > 0 || len(pp.Soaking) > 0 || out.pending() ||
		len(pp.Batches) > 0 && pp.Closed == nil && pp.Halt == nil && !pp.Paused
	d := time.Duration(0)
	if busy {
		d = r.Resync
	}
	if !pp.Recheck.IsZero() {
		// A little past it: whole-second annotation times, and the clock
		// may read just short of it.
		soon := pp.Recheck.Sub(obs.now) + 50*time.Millisecond
		if d == 0 || soon < d {
			d = soon
		}
	}
	return d
}
