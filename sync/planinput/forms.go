package planinput

import (
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
type NodeForms struct {
	mu    sync.Mutex
	build uint64 // counts builds
	forms map[string]*nodeForm
}

type nodeForm struct {
	version string
	build   uint64 // the last build that listed the node
	node    planner.Node
}

// NewNodeForms returns an empty NodeForms.
func NewNodeForms() *NodeForms { return &NodeForms{forms: map[string]*nodeForm{}} }

// read sets out[i] to the planner form of nodes[i], and forgets the nodes
// no longer listed.
func (f *NodeForms) read(nodes []*corev1.Node, out []planner.Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.build++
	listed := 0
	for i, n := range nodes {
		if n.ResourceVersion == "" {
			out[i] = cluster.PlannerNode(n)
			continue
		}
		e := f.forms[n.Name]
		if e == nil {
			e = &nodeForm{}
			f.forms[n.Name] = e
		}
		if e.version != n.ResourceVersion {
			e.version, e.node = n.ResourceVersion, cluster.PlannerNode(n)
		}
		if e.build != f.build {
			e.build = f.build
			listed++
		}
		out[i] = e.node
	}
	if listed == len(f.forms) {
		return
	}
	for name, e := range f.forms {
		if e.build != f.build {
			delete(f.forms, name)
		}
	}
}
