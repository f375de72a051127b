package controller

import (
	"context"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// nodeLister lists the cluster's nodes as the cache holds them: the
// cache's own objects, which a plan only reads (every write, in
// sync/cluster, works on a copy of the node).
type nodeLister interface {
	list(ctx context.Context) ([]*corev1.Node, error)
}

// listedNodes lists the nodes with a client reading the cache, which sets
// each node into the list by value.
type listedNodes struct{ c client.Reader }

func (l listedNodes) list(ctx context.Context) ([]*corev1.Node, error) {
	var list corev1.NodeList
	if err := l.c.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	out := make([]*corev1.Node, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out, nil
}

// informerNodes lists the nodes straight from the node informer's store,
// the objects the cache's List would copy into a list one by one (by
// reflection: a quarter of an idle reconcile's CPU at 10,000 nodes). An
// informer without a store to read lists as listedNodes does.
type informerNodes struct {
	informers cache.Informers
	fallback  listedNodes

	mu    sync.Mutex
	found bool
	store toolscache.Store // nil: use fallback
}

func (l *informerNodes) list(ctx context.Context) ([]*corev1.Node, error) {
	store, err := l.nodeStore(ctx)
	if err != nil {
		return nil, err
	}
	if store == nil {
		return l.fallback.list(ctx)
	}
	return storeNodes(store)
}

// nodeStore finds the informer's store once the informer has synced (the
// controller's reconciles start after that); until then nil, and the
// nodes are listed as the cache's List does (which waits, or fails).
func (l *informerNodes) nodeStore(ctx context.Context) (toolscache.Store, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.found {
		return l.store, nil
	}
	inf, err := l.informers.GetInformer(ctx, &corev1.Node{}, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, fmt.Errorf("node informer: %w", err)
	}
	if !inf.HasSynced() {
		return nil, nil
	}
	if s, ok := inf.(interface{ GetStore() toolscache.Store }); ok {
		l.store = s.GetStore()
	}
	l.found = true
	return l.store, nil
}

// storeNodes lists an informer store's nodes.
func storeNodes(s toolscache.Store) ([]*corev1.Node, error) {
	objs := s.List()
	out := make([]*corev1.Node, len(objs))
	for i, o := range objs {
		n, ok := o.(*corev1.Node)
		if !ok {
			return nil, fmt.Errorf("the node cache holds a %T", o)
		}
		out[i] = n
	}
	return out, nil
}
