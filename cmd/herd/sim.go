package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"herd.dev/herd/node/sim"
)

type simFlags struct {
	nodes       int
	pools       string
	zones       string
	reboot      time.Duration
	dir         string
	kubeconfig  string
	versions    int
	ref, remote string
	prefix      string
	qps         float32
	burst       int
	lease       time.Duration
	link        bool
	keepNodes   bool
	unsigned    bool
	info        string
	logLevel    string
	failBoot    []string
	agent       string
	inProcess   bool
}

func newSimCmd() *cobra.Command {
	var f simFlags
	cmd := &cobra.Command{
		Use:   "sim [--nodes N] [--pools POOL:COUNT,...]",
		Short: "Simulate a fleet of nodes, each with a real agent, against a Kubernetes API server",
		Long: `Sim runs many nodes against a real API server: for each a Node object, a
root directory with a simulated /proc/sys, a real OSTree sysroot booted
into the first of --versions OS commits from a local OSTree repository, and
a real herd-agent process. It plays the kubelet: keeps the nodes Ready and
their Leases renewed, runs Pods bound to them (Running and Ready), finishes
the deletion of evicted Pods; and systemd and logind, on a D-Bus of its own:
unit restarts succeed, and a reboot stops the agent, the node goes NotReady
for --reboot, boots the staged deployment, and its agent starts again from
its state directory.

The agent is --agent, by default the herd-agent next to this herd binary
(make build puts both in bin/), else on $PATH. --in-process runs the agents
inside the simulator instead, which takes far less memory for large fleets.

--fail-boot makes an OS version fail to boot, to try failure handling: a
node rebooting into a new deployment of it comes back Ready on the
deployment it ran before, as a bootloader's A/B fallback does, and its agent
reports Degraded. VERSION is v1, v2, ... (as printed) or a commit checksum;
without nodes it fails everywhere. The flag may be given more than once.

Nodes are named <pool>-<i>, labelled herd.dev/pool, topology.kubernetes.io/zone
(round robin over --zones) and kubernetes.io/hostname. With --nodes, the
--pools sizes are scaled to N nodes in the same proportions.

It prints the OS commits and the repository URL: point the fleet repo's
remote at the URL and its releases at the commits. --info writes the same as
JSON. Ctrl-C stops the simulation and deletes its Nodes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSim(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), f, cmd.Flags().Changed("nodes"))
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.nodes, "nodes", 0, "total number of nodes; scales --pools (default: the sum of --pools)")
	fl.StringVar(&f.pools, "pools", "system:3,general:6,batch:3", "pools and their sizes, POOL:COUNT,...")
	fl.StringVar(&f.zones, "zones", strings.Join(sim.DefaultZones, ","), "zones to spread each pool's nodes over")
	fl.DurationVar(&f.reboot, "reboot", sim.DefaultRebootDelay, "how long a simulated reboot keeps a node down")
	fl.StringVar(&f.dir, "dir", "", "directory for the nodes' roots (default: a temporary one); must be empty or an earlier simulation's")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	fl.IntVar(&f.versions, "versions", 2, "OS versions to commit to the repository")
	fl.StringVar(&f.ref, "ref", sim.DefaultRef, "OSTree branch of the OS versions")
	fl.StringVar(&f.remote, "remote", sim.DefaultRemote, "name of the nodes' OSTree remote")
	fl.StringVar(&f.prefix, "prefix", "", "prefix of node names")
	fl.Float32Var(&f.qps, "qps", sim.DefaultQPS, "API requests per second, for all simulated nodes together")
	fl.IntVar(&f.burst, "burst", sim.DefaultBurst, "API request burst, for all simulated nodes together")
	fl.DurationVar(&f.lease, "node-lease-duration", 40*time.Second, "the nodes' Lease duration, as kubelet's nodeLeaseDurationSeconds; each Lease is renewed every quarter of it, as kubelet does")
	fl.BoolVar(&f.link, "link-sysroots", false, "hard-link the nodes' sysroots to one template's OSTree objects instead of copying them: thousands of nodes in little memory")
	fl.BoolVar(&f.unsigned, "unsigned", false, "do not GPG-sign the OS commits (fleets whose remote has gpgVerify: true refuse them)")
	fl.BoolVar(&f.keepNodes, "keep-nodes", false, "leave the Node objects behind when stopping")
	fl.StringVar(&f.info, "info", "", "write the repository URL, ref, remote, commits and nodes as JSON to this file once ready")
	fl.StringVar(&f.logLevel, "log-level", "warn", "log level of the simulator and its agents: debug, info, warn, error")
	fl.StringArrayVar(&f.failBoot, "fail-boot", nil, "make an OS version fail to boot, on the given nodes or everywhere: VERSION[:NODE,...]")
	fl.StringVar(&f.agent, "agent", "", "the herd-agent binary each node runs (default: next to herd, else on $PATH)")
	fl.BoolVar(&f.inProcess, "in-process", false, "run the agents inside the simulator, not as herd-agent processes")
	return cmd
}

// simInfo is what --info writes.
type simInfo struct {
	RepoURL string              `json:"repoURL"`
	Ref     string              `json:"ref"`
	Remote  string              `json:"remote"`
	Commits []string            `json:"commits"`
	KeyPath string              `json:"keyPath,omitempty"`
	Nodes   map[string][]string `json:"nodes"` // by pool
}

func runSim(ctx context.Context, stdout, stderr io.Writer, f simFlags, nodesSet bool) error {
	pools, err := sim.ParsePools(f.pools)
	if err != nil {
		return usageError("--pools: %v", err)
	}
	if nodesSet {
		if f.nodes <= 0 {
			return usageError("--nodes must be at least 1")
		}
		pools = sim.ScalePools(pools, f.nodes)
	}
	var zones []string
	for z := range strings.SplitSeq(f.zones, ",") {
		if z = strings.TrimSpace(z); z != "" {
			zones = append(zones, z)
		}
	}
	if len(zones) == 0 {
		return usageError("--zones: no zone given")
	}
	if f.reboot <= 0 || f.versions < 1 || f.qps <= 0 || f.burst <= 0 {
		return usageError("--reboot, --versions, --qps and --burst must be positive")
	}
	if f.lease < 4*time.Second || f.lease%time.Second != 0 {
		return usageError("--node-lease-duration must be whole seconds, at least 4s")
	}
	level, err := parseLogLevel(f.logLevel)
	if err != nil {
		return usageError("--log-level: %v", err)
	}
	failBoots, err := parseFailBoots(f.failBoot, f.versions)
	if err != nil {
		return usageError("--fail-boot: %v", err)
	}
	agent := ""
	if !f.inProcess {
		if agent, err = agentBinary(f.agent); err != nil {
			return failure(err)
		}
	}
	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return failure(fmt.Errorf("kubeconfig: %w", err))
	}
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	fleet, err := sim.Start(ctx, sim.Options{
		Config:        cfg,
		Pools:         pools,
		Zones:         zones,
		RebootDelay:   f.reboot,
		Dir:           f.dir,
		Versions:      f.versions,
		Ref:           f.ref,
		Remote:        f.remote,
		NamePrefix:    f.prefix,
		QPS:           f.qps,
		Burst:         f.burst,
		KeepNodes:     f.keepNodes,
		Unsigned:      f.unsigned,
		LinkSysroots:  f.link,
		LeaseDuration: f.lease,
		LeaseRenew:    f.lease / 4,
		Log:           slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})),
		AgentBinary:   agent,
		AgentLog:      stderr,
	})
	if err != nil {
		return failure(err)
	}
	var failNotes []string
	for _, fb := range failBoots {
		commit := fb.commit
		if fb.version > 0 {
			commit = fleet.Commits()[fb.version-1]
		}
		if err := fleet.FailBoot(commit, fb.nodes...); err != nil {
			_ = fleet.Stop()
			return usageError("--fail-boot: %v", err)
		}
		where := "every node"
		if len(fb.nodes) > 0 {
			where = strings.Join(fb.nodes, ", ")
		}
		failNotes = append(failNotes, fmt.Sprintf("OS commit %s fails to boot on %s", commit, where))
	}
	info := simInfo{RepoURL: fleet.RepoURL(), Ref: fleet.Ref(), Remote: fleet.Remote(), Commits: fleet.Commits(), KeyPath: fleet.KeyPath(), Nodes: map[string][]string{}}
	for _, n := range fleet.Nodes() {
		p := fleet.Pool(n)
		info.Nodes[p] = append(info.Nodes[p], n)
	}
	var sizes []string
	for _, p := range slices.Sorted(maps.Keys(pools)) {
		sizes = append(sizes, fmt.Sprintf("%s %d", p, pools[p]))
	}
	fmt.Fprintf(stdout, "herd sim: %d nodes ready in %v (%s; zones %s)\n",
		len(fleet.Nodes()), fleet.StartupTime().Round(time.Millisecond), strings.Join(sizes, ", "), strings.Join(zones, ","))
	fmt.Fprintf(stdout, "OS repository: %s (ref %s, remote %s)\n", info.RepoURL, info.Ref, info.Remote)
	if info.KeyPath != "" {
		fmt.Fprintf(stdout, "Commits signed with the key %s, trusted by every node\n", info.KeyPath)
	}
	for i, c := range info.Commits {
		note := ""
		if i == 0 {
			note = " (booted)"
		}
		fmt.Fprintf(stdout, "  v%d %s%s\n", i+1, c, note)
	}
	for _, note := range failNotes {
		fmt.Fprintln(stdout, note)
	}
	if f.info != "" {
		data, _ := json.MarshalIndent(info, "", "  ")
		if err := os.WriteFile(f.info, append(data, '\n'), 0o644); err != nil {
			_ = fleet.Stop()
			return failure(fmt.Errorf("--info: %w", err))
		}
	}
	fmt.Fprintln(stdout, "Press Ctrl-C to stop.")
	<-ctx.Done()

	t := fleet.Total()
	fmt.Fprintf(stdout, "herd sim: stopping; %d reboots (%d failed), %d pulls (%d pre-staging), %d deploys (%d of a commit already on disk), %d refusals\n",
		t.Boots, t.BootFailures, t.Pulls, t.Prestaged, t.Deploys, t.FastPaths, t.Refusals)
	if err := fleet.Stop(); err != nil {
		return failure(err)
	}
	return nil
}

// agentBinary finds the herd-agent binary: the one given, else the one
// next to this executable, else on $PATH.
func agentBinary(given string) (string, error) {
	if given != "" {
		return given, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "herd-agent")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	p, err := exec.LookPath("herd-agent")
	if err != nil {
		return "", fmt.Errorf("no herd-agent next to herd or on $PATH (make build builds both; or pass --agent or --in-process)")
	}
	return p, nil
}

// failBoot is one --fail-boot: a version (1-based) or a commit, and nodes.
type failBoot struct {
	version int
	commit  string
	nodes   []string
}

// parseFailBoots parses --fail-boot values, VERSION[:NODE,...], where
// VERSION is v1..v<versions> or a commit checksum.
func parseFailBoots(values []string, versions int) ([]failBoot, error) {
	var out []failBoot
	for _, v := range values {
		what, nodes, _ := strings.Cut(strings.TrimSpace(v), ":")
		var fb failBoot
		var n int
		switch {
		case len(what) == 64 && strings.Trim(what, "0123456789abcdef") == "":
			fb.commit = what
		case len(what) > 1 && what[0] == 'v':
			if _, err := fmt.Sscanf(what[1:], "%d", &n); err != nil || fmt.Sprint(n) != what[1:] || n < 1 || n > versions {
				return nil, fmt.Errorf("%q: the version must be v1..v%d or a commit checksum", v, versions)
			}
			fb.version = n
		default:
			return nil, fmt.Errorf("%q: want VERSION[:NODE,...], VERSION v1..v%d or a commit checksum", v, versions)
		}
		for node := range strings.SplitSeq(nodes, ",") {
			if node = strings.TrimSpace(node); node != "" {
				fb.nodes = append(fb.nodes, node)
			}
		}
		out = append(out, fb)
	}
	return out, nil
}

func parseLogLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return 0, fmt.Errorf("unknown level %q", s)
	}
	return l, nil
}
