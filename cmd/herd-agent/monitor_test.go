package main

import (
	"io"
	"log/slog"
	"os/exec"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/rest"

	"herd.dev/herd/bpf/monitor"
	"herd.dev/herd/node/kube"
)

// --monitor loads the eBPF programs into this kernel and puts their
// metrics on the agent's registry; a monitor that cannot start leaves
// the agent running, with every program reported not loaded and why.
func TestMonitor(t *testing.T) {
	client, err := kube.New(&rest.Config{Host: "http://127.0.0.1:1"}) // pods go unnamed
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if startMonitor(flags{node: "n"}, client, prometheus.NewRegistry(), log) != nil {
		t.Fatal("a monitor started without --monitor")
	}

	reg := prometheus.NewRegistry()
	mon := startMonitor(flags{node: "n", monitor: true}, client, reg, log)
	if mon == nil {
		t.Fatal("the monitor did not start on this kernel (root, BTF and tp_btf are required)")
	}
	defer mon.Close()
	for _, st := range mon.Status() {
		if !st.Loaded {
			t.Errorf("program %s not loaded: %s", st.Program, st.Reason)
		}
	}
	if err := exec.Command("true").Run(); err != nil {
		t.Fatal(err)
	}
	if n, err := testutil.GatherAndCount(reg, "herd_monitor_program_loaded", "herd_monitor_execs_total"); err != nil || n < len(monitor.AllPrograms)+1 {
		t.Errorf("%d monitor series on the agent's registry (%v), want every program's and the execs", n, err)
	}

	reg = prometheus.NewRegistry()
	if mon := startMonitor(flags{node: "n", monitor: true, monitorCgroupRoot: t.TempDir()}, client, reg, log); mon != nil {
		mon.Close()
		t.Fatal("the monitor started on a directory that is no cgroup file system")
	}
	fams, err := reg.Gather()
	if err != nil || len(fams) != 1 || len(fams[0].Metric) != len(monitor.AllPrograms) {
		t.Fatalf("an unavailable monitor's metrics: %v, %v", fams, err)
	}
	for _, m := range fams[0].Metric {
		if m.GetGauge().GetValue() != 0 || m.Label[1].GetValue() == "" {
			t.Errorf("unavailable monitor reports %v", m)
		}
	}
}
