package loader

import (
	"errors"
	"maps"
	"testing"
)

// FuzzLoad feeds arbitrary CUE to the loader and validator as one more pool
// file of the example fleet. Whatever the input, Load must not panic, and a
// failure must come as Diagnostics a user can read.
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
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		files := maps.Clone(base)
		files["pools/fuzz.cue"] = src
		res, err := Load(files)
		var diags Diagnostics
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
