package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// forbidden are packages the agent must not link: what makes the herd
// binary heavy (CUE, CEL, kustomize, controller-runtime and Flux's runtime
// on it), the controller's side of Herd, client-go's typed clientset and
// informer factory, which register every API group (node/kube is the
// agent's client), and text/template, whose reflection makes the linker
// keep every method of the binary (grpc links it unless built with
// grpcnotrace, as make build builds).
var forbidden = []string{
	"cuelang.org/",
	"github.com/google/cel-go",
	"cel.dev/",
	"sigs.k8s.io/kustomize/",
	"sigs.k8s.io/controller-runtime",
	"github.com/fluxcd/",
	"herd.dev/herd/sync/",
	"herd.dev/herd/planner",
	"herd.dev/herd/schema/loader",
	"herd.dev/herd/schema/healthcheck",
	"herd.dev/herd/node/sim",
	"k8s.io/client-go/kubernetes",
	"k8s.io/client-go/informers",
	"text/template",
	"html/template",
}

// The agent's dependency graph, as the go command computes it for the
// binary make build builds, has none of the forbidden packages.
func TestImports(t *testing.T) {
	out, err := exec.Command("go", "list", "-tags", "grpcnotrace", "-deps", "herd.dev/herd/cmd/herd-agent").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 100 {
		t.Fatalf("go list -deps listed %d packages: %q", len(deps), out)
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == strings.TrimSuffix(f, "/") || strings.HasPrefix(d, f) {
				t.Errorf("herd-agent links %s (forbidden: %s)", d, f)
			}
		}
	}
	t.Logf("herd-agent links %d packages", len(deps))
}

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{[]string{"--version"}, exitOK, "herd-agent dev\n", ""},
		{[]string{"-h"}, exitOK, "", "Usage: herd-agent --node NAME"},
		{[]string{"--no-such-flag"}, exitUsage, "", "flag provided but not defined: -no-such-flag"},
		{[]string{"extra"}, exitUsage, "", `unexpected arguments ["extra"]`},
		{[]string{}, exitUsage, "", "--node is required (or set NODE_NAME)"},
		{[]string{"--node", "n", "--log-level", "warn"}, exitUsage, "", `unknown log level "warn": want one of trace, debug, info, error`},
		{[]string{"--node", "n", "--log-encoding", "text"}, exitUsage, "", `unknown log encoding "text": want one of json, console`},
		{[]string{"--node", "n", "--kubeconfig", "/nonexistent/kubeconfig"}, exitFailure, "", `"msg":"the agent stopped"`},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			t.Setenv("NODE_NAME", "")
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tc.args, &stdout, &stderr)
			if code != tc.code || stdout.String() != tc.stdout && tc.stdout != "" || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, stdout.String(), stderr.String(), tc.code, tc.stdout, tc.stderr)
			}
		})
	}
}
