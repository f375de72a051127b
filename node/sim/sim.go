// Package sim runs a fleet of simulated nodes in one process against a real
// API server: real agents, real OSTree sysroots, and a stand-in kubelet.
package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"herd.dev/herd/node"
	"herd.dev/herd/node/apply"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/node/metrics"
	"herd.dev/herd/node/sim/hostbus"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
)

// Defaults of Options.
const (
	// DefaultRef and DefaultRemote match examples/fleet-repo, so that its
	// pools pull from the simulator's repository once the fleet's remote URL
	// is set to Fleet.RepoURL and its releases to Fleet.Commits.
	DefaultRef         = "containeros/x86_64/stable"
	DefaultRemote      = "containeros"
	DefaultRebootDelay = 2 * time.Second
	DefaultQPS         = 100
	DefaultBurst       = 200
	// LabelPool is the label the example fleet selects pools by.
	LabelPool = "herd.dev/pool"
	// LabelHostname is the well-known hostname label.
	LabelHostname = "kubernetes.io/hostname"
	// LabelZone is the well-known zone label.
	LabelZone = "topology.kubernetes.io/zone"
)

// DefaultZones are the zones nodes are spread over when Options.Zones is empty.
var DefaultZones = []string{"a", "b", "c"}

// Sysctls is the simulated /proc/sys every node gets, with typical values:
// the parameters examples/fleet-repo sets, and some common ones. A render
// that sets any other is refused as an unknown sysctl, as on a real kernel
// that lacks it. Options.Sysctls adds more.
var Sysctls = map[string]string{
	"fs.file-max":                         "9223372036854775807",
	"fs.inotify.max_user_instances":       "128",
	"fs.inotify.max_user_watches":         "8192",
	"kernel.panic":                        "0",
	"kernel.pid_max":                      "4194304",
	"net.bridge.bridge-nf-call-ip6tables": "0",
	"net.bridge.bridge-nf-call-iptables":  "0",
	"net.core.netdev_max_backlog":         "1000",
	"net.core.somaxconn":                  "4096",
	"net.ipv4.ip_forward":                 "0",
	"net.ipv4.ip_local_port_range":        "32768\t60999",
	"net.ipv4.tcp_keepalive_time":         "7200",
	"net.netfilter.nf_conntrack_max":      "262144",
	"vm.max_map_count":                    "65530",
	"vm.overcommit_memory":                "0",
	"vm.swappiness":                       "60",
}

