// Command herd-agent is Herd's node agent: it keeps one node at the config
// and OS its Node's desired annotations name (docs/agent.md).
//
// It is a binary of its own, apart from herd, so that what runs on every
// node links no more than it needs: no CUE, CEL, kustomize or
// controller-runtime (an import test holds it to that).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/apimachinery/pkg/fields"

	"herd.dev/herd/bpf/monitor"
	"herd.dev/herd/node"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/node/logging"
	"herd.dev/herd/node/metrics"
	"herd.dev/herd/node/systemd"
	"herd.dev/herd/os/ostree"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, as herd's.
const (
	exitOK      = 0
	exitFailure = 1 // the agent failed
	exitUsage   = 2 // bad flags
)

const usage = `Usage: herd-agent --node NAME [flags]

herd-agent keeps one node at the desired state the controller sets on its
Node object (annotations herd.dev/desired-config and herd.dev/desired-os).

It watches only its own Node, reads the rendered config from the ConfigMap
the hash names (herd-system/herd-rendered-<hash>), checks the hash and the
file allowlist, writes the files atomically under --root, applies sysctls
through <root>/proc/sys, restarts kubelet or containerd through systemd when
their files changed, and when the OSTree commit or the kernel arguments
change: pulls the commit (unless it is on disk already; only from a remote
the operator's --os-trust file lists, verified with its key, and as a static
delta when the remote offers one), deploys it and reboots through logind. It reports on the Node: herd.dev/current-config,
os-booted, os-staged, state (Idle, Working, Rebooting, Degraded) and message.

When the controller sets herd.dev/prestage-os on an Idle node, the agent
pulls that commit ahead of the node's rollout and reports herd.dev/os-pulled.
It removes the taint herd.dev/converging, and only it, once the node is Idle
at its target.

Beside that, every --check-interval it checks the node (kubelet's /healthz
and Lease, PLEG, the runtime's CRI, leftover pod sandboxes, disk, memory
pressure, OS drift) and publishes Herd's Node conditions; it answers herd
diagnose's NodeDiagnostics for its node (with the eBPF monitor's worst
offenders when --monitor runs it); and it carries out, once, the repair the
controller asks for in herd.dev/remediate (restart kubelet or containerd
through systemd, clean sandboxes, reboot after an evidence bundle) and
reports it in herd.dev/remediated (docs/health.md). --health=false turns
that side off.

Its journal, the manifest of the files it wrote and their previous versions
live in --state-dir, so an agent killed at any point finishes the change
when it starts again. It serves Prometheus metrics (herd_agent_*) on
/metrics and the probes /healthz and /readyz on --metrics-addr.

Flags:
`

type flags struct {
	node, kubeconfig      string
	root, sysroot, osname string
	stateDir, osTrust     string
	remote                string
	rebootTimeout         time.Duration
	metricsAddr           string
	monitor               bool
	monitorCgroupRoot     string
	log                   logging.Options
	healer                healerFlags
	version               bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var f flags
	fs := flag.NewFlagSet("herd-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&f.node, "node", "", "name of this node's Node object (default $NODE_NAME)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&f.root, "root", node.DefaultRoot, "root directory rendered files are written under; proc/sys is read below it")
	fs.StringVar(&f.sysroot, "sysroot", "/", "OSTree sysroot")
	fs.StringVar(&f.osname, "osname", "", "OSTree stateroot (default: the only one in the sysroot)")
	fs.StringVar(&f.stateDir, "state-dir", node.DefaultStateDir, "directory of the agent's journal, file manifest and previous file versions")
	fs.StringVar(&f.osTrust, "os-trust", node.DefaultOSTrustFile, "the cluster operator's list of OSTree remotes nodes pull from and the key each must be signed with (mounted from ConfigMap herd-system/herd-os-trust); when it is missing no remote is trusted")
	fs.StringVar(&f.remote, "remote", "", "OSTree remote to pull from when the rendered config names none")
	fs.DurationVar(&f.rebootTimeout, "reboot-timeout", node.DefaultRebootTimeout, "request the reboot again when the node has not rebooted after this long")
	fs.StringVar(&f.metricsAddr, "metrics-addr", metrics.DefaultAddr, `address of /metrics, /healthz and /readyz ("0" for none)`)
	fs.BoolVar(&f.monitor, "monitor", false, "run the eBPF node monitor: run-queue latency, OOM kills, TCP retransmits, execs and block I/O latency per pod, on --metrics-addr and at /top")
	fs.StringVar(&f.monitorCgroupRoot, "monitor-cgroup-root", "", "the host's cgroup file system as the agent sees it, to name other pods' cgroups (in a pod: /host/sys/fs/cgroup); empty: this process's")
	fs.StringVar(&f.log.Encoding, "log-encoding", logging.DefaultEncoding, "log encoding: json or console")
	fs.StringVar(&f.log.Level, "log-level", logging.DefaultLevel, "log level: trace, debug, info or error")
	f.healer.register(fs)
	fs.BoolVar(&f.version, "version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "herd-agent: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	if f.version {
		fmt.Fprintf(stdout, "herd-agent %s\n", buildVersion())
		return exitOK
	}
	if f.node == "" {
		f.node = os.Getenv("NODE_NAME")
	}
	if f.node == "" {
		fmt.Fprintln(stderr, "herd-agent: --node is required (or set NODE_NAME)")
		return exitUsage
	}
	if f.osTrust == "" {
		fmt.Fprintln(stderr, "herd-agent: --os-trust is required: nodes pull only from the OSTree remotes the operator lists")
		return exitUsage
	}
	log, err := logging.New(stderr, f.log)
	if err != nil {
		fmt.Fprintln(stderr, "herd-agent:", err)
		return exitUsage
	}
	if err := runAgent(ctx, f, log); err != nil {
		log.Error("the agent stopped", "error", err)
		return exitFailure
	}
	return exitOK
}

func buildVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok && version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		return info.Main.Version
	}
	return version
}

