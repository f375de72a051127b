package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"herd.dev/herd/planner/report"
	"herd.dev/herd/test/fleettest"
)

// TestPlanComment5000 plans a pull request for a 5,000-node NodeList: a
// pool-wide OS and kubelet change, a sysctl change, NotReady nodes, nodes
// that joined without a report, nodes of no pool. The comment starts with
// the marker and the summary line, groups nodes with the same change,
// stays under GitHub's limit, and says where the full plan is.
func TestPlanComment5000(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "fleet")
	fleettest.NewRepo(t, repo)
	before := fleettest.Load(t, repo)
	fleettest.Edit(t, repo, "pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	fleettest.Edit(t, repo, "pools/general.cue", `maxPods: 110`, `maxPods: 200`)
	fleettest.Edit(t, repo, "pools/batch.cue", `"262144"`, `"524288"`)
	fleettest.Commit(t, repo, "general: 2026.11.0, maxPods 200; batch: bigger map count")

	zones := []string{"zone-a", "zone-b", "zone-c"}
	var nodes []fleettest.Node
	for i := range 5000 {
		pool := []string{"general", "general", "general", "batch", "system"}[i%5]
		n := fleettest.Node{Name: fmt.Sprintf("%s-%04d.eu-west-1.compute.internal", pool, i), Pool: pool, Zone: zones[i%3], Annotations: fleettest.AtTarget(before, pool)}
		switch {
		case i%97 == 0:
			n.Annotations = nil // joined, no report yet
		case i%89 == 0:
			n.NotReady = true
		case i%499 == 0:
			n.Pool = "" // no pool
		}
		nodes = append(nodes, n)
	}
	nodesFile := filepath.Join(t.TempDir(), "nodes.json")
	if err := os.WriteFile(nodesFile, fleettest.NodeList(t, nodes), 0o644); err != nil {
		t.Fatal(err)
	}

	const url = "https://github.com/acme/fleet/actions/runs/1/artifacts/2"
	code, out, errOut := herd(t, "", "plan", repo, "--nodes", nodesFile, "--output", "markdown", "--full-plan-url", url, "--detailed-exitcode")
	if code != 2 {
		t.Fatalf("exit %d (want 2: changes), stderr %s", code, errOut)
	}
	t.Logf("%d characters for 5,000 nodes", len(out))
	if len(out) >= report.MaxCommentChars {
		t.Fatalf("comment of %d characters, want < %d", len(out), report.MaxCommentChars)
	}
	lines := strings.Split(out, "\n")
	if lines[0] != report.Marker {
		t.Fatalf("first line %q, want the marker", lines[0])
	}
	if !strings.HasPrefix(lines[3], "**Plan: ") || !strings.Contains(lines[3], " nodes to change (") || !strings.Contains(lines[3], "unchanged") {
		t.Fatalf("summary line %q", lines[3])
	}
	if !strings.Contains(out, "]("+url+")") {
		t.Fatal("the comment left details out without pointing to the full plan")
	}
	// Grouped: a few rows per pool, not one per node.
	rows := 0
	for _, l := range lines {
		if strings.HasPrefix(l, "| ") && !strings.HasPrefix(l, "| pool") && !strings.HasPrefix(l, "| batches") && !strings.Contains(l, "|---") {
			rows++
		}
	}
	if rows > 40 {
		t.Fatalf("%d table rows for 5,000 nodes: not grouped", rows)
	}

	// Without a limit the names are there, folded in <details>; the counts
	// add up to the plan's.
	_, full, _ := herd(t, "", "plan", repo, "--nodes", nodesFile, "--output", "markdown", "--max-chars", "-1")
	if !strings.Contains(full, "<details><summary>") || strings.Contains(full, "left out") {
		t.Fatal("the unlimited comment has no <details> or leaves something out")
	}
	if !strings.Contains(full, "general-0001.eu-west-1.compute.internal") {
		t.Fatal("the unlimited comment lacks node names")
	}
}

// TestExampleWorkflow: the example fleet's workflow pins Herd, branches on
// --detailed-exitcode, links the full plan, and finds its own comment by
// the marker herd plan writes.
func TestExampleWorkflow(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(fleettest.RepoRoot(t), "examples/fleet-repo/.github/workflows/fleet.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var wf struct {
		Env  map[string]string `json:"env"`
		Jobs map[string]struct {
			Steps []struct {
				Name string `json:"name"`
				Run  string `json:"run"`
			} `json:"steps"`
		} `json:"jobs"`
	}
	if err := yaml.Unmarshal(b, &wf); err != nil {
		t.Fatal(err)
	}
	if v := wf.Env["HERD_VERSION"]; !strings.HasPrefix(v, "v") || v == "latest" {
		t.Fatalf("HERD_VERSION %q is not a pinned version", v)
	}
	var runs strings.Builder
	for _, s := range wf.Jobs["check"].Steps {
		runs.WriteString(s.Run + "\n")
	}
	all := runs.String()
	for _, want := range []string{`herd/cmd/herd@${HERD_VERSION}`, "--detailed-exitcode", "--full-plan-url", `startswith("` + report.Marker + `")`, "--method PATCH"} {
		if !strings.Contains(all, want) {
			t.Errorf("the workflow has no %q", want)
		}
	}
	if strings.Contains(all, "@latest") || strings.Contains(all, "--edit-last") {
		t.Error("the workflow installs @latest or edits the last comment, whoever wrote it")
	}
}
