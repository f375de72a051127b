// Package bpf is the node monitor in eBPF: programs in C (bpf/programs),
// cgroup naming (bpf/cgroups) and the monitor itself (bpf/monitor).
package bpf
