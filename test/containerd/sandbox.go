package containerd

import (
	"context"
	"fmt"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Pod names the pod a test sandbox is made for.
type Pod struct {
	Name, Namespace, UID string
	// Unlabelled leaves kubelet's io.kubernetes.pod.* labels off, as on a
	// sandbox some other tool created.
	Unlabelled bool
}

// RunSandbox creates and starts a pod sandbox for pod in the host's network
// namespace, as kubelet would for a hostNetwork pod, and returns its ID.
func (c *Containerd) RunSandbox(ctx context.Context, pod Pod) (string, error) {
	conn, err := grpc.NewClient("unix://"+c.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", fmt.Errorf("containerd: CRI client: %w", err)
	}
	defer conn.Close()
	labels := map[string]string{
		"io.kubernetes.pod.name":      pod.Name,
		"io.kubernetes.pod.namespace": pod.Namespace,
		"io.kubernetes.pod.uid":       pod.UID,
	}
	if pod.Unlabelled {
		labels = map[string]string{"herd.dev/test": "unlabelled"}
	}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: pod.Name, Namespace: pod.Namespace, Uid: pod.UID},
		LogDirectory: filepath.Join(c.dir, "pods", pod.UID),
		Labels:       labels,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			},
		},
	}
	resp, err := runtimeapi.NewRuntimeServiceClient(conn).RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return "", fmt.Errorf("containerd: run sandbox for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return resp.GetPodSandboxId(), nil
}
