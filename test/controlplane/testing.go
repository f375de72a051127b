package controlplane

import (
	"os"
	"testing"
)

// SkipEnv names the environment variable that, set to 1, makes StartTest
// skip the calling test instead of starting (and, on first use, building) the
// control plane. Without it a control plane that cannot be built or started
// fails the test.
const SkipEnv = "HERD_SKIP_CONTROLPLANE"

// StartTest starts a control plane for t and stops it when t ends. If t
// failed by then, the tail of each process's log is logged first. It skips t
// if HERD_SKIP_CONTROLPLANE=1 and fails t if the control plane cannot be
// started.
func StartTest(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	if os.Getenv(SkipEnv) == "1" {
		t.Skipf("%s=1: not starting a Kubernetes control plane", SkipEnv)
	}
	cp, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control plane logs (run dir %s):\n%s", cp.Dir(), cp.TailLogs(40))
		}
		if err := cp.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	return cp
}
