package report

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
)

// Marker starts every Markdown plan, hidden in the rendered comment, so a
// CI job finds and updates its own comment and no other.
const Marker = "<!-- herd-plan -->"

// MaxCommentChars is the default size guard: GitHub refuses comments over
// 65,536 characters; the rest is headroom for what CI adds.
const MaxCommentChars = 60000

// MarkdownOptions shape a pull-request comment.
type MarkdownOptions struct {
	// MaxChars bounds the output; MaxCommentChars when 0, none when < 0.
	MaxChars int
	// FullPlanURL is where the full plan is (a workflow artifact); the
	// comment points there when it had to leave something out.
	FullPlanURL string
}

// Markdown writes the plan as a pull-request comment: the hidden marker, a
// Terraform-style summary line, a table of pools, and per pool one row per
// group of nodes with the same change, their names folded in <details>.
// Past MaxChars it drops node names, then groups, and says where the full
// plan is.
func Markdown(w io.Writer, plan *planner.Plan, opts MarkdownOptions) error {
	limit := opts.MaxChars
	if limit == 0 {
		limit = MaxCommentChars
	}
	var out string
	for _, names := range []bool{true, false} {
		out = markdown(plan, names, opts, -1)
		if limit < 0 || len(out) <= limit {
			break
		}
	}
	if limit >= 0 && len(out) > limit {
		// Keep the head and as many groups as fit.
		out = markdown(plan, false, opts, groupsThatFit(plan, opts, limit))
	}
	_, err := io.WriteString(w, out)
	return err
}

// groupsThatFit finds the most groups per pool that keep the comment
// within limit (0 when even the head alone is over).
func groupsThatFit(plan *planner.Plan, opts MarkdownOptions, limit int) int {
	lo, hi := 0, 0
	for _, pp := range plan.Pools {
		hi = max(hi, len(groups(pp)))
	}
	for lo < hi { // the largest n with len(markdown(n)) <= limit
		n := (lo + hi + 1) / 2
		if len(markdown(plan, false, opts, n)) <= limit {
			lo = n
		} else {
			hi = n - 1
		}
	}
	return lo
}

// markdown renders the comment; maxGroups < 0 keeps every group.
func markdown(plan *planner.Plan, names bool, opts MarkdownOptions, maxGroups int) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("%s", Marker)
	line("### Herd plan")
	line("")
	line("**%s**", terraformSummary(plan))
	line("")
	line("| pool | nodes | change | up to date | batches | maxUnavailable | disruption |")
	line("|---|---:|---:|---:|---:|---:|---|")
	for _, pp := range plan.Pools {
		line("| %s | %d | %d | %d | %d | %d | %s |", pp.Name, pp.Nodes, len(pp.Changes), len(pp.UpToDate), len(pp.Batches), pp.MaxUnavailable, disruptionCounts(pp))
	}
	cut := !names
	for _, pp := range plan.Pools {
		if len(pp.Changes) == 0 && pp.Blocked == nil {
			continue
		}
		line("")
		line("#### %s", pp.Name)
		line("")
		line("Target config `%s`, OS `%s`. %s.", schema.Short(pp.ConfigHash), schema.Short(pp.OSCommit), poolSummary(pp))
		for _, why := range []*planner.Reason{pp.Halt, pp.Closed, pp.Blocked} {
			if why != nil {
				line("")
				line("> **%s:** %s", why.Code, why.Message())
			}
		}
		gs := groups(pp)
		shown := gs
		if maxGroups >= 0 && len(gs) > maxGroups {
			shown = gs[:maxGroups]
			cut = true
		}
		if len(shown) == 0 {
			line("")
			line("_%d groups of changes left out for size._", len(gs))
			continue
		}
		line("")
		line("| batches | nodes | zones | disruption | changes |")
		line("|---|---:|---|---|---|")
		for _, g := range shown {
			line("| %s | %s | %s | %s | %s |", g.batches(), g.nodesCell(names), strings.Join(g.zones, ", "), g.disruption, mdEscape(g.text))
		}
		if len(shown) < len(gs) {
			line("")
			line("_%d more groups left out for size._", len(gs)-len(shown))
		}
	}
	if len(plan.Conflicts) > 0 || len(plan.Unmanaged) > 0 {
		line("")
		for _, c := range plan.Conflicts {
			line("error: node %s matches pools %s; it joins none until the selectors are fixed", c.Node, strings.Join(c.Pools, " and "))
		}
		if len(plan.Unmanaged) > 0 {
			unmanaged := strings.Join(plan.Unmanaged, ", ")
			if !names {
				unmanaged = fmt.Sprintf("%d nodes", len(plan.Unmanaged))
			}
			line("unmanaged (no pool matches): %s", unmanaged)
		}
	}
	if cut {
		line("")
		where := "the workflow's plan artifact, or `herd plan --output text`"
		if opts.FullPlanURL != "" {
			where = fmt.Sprintf("[the full plan](%s)", opts.FullPlanURL)
		}
		line("> This comment leaves details out to stay under %d characters: see %s.", MaxCommentChars, where)
	}
	return b.String()
}

