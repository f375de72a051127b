package loader

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"
)

// fleetOf100 is the example fleet with 100 pool files.
func fleetOf100(b *testing.B) map[string][]byte {
	files := exampleFiles(b)
	for i := range 100 {
		files[fmt.Sprintf("pools/p%03d.cue", i)] = []byte(fmt.Sprintf(`package fleet

pools: "p%03d": {
	os: commit: _releases["2026.11.0"]
	kubelet: {maxPods: %d, systemReserved: {cpu: "500m", memory: "1Gi"}, evictionHard: {"memory.available": "300Mi"}}
	sysctl: {"vm.max_map_count": "%d"}
	files: [{path: "/etc/herd/files/p%03d.conf", content: "pool %03d\n"}]
	rollout: {maxUnavailable: "10%%", canary: 1}
}
`, i, 100+i, 262144+i, i, i))
	}
	return files
}

// BenchmarkValidate100Pools evaluates, checks and renders a fleet of 100 pool
// files, from memory and from disk.
func BenchmarkValidate100Pools(b *testing.B) {
	files := fleetOf100(b)
	b.Run("memory", func(b *testing.B) {
		for b.Loop() {
			if _, err := Load(maps.Clone(files)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("disk", func(b *testing.B) {
		dir := b.TempDir()
		for name, src := range files {
			p := filepath.Join(dir, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				b.Fatal(err)
			}
			if err := os.WriteFile(p, src, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		for b.Loop() {
			if _, err := LoadDir(dir); err != nil {
				b.Fatal(err)
			}
		}
	})
}
