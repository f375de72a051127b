package controller

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/schema/loader"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/planinput"
	"herd.dev/herd/sync/revisions"
	"herd.dev/herd/sync/source"
)

// observation is what one reconcile saw: everything its decision rests on.
type observation struct {
	now    time.Time
	rev    source.Revision
	fleet  *loader.Result
	nodes  []*corev1.Node // the cache's own objects: read, never written
	byName map[string]*corev1.Node
	stored map[string]bool               // hashes of the rendered ConfigMaps in the cluster
	pools  map[string]*herdpool.HerdPool // HerdPools as read, by name
	input  planner.Input
}

// observe gathers what the plan depends on, as `herd plan` would with the
// cluster's nodes: the revision in force and its earlier renders, the
// nodes, the HerdPools' rollout state and the health of soaking nodes.
func (r *Reconciler) observe(ctx context.Context, now time.Time) (*observation, error) {
	rev, ok := r.Source.Current()
	if !ok {
		return nil, errNoRevision
	}
	obs := &observation{now: now, rev: rev}
	var err error
	if obs.fleet, err = r.load(ctx, rev); err != nil {
		return obs, err
	}
	if obs.pools, err = r.readHerdPools(ctx); err != nil {
		return obs, err
	}
	stored, err := r.readRendered(ctx)
	if err != nil {
		return obs, err
	}
	obs.stored = map[string]bool{}
	for h := range stored {
		obs.stored[h] = true
	}
	if err := r.readNodes(ctx, obs); err != nil {
		return obs, err
	}
	history := r.earlier(ctx, rev)
	if err := ctx.Err(); err != nil {
		return obs, err // no plan from a history walk cut short
	}
	obs.input, err = r.plannerInput(ctx, obs, history, stored)
	return obs, err
}

// plannerInput builds the plan's input from what was observed.
func (r *Reconciler) plannerInput(ctx context.Context, obs *observation, history *revisions.History, stored map[string]*schema.Rendered) (planner.Input, error) {
	return planinput.Build(planinput.Sources{
		Fleet:     obs.fleet,
		Revision:  obs.rev.Commit,
		Nodes:     obs.nodes,
		History:   history,
		Stored:    stored,
		Pools:     obs.pools,
		Unhealthy: r.checkHealth(ctx, obs),
		Now:       obs.now,
		Forms:     r.forms,
	})
}

// load evaluates the revision, once per commit: Options.Evaluate, which in
// the controller hands over what the source's validation evaluated.
func (r *Reconciler) load(ctx context.Context, rev source.Revision) (*loader.Result, error) {
	r.mu.Lock()
	res, ok := r.loaded[rev.Commit]
	r.mu.Unlock()
	if ok {
		return res, nil
	}
	res, err := r.Evaluate(ctx, rev.Dir)
	if err != nil {
		return nil, fmt.Errorf("evaluate fleet at %s: %w", schema.Short(rev.Commit), err)
	}
	r.mu.Lock()
	r.loaded = map[string]*loader.Result{rev.Commit: res} // keep only the current one
	r.mu.Unlock()
	return res, nil
}

// earlier evaluates the fleet's earlier revisions, once per commit. Without
// them the plan still knows every render the cluster stores; so a failure
// is logged, not fatal.
func (r *Reconciler) earlier(ctx context.Context, rev source.Revision) *revisions.History {
	if r.History == nil {
		return nil
	}
	r.mu.Lock()
	h, ok := r.history[rev.Commit]
	r.mu.Unlock()
	if ok {
		return h
	}
	h, err := r.History(ctx, rev.Commit)
	if err != nil {
		r.log.Error(err, "read the fleet's earlier revisions; planning with the renders the cluster stores", "commit", rev.Commit)
		return nil
	}
	r.mu.Lock()
	r.history = map[string]*revisions.History{rev.Commit: h}
	r.mu.Unlock()
	return h
}

// readHerdPools reads the HerdPools uncached: the rollout state in their
// status must be this controller's last write, which the cache may not show.
func (r *Reconciler) readHerdPools(ctx context.Context) (map[string]*herdpool.HerdPool, error) {
	var list herdpool.HerdPoolList
	if err := r.api.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list HerdPools: %w", err)
	}
	out := make(map[string]*herdpool.HerdPool, len(list.Items))
	for i := range list.Items {
		out[list.Items[i].Name] = &list.Items[i]
	}
	return out, nil
}