// Options configure Start.
type Options struct {
	// Config reaches the API server. The simulator creates Nodes, Leases,
	// updates their and Pods' status and deletes Pods, so it needs broad
	// rights (an admin config in tests and demos).
	Config *rest.Config
	// Pools maps a pool name to its number of nodes; nodes are named
	// <NamePrefix><pool>-<i>.
	Pools map[string]int
	// Zones the nodes of each pool are spread over, round robin; default
	// DefaultZones.
	Zones []string
	// RebootDelay is how long a simulated reboot keeps a node down;
	// default DefaultRebootDelay.
	RebootDelay time.Duration
	// Dir holds per node its root: rendered files, /proc/sys, the agent's
	// state directory. Empty means a temporary directory removed by Stop. A
	// given Dir must be empty or hold an earlier simulation (it is reset).
	// The OSTree repository and the sysroots go to a directory in /dev/shm
	// when it exists (ostree admin deploy freezes the file system holding
	// /boot), removed by Stop.
	Dir string
	// Versions is the number of OS versions committed; default 2.
	Versions int
	// Ref and Remote name the OS branch and the nodes' remote; defaults
	// DefaultRef and DefaultRemote.
	Ref, Remote string
	// Unsigned leaves the OS commits unsigned. By default they are signed
	// with a generated GPG key, which every node trusts for Remote (as
	// <root>/etc/herd/trusted.gpg.d/<remote>.asc): fleets verify signatures
	// unless a remote says gpgVerify: false.
	Unsigned bool
	// Repo, when set, is the OS repository to use (e.g. images built by
	// herd os build, wrapped by osfixture.Existing) instead of one the
	// simulator makes; Versions, Unsigned and Ref are then unused, and Stop
	// leaves it alone. Nodes boot its first commit.
	Repo *osfixture.Repo
	// TrustFile is given to every agent as its operator-owned list of
	// trusted OSTree remotes (node.Options.OSTrustFile); empty trusts the
	// fleet's remotes.
	TrustFile string
	// NamePrefix prefixes node names.
	NamePrefix string
	// Sysctls adds simulated /proc/sys entries to Sysctls.
	Sysctls map[string]string
	// QPS and Burst bound the one client all simulated nodes share;
	// defaults DefaultQPS and DefaultBurst.
	QPS   float32
	Burst int
	// LeaseDuration and LeaseRenew: node Leases last LeaseDuration
	// (default 40s) and are renewed every LeaseRenew (default a quarter
	// of it, 10s, as kubelet does).
	LeaseDuration, LeaseRenew time.Duration
	// StatusInterval is how often Ready is re-posted besides changes;
	// default 5m, as the kubelet's nodeStatusReportFrequency.
	StatusInterval time.Duration
	// Parallel bounds how many nodes are set up at once; default 8.
	Parallel int
	// LinkSysroots makes each node's sysroot of hard links to one
	// template's files instead of a copy (see osfixture.SysrootOptions.Link):
	// thousands of nodes in the memory of a few.
	LinkSysroots bool
	// KeepNodes leaves the Node objects behind at Stop.
	KeepNodes bool
	// Log receives the simulator's logs, and those of agents that run in
	// its process; nil discards them.
	Log *slog.Logger
	// AgentBinary, when set, is the herd-agent binary each node runs, as a
	// process of its own: started with the node's root, sysroot and state
	// directory, stopped (SIGTERM) and started again at every reboot,
	// talking D-Bus to a private bus where the simulator plays systemd and
	// logind, and counted from its /metrics. Empty runs every agent in
	// this process instead (node.New), which costs far less memory for
	// large fleets.
	AgentBinary string
	// AgentLog receives the logs of herd-agent processes; nil discards them.
	AgentLog io.Writer

	// Healer runs each node's health side beside its agent (node/healer;
	// in herd-agent processes, their own): the checks and their
	// conditions, herd diagnose's answers, repairs. Unit restarts restart
	// the simulated kubelet (clearing its faults, InjectKubeletFault) or
	// the node's runtime (Runtimes).
	Healer bool
	// CheckInterval of the healers; schema.DefaultCheckInterval when zero.
	CheckInterval time.Duration
	// SandboxGrace is how old a leftover pod sandbox must be to count
	// (health.DefaultSandboxGrace when zero).
	SandboxGrace time.Duration
	// Runtimes gives nodes, by name, a real container runtime: its CRI
	// socket, which the runtime and sandbox checks read, and how to
	// restart it. Other nodes have none (no runtime checks).
	Runtimes map[string]Runtime
}

// Runtime is a node's container runtime: a real containerd in tests.
type Runtime struct {
	Socket  string
	Restart func(ctx context.Context) error
}

// Fleet is a running simulation.
type Fleet struct {
	opts    Options
	log     *slog.Logger
	cs      kubernetes.Interface
	dyn     dynamic.Interface // herd diagnose's NodeDiagnostics, for the healers
	repo    *osfixture.Repo
	dir     string
	tmpDir  bool
	shm     string
	watch   *kube.NodeWatch
	agents  *kube.Client // the in-process agents' client
	kubelet *kubelet
	healthz string // the kubelets' /healthz server

	bus        *hostbus.Bus // with AgentBinary: systemd and logind for the agent processes
	kubeconfig string       // with AgentBinary: the agent processes' kubeconfig
	trustFile  string       // with AgentBinary: the agent processes' --os-trust
	started    time.Duration

	mu       sync.Mutex
	nodes    map[string]*simNode
	names    []string
	poolSize map[string]int      // nodes created per pool: the next one's index
	failBoot map[string]*failSet // by OS commit: where it fails to boot
	stopping bool                // Stop began: no node starts any more

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stopOnce sync.Once
	stopErr  error
}

// NodeCounters is what a simulated node did: its agents' counters (see
// metrics.Counters: Pulls, Prestaged, Deploys, FastPaths, Untainted, ...)
// and the simulator's.
type NodeCounters struct {
	metrics.Counters
	Boots        int // simulated reboots completed (failed boots included)
	BootFailures int // boots that failed (FailBoot) and fell back to the previous deployment
}

// failSet is where a commit fails to boot: on every node, or on some.
type failSet struct {
	all   bool
	nodes map[string]bool
}

