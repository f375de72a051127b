package sandbox

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/test/fleettest"
	"herd.dev/herd/test/hostile"
)

func TestMain(m *testing.M) {
	Main()
	os.Exit(m.Run())
}

// testBudget is small, so that hostile fleets hit it quickly.
var testBudget = Budget{Budget: loader.DefaultBudget, Memory: 256 << 20, CPU: 3 * time.Second, Timeout: 30 * time.Second}

// The child's result is the in-process one, hash for hash.
func TestLoadDirMatchesInProcess(t *testing.T) {
	dir := t.TempDir()
	fleettest.CopyExample(t, dir)
	want, err := loader.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadDir(context.Background(), dir, testBudget)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.PoolNames(), want.PoolNames()) {
		t.Fatalf("pools %v, want %v", got.PoolNames(), want.PoolNames())
	}
	for _, p := range want.PoolNames() {
		if got.Hash(p) != want.Hash(p) {
			t.Errorf("pool %s: hash %s, want %s", p, got.Hash(p), want.Hash(p))
		}
	}
	files, err := loader.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fromFiles, err := Load(context.Background(), files, testBudget)
	if err != nil || fromFiles.Hash("general") != want.Hash("general") {
		t.Errorf("Load(files) = %v, %v", fromFiles, err)
	}
}

// Every hostile commit is rejected with a message naming what is wrong
// (and the limit, when it is over budget): never a crash or a hang.
func TestHostileFleets(t *testing.T) {
	for _, c := range hostile.Cases {
		t.Run(c.Name, func(t *testing.T) {
			dir := hostile.Fleet(t, c)
			res, err := LoadDir(context.Background(), dir, testBudget)
			var diags loader.Diagnostics
			if !errors.As(err, &diags) {
				t.Fatalf("LoadDir = %v, %v; want diagnostics", res, err)
			}
			if !strings.Contains(diags.Error(), c.Message) {
				t.Errorf("diagnostics %q do not say %q", diags.Error(), c.Message)
			}
			limit, over := diags.OverBudget()
			switch {
			case len(c.Limits) == 0 && over:
				t.Errorf("rejected as over budget (%s), want invalid: %v", limit, diags)
			case len(c.Limits) > 0 && !slices.Contains(c.Limits, limit):
				t.Errorf("limit %q, want one of %v: %v", limit, c.Limits, diags)
			case over && !strings.Contains(diags.Error(), "budget "+string(limit)):
				t.Errorf("the message does not name the limit %s: %v", limit, diags)
			}
			t.Logf("%s", diags)
		})
	}
}

// Cancelling the context stops the child at once and returns ctx.Err().
func TestCancel(t *testing.T) {
	dir := hostile.Fleet(t, hostile.Cases[0]) // the nested comprehension
	ctx, cancel := context.WithCancel(context.Background())
	b := testBudget
	b.CPU, b.Timeout = time.Hour, time.Hour
	done := make(chan error, 1)
	go func() {
		_, err := LoadDir(ctx, dir, b)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("LoadDir after cancel = %v, want context.Canceled", err)
	}
}

// The wall-clock budget ends an evaluation that does not end by itself.
func TestTimeout(t *testing.T) {
	dir := hostile.Fleet(t, hostile.Cases[0])
	b := testBudget
	b.CPU, b.Memory, b.Timeout = time.Hour, 8<<30, 200*time.Millisecond
	_, err := LoadDir(context.Background(), dir, b)
	var diags loader.Diagnostics
	if !errors.As(err, &diags) {
		t.Fatalf("LoadDir = %v, want diagnostics", err)
	}
	if limit, _ := diags.OverBudget(); limit != loader.LimitTime {
		t.Errorf("limit %q, want %s: %v", limit, loader.LimitTime, diags)
	}
}
