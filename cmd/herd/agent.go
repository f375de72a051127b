package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node"
	"herd.dev/herd/node/systemd"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

type agentFlags struct {
	node, kubeconfig      string
	root, sysroot, osname string
	stateDir              string
	remote, logLevel      string
	osTrust               string
	rebootTimeout         time.Duration
	healer                healerFlags
}

func newAgentCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent --node NAME",
		Short: "Run the node agent: apply the desired config and OS to this node",
		Long: `Agent keeps one node at the desired state the controller sets on its Node
object (annotations herd.dev/desired-config and herd.dev/desired-os).

It watches only its own Node, reads the rendered config from the ConfigMap
the hash names (herd-system/herd-rendered-<hash>), checks the hash and the
file allowlist, writes the files atomically under --root, applies sysctls
through <root>/proc/sys, restarts kubelet or containerd through systemd when
their files changed, and when the OSTree commit or the kernel arguments
change: pulls the commit (unless it is on disk already; only from a remote the
operator's --os-trust file lists, verified with its key, and as a static
delta when the remote offers one), deploys it and reboots through logind. It reports on the Node: herd.dev/current-config,
os-booted, os-staged, state (Idle, Working, Rebooting, Degraded) and message.

When the controller sets herd.dev/prestage-os on an Idle node, the agent
pulls that commit ahead of the node's rollout, from the remote of the config
it runs, and nothing else (no deploy, no file, no reboot; the node stays
Idle), and reports herd.dev/os-pulled once the commit is on disk. A node that
joins registers with the taint herd.dev/converging (kubelet
--register-with-taints=herd.dev/converging=:NoSchedule); the agent removes
it, and only it, once the node is Idle at its target.

Beside that, every 10 s it checks the node (kubelet's /healthz and Lease,
PLEG, the runtime's CRI, leftover pod sandboxes, disk, memory pressure, OS
drift) and publishes Herd's Node conditions; it answers herd diagnose's
NodeDiagnostics for its node; and it carries out, once, the repair the
controller asks for in herd.dev/remediate (restart kubelet or containerd
through systemd, clean sandboxes, reboot after an evidence bundle) and
reports it in herd.dev/remediated (docs/health.md).

Its journal, the manifest of the files it wrote and their previous versions
live in --state-dir, so an agent killed at any point finishes the change
when it starts again. It runs as root on the node, with a ServiceAccount
token bound to its pod (see config/agent).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAgent(cmd.Context(), cmd.ErrOrStderr(), f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.node, "node", "", "name of this node's Node object (default $NODE_NAME)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&f.root, "root", node.DefaultRoot, "root directory rendered files are written under; proc/sys is read below it")
	fl.StringVar(&f.sysroot, "sysroot", "/", "OSTree sysroot")
	fl.StringVar(&f.osname, "osname", "", "OSTree stateroot (default: the only one in the sysroot)")
	fl.StringVar(&f.stateDir, "state-dir", node.DefaultStateDir, "directory of the agent's journal, file manifest and previous file versions")
	fl.StringVar(&f.osTrust, "os-trust", node.DefaultOSTrustFile, "the cluster operator's list of OSTree remotes nodes pull from and the key each must be signed with (mounted from ConfigMap herd-system/herd-os-trust); when it is missing no remote is trusted")
	fl.StringVar(&f.remote, "remote", "", "OSTree remote to pull from when the rendered config names none")
	fl.DurationVar(&f.rebootTimeout, "reboot-timeout", node.DefaultRebootTimeout, "request the reboot again when the node has not rebooted after this long")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.healer.register(fl)
	return cmd
}

func runAgent(ctx context.Context, stderr io.Writer, f agentFlags) error {
	if f.node == "" {
		f.node = os.Getenv("NODE_NAME")
	}
	if f.node == "" {
		return usageError("--node is required (or set NODE_NAME)")
	}
	if f.osTrust == "" {
		return usageError("--os-trust is required: nodes pull only from the OSTree remotes the operator lists")
	}
	level, err := parseLogLevel(f.logLevel)
	if err != nil {
		return usageError("--log-level: %v", err)
	}
	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return failure(fmt.Errorf("kubeconfig: %w", err))
	}
	cfg.UserAgent = "herd-agent/" + version
	cfg.QPS, cfg.Burst = 5, 10
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return failure(fmt.Errorf("kubernetes client: %w", err))
	}
	osname := f.osname
	if osname == "" {
		if osname, err = onlyStateroot(f.sysroot); err != nil {
			return failure(err)
		}
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	units := &systemd.Units{}
	defer units.Close()
	// One watch of its own Node, for the agent and its health side.
	watch, err := node.WatchNodes(ctx, cs, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", f.node).String()})
	if err != nil {
		return failure(fmt.Errorf("watch node %s: %w", f.node, err))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	a, err := node.New(node.Options{
		NodeName: f.node,
		Client:   cs,
		// Kernel arguments a pool may set are the pool's; a deploy keeps the
		// OS's own (root=, rw, ...).
		Sysroot:       &ostree.Sysroot{Path: f.sysroot, OSName: osname, PoolArg: schema.PoolKernelArg},
		Root:          f.root,
		StateDir:      f.stateDir,
		DefaultRemote: f.remote,
		OSTrustFile:   f.osTrust,
		Services:      units,
		Rebooter:      systemd.Logind{},
		Feed:          watch.Feed(f.node),
		Log:           log,
		RebootTimeout: f.rebootTimeout,
	})
	if err != nil {
		return failure(err)
	}
	waitHealer, err := startHealer(ctx, cfg, cs, f.healer, healerSetup{node: f.node, root: f.root, stateDir: f.stateDir,
		sysroot: &ostree.Sysroot{Path: f.sysroot, OSName: osname}, feed: watch.Feed(f.node), units: units, log: log})
	if err != nil {
		return failure(err)
	}
	err = a.Run(ctx)
	stop() // the health side stops with the agent
	if herr := waitHealer(); err == nil {
		err = herr
	}
	if err != nil {
		return failure(err)
	}
	return nil
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

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("unknown level %q", s)
	}
	return l, nil
}
