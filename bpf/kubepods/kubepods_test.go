package kubepods_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/bpf/kubepods"
	"herd.dev/herd/bpf/monitor"
	"herd.dev/herd/test/controlplane"
)

// TestLister binds pods to two nodes on a real API server, reports their
// containers in pod status as a kubelet does, and lists one node's.
func TestLister(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	client := kubernetes.NewForConfigOrDie(cp.Config())
	ctx := context.Background()
	mk := func(name, node string, statuses ...corev1.ContainerStatus) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{
				{Name: "app", Image: "app"}, {Name: "sidecar", Image: "sidecar"},
			}},
		}
		p, err := client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.ContainerStatuses = statuses
		if p, err = client.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	restarted := corev1.ContainerStatus{Name: "app", ContainerID: "containerd://aaaa", LastTerminationState: corev1.ContainerState{
		Terminated: &corev1.ContainerStateTerminated{ContainerID: "containerd://0000"},
	}}
	mine := mk("cart", "node-a", restarted, corev1.ContainerStatus{Name: "sidecar", ContainerID: "containerd://bbbb"})
	mk("other", "node-b", corev1.ContainerStatus{Name: "app", ContainerID: "containerd://cccc"})

	got, err := kubepods.Lister(client.CoreV1().Pods("").List, "node-a")(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []monitor.Pod{{UID: string(mine.UID), Namespace: "default", Name: "cart", Containers: map[string]string{
		"aaaa": "app", "0000": "app", "bbbb": "sidecar",
	}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("pods of node-a (-want +got):\n%s", diff)
	}
}

func TestRuntimeID(t *testing.T) {
	for in, want := range map[string]string{"containerd://abc": "abc", "cri-o://def": "def", "abc": "abc", "": ""} {
		if got := kubepods.RuntimeID(in); got != want {
			t.Errorf("RuntimeID(%q) = %q, want %q", in, got, want)
		}
	}
}
