package loader

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// exampleFiles returns the example fleet's files, for tests to edit.
func exampleFiles(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := ReadDir("../../examples/fleet-repo")
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func diagStrings(err error) []string {
	var diags Diagnostics
	if !errors.As(err, &diags) {
		if err == nil {
			return nil
		}
		return []string{"not diagnostics: " + err.Error()}
	}
	var out []string
	for _, d := range diags {
		out = append(out, d.String())
	}
	return out
}

func TestExampleIsValid(t *testing.T) {
	res, err := LoadDir("../../examples/fleet-repo")
	if err != nil {
		t.Fatalf("example fleet: %v", err)
	}
	if diff := cmp.Diff([]string{"batch", "general", "system"}, res.PoolNames()); diff != "" {
		t.Errorf("pools (-want +got):\n%s", diff)
	}
	if len(res.Warnings) > 0 {
		t.Errorf("warnings: %v", res.Warnings)
	}
	g := res.Fleet.Pools["general"]
	if got := g.Selector.String(); got != "herd.dev/pool=general" {
		t.Errorf("general selector %q comes from the fleet-wide default", got)
	}
	if got := g.Rollout.MaxUnavailable.Resolve(8); got != 2 {
		t.Errorf("general maxUnavailable 25%% of 8 = %d, want 2", got)
	}
	if g.OS.Remote != "containeros" || res.Rendered["general"].Config.OS.Remote.URL != "https://ostree.example.com/containeros" {
		t.Errorf("general OS remote not resolved: %+v", res.Rendered["general"].Config.OS)
	}
}

// TestFleetAtRoot loads a fleet whose files all sit at the repository root.
func TestFleetAtRoot(t *testing.T) {
	files := map[string][]byte{
		"cue.mod/module.cue": []byte("module: \"example.com/flat\"\nlanguage: version: \"v0.17.0\"\n"),
		"fleet.cue": []byte(`package flat

import "herd.dev/schema"

pools: [Name=string]: schema.#NodePool
pools: workers: {
	selector: matchLabels: role: "worker"
	os: {ref: "os/stable", commit: "7a3283c6e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"}
}
`),
	}
	res, err := Load(files)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"workers"}, res.PoolNames()); diff != "" {
		t.Errorf("pools (-want +got):\n%s", diff)
	}
	if got := res.Fleet.Pools["workers"].Rollout; got.FailurePolicy != "halt" || got.MaxFailures != 1 || got.MaxUnavailable.Resolve(10) != 1 {
		t.Errorf("rollout defaults not applied: %+v", got)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0].Message, "not vendored") {
		t.Errorf("want a warning that the schema is not vendored, got %v", res.Warnings)
	}
}

