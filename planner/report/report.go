// Package report formats plans for people (text, Markdown for pull-request
// comments) and machines (JSON). Output depends only on the plan.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
)

// Formats Write knows.
var Formats = []string{"text", "markdown", "json"}

// Write formats plan in the named format.
func Write(w io.Writer, format string, plan *planner.Plan) error {
	switch format {
	case "text":
		return Text(w, plan)
	case "markdown":
		return Markdown(w, plan, MarkdownOptions{})
	case "json":
		return JSON(w, plan)
	}
	return fmt.Errorf("unknown output format %q (want %s)", format, strings.Join(Formats, ", "))
}

// JSON writes the plan as indented JSON.
func JSON(w io.Writer, plan *planner.Plan) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(plan)
}

// Text writes the plan for a terminal.
func Text(w io.Writer, plan *planner.Plan) error {
	p := &printer{w: w}
	p.line("%s", summary(plan))
	for _, pp := range plan.Pools {
		p.line("")
		p.line("pool %s: %s", pp.Name, poolSummary(pp))
		p.line("  target: config %s, os %s, maxUnavailable %d", schema.Short(pp.ConfigHash), schema.Short(pp.OSCommit), pp.MaxUnavailable)
		for _, why := range []*planner.Reason{pp.Halt, pp.Closed, pp.Blocked} {
			if why != nil {
				p.line("  %s: %s", strings.ToLower(string(why.Code)), why.Message())
			}
		}
		for _, u := range pp.Unavailable {
			p.line("  unavailable: %s (%s)", u.Node, u.Message())
		}
		for _, c := range pp.Changes {
			where := "waiting"
			if c.Batch > 0 {
				where = fmt.Sprintf("batch %d", c.Batch)
			}
			p.line("  %-9s %-24s %-18s %s", where, c.Node, c.Disruption, changeText(c, "", " -> "))
		}
		if len(pp.UpToDate) > 0 {
			p.line("  up to date: %s", strings.Join(pp.UpToDate, ", "))
		}
	}
	writeUnmanaged(p, plan, "")
	return p.err
}

func summary(plan *planner.Plan) string {
	nodes, changes, batches := 0, 0, 0
	for _, pp := range plan.Pools {
		nodes += pp.Nodes
		changes += len(pp.Changes)
		batches += len(pp.Batches)
	}
	s := fmt.Sprintf("%d pools, %d nodes: %d change", len(plan.Pools), nodes, changes)
	if changes == 0 {
		s = fmt.Sprintf("%d pools, %d nodes: no changes", len(plan.Pools), nodes)
	}
	if len(plan.Unmanaged) > 0 {
		s += fmt.Sprintf(", %d unmanaged", len(plan.Unmanaged))
	}
	if len(plan.Conflicts) > 0 {
		s += fmt.Sprintf(", %d in more than one pool", len(plan.Conflicts))
	}
	return s + "."
}

func poolSummary(pp planner.PoolPlan) string {
	if len(pp.Changes) == 0 {
		return fmt.Sprintf("all %d nodes up to date", pp.Nodes)
	}
	s := fmt.Sprintf("%d of %d nodes change in %d batches (%s)", len(pp.Changes), pp.Nodes, len(pp.Batches), disruptionCounts(pp))
	if pp.Paused {
		s += ", paused"
	}
	return s
}

// disruptionCounts reads like "2 reboot, 1 restart-kubelet", most disruptive first.
func disruptionCounts(pp planner.PoolPlan) string {
	counts := map[schema.Disruption]int{}
	for _, c := range pp.Changes {
		counts[c.Disruption]++
	}
	var parts []string
	for d := schema.DisruptionReboot; d >= schema.DisruptionNone; d-- {
		if counts[d] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[d], d))
		}
	}
	if len(parts) == 0 {
		return "—"
	}
	return strings.Join(parts, ", ")
}

// changeText lists a change's fields, flags and reason on one line.
func changeText(c planner.Change, quote, arrow string) string {
	var parts []string
	if c.InFlight {
		parts = append(parts, "in flight")
	}
	if c.Rollback {
		parts = append(parts, "rollback")
	}
	for _, f := range c.Fields {
		parts = append(parts, fmt.Sprintf("%s%s%s %s%s%s", quote, f.Path, quote, value(f.From), arrow, value(f.To)))
	}
	if m := c.Message(); m != "" {
		parts = append(parts, m)
	}
	return strings.Join(parts, "; ")
}

var fullHash = regexp.MustCompile(`^[0-9a-f]{64}$`)

// value shortens OSTree checksums and config hashes and marks unset values.
func value(v string) string {
	switch {
	case v == "":
		return "(unset)"
	case fullHash.MatchString(v):
		return schema.Short(v)
	}
	return v
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func writeUnmanaged(p *printer, plan *planner.Plan, sep string) {
	if len(plan.Conflicts) > 0 {
		p.line("%s", sep)
		for _, c := range plan.Conflicts {
			p.line("error: node %s matches pools %s; it joins none until the selectors are fixed", c.Node, strings.Join(c.Pools, " and "))
		}
	}
	if len(plan.Unmanaged) > 0 {
		p.line("%s", sep)
		p.line("unmanaged (no pool matches): %s", strings.Join(plan.Unmanaged, ", "))
	}
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) line(format string, args ...any) {
	if p.err != nil {
		return
	}
	_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
}
