package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"herd.dev/herd/test/fleettest"
)

var update = flag.Bool("update", false, "rewrite golden files")

// herd runs the command line in-process and returns its exit status, stdout
// and stderr.
func herd(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, strings.NewReader(stdin), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/herd -update)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-golden +got):\n%s", name, diff)
	}
}

func TestValidate(t *testing.T) {
	example := filepath.Join(fleettest.RepoRoot(t), "examples", "fleet-repo")

	code, out, errOut := herd(t, "", "validate", example)
	if code != 0 || out != "fleet is valid: 3 pools (batch, general, system)\n" || errOut != "" {
		t.Errorf("valid fleet: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	code, out, _ = herd(t, "", "validate", "--output", "json", example)
	var v struct {
		Valid bool     `json:"valid"`
		Pools []string `json:"pools"`
	}
	if err := json.Unmarshal([]byte(out), &v); code != 0 || err != nil || !v.Valid || len(v.Pools) != 3 {
		t.Errorf("valid fleet as JSON: exit %d, %v, %s", code, err, out)
	}

	bad := t.TempDir()
	fleettest.CopyExample(t, bad)
	fleettest.Edit(t, bad, "pools/general.cue", `maxPods: 110`, `maxPods: 0`)
	fleettest.Edit(t, bad, "pools/batch.cue", `"vm.max_map_count"`, `"kernel.core_pattern"`)
	code, out, errOut = herd(t, "", "validate", bad)
	wantErr := `pools/batch.cue:20:37: pools.batch.sysctl."kernel.core_pattern": sysctl kernel.core_pattern is not allowed: it can name a program the kernel runs on every crash
pools/general.cue:9:12: pools.general.kubelet.maxPods: invalid value 0 (out of bound >=1)
`
	if code != 1 || out != "" || errOut != wantErr {
		t.Errorf("invalid fleet: exit %d, stdout %q, stderr:\n%s\nwant:\n%s", code, out, errOut, wantErr)
	}

	for _, args := range [][]string{
		{"validate", filepath.Join(bad, "nope")},
		{"validate", "--output", "yaml", example},
		{"validate", "--nope"},
		{"validate", example, example},
	} {
		if code, _, errOut := herd(t, "", args...); code != 2 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want usage error 2 with a message", args, code, errOut)
		}
	}
}

// prReview sets up the story of a pull request: a fleet repo whose second
// commit bumps general's OS and maxPods and batch's vm.max_map_count, and the
// nodes of the cluster, still on the first commit.
func prReview(t *testing.T) (repo, nodesFile string) {
	t.Helper()
	repo = filepath.Join(t.TempDir(), "fleet")
	fleettest.NewRepo(t, repo)
	before := fleettest.Load(t, repo)

	fleettest.Edit(t, repo, "pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	fleettest.Edit(t, repo, "pools/general.cue", `maxPods: 110`, `maxPods: 200`)
	fleettest.Edit(t, repo, "pools/batch.cue", `"262144"`, `"524288"`)
	fleettest.Commit(t, repo, "general: 2026.11.0, maxPods 200; batch: bigger map count")

	zones := []string{"zone-a", "zone-b", "zone-c"}
	var nodes []fleettest.Node
	for i, name := range []string{"system-1", "system-2", "system-3"} {
		nodes = append(nodes, fleettest.Node{Name: name, Pool: "system", Zone: zones[i], Annotations: fleettest.AtTarget(before, "system")})
	}
	for i := range 8 {
		nodes = append(nodes, fleettest.Node{Name: "general-" + string(rune('1'+i)), Pool: "general", Zone: zones[i%3], Annotations: fleettest.AtTarget(before, "general")})
	}
	nodes = append(nodes, fleettest.Node{Name: "general-9", Pool: "general", Zone: "zone-a", NotReady: true, Annotations: fleettest.AtTarget(before, "general")})
	for i := range 4 {
		nodes = append(nodes, fleettest.Node{Name: "batch-" + string(rune('1'+i)), Pool: "batch", Zone: zones[i%3], Annotations: fleettest.AtTarget(before, "batch")})
	}
	nodes = append(nodes, fleettest.Node{Name: "batch-5", Pool: "batch", Zone: "zone-c"}) // joined without an agent report
	nodes = append(nodes, fleettest.Node{Name: "stray-1", Zone: "zone-a"})

	nodesFile = filepath.Join(t.TempDir(), "nodes.json")
	if err := os.WriteFile(nodesFile, fleettest.NodeList(t, nodes), 0o644); err != nil {
		t.Fatal(err)
	}
	return repo, nodesFile
}

func TestPlanGolden(t *testing.T) {
	repo, nodes := prReview(t)
	for _, format := range []string{"text", "markdown", "json"} {
		t.Run(format, func(t *testing.T) {
			code, out, errOut := herd(t, "", "plan", repo, "--nodes", nodes, "--output", format, "--now", "2026-11-02T10:00:00Z")
			if code != 0 || errOut != "" {
				t.Fatalf("exit %d, stderr %s", code, errOut)
			}
			golden(t, "plan."+format, out)

			_, again, _ := herd(t, "", "plan", repo, "--nodes", nodes, "--output", format, "--now", "2026-11-02T10:00:00Z")
			if again != out {
				t.Errorf("the same input gave different output")
			}
		})
	}
}

// TestPlanContract checks the JSON fields that CI scripts rely on, and that
// the plan honours every budget.
func TestPlanContract(t *testing.T) {
	repo, nodes := prReview(t)
	_, out, _ := herd(t, "", "plan", repo, "--nodes", nodes, "--output", "json")
	var plan struct {
		Pools []struct {
			Name           string     `json:"name"`
			ConfigHash     string     `json:"configHash"`
			MaxUnavailable int        `json:"maxUnavailable"`
			Batches        [][]string `json:"batches"`
			Changes        []struct {
				Node       string `json:"node"`
				Disruption string `json:"disruption"`
			} `json:"changes"`
			UpToDate    []string `json:"upToDate"`
			Unavailable []struct {
				Node string `json:"node"`
			} `json:"unavailable"`
		} `json:"pools"`
		Unmanaged []string `json:"unmanaged"`
	}
	if err := json.Unmarshal([]byte(out), &plan); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"stray-1"}, plan.Unmanaged); diff != "" {
		t.Errorf("unmanaged (-want +got):\n%s", diff)
	}
	want := map[string]struct {
		maxUnavailable, changes, upToDate int
		disruption                        map[string]string
	}{
		"system":  {1, 0, 3, nil},
		"general": {2, 9, 0, map[string]string{"general-1": "reboot"}},
		"batch":   {2, 5, 0, map[string]string{"batch-1": "none", "batch-5": "reboot"}},
	}
	for _, p := range plan.Pools {
		w := want[p.Name]
		if len(p.ConfigHash) != 64 || p.MaxUnavailable != w.maxUnavailable || len(p.Changes) != w.changes || len(p.UpToDate) != w.upToDate {
			t.Errorf("pool %s: hash %q, maxUnavailable %d, %d changes, %d up to date; want %+v", p.Name, p.ConfigHash, p.MaxUnavailable, len(p.Changes), len(p.UpToDate), w)
		}
		for _, c := range p.Changes {
			if d, ok := w.disruption[c.Node]; ok && d != c.Disruption {
				t.Errorf("%s: disruption %s, want %s", c.Node, c.Disruption, d)
			}
		}
		for _, b := range p.Batches {
			if len(b)+len(p.Unavailable) > p.MaxUnavailable {
				t.Errorf("pool %s: batch %v with %d unavailable exceeds maxUnavailable %d", p.Name, b, len(p.Unavailable), p.MaxUnavailable)
			}
		}
	}
}

