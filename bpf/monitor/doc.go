// Package monitor is the node monitor: it loads the eBPF programs of
// bpf/programs, names the cgroups they count by pod and container, and
// exposes the in-kernel aggregates to Prometheus (Collector) and as a
// report of the worst offenders (Top).
//
// A Monitor is a library for the node agent; bpf/cmd/herd-monitor runs one
// on its own. Every program is loaded on its own: one the kernel cannot run
// is reported, with the reason, by Status, by the metric
// herd_monitor_program_loaded and in the Report, and the others still run.
package monitor
