// Package healer is the agent's health side, beside its rollouts: the node
// checks every 10 s and their Node conditions, the answers to `herd
// diagnose`, and the repairs the controller asks of the node.
package healer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/dynamic"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/node/diagnose"
	"herd.dev/herd/node/health"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/node/remedy"
	"herd.dev/herd/os/ostree"
)

// EvidenceFile is the last evidence bundle, in the agent's state directory.
const EvidenceFile = "evidence.json"

// Options configure Run. NodeName, Client, Feed, StateDir, Units and
// Rebooter are required.
type Options struct {
	NodeName string
	Client   *kube.Client
	// Dynamic reads and answers NodeDiagnostics (herd diagnose); nil
	// answers none.
	Dynamic dynamic.Interface
	// Feed is the agent's own Node.
	Feed remedy.Feed
	// Root is where the host's filesystems are seen ("/" on a node, the
	// DaemonSet's /host mount in the agent's pod): the disk checks and
	// the diagnosis read below it.
	Root     string
	StateDir string
	BootID   string
	// KubeletHealthzURL: health.DefaultKubeletHealthzURL when empty.
	KubeletHealthzURL string
	// CRISocket is the runtime's CRI socket: cri.DefaultSocket under Root
	// when empty.
	CRISocket string
	// NoRuntime leaves the runtime and sandbox checks out: the node has
	// no container runtime (herd sim's nodes, but those it gives one).
	NoRuntime bool
	// SandboxGrace: health.DefaultSandboxGrace when zero.
	SandboxGrace time.Duration
	Units        remedy.Units
	Rebooter     remedy.Rebooter
	// Sysroot, when set, adds the OSTree deployments to the diagnosis.
	Sysroot *ostree.Sysroot
	// Monitor, when set, adds the eBPF node monitor's worst offenders to
	// the diagnosis (a *monitor.Monitor; leave it nil when none runs).
	Monitor diagnose.MonitorTop
	// Interval between check rounds: schema.DefaultCheckInterval when zero.
	Interval time.Duration
	// HeartbeatPeriod of the conditions: schema.DefaultHeartbeatPeriod
	// when zero.
	HeartbeatPeriod time.Duration
	Log             *slog.Logger
}

// Run checks the node, answers herd diagnose and carries repairs out until
// ctx ends.
func Run(ctx context.Context, o Options) error {
	if o.NodeName == "" || o.Client == nil || o.Feed == nil || o.StateDir == "" || o.Units == nil || o.Rebooter == nil {
		return errors.New("healer: NodeName, Client, Feed, StateDir, Units and Rebooter are required")
	}
	if o.Root == "" {
		o.Root = "/"
	}
	if o.CRISocket == "" {
		o.CRISocket = filepath.Join(o.Root, cri.DefaultSocket)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	rt, err := cri.New(o.CRISocket)
	if err != nil {
		return fmt.Errorf("healer: %w", err)
	}
	defer rt.Close()
	self := func(context.Context) (*corev1.Node, error) {
		if n := o.Feed.Node(); n != nil {
			return n, nil
		}
		return nil, fmt.Errorf("node %s not seen yet", o.NodeName)
	}
	diskPaths := make([]string, len(health.DefaultDiskPaths))
	for i, p := range health.DefaultDiskPaths {
		diskPaths[i] = filepath.Join(o.Root, p)
	}
	sandboxes := &health.Sandboxes{CRI: rt, Pods: health.PodsOnNode(o.Client.ListPods, o.NodeName), Grace: o.SandboxGrace}
	checks := []health.Check{
		&health.Kubelet{HealthzURL: o.KubeletHealthzURL, Client: &http.Client{}, Lease: health.NodeLease(o.Client, o.NodeName)},
		&health.PLEG{Node: self},
	}
	if !o.NoRuntime {
		checks = append(checks, &health.Runtime{CRI: rt}, sandboxes)
	}
	checks = append(checks, &health.Disk{Paths: diskPaths}, &health.Memory{}, &health.OSDrift{Node: self})
	var runtime diagnose.CRI
	if !o.NoRuntime {
		runtime = rt
	}
	evidence := filepath.Join(o.StateDir, EvidenceFile)
	monitor := &health.Monitor{
		Checks:    checks,
		Publisher: &health.Publisher{Client: o.Client, NodeName: o.NodeName, HeartbeatPeriod: o.HeartbeatPeriod},
		Node:      o.Feed.Node,
		Interval:  o.Interval,
		Log:       o.Log,
	}
	exec := &remedy.Executor{
		Node: o.NodeName, Client: o.Client, StateDir: o.StateDir, BootID: o.BootID,
		Units: o.Units, Rebooter: o.Rebooter, Log: o.Log,
		Capture: func(ctx context.Context, reason string) error {
			e := diagnose.Capture(ctx, diagnose.Sources{Checks: checks, CRI: runtime, DiskPaths: diskPaths}, reason, time.Now(), 0)
			return diagnose.SaveEvidence(evidence, e)
		},
		Clean: func(ctx context.Context) (int, error) {
			if o.NoRuntime {
				return 0, errors.New("no container runtime on this node")
			}
			return cleanSandboxes(ctx, sandboxes, rt)
		},
	}
	run := []func(context.Context) error{monitor.Run, func(ctx context.Context) error { return exec.Run(ctx, o.Feed) }}
	if o.Dynamic != nil {
		collector := &diagnose.Collector{Node: o.NodeName, Root: o.Root, DiskPaths: health.DefaultDiskPaths, Checks: checks, Sysroot: o.Sysroot, EvidencePath: evidence, Monitor: o.Monitor}
		responder := &diagnose.Responder{Client: o.Dynamic, Node: o.NodeName, Collect: collector.Collect, Log: o.Log}
		run = append(run, responder.Run)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(run))
	for i, f := range run {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// cleanSandboxes removes the pod sandboxes of pods no longer on the node
// (older than the check's grace), as the leftover check finds them.
func cleanSandboxes(ctx context.Context, s *health.Sandboxes, rt *cri.Client) (int, error) {
	left, err := s.Leftover(ctx, time.Now())
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, sb := range left {
		if err := rt.RemoveSandbox(ctx, sb.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		removed++
	}
	return removed, errors.Join(errs...)
}