func TestPlanExitCodes(t *testing.T) {
	repo, nodes := prReview(t)
	if code, _, _ := herd(t, "", "plan", repo, "--nodes", nodes, "--detailed-exitcode"); code != 2 {
		t.Errorf("changes with --detailed-exitcode: exit %d, want 2", code)
	}
	if code, _, _ := herd(t, "", "plan", repo, "--nodes", nodes); code != 0 {
		t.Errorf("changes without --detailed-exitcode: exit %d, want 0", code)
	}

	// Every node at the new target: no changes.
	res := fleettest.Load(t, repo)
	var upToDate []fleettest.Node
	for _, pool := range res.PoolNames() {
		upToDate = append(upToDate, fleettest.Node{Name: pool + "-1", Pool: pool, Annotations: fleettest.AtTarget(res, pool)})
	}
	code, out, _ := herd(t, string(fleettest.NodeList(t, upToDate)), "plan", repo, "--nodes", "-", "--detailed-exitcode")
	if code != 0 || !strings.Contains(out, "no changes") {
		t.Errorf("no changes: exit %d, want 0\n%s", code, out)
	}

	for name, args := range map[string][]string{
		"missing --nodes":  {"plan", repo, "--detailed-exitcode"},
		"unreadable nodes": {"plan", repo, "--nodes", filepath.Join(repo, "nope.json"), "--detailed-exitcode"},
		"not a node list":  {"plan", repo, "--nodes", filepath.Join(repo, "fleet.cue"), "--detailed-exitcode"},
		"bad output":       {"plan", repo, "--nodes", nodes, "--output", "xml", "--detailed-exitcode"},
	} {
		if code, _, errOut := herd(t, "", args...); code != 1 || errOut == "" {
			t.Errorf("%s with --detailed-exitcode: exit %d, stderr %q; want 1 and a message", name, code, errOut)
		}
	}
}

func TestPlanReadsYAML(t *testing.T) {
	repo, _ := prReview(t)
	yaml := `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: general-1
    labels: {herd.dev/pool: general, topology.kubernetes.io/zone: zone-a}
  status:
    conditions: [{type: Ready, status: "True"}]
`
	code, out, errOut := herd(t, yaml, "plan", repo, "--nodes", "-")
	if code != 0 || !strings.Contains(out, "general-1") || !strings.Contains(out, "reboot") {
		t.Errorf("exit %d, stderr %q\n%s", code, errOut, out)
	}
}
