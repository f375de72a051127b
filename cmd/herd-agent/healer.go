package main

// The agent's health side (node/healer: checks, herd diagnose's answers,
// repairs), beside its rollouts and sharing its watch of the Node.

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"herd.dev/herd/bpf/monitor"
	"herd.dev/herd/node/diagnose"
	"herd.dev/herd/node/healer"
	"herd.dev/herd/node/health"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/node/systemd"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

// healerFlags are the health side's flags.
type healerFlags struct {
	enabled        bool
	kubeletHealthz string
	criSocket      string
	noRuntime      bool
	sandboxGrace   time.Duration
	checkInterval  time.Duration
}

func (h *healerFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&h.enabled, "health", true, "check the node's health, answer herd diagnose and carry out the repairs the controller asks for (docs/health.md)")
	fs.StringVar(&h.kubeletHealthz, "kubelet-healthz-url", health.DefaultKubeletHealthzURL, "kubelet's /healthz, which the kubelet check asks (the agent runs in the host's network)")
	fs.DurationVar(&h.checkInterval, "check-interval", schema.DefaultCheckInterval, "how often the node's health is checked; shorter sees faults sooner, at a CPU cost (docs/benchmarks.md)")
	fs.StringVar(&h.criSocket, "cri-socket", "", "the container runtime's CRI socket (default /run/containerd/containerd.sock under --root)")
	fs.BoolVar(&h.noRuntime, "no-runtime", false, "the node has no container runtime: leave the runtime and leftover-sandbox checks out (herd sim's nodes)")
	fs.DurationVar(&h.sandboxGrace, "sandbox-grace", health.DefaultSandboxGrace, "how old a pod sandbox of no pod on the node must be to count as left over")
}

// healerSetup is what the health side shares with the rest of the agent.
type healerSetup struct {
	node, root, stateDir string
	client               *kube.Client
	sysroot              *ostree.Sysroot
	feed                 *kube.Feed
	units                *systemd.Units
	monitor              *monitor.Monitor // nil: none runs
	log                  *slog.Logger
}

// startHealer starts the health side; wait returns its error once ctx
// ends.
func startHealer(ctx context.Context, cfg *rest.Config, h healerFlags, s healerSetup) (wait func() error, err error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	bootID, err := os.ReadFile(filepath.Join(s.root, "proc/sys/kernel/random/boot_id"))
	if err != nil {
		return nil, fmt.Errorf("read the boot ID: %w", err)
	}
	o := healer.Options{
		NodeName: s.node, Client: s.client, Dynamic: dyn, Feed: s.feed,
		Root: s.root, StateDir: s.stateDir, BootID: strings.TrimSpace(string(bootID)),
		KubeletHealthzURL: h.kubeletHealthz, CRISocket: h.criSocket, NoRuntime: h.noRuntime,
		SandboxGrace: h.sandboxGrace, Units: s.units, Rebooter: systemd.Logind{},
		Sysroot: s.sysroot, Interval: h.checkInterval, Log: s.log,
	}
	if s.monitor != nil { // a nil *monitor.Monitor in the interface would be called
		o.Monitor = diagnose.MonitorTop(s.monitor)
	}
	done := make(chan error, 1)
	go func() { done <- healer.Run(ctx, o) }()
	return func() error { return <-done }, nil
}
