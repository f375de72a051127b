package sim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Joined is what Join did: the new nodes, how long building their
// machines took, and how long registering them.
type Joined struct {
	Names      []string
	Prepared   time.Duration
	Registered time.Duration
}

// Join adds count nodes to pool at once, as an autoscaler's scale-out
// does: it first builds every machine (root and sysroot, booted into the
// repository's first commit), then registers all their Nodes together,
// tainted herd.dev/converging (effect NoSchedule) as a kubelet started with
// --register-with-taints does, and starts their agents, which remove the
// taint once the node is at its pool's target. It returns once every Node
// is created and its agent started, without waiting for the agents.
func (f *Fleet) Join(ctx context.Context, pool string, count int) (Joined, error) {
	if pool == "" || count <= 0 {
		return Joined{}, fmt.Errorf("sim: join: invalid pool %q or count %d", pool, count)
	}
	f.mu.Lock()
	stopping := f.stopping
	f.mu.Unlock()
	if stopping {
		return Joined{}, errors.New("sim: join: the simulation is stopped")
	}
	names := f.newNodes(pool, count, true)
	nodes := make([]*simNode, len(names))
	for i, name := range names {
		nodes[i] = f.node(name)
	}
	t0 := time.Now()
	if err := f.eachNode(ctx, nodes, f.opts.Parallel, f.prepareNode); err != nil {
		return Joined{Names: names}, err
	}
	j := Joined{Names: names, Prepared: time.Since(t0)}
	t1 := time.Now()
	// Registration is two requests a node (the Node with its status, its
	// Lease): as many at once as the client's burst allows.
	if err := f.eachNode(ctx, nodes, max(f.opts.Burst/2, 1), f.startNode); err != nil {
		return j, err
	}
	j.Registered = time.Since(t1)
	f.log.Info("nodes joined", "pool", pool, "nodes", count, "prepared in", j.Prepared, "registered in", j.Registered)
	return j, nil
}

// eachNode runs do for every node, parallel at a time, and joins the errors.
func (f *Fleet) eachNode(ctx context.Context, nodes []*simNode, parallel int, do func(context.Context, *simNode) error) error {
	sem := make(chan struct{}, parallel)
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, n := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := do(ctx, n); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("sim: node %s: %w", n.name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