// Start creates the OS repository, the nodes (Node objects, roots, sysroots
// booted into the first commit), and starts an agent for each, plus the
// kubelet stand-in. It returns once every node is Ready and its agent has
// reported. Stop tears everything down.
func Start(ctx context.Context, opts Options) (_ *Fleet, err error) {
	t0 := time.Now()
	if opts.Config == nil {
		return nil, errors.New("sim: Config is required")
	}
	total := 0
	for p, n := range opts.Pools {
		if n < 0 || p == "" {
			return nil, fmt.Errorf("sim: invalid pool %q: %d nodes", p, n)
		}
		total += n
	}
	if total == 0 {
		return nil, errors.New("sim: no nodes: Pools is empty")
	}
	if len(opts.Zones) == 0 {
		opts.Zones = DefaultZones
	}
	if opts.RebootDelay <= 0 {
		opts.RebootDelay = DefaultRebootDelay
	}
	if opts.Versions <= 0 {
		opts.Versions = 2
	}
	if opts.Ref == "" {
		opts.Ref = DefaultRef
	}
	if opts.Remote == "" {
		opts.Remote = DefaultRemote
	}
	if opts.QPS <= 0 {
		opts.QPS = DefaultQPS
	}
	if opts.Burst <= 0 {
		opts.Burst = DefaultBurst
	}
	if opts.LeaseDuration <= 0 {
		opts.LeaseDuration = 40 * time.Second
	}
	if opts.LeaseRenew <= 0 {
		opts.LeaseRenew = opts.LeaseDuration / 4 // kubelet's 10s of 40s
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 5 * time.Minute
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 8
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cfg := rest.CopyConfig(opts.Config)
	cfg.QPS, cfg.Burst = opts.QPS, opts.Burst
	cfg.UserAgent = "herd-sim"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("sim: client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("sim: client: %w", err)
	}

	f := &Fleet{opts: opts, log: log, cs: cs, dyn: dyn, nodes: map[string]*simNode{}, poolSize: map[string]int{}, failBoot: map[string]*failSet{}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			if stopErr := f.Stop(); stopErr != nil {
				err = fmt.Errorf("%w (stopping after the failure: %v)", err, stopErr)
			}
		}
	}()
	if err := f.makeDirs(); err != nil {
		return nil, err
	}
	if opts.Repo != nil {
		f.repo, f.opts.Ref = opts.Repo, opts.Repo.Ref
	} else {
		repo, err := osfixture.NewRepo(ctx, filepath.Join(f.shm, "os"), osfixture.Options{Versions: opts.Versions, Ref: opts.Ref, Sign: !opts.Unsigned})
		if err != nil {
			return nil, fmt.Errorf("sim: OS repository: %w", err)
		}
		f.repo = repo
	}

	if f.agents, err = kube.New(cfg); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	if f.watch, err = kube.WatchNodes(f.ctx, f.agents, ""); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	if opts.AgentBinary != "" {
		if err := f.startAgentProcesses(cfg); err != nil {
			return nil, err
		}
	}
	f.kubelet, err = startKubelet(f.ctx, f)
	if err != nil {
		return nil, err
	}
	if f.healthz, err = f.kubelet.serveHealthz(f.ctx); err != nil {
		return nil, err
	}

	// Nodes in a stable order: pools by name, then index.
	var names []string
	for _, p := range slices.Sorted(maps.Keys(opts.Pools)) {
		names = append(names, f.newNodes(p, opts.Pools[p], false)...)
	}
	if err := f.setupNodes(ctx, names); err != nil {
		return nil, err
	}
	f.started = time.Since(t0)
	log.Info("simulated fleet ready", "nodes", len(names), "took", f.started)
	return f, nil
}

// AddNodes adds count nodes to pool (one of the fleet's, or a new one) of
// the running simulation, set up as Start sets up its nodes, named on from
// the pool's last index. With converging they register with the taint
// herd.dev/converging (effect NoSchedule), as nodes joining a pool do; their
// agents remove it once the nodes are at their targets. It returns the new
// nodes' names once each is Ready and its agent has reported.
func (f *Fleet) AddNodes(ctx context.Context, pool string, count int, converging bool) ([]string, error) {
	if pool == "" || count <= 0 {
		return nil, fmt.Errorf("sim: add nodes: invalid pool %q or count %d", pool, count)
	}
	f.mu.Lock()
	stopping := f.stopping
	f.mu.Unlock()
	if stopping {
		return nil, errors.New("sim: add nodes: the simulation is stopped")
	}
	names := f.newNodes(pool, count, converging)
	if err := f.setupNodes(ctx, names); err != nil {
		return names, err
	}
	f.log.Info("nodes added", "pool", pool, "nodes", names, "converging", converging)
	return names, nil
}

