package controller

import (
	"context"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// freshness tracks the nodes this controller wrote, by the resource
// version its write produced, until the cache shows that version: until
// then a plan reads them from the API server. Lost on a restart, it needs
// not be kept: a new cache starts from a fresh list.
type freshness struct {
	mu      sync.Mutex
	written map[string]string // node → resource version of its newest copy known
}

func newFreshness() *freshness { return &freshness{written: map[string]string{}} }

// track wraps a client so that every node it writes is remembered.
func (f *freshness) track(c client.Client) client.Client { return &trackingClient{Client: c, f: f} }

// lags reports whether the cached node may miss a write of this
// controller: its version is not the one last written or read fresh.
func (f *freshness) lags(cached *corev1.Node) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	rv, ok := f.written[cached.Name]
	if ok && rv == cached.ResourceVersion {
		delete(f.written, cached.Name) // the cache caught up
		return false
	}
	return ok
}

// any reports whether any written node is tracked: when none is, no
// cached node lags.
func (f *freshness) any() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.written) > 0
}

// saw records a node read fresh from the API server.
func (f *freshness) saw(n *corev1.Node) {
	f.mu.Lock()
	f.written[n.Name] = n.ResourceVersion
	f.mu.Unlock()
}

// forget drops nodes that no longer exist.
func (f *freshness) forget(nodes map[string]*corev1.Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for name := range f.written {
		if nodes[name] == nil {
			delete(f.written, name)
		}
	}
}

// trackingClient records the resource version of every node it patches.
type trackingClient struct {
	client.Client
	f *freshness
}

func (c *trackingClient) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.PatchOption) error {
	err := c.Client.Patch(ctx, obj, patch, opts...)
	if n, ok := obj.(*corev1.Node); ok && err == nil {
		c.f.saw(n)
	}
	return err
}

func (c *trackingClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	err := c.Client.Update(ctx, obj, opts...)
	if n, ok := obj.(*corev1.Node); ok && err == nil {
		c.f.saw(n)
	}
	return err
}