func TestInvalidFleets(t *testing.T) {
	const commit = `"7a3283c6e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"`
	tests := []struct {
		name string
		edit func(map[string][]byte)
		want []string
	}{{
		name: "schema violations, all of them, in file order",
		edit: func(f map[string][]byte) {
			f["pools/bad.cue"] = []byte(`package fleet

pools: bad: {
	os: commit: "abc"
	selector: matchLabels: {"Bad Key": "x"}
	sysctl: {"bogus": "1"}
	files: [{path: "/etc/passwd", content: "x"}]
	kubelet: maxPodz: 3
}
`)
		},
		want: []string{
			`pools/bad.cue:4:14: pools.bad.os.commit: invalid value "abc": want a full OSTree commit checksum: 64 lower-case hex digits`,
			`pools/bad.cue:5:26: pools.bad.selector.matchLabels."Bad Key": invalid key "Bad Key": want a label key: an optional DNS subdomain prefix and '/', then a name of at most 63 characters`,
			`pools/bad.cue:6:11: pools.bad.sysctl.bogus: invalid key bogus: want a sysctl key: a dotted name under abi, fs, kernel, net, user or vm`,
			`pools/bad.cue:7:17: pools.bad.files.0.path: invalid value "/etc/passwd": outside the file allowlist: want a plain path below /etc/herd/files/, /etc/containerd/certs.d/, /etc/security/limits.d/, /etc/modules-load.d/, /etc/modprobe.d/, /etc/pki/ca-trust/source/anchors/`,
			`pools/bad.cue:8:11: pools.bad.kubelet.maxPodz: unknown field maxPodz (did you mean maxPods?)`,
		},
	}, {
		name: "rules beyond the schema",
		edit: func(f map[string][]byte) {
			f["pools/odd.cue"] = []byte(`package fleet

pools: odd: {
	os: commit: ` + commit + `
	os: remote: "nope"
	sysctl: "kernel.core_pattern": "|/bin/sh -c evil"
	kernelArgs: ["ostree=/boot/x"]
	rollout: maxUnavailable: "150%"
	files: [
		{path: "/etc/herd/files/a", content: "1"},
		{path: "/etc/herd/files/a", content: "2"},
	]
	kubelet: {imageGCHighThresholdPercent: 50, imageGCLowThresholdPercent: 60}
}
`)
		},
		want: []string{
			`pools/odd.cue:5:14: pools.odd.os.remote: unknown OSTree remote "nope": declare it under ` + "`remotes`" + ` (known: containeros)`,
			`pools/odd.cue:6:33: pools.odd.sysctl."kernel.core_pattern": sysctl kernel.core_pattern is not allowed: it can name a program the kernel runs on every crash`,
			`pools/odd.cue:7:15: pools.odd.kernelArgs.0: kernel argument "ostree=/boot/x" is not allowed: it is managed by OSTree: it names the deployment to boot`,
			`pools/odd.cue:8:27: pools.odd.rollout.maxUnavailable: maxUnavailable 150% must be between 1% and 100%`,
			`pools/odd.cue:11:10: pools.odd.files.1.path: file /etc/herd/files/a is already written by files[0]`,
			`pools/odd.cue:13:73: pools.odd.kubelet.imageGCLowThresholdPercent: imageGCLowThresholdPercent (60) must be below imageGCHighThresholdPercent (50)`,
		},
	}, {
		name: "remediation",
		edit: func(f map[string][]byte) {
			f["pools/sick.cue"] = []byte(`package fleet

pools: sick: {
	os: commit: ` + commit + `
	remediation: {
		maxUnhealthy: "0%"
		quarantine: window: "0s"
		problems: HerdKubeletUnhealthy: {
			duration: "0m"
			rungs: [{action: "replace"}, {action: "reboot", timeout: "0s"}]
		}
	}
}
`)
		},
		want: []string{
			`pools/sick.cue:6:17: pools.sick.remediation.maxUnhealthy: maxUnhealthy 0% must be between 1% and 100%`,
			`pools/sick.cue:7:23: pools.sick.remediation.quarantine.window: invalid duration "0s": want a positive duration such as "5m"`,
			`pools/sick.cue:9:14: pools.sick.remediation.problems.HerdKubeletUnhealthy.duration: invalid duration "0m": want a positive duration such as "5m"`,
			`pools/sick.cue:10:21: pools.sick.remediation.problems.HerdKubeletUnhealthy.rungs.0.action: replace must be the last rung: nothing can follow a replacement`,
			`pools/sick.cue:10:61: pools.sick.remediation.problems.HerdKubeletUnhealthy.rungs.1.timeout: invalid duration "0s": want a positive duration such as "5m"`,
		},
	}, {
		name: "remediation: unknown problem and action",
		edit: func(f map[string][]byte) {
			f["pools/sick.cue"] = []byte(`package fleet

pools: sick: {
	os: commit: ` + commit + `
	remediation: problems: {
		KernelPanic: {duration: "1m", rungs: []}
		HerdOSDrift: {duration: "1m", rungs: [{action: "rm -rf /"}]}
	}
}
`)
		},
		want: []string{
			`pools/sick.cue:6:17: pools.sick.remediation.problems.KernelPanic: unknown problem KernelPanic: want HerdRuntimeUnhealthy, HerdPLEGUnhealthy, HerdKubeletUnhealthy, NotReady, HerdLeftoverSandboxes, HerdDiskPressure, HerdMemoryPressure, HerdOSDrift`,
			`pools/sick.cue:7:50: pools.sick.remediation.problems.HerdOSDrift.rungs.0.action: "rm -rf /" is not one of "clean-sandboxes", "reboot", "replace", "restart-containerd", "restart-kubelet"`,
		},
	}, {
		name: "syntax error",
		edit: func(f map[string][]byte) {
			f["pools/general.cue"] = []byte("package fleet\n\npools: general: {\n")
		},
		want: []string{`pools/general.cue:3:19: expected '}', found 'EOF'`},
	}, {
		name: "not a CUE module",
		edit: func(f map[string][]byte) { delete(f, "cue.mod/module.cue") },
		want: []string{"cue.mod/module.cue: not found: the fleet root is not a CUE module (create one with `cue mod init`)"},
	}, {
		name: "no package at the root",
		edit: func(f map[string][]byte) { delete(f, "fleet.cue") },
		want: []string{"no CUE files at the fleet root: the root package declares `pools: [Name=string]: schema.#NodePool`"},
	}, {
		name: "missing required fields",
		edit: func(f map[string][]byte) {
			f["pools/empty.cue"] = []byte("package fleet\n\npools: empty: {}\n")
		},
		want: []string{
			`pools/empty.cue:3:8: pools.empty.os.commit: field is required but not present`,
		},
	}, {
		name: "deeply nested",
		edit: func(f map[string][]byte) {
			f["pools/deep.cue"] = []byte("package fleet\n\nx: " + strings.Repeat("[", 500) + strings.Repeat("]", 500) + "\n")
		},
		want: []string{`pools/deep.cue:3:103: nested more than 100 levels deep (braces, brackets, parentheses and chained labels) (budget max-depth)`},
	}, {
		// A chain of labels nests as deep as braces do; counting brackets
		// alone let it through to overflow the stack.
		name: "long label chain",
		edit: func(f map[string][]byte) {
			f["pools/chain.cue"] = []byte("package fleet\n\n_d: " + strings.Repeat("a: ", 200000) + "1\n")
		},
		want: []string{`pools/chain.cue:3:303: nested more than 100 levels deep (braces, brackets, parentheses and chained labels) (budget max-depth)`},
	}, {
		name: "a file of another package",
		edit: func(f map[string][]byte) {
			f["pools/other.cue"] = []byte("package other\n\npools: general: paused: true\n")
		},
		want: []string{`pools/other.cue:1:1: declares package other, not the fleet's package fleet, and no fleet file imports it: herd would ignore it (declare ` + "`package fleet`" + `, or move it out of the fleet)`},
	}, {
		name: "a top-level typo",
		edit: func(f map[string][]byte) {
			f["pools/typo.cue"] = []byte("package fleet\n\nmaintenence: freeze: true\n")
		},
		want: []string{`pools/typo.cue:3:1: maintenence: unknown top-level field maintenence: a fleet declares remotes, pools, maintenance (did you mean maintenance?); helpers go in hidden fields (_name) or definitions (#Name)`},
	}, {
		name: "an empty fleet",
		edit: func(f map[string][]byte) {
			for name := range f {
				if strings.HasPrefix(name, "pools/") {
					delete(f, name)
				}
			}
			f["pools/none.cue"] = []byte("package fleet\n\npools: {}\n")
		},
		want: []string{`pools/none.cue:3:8: pools: the fleet declares no pools: an empty fleet would leave every node unmanaged`},
	}, {
		name: "too many instances",
		edit: func(f map[string][]byte) {
			for i := range 101 {
				f[fmt.Sprintf("pools/d%03d/x.cue", i)] = []byte("package fleet\n")
			}
		},
		want: []string{`the fleet's package fleet spans 103 directories, each a CUE instance; the limit is 100 (budget max-instances)`},
	}, {
		name: "a string over the limit",
		edit: func(f map[string][]byte) {
			f["pools/long.cue"] = []byte("package fleet\n\n_s: \"" + strings.Repeat("x", 1024) + "\"\n_t: _s+_s+_s+_s+_s+_s+_s+_s\n_u: _t+_t+_t+_t+_t+_t+_t+_t\n_v: _u+_u+_u+_u+_u\npools: general: rollout: resume: _v\n")
		},
		want: []string{"pools/long.cue:6:5: pools.general.rollout.resume: a string of 327680 bytes; the limit is 262144 (budget max-string)"},
	}, {
		name: "too large",
		edit: func(f map[string][]byte) {
			f["pools/huge.cue"] = []byte("package fleet\n\n_x: \"" + strings.Repeat("a", MaxFileSize) + "\"\n")
		},
		want: []string{`pools/huge.cue: file is 1048598 bytes; the limit is 1048576 (budget max-file-size)`},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := maps.Clone(exampleFiles(t))
			tt.edit(files)
			_, err := Load(files)
			if diff := cmp.Diff(tt.want, diagStrings(err)); diff != "" {
				t.Errorf("diagnostics (-want +got):\n%s", diff)
			}
		})
	}
}

