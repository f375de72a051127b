package health_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/node/health"
	"herd.dev/herd/schema"
	"herd.dev/herd/test/containerd"
)

// BenchmarkRound runs one round of every check against real parts: kubelet
// /healthz on a local HTTP server, the Lease and pods on a real API server,
// a real containerd with 10 sandboxes (one of a pod no longer on the node),
// statfs of real filesystems and this kernel's PSI. Besides ns/op it
// reports the process's CPU time per round (user+system, from getrusage,
// including the local kubelet server's share) and what that is as a share
// of one core at a 10 s check interval.
func BenchmarkRound(b *testing.B) {
	cs := client(b)
	ctd := containerd.StartTest(b, containerd.Options{CNI: true})
	ctx := b.Context()
	c, err := cri.New(ctd.Socket())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	node := fmt.Sprintf("bench-node-%d", benchRuns.Add(1))
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Annotations: map[string]string{
		schema.AnnotationDesiredOS: "aaaa", schema.AnnotationOSBooted: "aaaa", schema.AnnotationState: "Idle"}}}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Message: "kubelet is posting ready status"}}
	renew := metav1.NewMicroTime(time.Now().Add(time.Hour)) // fresh for the whole run
	if _, err := cs.CoordinationV1().Leases("kube-node-lease").Create(ctx, leaseFor(node, renew), metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	for i := range 9 {
		pod, err := cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", node, i), Namespace: "default"},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "c"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ctd.RunSandbox(ctx, containerd.Pod{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID)}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := ctd.RunSandbox(ctx, containerd.Pod{Name: "gone", Namespace: "default", UID: "gone"}); err != nil {
		b.Fatal(err)
	}
	kubelet := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	defer kubelet.Close()
	self := func(context.Context) (*corev1.Node, error) { return n, nil } // the agent's watched Node
	checks := []health.Check{
		&health.Kubelet{HealthzURL: kubelet.URL + "/healthz", Lease: health.NodeLease(lean(b), node)},
		&health.PLEG{Node: self},
		&health.Runtime{CRI: c},
		&health.Sandboxes{CRI: c, Pods: health.PodsOnNode(cs.CoreV1().Pods("").List, node), Grace: time.Minute},
		&health.Disk{Paths: []string{"/", ctd.Root()}},
		&health.Memory{},
		&health.OSDrift{Node: self},
	}
	// Two minutes on: the sandboxes are past their grace period, and the
	// pod list is re-read once per PodsTTL of simulated time.
	now := time.Now().Add(2 * time.Minute)
	results := health.Round(ctx, checks, now, 0)
	for _, r := range results {
		if r.Status == corev1.ConditionUnknown || (r.Problem() && r.Type != schema.ConditionLeftoverSandboxes) {
			b.Fatalf("%s: %s %s: %s", r.Type, r.Status, r.Reason, r.Message)
		}
	}
	before := cpuTime(b)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		health.Round(ctx, checks, now.Add(time.Duration(i)*schema.DefaultCheckInterval), 0)
	}
	b.StopTimer()
	perRound := (cpuTime(b) - before) / time.Duration(b.N)
	b.ReportMetric(float64(perRound.Nanoseconds()), "cpu-ns/round")
	b.ReportMetric(100*perRound.Seconds()/schema.DefaultCheckInterval.Seconds(), "core%@10s")
}

var benchRuns atomic.Int64

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
