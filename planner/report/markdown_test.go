package report

import (
	"fmt"
	"strings"
	"testing"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
)

// manyGroups is a plan whose every node has its own change (a different
// value each), so that even without names the groups are too many.
func manyGroups(nodes int) *planner.Plan {
	pp := planner.PoolPlan{Name: "general", Nodes: nodes, MaxUnavailable: 10}
	for i := range nodes {
		pp.Changes = append(pp.Changes, planner.Change{
			Node: fmt.Sprintf("general-%05d", i), Zone: "zone-a", Batch: 1 + i/10, Disruption: schema.DisruptionRestartKubelet,
			Fields: []schema.FieldChange{{Path: "kubelet.maxPods", From: "110", To: fmt.Sprint(200 + i)}},
		})
		if len(pp.Batches) < 1+i/10 {
			pp.Batches = append(pp.Batches, nil)
		}
	}
	return &planner.Plan{Pools: []planner.PoolPlan{pp}}
}

// TestMarkdownSizeGuard: past the limit the comment drops groups, keeps the
// marker, the summary and the pool table, and says what it left out.
func TestMarkdownSizeGuard(t *testing.T) {
	plan := manyGroups(5000)
	var b strings.Builder
	if err := Markdown(&b, plan, MarkdownOptions{FullPlanURL: "https://example.com/plan"}); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if len(out) > MaxCommentChars {
		t.Fatalf("%d characters, want <= %d", len(out), MaxCommentChars)
	}
	for _, want := range []string{Marker, "**Plan: 5,000 nodes to change (5,000 restart-kubelet) in 500 batches, 0 unchanged.**", "| general | 5000 | 5000 |", "more groups left out for size", "[the full plan](https://example.com/plan)"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in the comment", want)
		}
	}
	if len(out) < MaxCommentChars*9/10 {
		t.Errorf("%d characters: the guard left out more than it had to", len(out))
	}
}

// TestMarkdownGroups: nodes with the same change share a row, with their
// batches as ranges and names folded in <details>.
func TestMarkdownGroups(t *testing.T) {
	pp := planner.PoolPlan{Name: "p", Nodes: 5, Batches: make([][]string, 4)}
	same := []schema.FieldChange{{Path: "os.commit", From: "a", To: "b"}}
	for i, batch := range []int{1, 2, 4, 0} {
		pp.Changes = append(pp.Changes, planner.Change{Node: fmt.Sprint("n", i), Zone: "z", Batch: batch, Disruption: schema.DisruptionReboot, Fields: same})
	}
	pp.Changes = append(pp.Changes, planner.Change{Node: "odd", Batch: 3, Disruption: schema.DisruptionNone, Fields: []schema.FieldChange{{Path: "sysctl.x", From: "1", To: "2"}}})
	var b strings.Builder
	if err := Markdown(&b, &planner.Plan{Pools: []planner.PoolPlan{pp}}, MarkdownOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| 1–2, 4, waiting | <details><summary>4</summary>n0, n1, n2, n3</details> | z | reboot | `os.commit` a → b |",
		"| 3 | odd |  | none | `sysctl.x` 1 → 2 |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("no row %q in:\n%s", want, b.String())
		}
	}
}
