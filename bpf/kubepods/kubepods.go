// Package kubepods lists the pods bound to a node through the API server,
// as the node monitor names cgroups: by pod UID and container runtime id.
package kubepods

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"herd.dev/herd/bpf/monitor"
)

// ListPods lists pods across namespaces: a clientset's
// CoreV1().Pods("").List, or a lean client's method of the same shape, so
// that an agent need not link the typed clientset.
type ListPods func(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error)

// Lister lists the pods bound to node. It reads from the API server's
// watch cache (resourceVersion=0), which costs the server no etcd read;
// the monitor calls it only when it meets a pod or container it does not
// know, at most every ten seconds.
func Lister(list ListPods, node string) monitor.PodLister {
	return func(ctx context.Context) ([]monitor.Pod, error) {
		pods, err := list(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("spec.nodeName", node).String(),
			ResourceVersion: "0",
		})
		if err != nil {
			return nil, fmt.Errorf("list pods of node %s: %w", node, err)
		}
		out := make([]monitor.Pod, 0, len(pods.Items))
		for i := range pods.Items {
			out = append(out, FromPod(&pods.Items[i]))
		}
		return out, nil
	}
}

// FromPod names a pod's containers (init and ephemeral ones too) by the
// runtime ids in its status.
func FromPod(p *corev1.Pod) monitor.Pod {
	out := monitor.Pod{UID: string(p.UID), Namespace: p.Namespace, Name: p.Name, Containers: map[string]string{}}
	for _, statuses := range [][]corev1.ContainerStatus{p.Status.InitContainerStatuses, p.Status.ContainerStatuses, p.Status.EphemeralContainerStatuses} {
		for _, s := range statuses {
			if id := RuntimeID(s.ContainerID); id != "" {
				out.Containers[id] = s.Name
			}
			if last := s.LastTerminationState.Terminated; last != nil && last.ContainerID != "" {
				out.Containers[RuntimeID(last.ContainerID)] = s.Name
			}
		}
	}
	return out
}

// RuntimeID strips the runtime scheme of a status's container id
// ("containerd://<id>" -> "<id>").
func RuntimeID(containerID string) string {
	if _, id, ok := strings.Cut(containerID, "://"); ok {
		return id
	}
	return containerID
}
