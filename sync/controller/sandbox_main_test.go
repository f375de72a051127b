package controller

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/schema/sandbox"
	"herd.dev/herd/sync/source"
	"herd.dev/herd/test/fleettest"
	"herd.dev/herd/test/hostile"
)

// TestMain lets this test binary evaluate fleets in a child process of
// itself, as the herd binary does.
func TestMain(m *testing.M) {
	sandbox.Main()
	os.Exit(m.Run())
}

// The controller's evaluator marks an over-budget revision for the source
// (BudgetExceeded) and hands the reconciler the result the source's
// validation computed, without a second evaluation.
func TestEvaluator(t *testing.T) {
	e := &evaluator{budget: sandbox.Budget{Memory: 256 << 20, CPU: 2 * time.Second, Timeout: 30 * time.Second}}
	over := hostile.Fleet(t, hostile.Cases[1]) // a long label chain
	err := e.validate(context.Background(), over)
	if !errors.Is(err, source.ErrBudgetExceeded) || !strings.Contains(err.Error(), "budget max-depth") {
		t.Fatalf("validate(over budget) = %v, want ErrBudgetExceeded naming max-depth", err)
	}
	invalid := hostile.Fleet(t, hostile.Cases[6]) // another package
	if err := e.validate(context.Background(), invalid); err == nil || errors.Is(err, source.ErrBudgetExceeded) {
		t.Fatalf("validate(invalid) = %v, want a plain validation error", err)
	}
	good := t.TempDir()
	fleettest.CopyExample(t, good)
	if err := e.validate(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	first, _ := e.load(context.Background(), good)
	again, err := e.load(context.Background(), good)
	if err != nil || again != first {
		t.Errorf("load after validate evaluated again: %p, %p, %v", first, again, err)
	}
	// The history walk's first revision is the validated one: no second
	// evaluation either; other files are evaluated.
	files, err := loader.ReadDir(good)
	if err != nil {
		t.Fatal(err)
	}
	if fromFiles, err := e.loadFiles(context.Background(), files); err != nil || fromFiles != first {
		t.Errorf("loadFiles of the validated files evaluated again: %p, %v", fromFiles, err)
	}
	files["pools/extra.cue"] = []byte("package fleet\n")
	if other, err := e.loadFiles(context.Background(), files); err != nil || other == first {
		t.Errorf("loadFiles of other files returned the cached result: %v", err)
	}
}