// readRendered reads the renders the cluster stores, by hash. ConfigMaps
// are immutable, so each is parsed (and its hash checked) once.
func (r *Reconciler) readRendered(ctx context.Context) (map[string]*schema.Rendered, error) {
	var list corev1.ConfigMapList
	if err := r.client.List(ctx, &list, client.InNamespace(schema.RenderedNamespace), client.MatchingLabels{schema.LabelRendered: "true"}); err != nil {
		return nil, fmt.Errorf("list rendered configs: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]*schema.Rendered, len(list.Items))
	seen := map[string]bool{}
	for i := range list.Items {
		cm := &list.Items[i]
		hash := strings.TrimPrefix(cm.Name, schema.RenderedPrefix)
		seen[cm.Name] = true
		rd, ok := r.renders[cm.Name]
		if !ok {
			var err error
			if rd, err = schema.ParseRendered([]byte(cm.Data[schema.RenderedDataKey]), hash); err != nil {
				r.log.Error(err, "ignoring a rendered ConfigMap", "name", cm.Name)
				continue
			}
			r.renders[cm.Name] = rd
		}
		out[hash] = rd
	}
	for name := range r.renders {
		if !seen[name] {
			delete(r.renders, name)
		}
	}
	return out, nil
}

// After a batch of a thousand dispatches, a thousand reads of the nodes
// the cache does not show yet would cost more than waiting for the cache:
// when more than cacheWaitOver nodes lag, readNodes waits while their
// number falls, up to cacheWait, then reads those that still lag (the
// cache may also show a newer version than this controller's write, which
// waiting does not change).
const (
	cacheWait     = time.Second
	cacheWaitOver = 16
)

// readNodes lists the nodes from the cache, and reads those this
// controller wrote and the cache does not show yet from the API server:
// a plan must see its own last actions, or it could start a node twice.
func (r *Reconciler) readNodes(ctx context.Context, obs *observation) error {
	var nodes []*corev1.Node
	deadline, before := time.Now().Add(cacheWait), -1
	for {
		var err error
		if nodes, err = r.list.list(ctx); err != nil {
			return fmt.Errorf("list nodes: %w", err)
		}
		if !r.fresh.any() { // most reconciles: nothing written lately
			break
		}
		lagging := 0
		for _, n := range nodes {
			if r.fresh.lags(n) {
				lagging++
			}
		}
		if lagging <= cacheWaitOver || lagging == before || !time.Now().Before(deadline) {
			break
		}
		before = lagging
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	kept, anyWritten := nodes[:0], r.fresh.any()
	for _, cached := range nodes {
		if !anyWritten || !r.fresh.lags(cached) {
			kept = append(kept, cached)
			continue
		}
		n := &corev1.Node{}
		switch err := r.api.Get(ctx, client.ObjectKeyFromObject(cached), n); {
		case apierrors.IsNotFound(err): // deleted meanwhile
		case err != nil:
			return fmt.Errorf("read node %s: %w", cached.Name, err)
		default:
			r.fresh.saw(n)
			slimNode(n) // as the cache keeps it: one form per version
			kept = append(kept, n)
		}
	}
	obs.nodes = kept
	obs.byName = make(map[string]*corev1.Node, len(kept))
	for _, n := range kept {
		obs.byName[n.Name] = n
	}
	r.fresh.forget(obs.byName)
	return nil
}

// checkHealth runs the pools' health checks on the nodes in their soak:
// at the target they were dispatched to, and not yet done.
func (r *Reconciler) checkHealth(ctx context.Context, obs *observation) map[string]string {
	unhealthy := map[string]string{}
	for _, name := range obs.fleet.PoolNames() {
		spec := obs.fleet.Fleet.Pools[name]
		hc := spec.Rollout.HealthChecks
		if hc == nil {
			continue
		}
		hash, soak := obs.fleet.Rendered[name].Hash(), spec.Rollout.SoakDuration()
		for _, n := range obs.nodes {
			a := n.Annotations
			if a[schema.AnnotationDesiredConfig] != hash || a[schema.AnnotationCurrentConfig] != hash ||
				a[schema.AnnotationOSBooted] != spec.OS.Commit || !spec.Selector.Matches(n.Labels) {
				continue
			}
			if at, err := time.Parse(time.RFC3339, a[schema.AnnotationAtTarget]); err == nil && !obs.now.Before(at.Add(soak)) {
				continue // soaked: done
			}
			if why := r.health.check(ctx, hc, n); why != "" {
				unhealthy[n.Name] = why
			}
		}
	}
	return unhealthy
}

// pool returns the planner's pool of the name.
func (obs *observation) pool(name string) planner.Pool {
	for _, p := range obs.input.Pools {
		if p.Name == name {
			return p
		}
	}
	return planner.Pool{}
}

// herdPool returns the pool's HerdPool as read, or a new one to create,
// its spec copied from Git.
func (obs *observation) herdPool(name string) *herdpool.HerdPool {
	np := obs.pools[name]
	if np == nil {
		np = &herdpool.HerdPool{}
		np.Name = name
	}
	return np
}
