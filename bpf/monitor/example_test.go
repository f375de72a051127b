package monitor_test

import (
	"log"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"herd.dev/herd/bpf/monitor"
)

// A node agent runs the monitor next to its own metrics: /metrics for
// Prometheus, /top for the report `herd diagnose` reads.
func ExampleNew() {
	m, err := monitor.New(monitor.Options{})
	reg := prometheus.NewRegistry()
	if err != nil {
		log.Print(err)
		reg.MustRegister(monitor.Unavailable(err))
	} else {
		defer m.Close()
		reg.MustRegister(m.Collector())
		http.Handle("/top", m.Handler())
	}
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
}

// The report of the worst offenders, as `herd top node` would print it.
func ExampleMonitor_Top() {
	m, err := monitor.New(monitor.Options{Programs: []monitor.Program{monitor.RunQueueLatency, monitor.OOMKills}})
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	r, err := m.Top(5)
	if err != nil {
		log.Fatal(err)
	}
	r.WriteText(os.Stdout)
}
