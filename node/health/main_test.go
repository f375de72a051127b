package health_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"

	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/kube"
	"herd.dev/herd/test/controlplane"
)

// The integration tests use a real kube-apiserver (test/controlplane), a
// real containerd (test/containerd), real HTTP servers, a real tmpfs and
// the kernel's PSI. They need root, as CI runs them.
func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "FAIL: node/health tests need root (tmpfs mounts, containerd)")
		os.Exit(1)
	}
	code := m.Run()
	if cp != nil {
		if err := cp.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop control plane:", err)
		}
	}
	os.Exit(code)
}

var (
	cpOnce sync.Once
	cp     *controlplane.ControlPlane
	cpErr  error
)

// client returns an admin client of the package's control plane, started
// on first use.
func client(t testing.TB) kubernetes.Interface {
	t.Helper()
	if os.Getenv(controlplane.SkipEnv) == "1" {
		t.Skipf("%s=1: not starting a Kubernetes control plane", controlplane.SkipEnv)
	}
	cpOnce.Do(func() {
		cp, cpErr = controlplane.Start(context.Background(), controlplane.Options{})
	})
	if cpErr != nil {
		t.Fatalf("start control plane: %v", cpErr)
	}
	cfg := cp.Config()
	// No client-side rate limit: benchmark rounds come faster than an
	// agent's one per 10 s.
	cfg.QPS, cfg.Burst = 1000, 1000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// lean returns the agent's own client (node/kube) of the package's control
// plane, as admin; client starts the control plane first.
func lean(t testing.TB) *kube.Client {
	t.Helper()
	client(t)
	cfg := cp.Config()
	cfg.QPS, cfg.Burst = 1000, 1000
	c, err := kube.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
