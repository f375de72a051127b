package controller

import (
	"context"
	"crypto/sha256"
	"fmt"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Shard is the part of the fleet one controller acts on: the pools whose
// labels its selector matches (`herd controller --shard-selector`), as
// Flux's --watch-label-selector splits objects between controllers.
//
// Every shard still plans the whole fleet: a node belongs to exactly one
// pool, which only the whole fleet tells, and shards reading the same
// cluster and revision compute the same plan. A shard acts on, and
// records (HerdPool status, events, metrics, the status branch), only its
// own pools. The zero Shard is an unsharded controller: every pool.
type Shard struct {
	// Name names the shard: its leader election, its HerdSource
	// (fleet-<name>) and its source file on the status branch.
	Name string
	// Selector picks the shard's pools by their labels; nil for all.
	Selector labels.Selector
	// Expr is the selector as given.
	Expr string
}

// ParseShard parses --shard-selector and --shard-name. Without a selector
// the controller is not sharded (a name alone is refused). Without a name,
// one is made from the selector: "shard-" and 8 hex digits of its hash.
func ParseShard(name, selector string) (Shard, error) {
	if selector == "" {
		if name != "" {
			return Shard{}, fmt.Errorf("--shard-name %q without --shard-selector: a shard is the pools a selector picks", name)
		}
		return Shard{}, nil
	}
	sel, err := labels.Parse(selector)
	if err != nil {
		return Shard{}, fmt.Errorf("--shard-selector %q: %w", selector, err)
	}
	if sel.Empty() {
		return Shard{}, fmt.Errorf("--shard-selector %q selects every pool: leave it out for an unsharded controller", selector)
	}
	if name == "" {
		name = fmt.Sprintf("shard-%x", sha256.Sum256([]byte(selector)))[:len("shard-")+8]
	}
	if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
		return Shard{}, fmt.Errorf("--shard-name %q: %s", name, errs[0])
	}
	return Shard{Name: name, Selector: sel, Expr: selector}, nil
}

// Owns reports whether a pool with these labels is the shard's.
func (s Shard) Owns(poolLabels map[string]string) bool {
	return s.Selector == nil || s.Selector.Matches(labels.Set(poolLabels))
}

// owns reports whether the pool is this controller's to act on: in the
// fleet with labels the shard selects, and its HerdPool, when there is
// one, handed over to the shard (labelled so). A pool moving between
// shards is acted on by one shard at a time: the new shard waits until the
// old one, at the revision that moved it, has relabelled the HerdPool
// (handOver), however far apart the two shards' revisions are.
func (r *Reconciler) owns(obs *observation, name string) bool {
	p, ok := obs.fleet.Fleet.Pools[name]
	if !ok || !r.Shard.Owns(p.Labels) {
		return false
	}
	np := obs.pools[name]
	return np == nil || r.Shard.Owns(np.Labels)
}

// handOver gives a pool this shard acted on to the shard its new labels
// pick: its HerdPool is mirrored at this revision, labels and all, which
// is the new shard's sign to take it. Until then the new shard leaves it.
func (r *Reconciler) handOver(ctx context.Context, obs *observation, name string) error {
	np, p := obs.pools[name], obs.fleet.Fleet.Pools[name]
	if np == nil || !r.Shard.Owns(np.Labels) || r.Shard.Owns(p.Labels) {
		return nil
	}
	if err := r.mirror(ctx, obs, np); err != nil {
		return fmt.Errorf("hand pool %s over to the shard that selects %v: %w", name, p.Labels, err)
	}
	r.log.Info("pool handed over to another shard", "pool", name, "labels", p.Labels)
	return nil
}