// newNodes names and records count new nodes of pool.
func (f *Fleet) newNodes(pool string, count int, converging bool) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for range count {
		i := f.poolSize[pool]
		f.poolSize[pool]++
		name := fmt.Sprintf("%s%s-%d", f.opts.NamePrefix, pool, i)
		f.nodes[name] = &simNode{
			name:       name,
			pool:       pool,
			zone:       f.opts.Zones[i%len(f.opts.Zones)],
			converging: converging,
			root:       filepath.Join(f.dir, "nodes", name),
			sysroot:    filepath.Join(f.shm, "nodes", name),
			reboot:     make(chan struct{}, 1),
		}
		if f.opts.AgentBinary == "" {
			f.nodes[name].metrics, _ = metrics.New(nil) // unregistered: cannot fail
		}
		f.names = append(f.names, name)
		names = append(names, name)
	}
	return names
}

// setupNodes sets the named nodes up, Parallel at a time, and waits until
// their agents have reported.
func (f *Fleet) setupNodes(ctx context.Context, names []string) error {
	nodes := make([]*simNode, len(names))
	for i, name := range names {
		nodes[i] = f.node(name)
	}
	if err := f.eachNode(ctx, nodes, f.opts.Parallel, f.setupNode); err != nil {
		return err
	}
	return f.waitReported(ctx, names)
}

// node returns the node called name, or nil.
func (f *Fleet) node(name string) *simNode {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes[name]
}

const marker = ".herd-sim"

func (f *Fleet) makeDirs() error {
	if f.opts.Dir == "" {
		dir, err := os.MkdirTemp("", "herd-sim-")
		if err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		f.dir, f.tmpDir = dir, true
	} else {
		dir, err := filepath.Abs(f.opts.Dir)
		if err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("sim: %w", err)
		}
		if len(entries) > 0 {
			if _, err := os.Stat(filepath.Join(dir, marker)); err != nil {
				return fmt.Errorf("sim: %s is neither empty nor an earlier simulation's directory", dir)
			}
			for _, e := range entries {
				if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
					return fmt.Errorf("sim: reset %s: %w", dir, err)
				}
			}
		}
		f.dir = dir
	}
	if err := os.WriteFile(filepath.Join(f.dir, marker), []byte("herd sim\n"), 0o644); err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm"
	}
	shm, err := os.MkdirTemp(base, "herd-sim-sysroots-")
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	f.shm = shm
	return nil
}

// setupNode builds one node's root and sysroot, creates its Node object,
// makes it Ready and starts its agent.
func (f *Fleet) setupNode(ctx context.Context, n *simNode) error {
	if err := f.prepareNode(ctx, n); err != nil {
		return err
	}
	return f.startNode(ctx, n)
}

// prepareNode builds the node's root and sysroot: the machine, booted.
func (f *Fleet) prepareNode(ctx context.Context, n *simNode) error {
	sysctls := maps.Clone(Sysctls)
	maps.Copy(sysctls, f.opts.Sysctls)
	for k, v := range sysctls {
		if err := writeFile(filepath.Join(n.root, apply.SysctlFile(k)), v+"\n"); err != nil {
			return err
		}
	}
	if err := n.newBoot(); err != nil {
		return err
	}
	if err := healthDirs(n.root); err != nil {
		return err
	}
	if f.repo.KeyPath != "" {
		key, err := os.ReadFile(f.repo.KeyPath)
		if err != nil {
			return err
		}
		if err := writeFile(filepath.Join(n.keysDir(), f.opts.Remote+".asc"), string(key)); err != nil {
			return err
		}
	}
	s, err := f.repo.NewSysroot(ctx, n.sysroot, osfixture.SysrootOptions{Remote: f.opts.Remote, Link: f.opts.LinkSysroots})
	if err != nil {
		return err
	}
	n.os = s
	return nil
}

// startNode registers the prepared node (its kubelet's Node, status and
// Lease) and starts its agent.
func (f *Fleet) startNode(ctx context.Context, n *simNode) error {
	if err := f.kubelet.register(ctx, n); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopping {
		return errors.New("the simulation is stopped")
	}
	f.wg.Add(1)
	go f.runNode(n)
	return nil
}

