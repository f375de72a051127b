package controller

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/test/controlplane"
)

// noList is a reader whose List fails: the informer's store must answer.
type noList struct{ client.Reader }

func (noList) List(context.Context, client.ObjectList, ...client.ListOption) error {
	return errors.New("listed through the client, not the informer's store")
}

// TestInformerNodesReadsTheStore lists nodes as the controller does, from
// a real API server through controller-runtime's cache: as the cache's
// List does until the informer has synced, then the informer's own
// objects (slimmed as the controller's cache keeps them), and a node
// changed later once the cache shows it.
func TestInformerNodesReadsTheStore(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	c, err := client.New(cp.Config(), client.Options{Scheme: Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%d", i), Labels: map[string]string{"herd.dev/pool": "general"}}}
		if err := c.Create(t.Context(), n); err != nil {
			t.Fatal(err)
		}
	}
	informers, err := cache.New(cp.Config(), cache.Options{Scheme: Scheme(), ByObject: map[client.Object]cache.ByObject{&corev1.Node{}: {Transform: slimNode}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	l := &informerNodes{informers: informers, fallback: listedNodes{noList{}}}
	if _, err := l.list(ctx); err == nil || l.found {
		t.Fatalf("listed from an informer not synced yet (err %v)", err)
	}
	go func() { _ = informers.Start(ctx) }()
	if !informers.WaitForCacheSync(ctx) {
		t.Fatal("the cache never synced")
	}
	nodes, err := l.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 || l.store == nil {
		t.Fatalf("listed %d nodes (want 3), store found: %v", len(nodes), l.store != nil)
	}
	for _, n := range nodes {
		stored, ok, err := l.store.GetByKey(n.Name)
		if err != nil || !ok || stored != n {
			t.Fatalf("node %s is not the informer's own object (found %v, err %v)", n.Name, ok, err)
		}
	}

	n := nodes[0].DeepCopy()
	n.Labels["herd.dev/pool"] = "batch"
	if err := c.Update(t.Context(), n); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		nodes, err := l.list(ctx)
		if err != nil {
			return false, err
		}
		for _, got := range nodes {
			if got.Name == n.Name && got.Labels["herd.dev/pool"] == "batch" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the change to %s never showed in the listed nodes: %v", n.Name, err)
	}
}
