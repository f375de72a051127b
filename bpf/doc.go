// Package bpf holds eBPF programs and their loaders: low-cost kernel
// metrics for the node agent.
package bpf