// waitReported waits until the agents of the named nodes have reported a
// state.
func (f *Fleet) waitReported(ctx context.Context, names []string) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		missing := 0
		for _, name := range names {
			if n := f.watch.Node(name); n == nil || n.Annotations["herd.dev/state"] == "" {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("sim: waiting for %d agents to report: %w", missing, ctx.Err())
		case <-tick.C:
		}
	}
}

// runNode runs the node's agent, and plays its reboots: stop the agent, go
// NotReady, wait RebootDelay, boot the staged deployment (SimulateBoot) or,
// when its commit fails to boot there (FailBoot), fall back to the
// deployment booted before, new boot ID, Ready, start a new agent from the
// same state directory.
func (f *Fleet) runNode(n *simNode) {
	defer f.wg.Done()
	// The in-process agent's and healer's feeds, one each for all boots.
	feeds := nodeFeeds{agent: f.watch.Feed(n.name)}
	if f.opts.Healer {
		feeds.healer = f.watch.Feed(n.name)
	}
	for {
		run := func(n *simNode) bool { return f.runInProcess(n, feeds) }
		if f.opts.AgentBinary != "" {
			run = f.runProcess
		}
		if !run(n) {
			return
		}
		// The reboot: the agent went down with the node.
		f.kubelet.setReady(n, false)
		t := time.NewTimer(f.opts.RebootDelay)
		select {
		case <-f.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		failed := f.bootFails(n)
		if failed {
			// An A/B fallback: the bootloader gives up on the new
			// deployment and boots the one that ran before. ostree's
			// default stays the failed deployment, as on a real node.
			f.log.Warn("sim: the new deployment failed to boot; fell back to the previous one", "node", n.name)
		} else if err := n.os.SimulateBoot(f.ctx); err != nil && f.ctx.Err() == nil {
			f.log.Error("sim: boot", "node", n.name, "err", err)
		}
		if err := n.newBoot(); err != nil {
			f.log.Error("sim: boot id", "node", n.name, "err", err)
		}
		n.mu.Lock()
		n.boots++
		if failed {
			n.bootFailures++
		}
		n.mu.Unlock()
		f.kubelet.booted(n.name)
		f.kubelet.setReady(n, true)
	}
}

// nodeFeeds are the feeds of a node's in-process agent and healer.
type nodeFeeds struct{ agent, healer *kube.Feed }

// runInProcess runs node n's agent, and its healer with Options.Healer, in
// this process until it requests a reboot (true) or the simulation stops
// (false).
func (f *Fleet) runInProcess(n *simNode, feeds nodeFeeds) bool {
	actx, stop := context.WithCancel(f.ctx)
	defer stop()
	a, err := node.New(node.Options{
		NodeName:       n.name,
		Client:         f.agents,
		Sysroot:        n.os,
		Root:           n.root,
		StateDir:       filepath.Join(n.root, "var/lib/herd"),
		TrustedKeysDir: n.keysDir(),
		OSTrustFile:    f.opts.TrustFile,
		Services:       services{},
		Rebooter:       rebooter(n.reboot),
		Feed:           feeds.agent,
		Metrics:        n.metrics,
		Log:            f.log,
		RebootTimeout:  time.Hour,
	})
	if err != nil {
		f.log.Error("sim: agent", "node", n.name, "err", err)
		return false
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	healerDone := f.startHealer(actx, n, feeds.healer)
	defer func() { <-healerDone }() // after stop
	select {
	case <-f.ctx.Done():
		stop()
		<-done
		return false
	case err := <-done:
		if f.ctx.Err() == nil {
			f.log.Error("sim: agent stopped", "node", n.name, "err", err)
		}
		stop()
		return false
	case <-n.reboot:
		stop()
		<-done
		return true
	}
}

// runProcess runs node n's herd-agent process until it requests a reboot
// (true) or the simulation stops (false). An agent that exits by itself is
// started again after a second, as the kubelet restarts a failed container.
func (f *Fleet) runProcess(n *simNode) bool {
	for {
		p, err := f.startProc(n)
		if err != nil {
			f.log.Error("sim: agent", "node", n.name, "err", err)
			return false
		}
		n.mu.Lock()
		n.addr = p.addr
		n.mu.Unlock()
		select {
		case <-f.ctx.Done():
			f.stopProc(p)
			return false
		case err := <-p.exited:
			f.bus.Untrack(p.cmd.Process.Pid)
			f.retire(n)
			f.log.Error("sim: herd-agent exited; starting it again", "node", n.name, "err", err)
			t := time.NewTimer(time.Second)
			select {
			case <-f.ctx.Done():
				t.Stop()
				return false
			case <-t.C:
			}
		case <-n.reboot:
			f.awaitRebootCounted(n)
			f.stopProc(p)
			f.retire(n)
			return true
		}
	}
}

// awaitRebootCounted waits (up to 10 s) until node n's agent counts the
// reboot it requested: the request reaches the simulator just before the
// agent counts it.
func (f *Fleet) awaitRebootCounted(n *simNode) {
	n.mu.Lock()
	want := n.last.Reboots + 1
	n.mu.Unlock()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, ok := f.scrapeNode(n); ok && c.Reboots >= want {
			return
		}
		select {
		case <-f.ctx.Done():
			return
		case <-deadline.C:
			f.log.Warn("sim: the agent did not count the reboot it requested", "node", n.name)
			return
		case <-tick.C:
		}
	}
}

// scrapeNode reads the counters of node n's running agent process and
// remembers them as its last.
func (f *Fleet) scrapeNode(n *simNode) (metrics.Counters, bool) {
	n.mu.Lock()
	addr := n.addr
	n.mu.Unlock()
	if addr == "" {
		return metrics.Counters{}, false
	}
	c, err := scrape(f.ctx, addr)
	if err != nil {
		return metrics.Counters{}, false
	}
	n.mu.Lock()
	if n.addr == addr {
		n.last = c
	}
	n.mu.Unlock()
	return c, true
}

// retire adds the last counters of node n's agent process, which stopped,
// to those of its earlier processes.
func (f *Fleet) retire(n *simNode) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.base = n.base.Add(n.last)
	n.last, n.addr = metrics.Counters{}, ""
}

