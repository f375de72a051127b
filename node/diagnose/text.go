package diagnose

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"herd.dev/herd/bpf/monitor"
)

// WriteText prints the report for people, section by section.
func WriteText(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	p("Node %s, collected %s\n", r.Node, r.CollectedAt.Format(time.RFC3339))

	p("\nHealth\n")
	if len(r.Health) == 0 {
		p("  (no checks ran)\n")
	}
	for _, h := range r.Health {
		p("  %s\t%s\t%s\t%s\n", h.Type, h.Status, h.Reason, h.Message)
	}

	p("\nDisk\tused\tinodes used\n")
	for _, d := range r.Disk {
		p("  %s\t%.1f%% of %s\t%s\n", d.Path, 100-d.FreePercent(), bytes(d.Bytes), inodes(d.Inodes, d.FreeInodesPercent()))
	}
	if m := r.Memory; m != nil {
		p("\nMemory pressure (PSI)\tavg10\tavg60\tavg300\n")
		p("  some\t%.2f\t%.2f\t%.2f\n", m.Some.Avg10, m.Some.Avg60, m.Some.Avg300)
		p("  full\t%.2f\t%.2f\t%.2f\n", m.Full.Avg10, m.Full.Avg60, m.Full.Avg300)
	}
	if l := r.Load; l != nil {
		p("\nLoad\t%.2f %.2f %.2f\t%d running of %d tasks\n", l.Load1, l.Load5, l.Load15, l.Running, l.Total)
	}
	if c := r.Conntrack; c != nil {
		p("Conntrack\t%d of %d\t%.1f%%\n", c.Count, c.Max, 100*float64(c.Count)/float64(max(c.Max, 1)))
	}
	writeMonitor(p, r.Monitor)
	p("\nNetwork\trx errors\ttx errors\trx dropped\ttx dropped\n")
	for _, n := range r.Network {
		p("  %s\t%d\t%d\t%d\t%d\n", n.Name, n.RxErrors, n.TxErrors, n.RxDropped, n.TxDropped)
	}
	p("\nOSTree deployments\n")
	if len(r.OS) == 0 {
		p("  (none read)\n")
	}
	for _, d := range r.OS {
		p("  %s\t%s\t%s\n", d.Checksum, d.Version, deploymentMarks(d))
	}
	p("\nRecent remediations\n")
	if len(r.Remediations) == 0 {
		p("  (none recorded)\n")
	}
	for _, m := range r.Remediations {
		p("  %s\t%s\t%s\t%s\n", m.Time.Format(time.RFC3339), m.Action, m.Reason, m.Outcome)
	}
	writeEvidence(p, r.Evidence)
	if len(r.Errors) > 0 {
		p("\nCould not read\n")
		for _, e := range r.Errors {
			p("  %s\n", e)
		}
	}
	return tw.Flush()
}

func writeEvidence(p func(string, ...any), e *Evidence) {
	p("\nLast evidence bundle\n")
	if e == nil {
		p("  (none captured)\n")
		return
	}
	p("  captured %s: %s\n", e.CapturedAt.Format(time.RFC3339), e.Reason)
	if e.Runtime != nil {
		p("  runtime ready %v, network ready %v\n", e.Runtime.RuntimeReady, e.Runtime.NetworkReady)
	}
	p("  %d pod sandboxes\n", len(e.Sandboxes))
	for _, h := range e.Health {
		if h.Problem() {
			p("  %s\t%s\t%s\n", h.Type, h.Reason, h.Message)
		}
	}
	const tail = 20
	lines := e.KernelLog
	if len(lines) > tail {
		lines = lines[len(lines)-tail:]
	}
	if len(lines) > 0 {
		p("  kernel log (last %d lines):\n", len(lines))
		for _, l := range lines {
			p("    %s\n", l)
		}
	}
	if len(e.Truncated) > 0 {
		p("  cut to fit: %s\n", strings.Join(e.Truncated, ", "))
	}
}

func deploymentMarks(d Deployment) string {
	var marks []string
	for _, m := range []struct {
		on   bool
		name string
	}{{d.Booted, "booted"}, {d.Staged, "staged"}, {d.Rollback, "rollback"}, {d.Pinned, "pinned"}} {
		if m.on {
			marks = append(marks, m.name)
		}
	}
	return strings.Join(marks, ",")
}

func inodes(total uint64, freePct float64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", 100-freePct)
}

// bytes prints a size in binary units.
func bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// writeMonitor prints the eBPF monitor's report, as the monitor prints it,
// indented under its own heading.
func writeMonitor(p func(string, ...any), m *monitor.Report) {
	if m == nil {
		return
	}
	var b strings.Builder
	if err := m.WriteText(&b); err != nil {
		return
	}
	p("\nNode monitor (eBPF)\n")
	for _, line := range strings.Split(strings.TrimRight(b.String(), "\n"), "\n") {
		p("  %s\n", line)
	}
}
