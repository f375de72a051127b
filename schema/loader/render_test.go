package loader

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"strings"
	"testing"

	"herd.dev/herd/schema"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

func loadFiles(t testing.TB, files map[string][]byte) *Result {
	t.Helper()
	res, err := Load(files)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestHashIgnoresLayout: the config hash does not depend on field order, map
// order or whitespace in the CUE source, nor on the rollout policy; it
// changes with anything a node applies.
func TestHashIgnoresLayout(t *testing.T) {
	base := exampleFiles(t)
	want := loadFiles(t, base).Hash("batch")

	same := map[string]string{
		"fields, maps and whitespace reordered": `package fleet
pools: batch: {
	rollout: {maxFailures: 2, maxUnavailable: "50%"}
	files: [{content: "*  soft  nofile  1048576\n*  hard  nofile  1048576\n", path: "/etc/security/limits.d/50-batch.conf"}]
	sysctl: {"fs.inotify.max_user_watches": "1048576",    "vm.max_map_count": "262144"}
	containerd: {discardUnpackedLayers: true, maxConcurrentDownloads: 8}
	kubelet: {imageGCLowThresholdPercent: 70, imageGCHighThresholdPercent: 85, maxPods: 250}
	os: commit: _releases["2026.10.1"]
}
`,
		"rollout policy changed": strings.Replace(string(base["pools/batch.cue"]), `maxUnavailable: "50%"`, `maxUnavailable: 1, canary: 1`, 1),
	}
	for name, src := range same {
		t.Run(name, func(t *testing.T) {
			files := maps.Clone(base)
			files["pools/batch.cue"] = []byte(src)
			if got := loadFiles(t, files).Hash("batch"); got != want {
				t.Errorf("hash %s, want %s", got, want)
			}
		})
	}

	differ := map[string][2]string{
		"sysctl value":    {`"vm.max_map_count":            "262144"`, `"vm.max_map_count": "262145"`},
		"file mode":       {`content: "*  soft`, `mode: 0o600, content: "*  soft`},
		"kubelet field":   {`maxPods:                     250`, `maxPods: 251`},
		"containerd":      {`maxConcurrentDownloads: 8`, `maxConcurrentDownloads: 9`},
		"os commit":       {`_releases["2026.10.1"]`, `_releases["2026.11.0"]`},
		"kernel argument": {`os: commit:`, `kernelArgs: ["quiet"], os: commit:`},
	}
	for name, edit := range differ {
		t.Run(name, func(t *testing.T) {
			files := maps.Clone(base)
			src := string(files["pools/batch.cue"])
			if !strings.Contains(src, edit[0]) {
				t.Fatalf("pools/batch.cue has no %q", edit[0])
			}
			files["pools/batch.cue"] = []byte(strings.Replace(src, edit[0], edit[1], 1))
			if got := loadFiles(t, files).Hash("batch"); got == want {
				t.Errorf("hash unchanged after editing %s", name)
			}
		})
	}
}

// TestRenderGolden pins the files each example pool writes on its nodes.
func TestRenderGolden(t *testing.T) {
	res := loadFiles(t, exampleFiles(t))
	var b strings.Builder
	for _, name := range res.PoolNames() {
		rd := res.Rendered[name]
		fmt.Fprintf(&b, "### pool %s\n", name)
		for _, f := range rd.Files {
			fmt.Fprintf(&b, "--- %s (mode %#o, %s)\n%s", f.Path, f.Mode, f.Apply, f.Content)
		}
	}
	golden := "testdata/render.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./schema -update)", err)
	}
	if diff := cmp.Diff(string(want), b.String()); diff != "" {
		t.Errorf("render (-golden +got):\n%s", diff)
	}
}

