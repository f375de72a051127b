package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/diagnose"
	"herd.dev/herd/node/health"
	"herd.dev/herd/test/controlplane"
)

// TestIntegrationDiagnose runs `herd install` and `herd diagnose` against a real API
// server, with an agent-side responder (the library the agent runs)
// answering for one node.
func TestIntegrationDiagnose(t *testing.T) {
	cp := controlplane.StartTest(t, controlplane.Options{})
	kc := cp.KubeconfigPath()
	if code, _, stderr := herd(t, "", "install", "--kubeconfig", kc); code != 0 {
		t.Fatalf("herd install: %d %s", code, stderr)
	}
	cs, err := kubernetes.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for _, n := range []string{"worker-1", "worker-2"} {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	dyn, err := dynamic.NewForConfig(cp.Config())
	if err != nil {
		t.Fatal(err)
	}
	disk := t.TempDir()
	collector := &diagnose.Collector{Node: "worker-1", DiskPaths: []string{disk},
		Checks: []health.Check{&health.Memory{}, &health.Disk{Paths: []string{disk}}}}
	responder := &diagnose.Responder{Client: dyn, Node: "worker-1", Collect: collector.Collect}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- responder.Run(rctx) }()
	defer func() { stop(); <-done }()

	code, stdout, stderr := herd(t, "", "diagnose", "worker-1", "--kubeconfig", kc)
	if code != 0 {
		t.Fatalf("herd diagnose: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"Node worker-1", "HerdDiskPressure", "HerdMemoryPressure", disk, "Load", "Recent remediations", "Last evidence bundle"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, stdout)
		}
	}

	code, stdout, stderr = herd(t, "", "diagnose", "worker-1", "--kubeconfig", kc, "-o", "json")
	if code != 0 {
		t.Fatalf("herd diagnose -o json: exit %d: %s", code, stderr)
	}
	var r diagnose.Report
	if err := json.Unmarshal([]byte(stdout), &r); err != nil {
		t.Fatalf("-o json: %v\n%s", err, stdout)
	}
	if r.Node != "worker-1" || len(r.Disk) != 1 || r.Disk[0].Path != disk || len(r.Health) != 2 || r.Load == nil {
		t.Errorf("report: %+v", r)
	}

	code, _, stderr = herd(t, "", "diagnose", "nowhere", "--kubeconfig", kc)
	if code != exitFailure || !strings.Contains(stderr, "node nowhere not found") {
		t.Errorf("unknown node: exit %d, %q", code, stderr)
	}
	code, _, stderr = herd(t, "", "diagnose", "worker-2", "--kubeconfig", kc, "--timeout", "2s")
	if code != exitFailure || !strings.Contains(stderr, "is herd-agent running there?") {
		t.Errorf("node without an agent: exit %d, %q", code, stderr)
	}
	left, err := dyn.Resource(diagnose.GVR).Namespace(diagnose.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil || len(left.Items) != 0 {
		t.Errorf("requests left behind: %v, %v", left, err)
	}
	if code, _, _ := herd(t, "", "diagnose", "worker-1", "--kubeconfig", kc, "-o", "yaml"); code != exitUsage {
		t.Errorf("-o yaml: exit %d, want %d", code, exitUsage)
	}
}
