package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"

	"herd.dev/herd/os/image"
	"herd.dev/herd/planner"
)

// poolOSDiff is the OS change a plan makes to some of a pool's nodes.
type poolOSDiff struct {
	Pool     string
	From, To string
	Nodes    int // changed nodes booted into From
	Summary  string
}

// osDiffs compares, for every pool whose changed nodes boot another commit
// than the pool's, that commit with the pool's, in the repository at
// location (a path or an http(s) URL). It reads the plan, decides nothing.
func osDiffs(ctx context.Context, location string, in planner.Input, plan *planner.Plan) ([]poolOSDiff, error) {
	booted := map[string]string{}
	for _, n := range in.Nodes {
		booted[n.Name] = n.OSBooted
	}
	var diffs []poolOSDiff
	var revs []string
	for _, p := range plan.Pools {
		count := map[string]int{}
		for _, c := range p.Changes {
			if from := booted[c.Node]; from != "" && from != p.OSCommit && p.OSCommit != "" {
				count[from]++
			}
		}
		for _, from := range slices.Sorted(maps.Keys(count)) {
			diffs = append(diffs, poolOSDiff{Pool: p.Name, From: from, To: p.OSCommit, Nodes: count[from]})
			revs = append(revs, from, p.OSCommit)
		}
	}
	if len(diffs) == 0 {
		return nil, nil
	}
	cache, err := os.MkdirTemp("", "herd-plan-os-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(cache)
	slices.Sort(revs)
	repo, _, err := image.OpenRepo(ctx, location, cache, slices.Compact(revs)...)
	if err != nil {
		return nil, err
	}
	for i := range diffs {
		d, err := image.Compare(ctx, repo, diffs[i].From, diffs[i].To)
		if err != nil {
			return nil, err
		}
		diffs[i].Summary = d.Summary()
	}
	return diffs, nil
}

// writeOSDiffs appends the OS changes to a text or markdown plan.
func writeOSDiffs(w io.Writer, format string, diffs []poolOSDiff) {
	if len(diffs) == 0 || format == "json" {
		return
	}
	if format == "markdown" {
		fmt.Fprintf(w, "\n### OS changes\n\n| pool | nodes | from | to | change |\n|---|---|---|---|---|\n")
		for _, d := range diffs {
			fmt.Fprintf(w, "| %s | %d | `%s` | `%s` | %s |\n", d.Pool, d.Nodes, d.From[:12], d.To[:12], d.Summary)
		}
		return
	}
	fmt.Fprintf(w, "\nOS changes:\n")
	for _, d := range diffs {
		fmt.Fprintf(w, "  %s: %d nodes %s -> %s: %s\n", d.Pool, d.Nodes, d.From[:12], d.To[:12], d.Summary)
	}
}