// startAgentProcesses prepares what herd-agent processes need: the bus
// where the simulator plays systemd and logind, and a kubeconfig.
func (f *Fleet) startAgentProcesses(cfg *rest.Config) error {
	if _, err := exec.LookPath(f.opts.AgentBinary); err != nil {
		return fmt.Errorf("sim: agent binary: %w", err)
	}
	if f.opts.AgentLog == nil {
		f.opts.AgentLog = io.Discard
	}
	f.kubeconfig = filepath.Join(f.dir, "kubeconfig")
	if err := writeKubeconfig(cfg, f.kubeconfig); err != nil {
		return err
	}
	if f.trustFile = f.opts.TrustFile; f.trustFile == "" {
		var err error
		if f.trustFile, err = writeTrust(filepath.Join(f.shm, "os-trust"), f.opts.Remote, f.repo); err != nil {
			return err
		}
	}
	b, err := hostbus.Start(f.shm)
	if err != nil {
		return err
	}
	f.bus = b
	return nil
}

// bootFails reports whether the node's next boot fails: its default
// deployment is not the booted one (a new deployment boots) and its commit
// is set to fail there (FailBoot).
func (f *Fleet) bootFails(n *simNode) bool {
	f.mu.Lock()
	none := len(f.failBoot) == 0
	f.mu.Unlock()
	if none {
		return false // no status read in the common case
	}
	st, err := n.os.Status(f.ctx)
	if err != nil {
		if f.ctx.Err() == nil {
			f.log.Error("sim: boot: OSTree status", "node", n.name, "err", err)
		}
		return false
	}
	def, ok := st.Default()
	if !ok || def.Booted {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fs := f.failBoot[def.Checksum]
	return fs != nil && (fs.all || fs.nodes[n.name])
}

// FailBoot makes OS commit fail to boot on the named nodes, or on every
// node (those added later too) when none is named. A node that reboots
// into a new deployment of that commit goes NotReady for the reboot delay
// as usual, then comes back Ready booted into the deployment it ran before,
// as a bootloader's A/B fallback does; its agent reports Degraded (the boot
// fell back). A reboot that boots no new deployment is not affected, nor
// are other commits. ClearFailBoot undoes it.
func (f *Fleet) FailBoot(commit string, nodes ...string) error {
	if !checksumRE.MatchString(commit) {
		return fmt.Errorf("sim: fail boot: %q is not an OSTree commit checksum", commit)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, name := range nodes {
		if f.nodes[name] == nil {
			return fmt.Errorf("sim: fail boot: no node %q", name)
		}
	}
	fs := f.failBoot[commit]
	if fs == nil {
		fs = &failSet{nodes: map[string]bool{}}
		f.failBoot[commit] = fs
	}
	if len(nodes) == 0 {
		fs.all = true
	}
	for _, name := range nodes {
		fs.nodes[name] = true
	}
	return nil
}

// ClearFailBoot undoes FailBoot: every commit boots again everywhere.
func (f *Fleet) ClearFailBoot() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.failBoot)
}

var checksumRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// Commits are the OS versions in the repository, oldest first; nodes boot
// Commits()[0].
func (f *Fleet) Commits() []string { return slices.Clone(f.repo.Commits) }

// RepoURL is the file:// URL of the OS repository, for the fleet's remote.
func (f *Fleet) RepoURL() string { return f.repo.URL }

// Ref is the OS branch the commits are on.
func (f *Fleet) Ref() string { return f.opts.Ref }

// Remote is the name of the OSTree remote the nodes' sysroots have.
func (f *Fleet) Remote() string { return f.opts.Remote }

// KeyPath is the armored public key the commits are signed with; empty
// with Options.Unsigned.
func (f *Fleet) KeyPath() string { return f.repo.KeyPath }

// Repo is the OS repository, e.g. to commit another version.
func (f *Fleet) Repo() *osfixture.Repo { return f.repo }

// Dir is the directory of the nodes' roots.
func (f *Fleet) Dir() string { return f.dir }

// Nodes are the node names: Start's by pool and index, then those
// AddNodes added, in the order added.
func (f *Fleet) Nodes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.names)
}

// Pool returns the pool of node name.
func (f *Fleet) Pool(name string) string {
	if n := f.node(name); n != nil {
		return n.pool
	}
	return ""
}

// Root is node name's root directory: rendered files, proc/sys, and the
// agent's state in var/lib/herd.
func (f *Fleet) Root(name string) string {
	if n := f.node(name); n != nil {
		return n.root
	}
	return ""
}

// Sysroot is node name's OSTree sysroot.
func (f *Fleet) Sysroot(name string) *ostree.Sysroot {
	if n := f.node(name); n != nil {
		return n.os
	}
	return nil
}

// Counters returns what node name did so far.
func (f *Fleet) Counters(name string) (NodeCounters, bool) {
	n := f.node(name)
	if n == nil {
		return NodeCounters{}, false
	}
	n.mu.Lock()
	boots, failures := n.boots, n.bootFailures
	n.mu.Unlock()
	if n.metrics != nil {
		return NodeCounters{Counters: n.metrics.Snapshot(), Boots: boots, BootFailures: failures}, true
	}
	f.scrapeNode(n)
	n.mu.Lock()
	c := n.base.Add(n.last)
	n.mu.Unlock()
	return NodeCounters{Counters: c, Boots: boots, BootFailures: failures}, true
}

// Total adds up the counters of all nodes.
func (f *Fleet) Total() NodeCounters {
	var t NodeCounters
	t.Restarts = map[string]int{}
	for _, name := range f.Nodes() {
		c, _ := f.Counters(name)
		t.Counters = t.Counters.Add(c.Counters)
		t.Boots += c.Boots
		t.BootFailures += c.BootFailures
	}
	return t
}

// StartupTime is how long Start took.
func (f *Fleet) StartupTime() time.Duration { return f.started }

// Stop stops the agents and the kubelet stand-in, deletes the Node objects
// and their Leases (unless KeepNodes), and removes the sysroots and a
// temporary Dir. It is safe to call more than once.
func (f *Fleet) Stop() error {
	f.stopOnce.Do(func() {
		f.mu.Lock()
		f.stopping = true
		f.mu.Unlock()
		f.cancel()
		f.wg.Wait()
		if f.kubelet != nil {
			f.kubelet.wait()
		}
		if f.bus != nil {
			f.bus.Close()
		}
		var errs []error
		if !f.opts.KeepNodes && len(f.Nodes()) > 0 {
			errs = append(errs, f.deleteNodes())
		}
		if f.repo != nil {
			errs = append(errs, f.repo.Close())
		}
		if f.shm != "" {
			errs = append(errs, os.RemoveAll(f.shm))
		}
		if f.tmpDir {
			errs = append(errs, os.RemoveAll(f.dir))
		}
		f.stopErr = errors.Join(errs...)
	})
	return f.stopErr
}

