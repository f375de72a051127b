package main

// The agent's health side (node/healer: checks, herd diagnose's answers,
// repairs), wired apart from the rest of the agent so that it moves as one
// piece into cmd/herd-agent.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"herd.dev/herd/node"
	"herd.dev/herd/node/healer"
	"herd.dev/herd/node/health"
	"herd.dev/herd/node/systemd"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

// healerFlags are the health side's flags.
type healerFlags struct {
	kubeletHealthz string
	criSocket      string
	checkInterval  time.Duration
}

func (h *healerFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&h.kubeletHealthz, "kubelet-healthz-url", health.DefaultKubeletHealthzURL, "kubelet's /healthz, which the kubelet check asks (the agent runs in the host's network)")
	fl.DurationVar(&h.checkInterval, "check-interval", schema.DefaultCheckInterval, "how often the node's health is checked; shorter sees faults sooner, at a CPU cost (docs/benchmarks.md)")
	fl.StringVar(&h.criSocket, "cri-socket", "", "the container runtime's CRI socket (default /run/containerd/containerd.sock under --root)")
}

// healerSetup is what the health side shares with the rest of the agent.
type healerSetup struct {
	node, root, stateDir string
	sysroot              *ostree.Sysroot
	feed                 node.NodeFeed
	units                *systemd.Units
	log                  *slog.Logger
}

// startHealer starts the health side; wait returns its error once ctx
// ends.
func startHealer(ctx context.Context, cfg *rest.Config, cs kubernetes.Interface, h healerFlags, s healerSetup) (wait func() error, err error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	bootID, err := os.ReadFile(filepath.Join(s.root, "proc/sys/kernel/random/boot_id"))
	if err != nil {
		return nil, fmt.Errorf("read the boot ID: %w", err)
	}
	done := make(chan error, 1)
	go func() {
		done <- healer.Run(ctx, healer.Options{
			NodeName: s.node, Client: cs, Dynamic: dyn, Feed: s.feed,
			Root: s.root, StateDir: s.stateDir, BootID: strings.TrimSpace(string(bootID)),
			KubeletHealthzURL: h.kubeletHealthz, CRISocket: h.criSocket,
			Units: s.units, Rebooter: systemd.Logind{},
			Sysroot: s.sysroot, Interval: h.checkInterval, Log: s.log,
		})
	}()
	return func() error { return <-done }, nil
}