// runAgent runs the agent and its metrics endpoint until ctx ends.
func runAgent(ctx context.Context, f flags, log *slog.Logger) error {
	cfg, err := kube.LoadConfig(f.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "herd-agent/" + buildVersion()
	cfg.QPS, cfg.Burst = 5, 10
	client, err := kube.New(cfg)
	if err != nil {
		return err
	}
	osname := f.osname
	if osname == "" {
		if osname, err = onlyStateroot(f.sysroot); err != nil {
			return err
		}
	}
	// The node's collectors (the agent's, and others such as an eBPF
	// monitor's) register with one registry, served on --metrics-addr.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg)
	if err != nil {
		return err
	}
	mon := startMonitor(f, client, reg, log)
	if mon != nil {
		defer mon.Close()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var agent atomic.Pointer[node.Agent]
	ready := func() error {
		if a := agent.Load(); a != nil {
			return a.Ready()
		}
		return errors.New("the agent has not started yet")
	}
	served, err := serveMetrics(ctx, f.metricsAddr, reg, ready, mon, log)
	if err != nil {
		return err
	}
	units := &systemd.Units{}
	defer units.Close()
	sysroot := &ostree.Sysroot{Path: f.sysroot, OSName: osname}
	// One watch of its own Node, for the agent and its health side.
	watch, err := kube.WatchNodes(ctx, client, fields.OneTermEqualSelector("metadata.name", f.node).String())
	if err != nil {
		cancel()
		return errors.Join(fmt.Errorf("watch node %s: %w", f.node, err), <-served)
	}
	a, err := node.New(node.Options{
		NodeName:      f.node,
		Client:        client,
		Sysroot:       sysroot,
		Root:          f.root,
		StateDir:      f.stateDir,
		DefaultRemote: f.remote,
		OSTrustFile:   f.osTrust,
		Services:      units,
		Rebooter:      systemd.Logind{},
		Feed:          watch.Feed(f.node),
		Metrics:       m,
		Log:           log,
		RebootTimeout: f.rebootTimeout,
	})
	if err != nil {
		cancel()
		return errors.Join(err, <-served)
	}
	agent.Store(a)
	waitHealer := func() error { return nil }
	if f.healer.enabled {
		waitHealer, err = startHealer(ctx, cfg, f.healer, healerSetup{node: f.node, root: f.root, stateDir: f.stateDir,
			client: client, sysroot: sysroot, feed: watch.Feed(f.node), units: units, monitor: mon, log: log})
		if err != nil {
			cancel()
			return errors.Join(err, <-served)
		}
	}
	err = a.Run(ctx)
	cancel() // the health side and the metrics stop with the agent
	return errors.Join(err, waitHealer(), <-served)
}

// serveMetrics serves /metrics, the probes and the monitor's /top on addr
// ("0" or empty: none) until ctx ends; the channel receives how it ended.
func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, ready func() error, mon *monitor.Monitor, log *slog.Logger) (<-chan error, error) {
	served := make(chan error, 1)
	if addr == "0" || addr == "" {
		close(served)
		return served, nil
	}
	srv, err := metrics.Listen(addr, reg, ready)
	if err != nil {
		return nil, err
	}
	if mon != nil {
		srv.Handle("/top", mon.Handler()) // GET ?n=10: the monitor's report as JSON
	}
	log.Info("serving metrics and probes", "addr", srv.Addr())
	go func() { served <- srv.Serve(ctx) }()
	return served, nil
}

// onlyStateroot returns the sysroot's stateroot when it has exactly one.
func onlyStateroot(sysroot string) (string, error) {
	entries, err := os.ReadDir(filepath.Join(sysroot, "ostree", "deploy"))
	if err != nil {
		return "", fmt.Errorf("find the OSTree stateroot (pass --osname): %w", err)
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	if len(names) != 1 {
		return "", fmt.Errorf("sysroot %s has stateroots %q: pass --osname", sysroot, names)
	}
	return names[0], nil
}
