package sandbox

import (
	"context"
	"testing"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/test/fleettest"
)

// BenchmarkLoadDir is what the budget costs `herd validate` and the
// controller: the example fleet evaluated in a child process, and in
// process for comparison.
func BenchmarkLoadDir(b *testing.B) {
	dir := b.TempDir()
	fleettest.CopyExample(b, dir)
	b.Run("child", func(b *testing.B) {
		for b.Loop() {
			if _, err := LoadDir(context.Background(), dir, DefaultBudget); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("in-process", func(b *testing.B) {
		for b.Loop() {
			if _, err := loader.LoadDir(dir); err != nil {
				b.Fatal(err)
			}
		}
	})
}
