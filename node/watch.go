package node

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// NodeFeed is how an agent learns about its Node: the latest copy from a
// watch cache, and a signal whenever it may have changed.
type NodeFeed interface {
	// Node returns the cached Node, or nil while it does not exist. The
	// object is shared with the cache: never modify it.
	Node() *corev1.Node
	// Changed receives a value (coalesced) whenever Node may return
	// something new.
	Changed() <-chan struct{}
}

// NodeWatch is one watch over Nodes, feeding any number of agents: a
// standalone agent watches only its own Node (WatchNode), a simulator of
// many nodes shares one watch between all its agents (WatchNodes).
type NodeWatch struct {
	informer cache.SharedIndexInformer

	mu    sync.Mutex
	feeds map[string][]chan struct{} // by node: one per Feed, each its own signal
}

// WatchNodes starts a watch over the Nodes that listOpts selects (all when
// empty) and waits until its cache is filled. It stops when ctx ends. The
// cached Nodes carry neither managedFields nor status.images, which an agent
// never reads.
func WatchNodes(ctx context.Context, client kubernetes.Interface, listOpts metav1.ListOptions) (*NodeWatch, error) {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = listOpts.FieldSelector
			o.LabelSelector = listOpts.LabelSelector
		}))
	inf := factory.Core().V1().Nodes().Informer()
	if err := inf.SetTransform(trimNode); err != nil {
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	w := &NodeWatch{informer: inf, feeds: map[string][]chan struct{}{}}
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.notify(obj) },
		UpdateFunc: func(_, obj any) { w.notify(obj) },
		DeleteFunc: func(obj any) { w.notify(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("watch nodes: cache not filled: %w", context.Cause(ctx))
	}
	return w, nil
}

// WatchNode watches the one Node called name (a field selector on
// metadata.name) and returns its feed.
func WatchNode(ctx context.Context, client kubernetes.Interface, name string) (NodeFeed, error) {
	w, err := WatchNodes(ctx, client, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("watch node %s: %w", name, err)
	}
	return w.Feed(name), nil
}

// Feed returns a new feed of the Node called name: every feed is told of
// every change (the agent and its health side share one watch).
func (w *NodeWatch) Feed(name string) NodeFeed {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := make(chan struct{}, 1)
	w.feeds[name] = append(w.feeds[name], ch)
	return &feed{w: w, name: name, ch: ch}
}

// Store returns the watch's cache, for reading any watched Node.
func (w *NodeWatch) Store() cache.Store { return w.informer.GetStore() }

func (w *NodeWatch) notify(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	w.mu.Lock()
	chs := w.feeds[n.Name]
	w.mu.Unlock()
	for _, ch := range chs {
		select {
		case ch <- struct{}{}:
		default: // a signal is pending already
		}
	}
}

type feed struct {
	w    *NodeWatch
	name string
	ch   chan struct{}
}

func (f *feed) Node() *corev1.Node {
	obj, ok, err := f.w.informer.GetStore().GetByKey(f.name)
	if err != nil || !ok {
		return nil
	}
	n, _ := obj.(*corev1.Node)
	return n
}

func (f *feed) Changed() <-chan struct{} { return f.ch }

// trimNode drops what agents never read from cached Nodes.
func trimNode(obj any) (any, error) {
	if n, ok := obj.(*corev1.Node); ok {
		n.ManagedFields = nil
		n.Status.Images = nil
	}
	return obj, nil
}
