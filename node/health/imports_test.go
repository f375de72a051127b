package health_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestAgentImports: the agent's health, CRI, diagnose and repair packages, built as
// the agent is (-tags grpcnotrace), link no CUE, CEL, kustomize or
// controller-runtime, no client-go typed clientset or informer factory
// (node/kube is the agent's client), and no text/template: grpc's default tracing pulls in
// html/template, whose reflection keeps every method of the binary and
// costs the agent 18 MB of binary (docs/benchmarks.md).
func TestAgentImports(t *testing.T) {
	pkgs := []string{"herd.dev/herd/node", "herd.dev/herd/node/health", "herd.dev/herd/node/cri", "herd.dev/herd/node/diagnose", "herd.dev/herd/node/remedy", "herd.dev/herd/node/healer"}
	out, err := exec.Command("go", append([]string{"list", "-tags", "grpcnotrace", "-deps"}, pkgs...)...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{"cuelang.org/", "github.com/google/cel-go", "sigs.k8s.io/kustomize", "sigs.k8s.io/controller-runtime", "text/template", "html/template", "k8s.io/client-go/kubernetes", "k8s.io/client-go/informers"}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("the agent's packages link %s", dep)
			}
		}
	}
}
