// Package kube is the node agent's lean Kubernetes client: Nodes (get,
// watch, patch, patch status), Pods (list), ConfigMaps (get) and node
// Leases (get), with core/v1 and coordination/v1 types only.
//
// client-go's typed clientset registers every API group of Kubernetes at
// start and its informer factory links an informer for each; an agent on
// every node pays for that in memory. This client registers core/v1 alone
// and builds on client-go's REST client and cache.
package kube

import (
	"context"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// scheme knows core/v1, coordination/v1 and the meta types of lists, options and watch
// events.
var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

func init() {
	if err := corev1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := coordinationv1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	metav1.AddToGroupVersion(scheme, schema.GroupVersion{Version: "v1"})
}

// Client reads and writes core/v1 objects. Safe for concurrent use.
type Client struct {
	rest rest.Interface
}

// New returns a client for the API server cfg reaches. cfg's rate limits
// (QPS, Burst) bound every request the client makes.
func New(cfg *rest.Config) (*Client, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = codecs.WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return &Client{rest: rc}, nil
}

// Node reads the Node called name.
func (c *Client) Node(ctx context.Context, name string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.rest.Get().Resource("nodes").Name(name).Do(ctx).Into(n)
	return n, err
}

// PatchNode patches the Node called name with body, a patch of type pt,
// as fieldManager, and returns the Node after the patch.
func (c *Client) PatchNode(ctx context.Context, name string, pt types.PatchType, body []byte, fieldManager string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.rest.Patch(pt).Resource("nodes").Name(name).
		VersionedParams(&metav1.PatchOptions{FieldManager: fieldManager}, metav1.ParameterCodec).
		Body(body).Do(ctx).Into(n)
	return n, err
}

// PatchNodeStatus patches the status of the Node called name (its status
// subresource) with body, a patch of type pt, as fieldManager, and returns
// the Node after the patch.
func (c *Client) PatchNodeStatus(ctx context.Context, name string, pt types.PatchType, body []byte, fieldManager string) (*corev1.Node, error) {
	n := &corev1.Node{}
	err := c.rest.Patch(pt).Resource("nodes").Name(name).SubResource("status").
		VersionedParams(&metav1.PatchOptions{FieldManager: fieldManager}, metav1.ParameterCodec).
		Body(body).Do(ctx).Into(n)
	return n, err
}

// Lease reads the Lease namespace/name (coordination.k8s.io/v1), e.g. a
// node's in kube-node-lease.
func (c *Client) Lease(ctx context.Context, namespace, name string) (*coordinationv1.Lease, error) {
	l := &coordinationv1.Lease{}
	err := c.rest.Get().AbsPath("/apis", coordinationv1.GroupName, "v1", "namespaces", namespace, "leases", name).Do(ctx).Into(l)
	return l, err
}

// ListPods lists pods in all namespaces, as opts select (e.g. a field
// selector spec.nodeName=<node>): the shape kubepods.Lister takes.
func (c *Client) ListPods(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error) {
	l := &corev1.PodList{}
	err := c.rest.Get().Resource("pods").VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(l)
	return l, err
}

// ConfigMap reads the ConfigMap namespace/name.
func (c *Client) ConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	cm := &corev1.ConfigMap{}
	err := c.rest.Get().Namespace(namespace).Resource("configmaps").Name(name).Do(ctx).Into(cm)
	return cm, err
}

// LoadConfig loads a kubeconfig: the named file, else the in-cluster
// config, else $KUBECONFIG or ~/.kube/config.
func LoadConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		if c, err := rest.InClusterConfig(); err == nil {
			return c, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
}
