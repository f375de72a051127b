package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"herd.dev/herd/bpf/kubepods"
	"herd.dev/herd/bpf/monitor"
	"herd.dev/herd/node/kube"
)

// startMonitor loads the eBPF node monitor (docs/monitor.md) and registers
// its metrics. A monitor that cannot start leaves the agent running: its
// metrics then say which programs are not loaded and why, never a silent
// zero. The caller closes the monitor it returns, nil when none started.
func startMonitor(f flags, client *kube.Client, reg prometheus.Registerer, log *slog.Logger) *monitor.Monitor {
	if !f.monitor {
		return nil
	}
	mon, err := monitor.New(monitor.Options{
		CgroupRoot: f.monitorCgroupRoot,
		Pods:       kubepods.Lister(client.ListPods, f.node),
		Logger:     log,
	})
	if err != nil {
		log.Error("the eBPF node monitor did not start", "error", err)
		reg.MustRegister(monitor.Unavailable(err))
		return nil
	}
	for _, st := range mon.Status() {
		if !st.Loaded {
			log.Error("an eBPF program did not load", "program", st.Program, "reason", st.Reason)
		}
	}
	reg.MustRegister(mon.Collector())
	return mon
}
