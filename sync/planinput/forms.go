package planinput

import (
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/planner"
	"herd.dev/herd/sync/cluster"
)

// NodeForms keeps each node's planner form between builds, by name and
// resource version: the API server gives every change of a node a new
// version, so a node whose version is unchanged is not read again. A node
// without a version (one read from a file) is read every time. The nodes
// of one version must all be read the same way (the controller slims
// every node as its cache does).
//
// It also keeps the forms in name order, the order of the planner's
// input: while the same nodes are listed, in whatever order, none is
// sorted again.
type NodeForms struct {
	mu    sync.Mutex
	build uint64 // counts builds
	forms map[string]*nodeForm
	order []*nodeForm // forms by name
	seen  []*nodeForm // scratch: the form of each listed node
}

type nodeForm struct {
	version string
	build   uint64 // the last build that listed the node
	node    planner.Node
}

// NewNodeForms returns an empty NodeForms.
func NewNodeForms() *NodeForms { return &NodeForms{forms: map[string]*nodeForm{}} }

// read sets out to the planner forms of nodes, in name order when the
// nodes are those of the build before (else in their order), and forgets
// the nodes no longer listed.
func (f *NodeForms) read(nodes []*corev1.Node, out []planner.Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.build++
	f.seen = slices.Grow(f.seen[:0], len(nodes))[:len(nodes)]
	same := len(nodes) == len(f.order) // the same nodes as the build before
	for i, n := range nodes {
		if n.ResourceVersion == "" {
			f.seen[i] = &nodeForm{node: cluster.PlannerNode(n)}
			same = false
			continue
		}
		e := f.forms[n.Name]
		if e == nil {
			e = &nodeForm{}
			f.forms[n.Name] = e
			same = false
		}
		if e.version != n.ResourceVersion {
			e.version, e.node = n.ResourceVersion, cluster.PlannerNode(n)
		}
		if e.build == f.build {
			same = false // listed twice
		}
		e.build = f.build
		f.seen[i] = e
	}
	if same {
		for i, e := range f.order {
			out[i] = e.node
		}
		clear(f.seen)
		return
	}
	for i, e := range f.seen {
		out[i] = e.node
	}
	clear(f.seen)
	f.order = f.order[:0]
	for name, e := range f.forms {
		if e.build != f.build {
			delete(f.forms, name)
			continue
		}
		f.order = append(f.order, e)
	}
	slices.SortFunc(f.order, func(a, b *nodeForm) int { return strings.Compare(a.node.Name, b.node.Name) })
}