func TestOverlappingSelectors(t *testing.T) {
	const pool = `{os: {ref: "os/stable", commit: "7a3283c6e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a"}, selector: matchLabels: %s}`
	files := map[string][]byte{
		"cue.mod/module.cue": []byte("module: \"example.com/flat\"\nlanguage: version: \"v0.17.0\"\n"),
		"fleet.cue": []byte(`package flat

import "herd.dev/schema"

pools: [Name=string]: schema.#NodePool
pools: workers: ` + fmt.Sprintf(pool, `{role: "worker"}`) + `
pools: gpu:     ` + fmt.Sprintf(pool, `{role: "worker", gpu: "true"}`) + `
pools: infra:   ` + fmt.Sprintf(pool, `{role: "infra"}`) + `
pools: infra2:  ` + fmt.Sprintf(pool, `{role: "infra"}`) + `
`),
	}
	_, err := Load(files)
	want := []string{
		"fleet.cue:7:118: pools.gpu.selector: every node that matches this selector (gpu=true,role=worker) also matches pool workers (role=worker); make the selectors disjoint",
		"fleet.cue:9:118: pools.infra2.selector: same selector as pool infra (role=infra): every node would match both",
	}
	if diff := cmp.Diff(want, diagStrings(err)); diff != "" {
		t.Errorf("diagnostics (-want +got):\n%s", diff)
	}
}

// A symbolic link named *.cue is an error, not silently skipped.
func TestSymlinkedFile(t *testing.T) {
	dir := t.TempDir()
	for name, src := range exampleFiles(t) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, src, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("general.cue", filepath.Join(dir, "pools", "link.cue")); err != nil {
		t.Fatal(err)
	}
	_, err := LoadDir(dir)
	if err == nil || !strings.Contains(err.Error(), "pools/link.cue: is a symbolic link") {
		t.Fatalf("LoadDir = %v, want a symbolic link error", err)
	}
}