// terraformSummary reads like Terraform's "Plan: 1 to add, 2 to change":
// "Plan: 120 nodes to change (20 reboot, 100 restart-kubelet) in 12 batches, 880 unchanged."
func terraformSummary(plan *planner.Plan) string {
	counts := map[schema.Disruption]int{}
	changes, unchanged, batches := 0, 0, 0
	for _, pp := range plan.Pools {
		changes += len(pp.Changes)
		unchanged += pp.Nodes - len(pp.Changes)
		batches += len(pp.Batches)
		for _, c := range pp.Changes {
			counts[c.Disruption]++
		}
	}
	if changes == 0 {
		s := fmt.Sprintf("No changes. %s nodes in %d pools are up to date.", thousands(unchanged), len(plan.Pools))
		return s + extras(plan)
	}
	var parts []string
	for d := schema.DisruptionReboot; d >= schema.DisruptionNone; d-- {
		if counts[d] > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", thousands(counts[d]), d))
		}
	}
	s := fmt.Sprintf("Plan: %s nodes to change (%s) in %d batches, %s unchanged.", thousands(changes), strings.Join(parts, ", "), batches, thousands(unchanged))
	return s + extras(plan)
}

func extras(plan *planner.Plan) string {
	s := ""
	if len(plan.Unmanaged) > 0 {
		s += fmt.Sprintf(" %s unmanaged.", thousands(len(plan.Unmanaged)))
	}
	if len(plan.Conflicts) > 0 {
		s += fmt.Sprintf(" %d in more than one pool.", len(plan.Conflicts))
	}
	return s
}

// thousands writes 12345 as 12,345.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// group is the nodes of a pool that get the same change.
type group struct {
	disruption schema.Disruption
	text       string
	nodes      []string
	zones      []string
	batchSet   []int // 0: waiting
}

// groups gathers a pool's changes by disruption and change, most
// disruptive first, then by first batch.
func groups(pp planner.PoolPlan) []*group {
	byKey := map[string]*group{}
	var out []*group
	for _, c := range pp.Changes {
		text := changeText(c, "`", " → ")
		key := c.Disruption.String() + "\x00" + text
		g := byKey[key]
		if g == nil {
			g = &group{disruption: c.Disruption, text: text}
			byKey[key] = g
			out = append(out, g)
		}
		g.nodes = append(g.nodes, c.Node)
		if c.Zone != "" && !slices.Contains(g.zones, c.Zone) {
			g.zones = append(g.zones, c.Zone)
		}
		if !slices.Contains(g.batchSet, c.Batch) {
			g.batchSet = append(g.batchSet, c.Batch)
		}
	}
	for _, g := range out {
		slices.Sort(g.zones)
		slices.Sort(g.batchSet)
	}
	slices.SortStableFunc(out, func(a, b *group) int {
		if a.disruption != b.disruption {
			return int(b.disruption) - int(a.disruption)
		}
		return firstBatch(a) - firstBatch(b)
	})
	return out
}

// firstBatch orders waiting nodes (batch 0) last.
func firstBatch(g *group) int {
	for _, b := range g.batchSet {
		if b > 0 {
			return b
		}
	}
	return 1 << 30
}

// batches reads "1", "1–4", "2, 5", "waiting" or "1–3, waiting".
func (g *group) batches() string {
	var parts []string
	var run []int
	flush := func() {
		switch len(run) {
		case 0:
		case 1:
			parts = append(parts, fmt.Sprint(run[0]))
		default:
			parts = append(parts, fmt.Sprintf("%d–%d", run[0], run[len(run)-1]))
		}
		run = nil
	}
	waiting := false
	for _, b := range g.batchSet {
		if b == 0 {
			waiting = true
			continue
		}
		if len(run) > 0 && b != run[len(run)-1]+1 {
			flush()
		}
		run = append(run, b)
	}
	flush()
	if waiting {
		parts = append(parts, "waiting")
	}
	return strings.Join(parts, ", ")
}

// nodesCell is the group's node count, with the names folded in
// <details> (or the one name, for a group of one).
func (g *group) nodesCell(names bool) string {
	switch {
	case !names:
		return fmt.Sprint(len(g.nodes))
	case len(g.nodes) == 1:
		return g.nodes[0]
	}
	return fmt.Sprintf("<details><summary>%d</summary>%s</details>", len(g.nodes), strings.Join(g.nodes, ", "))
}