func TestDiffDisruption(t *testing.T) {
	base := loadFiles(t, exampleFiles(t))
	tests := []struct {
		edit [2]string
		want schema.Disruption
	}{
		{[2]string{`"vm.max_map_count":            "262144"`, `"vm.max_map_count": "1"`}, schema.DisruptionNone},
		{[2]string{`path:    "/etc/security/limits.d/50-batch.conf"`, `path: "/etc/security/limits.d/60-batch.conf"`}, schema.DisruptionNone},
		{[2]string{"path:    \"/etc/security/limits.d/50-batch.conf\"\n\t\tcontent: \"*  soft  nofile  1048576\\n*  hard  nofile  1048576\\n\"", `path: "/etc/modules-load.d/batch.conf", content: "br_netfilter\n"`}, schema.DisruptionReboot},
		{[2]string{`maxPods:                     250`, `maxPods: 200`}, schema.DisruptionRestartKubelet},
		{[2]string{`maxConcurrentDownloads: 8`, `maxConcurrentDownloads: 4`}, schema.DisruptionRestartContainerd},
		{[2]string{`discardUnpackedLayers:  true`, `discardUnpackedLayers: true, registries: "docker.io": mirrors: ["https://m.example.com"]`}, schema.DisruptionNone},
		{[2]string{`os: commit:`, `kernelArgs: ["quiet"], os: commit:`}, schema.DisruptionReboot},
		{[2]string{`_releases["2026.10.1"]`, `_releases["2026.11.0"]`}, schema.DisruptionReboot},
	}
	for _, tt := range tests {
		t.Run(tt.edit[1], func(t *testing.T) {
			files := exampleFiles(t)
			src := string(files["pools/batch.cue"])
			if !strings.Contains(src, tt.edit[0]) {
				t.Fatalf("pools/batch.cue has no %q", tt.edit[0])
			}
			files["pools/batch.cue"] = []byte(strings.Replace(src, tt.edit[0], tt.edit[1], 1))
			c := schema.Diff(base.Rendered["batch"], loadFiles(t, files).Rendered["batch"])
			if c.Disruption != tt.want {
				t.Errorf("disruption %s, want %s (fields %v)", c.Disruption, tt.want, c.Fields)
			}
			if len(c.Fields) == 0 {
				t.Errorf("no field changes reported")
			}
		})
	}
}

func TestAllowedPath(t *testing.T) {
	for path, want := range map[string]bool{
		"/etc/herd/files/motd":                    true,
		"/etc/herd/files/sub/dir/x.conf":          true,
		"/etc/containerd/certs.d/r.io/hosts.toml": true,
		"/etc/herd/files/":                        false,
		"/etc/herd/files/../../passwd":            false,
		"/etc/herd/files/./x":                     false,
		"/etc/herd/files//x":                      false,
		"/etc/herd/files/.hidden":                 false,
		"/etc/passwd":                             false,
		"/etc/herd/filesx/a":                      false,
		"etc/herd/files/a":                        false,
		"/etc/herd/files/a b":                     false,
	} {
		if _, got := schema.AllowedPath(path); got != want {
			t.Errorf("AllowedPath(%q) = %v, want %v", path, got, want)
		}
	}
}

func TestParseRendered(t *testing.T) {
	rd := loadFiles(t, exampleFiles(t)).Rendered["batch"]
	data, err := schema.MarshalRendered(rd)
	if err != nil {
		t.Fatal(err)
	}
	got, err := schema.ParseRendered(data, rd.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rd, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if _, err := schema.ParseRendered(data, strings.Repeat("0", 64)); err == nil {
		t.Error("a render that does not match its hash is accepted")
	}
	evil := *rd
	evil.Files = append(evil.Files[:len(evil.Files):len(evil.Files)], schema.RenderedFile{Path: "/etc/passwd", Content: "root::0:0::/:/bin/sh\n"})
	data, _ = schema.MarshalRendered(&evil)
	if _, err := schema.ParseRendered(data, evil.Hash()); err == nil || !strings.Contains(err.Error(), "allowlist") {
		t.Errorf("a render writing /etc/passwd is accepted: %v", err)
	}
}
