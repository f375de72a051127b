// Package planinput builds the planner's one input from what Git and the
// cluster hold: `herd plan` and the controller both call Build.
package planinput

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/schema/loader"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/revisions"
)

// Sources is what a plan is made from. Build does no I/O: its callers
// read Git and the cluster and hand over what they found.
type Sources struct {
	// Fleet is the revision to plan, evaluated; Revision is its commit
	// ("" when it is not one).
	Fleet    *loader.Result
	Revision string
	// Nodes are the cluster's nodes, as the API server (or `kubectl get
	// nodes -o json`) shows them.
	Nodes []*corev1.Node
	// History is what the fleet's earlier revisions rendered; nil when
	// unknown.
	History *revisions.History
	// Stored are the renders the cluster keeps (the immutable
	// herd-rendered-<hash> ConfigMaps), by hash: every config the
	// controller ever told a node and has not collected.
	Stored map[string]*schema.Rendered
	// Pools are the cluster's HerdPools by name, holding each rollout's
	// state; nil outside a cluster, where every pool starts afresh.
	Pools map[string]*herdpool.HerdPool
	// Unhealthy says, by node, why a node fails its pool's health checks.
	Unhealthy map[string]string
	// Now is the time the plan is for.
	Now time.Time
	// Forms, when set, keeps the nodes' planner forms from one build to
	// the next (the controller's); nil reads every node.
	Forms *NodeForms
}

// Build returns the planner's input, its nodes in name order.
func Build(s Sources) (planner.Input, error) {
	in := planner.Input{
		Nodes:     make([]planner.Node, len(s.Nodes)),
		Earlier:   map[string]*schema.Rendered{},
		Rollbacks: map[string]bool{},
		Rollouts:  map[string]planner.Rollout{},
		Repairs:   map[string]planner.RepairState{},
		Resume:    map[string]string{},
		Freeze:    s.Fleet.Fleet.Frozen(),
		Now:       s.Now,
	}
	if s.Forms != nil {
		s.Forms.read(s.Nodes, in.Nodes)
	} else {
		for i, n := range s.Nodes {
			in.Nodes[i] = cluster.PlannerNode(n)
		}
	}
	byName := func(a, b planner.Node) int { return strings.Compare(a.Name, b.Name) }
	if !slices.IsSortedFunc(in.Nodes, byName) {
		slices.SortFunc(in.Nodes, byName)
	}
	for i := range in.Nodes {
		in.Nodes[i].Unhealthy = s.Unhealthy[in.Nodes[i].Name]
	}
	if h := s.History; h != nil {
		maps.Copy(in.Earlier, h.Renders)
		in.History = h.Searched
	}
	maps.Copy(in.Earlier, s.Stored)
	for _, name := range s.Fleet.PoolNames() {
		rd := s.Fleet.Rendered[name]
		ws, err := s.Fleet.Fleet.PoolWindows(name)
		if err != nil {
			return planner.Input{}, fmt.Errorf("pool %s: windows: %w", name, err)
		}
		p := planner.Pool{Name: name, Spec: s.Fleet.Fleet.Pools[name], Rendered: rd, Hash: rd.Hash(), Revision: s.Revision, Windows: ws}
		in.Pools = append(in.Pools, p)
		if s.History != nil && s.History.Rollback(name, p.Hash) {
			in.Rollbacks[p.Hash] = true
		}
		if np := s.Pools[name]; np != nil {
			in.Rollouts[name] = np.Status.Rollout
			in.Repairs[name] = np.Status.Repairs
			if r := np.Annotations[herdpool.AnnotationResume]; r != "" {
				in.Resume[name] = r
			}
		}
	}
	return in, nil
}
