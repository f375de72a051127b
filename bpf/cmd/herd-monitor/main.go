// Command herd-monitor runs the node monitor on its own: the eBPF programs,
// /metrics for Prometheus and /top for the aggregated report. The node
// agent embeds the same library (bpf/monitor); this is for trying it on a
// node, for tests and for benchmarks.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"herd.dev/herd/bpf/cgroups"
	"herd.dev/herd/bpf/kubepods"
	"herd.dev/herd/bpf/monitor"
)

type flags struct {
	metricsAddr, cgroupMode, cgroupRoot, programs string
	node, kubeconfig                              string
	top                                           int
	printEvery                                    time.Duration
}

func main() {
	var f flags
	flag.StringVar(&f.metricsAddr, "metrics-addr", "127.0.0.1:9433", "serve /metrics and /top on this address (port 0: any; the address is logged)")
	flag.StringVar(&f.cgroupMode, "cgroup-mode", "auto", "hierarchy naming cgroups: auto, v2 or v1-memory")
	flag.StringVar(&f.cgroupRoot, "cgroup-root", "", "cgroup file system root to find it in, such as the host's /sys/fs/cgroup seen from a container (default: found in /proc/self/mountinfo)")
	flag.StringVar(&f.programs, "programs", "", "comma-separated programs to load (default: all of "+programNames()+")")
	flag.StringVar(&f.node, "node", os.Getenv("NODE_NAME"), "this node's name, to name pods through the API server (default $NODE_NAME; empty: pods by UID)")
	flag.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig for --node (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
	flag.IntVar(&f.top, "top", 10, "entries per list in /top and --print-every reports")
	flag.DurationVar(&f.printEvery, "print-every", 0, "print the report as text to stdout this often (0: never)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "herd-monitor:", err)
		os.Exit(1)
	}
}

func programNames() string {
	names := make([]string, len(monitor.AllPrograms))
	for i, p := range monitor.AllPrograms {
		names[i] = string(p)
	}
	return strings.Join(names, ",")
}

func run(ctx context.Context, f flags) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	opts, err := options(f, log)
	if err != nil {
		return err
	}
	m, err := monitor.New(opts)
	if err != nil {
		return err
	}
	defer m.Close()
	for _, s := range m.Status() {
		log.Info("program", "name", s.Program, "loaded", s.Loaded, "reason", s.Reason)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.Handle("/top", m.Handler())
	ln, err := net.Listen("tcp", f.metricsAddr)
	if err != nil {
		return err
	}
	log.Info("serving", "addr", ln.Addr().String(), "cgroups", m.Hierarchy().Mode, "root", m.Hierarchy().Root)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	if f.printEvery > 0 {
		go printReports(ctx, m, f.top, f.printEvery)
	}
	<-ctx.Done()
	return nil
}

func options(f flags, log *slog.Logger) (monitor.Options, error) {
	mode, err := cgroups.ParseMode(f.cgroupMode)
	if err != nil {
		return monitor.Options{}, err
	}
	opts := monitor.Options{Cgroups: mode, CgroupRoot: f.cgroupRoot, Logger: log}
	if f.programs != "" {
		for _, p := range strings.Split(f.programs, ",") {
			opts.Programs = append(opts.Programs, monitor.Program(strings.TrimSpace(p)))
		}
	}
	if f.node != "" {
		cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
			&clientcmd.ClientConfigLoadingRules{ExplicitPath: f.kubeconfig}, nil).ClientConfig()
		if err != nil {
			return opts, fmt.Errorf("kubeconfig for --node %s: %w", f.node, err)
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return opts, err
		}
		opts.Pods = kubepods.Lister(client.CoreV1().Pods("").List, f.node)
	}
	return opts, nil
}

func printReports(ctx context.Context, m *monitor.Monitor, n int, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r, err := m.Top(n)
			if err == nil {
				err = r.WriteText(os.Stdout)
			}
			if err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintln(os.Stderr, "herd-monitor: report:", err)
			}
		}
	}
}
