package monitor

import (
	"os"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ProgramStats is the kernel's accounting of one attached eBPF program:
// how often it ran and for how long in total. The kernel counts only while
// kernel.bpf_stats_enabled is 1 (or a process holds ebpf.EnableStats).
type ProgramStats struct {
	Program Program `json:"program"`
	// Tracepoint is what this eBPF program is attached to.
	Tracepoint string        `json:"tracepoint"`
	Runs       uint64        `json:"runs"`
	Runtime    time.Duration `json:"runtime"`
}

// NsPerRun is the mean cost of one run, in nanoseconds.
func (s ProgramStats) NsPerRun() float64 {
	if s.Runs == 0 {
		return 0
	}
	return float64(s.Runtime.Nanoseconds()) / float64(s.Runs)
}

// Stats returns the run counts and run times of every attached program.
func (m *Monitor) Stats() ([]ProgramStats, error) {
	var out []ProgramStats
	for _, p := range AllPrograms {
		lp := m.loaded[p]
		if lp == nil {
			continue
		}
		for name, prog := range lp.coll.Programs {
			st, err := prog.Stats()
			if err != nil {
				return nil, err
			}
			out = append(out, ProgramStats{Program: p, Tracepoint: name, Runs: st.RunCount, Runtime: st.Runtime})
		}
	}
	slices.SortFunc(out, func(a, b ProgramStats) int { return strings.Compare(a.Tracepoint, b.Tracepoint) })
	return out, nil
}

// statsEnabled reads kernel.bpf_stats_enabled.
func statsEnabled() bool {
	b, err := os.ReadFile("/proc/sys/kernel/bpf_stats_enabled")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

var (
	runsDesc = prometheus.NewDesc("herd_monitor_program_runs_total",
		"Runs of each eBPF program, by the kernel's accounting; exported only while kernel.bpf_stats_enabled=1.",
		[]string{"program", "tracepoint"}, nil)
	runTimeDesc = prometheus.NewDesc("herd_monitor_program_run_seconds_total",
		"CPU time spent in each eBPF program, by the kernel's accounting; exported only while kernel.bpf_stats_enabled=1.",
		[]string{"program", "tracepoint"}, nil)
)

// collectStats sends the programs' run counts and times when the kernel
// keeps them (the sysctl is on) or kept them (some program has runs, as
// when a process holds ebpf.EnableStats, which the sysctl does not show):
// a zero would otherwise look like a free program.
func (m *Monitor) collectStats(ch chan<- prometheus.Metric) {
	stats, err := m.Stats()
	if err != nil {
		return
	}
	if !statsEnabled() && !slices.ContainsFunc(stats, func(s ProgramStats) bool { return s.Runs > 0 }) {
		return
	}
	for _, s := range stats {
		ch <- prometheus.MustNewConstMetric(runsDesc, prometheus.CounterValue, float64(s.Runs), string(s.Program), s.Tracepoint)
		ch <- prometheus.MustNewConstMetric(runTimeDesc, prometheus.CounterValue, s.Runtime.Seconds(), string(s.Program), s.Tracepoint)
	}
}
