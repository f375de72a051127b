package sandbox

import (
	"context"
	"errors"
	"maps"
	"os"
	"testing"
	"time"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/test/fleettest"
	"herd.dev/herd/test/hostile"
)

// FuzzLoad feeds arbitrary CUE to the loader and validator as one more pool
// file of the example fleet, each input evaluated in a child process under
// fuzzBudget, as the controller evaluates a commit. Whatever the input, the
// evaluation must end within the budget with a result or Diagnostics a user
// can read: a hang or a crash fails with the input that caused it.
func FuzzLoad(f *testing.F) {
	base := exampleFiles(f)
	for _, name := range []string{"pools/general.cue", "pools/batch.cue", "pools/system.cue", "fleet.cue"} {
		f.Add(base[name])
	}
	for _, seed := range []string{
		"package fleet\npools: x: {",
		"package fleet\npools: x: selector: matchLabels: {}\n",
		"package fleet\npools: \"X Y\": {}\n",
		"package fleet\npools: general: files: [{path: \"/etc/herd/files/a\", content: \"x\", mode: 4095}]\n",
		"package fleet\npools: general: rollout: maxUnavailable: \"0%\"\n",
		"package other\nx: 1\n",
		"package fleet\nimport \"nope.example.com/x\"\n",
		"package fleet\npools: general: sysctl: \"vm.x\": \"a\\nb\"\n",
		"package fleet\nx: [[[[[[[[[[1]]]]]]]]]]\n",
		"package fleet\n_x: \"\\(\"\\(\"\\(1)\")\")\"\n",
	} {
		f.Add([]byte(seed))
	}
	// Every hostile case that is one pool file.
	for _, c := range hostile.Cases {
		dir := f.TempDir()
		fleettest.CopyExample(f, dir)
		c.Edit(f, dir)
		if src, err := os.ReadFile(dir + "/" + hostile.File); err == nil && len(src) < 1<<16 {
			f.Add(src)
		}
	}
	b := fuzzBudget
	f.Fuzz(func(t *testing.T, src []byte) {
		files := maps.Clone(base)
		files["pools/fuzz.cue"] = src
		res, err := Load(context.Background(), files, b)
		var diags loader.Diagnostics
		switch {
		case err == nil:
			for name, rd := range res.Rendered {
				if rd == nil || rd.Hash() == "" {
					t.Fatalf("pool %s has no render", name)
				}
			}
		case !errors.As(err, &diags):
			t.Fatalf("error is not Diagnostics: %v", err)
		case len(diags) == 0:
			t.Fatalf("empty Diagnostics")
		}
	})
}

// fuzzBudget ends every evaluation within 8 s of wall-clock time: the fuzz
// engine takes an input still running after 10 s for a hang of the code
// under test, which is what it must report.
var fuzzBudget = Budget{Budget: loader.DefaultBudget, Memory: 256 << 20, CPU: 2 * time.Second, Timeout: 8 * time.Second}

func exampleFiles(t testing.TB) map[string][]byte {
	t.Helper()
	dir := t.TempDir()
	fleettest.CopyExample(t, dir)
	files, err := loader.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return files
}