func (f *Fleet) deleteNodes() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, f.opts.Parallel)
	var wg sync.WaitGroup
	for _, name := range f.Nodes() {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := f.cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
			if err == nil || isNotFound(err) {
				err = f.cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Delete(ctx, name, metav1.DeleteOptions{})
			}
			if err != nil && !isNotFound(err) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("sim: delete node %s: %w", name, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// simNode is one simulated node.
type simNode struct {
	name, pool, zone string
	converging       bool   // registers with the converging taint
	root             string // files, proc/sys, state
	sysroot          string
	os               *ostree.Sysroot
	metrics          *metrics.Agent // of the agents in this process; nil with Options.AgentBinary
	reboot           chan struct{}

	mu            sync.Mutex
	addr          string           // of the running agent process's /metrics
	base          metrics.Counters // of the node's earlier agent processes
	last          metrics.Counters // of the running one, as last read
	boots         int
	bootFailures  int
	bootN         int
	runtimeStarts int // its runtime's restarts by repairs
}

// requestReboot hands a reboot request to the node's loop.
func (n *simNode) requestReboot() {
	select {
	case n.reboot <- struct{}{}:
	default:
	}
}

func (n *simNode) keysDir() string { return filepath.Join(n.root, "etc/herd/trusted.gpg.d") }

// newBoot writes a new boot ID to the node's proc/sys/kernel/random/boot_id.
func (n *simNode) newBoot() error {
	n.mu.Lock()
	n.bootN++
	id := fmt.Sprintf("%08x-0000-4000-8000-%012x", len(n.name), n.bootN)
	n.mu.Unlock()
	return writeFile(filepath.Join(n.root, "proc/sys/kernel/random/boot_id"), id+"\n")
}

func writeFile(p, content string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(content), 0o644)
}

// services stands in for systemd: restarts succeed (the agent counts them).
type services struct{}

func (services) Restart(context.Context, string) error { return nil }

// rebooter hands the reboot to the node's loop.
type rebooter chan struct{}

func (r rebooter) Reboot(context.Context) error {
	select {
	case r <- struct{}{}:
	default:
	}
	return nil
}

// ParsePools parses "system:3,general:6,batch:3".
func ParsePools(s string) (map[string]int, error) {
	pools := map[string]int{}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, count, ok := strings.Cut(part, ":")
		var n int
		if _, err := fmt.Sscanf(count, "%d", &n); !ok || err != nil || n < 0 || name == "" || fmt.Sprint(n) != count {
			return nil, fmt.Errorf("pool %q: want NAME:COUNT", part)
		}
		if _, dup := pools[name]; dup {
			return nil, fmt.Errorf("pool %q given twice", name)
		}
		pools[name] = n
	}
	if len(pools) == 0 {
		return nil, errors.New("no pools given")
	}
	return pools, nil
}

// ScalePools scales pool sizes to total nodes, keeping their proportions
// (largest remainder). Every pool that has nodes keeps at least one when
// total allows it, taken from the largest pool.
func ScalePools(pools map[string]int, total int) map[string]int {
	names := slices.Sorted(maps.Keys(pools))
	sum := 0
	for _, n := range pools {
		sum += n
	}
	out := map[string]int{}
	for _, p := range names {
		out[p] = 0
	}
	if sum == 0 || total <= 0 {
		return out
	}
	assigned := 0
	for _, p := range names {
		out[p] = pools[p] * total / sum
		assigned += out[p]
	}
	byRemainder := slices.Clone(names)
	sort.SliceStable(byRemainder, func(i, j int) bool {
		return pools[byRemainder[i]]*total%sum > pools[byRemainder[j]]*total%sum
	})
	for i := 0; assigned < total; i++ {
		out[byRemainder[i%len(byRemainder)]]++
		assigned++
	}
	nonEmpty := 0
	for _, p := range names {
		if pools[p] > 0 {
			nonEmpty++
		}
	}
	if total >= nonEmpty {
		for _, p := range names {
			if pools[p] > 0 && out[p] == 0 {
				largest := names[0]
				for _, q := range names {
					if out[q] > out[largest] {
						largest = q
					}
				}
				out[largest]--
				out[p]++
			}
		}
	}
	return out
}
