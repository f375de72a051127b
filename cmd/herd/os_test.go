package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/test/fleettest"
)

const osRef = "containeros/x86_64/stable"

// buildExamples builds examples/os/base (2026.10.1) and examples/os/node
// (2026.11.0) with herd os build into a new repository.
func buildExamples(t *testing.T) (repo, v1, v2 string) {
	t.Helper()
	root := fleettest.RepoRoot(t)
	repo = filepath.Join(t.TempDir(), "repo")
	base, node := filepath.Join(t.TempDir(), "base"), filepath.Join(t.TempDir(), "node")
	if err := osfixture.CopyContext(filepath.Join(root, "examples/os/base"), base); err != nil {
		t.Fatal(err)
	}
	if err := osfixture.CopyContext(filepath.Join(root, "examples/os/node"), node); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(node, "images"), 0o755)
	if err := osfixture.WriteOCIArchive(filepath.Join(node, "images/pause.tar"), "registry.k8s.io/pause:3.10", "pause"); err != nil {
		t.Fatal(err)
	}
	build := func(dir, version string) string {
		code, out, errOut := herd(t, "", "os", "build", "-f", filepath.Join(dir, "Buildfile"), "--repo", repo, "--ref", osRef, "--build-arg", "VERSION="+version)
		if code != 0 {
			t.Fatalf("herd os build %s: exit %d: %s", dir, code, errOut)
		}
		return strings.TrimSpace(out)
	}
	return repo, build(base, "2026.10.1"), build(node, "2026.11.0")
}

func TestOSBuildAndDiff(t *testing.T) {
	repo, v1, v2 := buildExamples(t)
	code, out, errOut := herd(t, "", "os", "diff", v1, osRef, "--repo", repo)
	if code != 0 {
		t.Fatalf("herd os diff: exit %d: %s", code, errOut)
	}
	t.Logf("%s", out)
	for _, want := range []string{
		"OS " + v1[:12] + " -> " + v2[:12] + ": ",
		"version 2026.10.1 -> 2026.11.0",
		"  base: (none) -> " + v1[:12],
		`  label description: "Herd example base OS" -> "Herd example node OS"`,
		"  A /usr/etc/motd (24)",
		"  A /usr/libexec/herd/node-health (",
		"  M /usr/lib/os-release (",
		"  A /usr/lib/systemd/system/herd-preload-images.service (",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("diff lacks %q", want)
		}
	}
	code, out, _ = herd(t, "", "os", "diff", v1, v2, "--repo", repo, "-o", "json")
	var d struct {
		Added, Modified int
		To              struct{ Version string }
	}
	if err := json.Unmarshal([]byte(out), &d); code != 0 || err != nil || d.Added == 0 || d.Modified == 0 || d.To.Version != "2026.11.0" {
		t.Errorf("json diff: exit %d, %v, %+v", code, err, d)
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"os", "diff", v1, "nope/ref", "--repo", repo}, 1, "nope/ref is not in the repository"},
		{[]string{"os", "build", "-f", "Buildfile"}, 2, "-f, --repo and --ref are required"},
		{[]string{"os", "build", "-f", "x", "--repo", repo, "--ref", "r", "--build-arg", "novalue"}, 2, `--build-arg "novalue": want NAME=VALUE`},
		{[]string{"os", "build", "-f", filepath.Join(t.TempDir(), "none"), "--repo", repo, "--ref", "r"}, 1, "read Buildfile"},
	} {
		code, _, errOut := herd(t, "", tc.args...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}

// herd plan --os-repo adds, per pool, what the OS change changes in the image.
func TestPlanShowsOSDiff(t *testing.T) {
	repo, v1, v2 := buildExamples(t)
	fleet := filepath.Join(t.TempDir(), "fleet")
	fleettest.NewRepo(t, fleet)
	fleettest.Edit(t, fleet, "fleet.cue", "1fff1fd9a3c54e8c1b3d0e7f6a2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b", v1)
	fleettest.Edit(t, fleet, "fleet.cue", "7a3283c6e1d04f5a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a", v2)
	fleettest.Commit(t, fleet, "the releases built by herd os build")
	before := fleettest.Load(t, fleet)
	fleettest.Edit(t, fleet, "pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	fleettest.Commit(t, fleet, "general: 2026.11.0")
	var nodes []fleettest.Node
	for _, name := range []string{"general-1", "general-2"} {
		nodes = append(nodes, fleettest.Node{Name: name, Pool: "general", Zone: "a", Annotations: fleettest.AtTarget(before, "general")})
	}
	nodesFile := filepath.Join(t.TempDir(), "nodes.json")
	os.WriteFile(nodesFile, fleettest.NodeList(t, nodes), 0o644)

	code, out, errOut := herd(t, "", "plan", fleet, "--nodes", nodesFile, "--os-repo", repo)
	if code != 0 || errOut != "" {
		t.Fatalf("exit %d, stderr %s", code, errOut)
	}
	want := "OS changes:\n  general: 2 nodes " + v1[:12] + " -> " + v2[:12] + ": "
	if !strings.Contains(out, want) || !strings.Contains(out, "version 2026.10.1 -> 2026.11.0") {
		t.Errorf("plan output lacks %q and the version change:\n%s", want, out)
	}
	code, out, _ = herd(t, "", "plan", fleet, "--nodes", nodesFile, "--os-repo", repo, "-o", "markdown")
	if code != 0 || !strings.Contains(out, "### OS changes") {
		t.Errorf("markdown plan lacks the OS changes: exit %d\n%s", code, out)
	}
	// An unreachable repository only warns.
	code, _, errOut = herd(t, "", "plan", fleet, "--nodes", nodesFile, "--os-repo", filepath.Join(t.TempDir(), "none"))
	if code != 0 || !strings.Contains(errOut, "warning: no OS diff") {
		t.Errorf("unreachable repo: exit %d, stderr %q", code, errOut)
	}
}
