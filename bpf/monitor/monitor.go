package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"

	"herd.dev/herd/bpf/cgroups"
	"herd.dev/herd/bpf/programs"
)

// Defaults of Options.
const (
	DefaultMaxCgroups = 10240
	DefaultInterval   = time.Minute
)

// Options configure a Monitor. The zero value monitors everything, on the
// hierarchy cgroups.Auto detects, without pod names.
type Options struct {
	// Cgroups picks the hierarchy that names cgroups (cgroups.Auto: v2 on
	// unified nodes, the v1 memory controller's otherwise).
	Cgroups cgroups.Mode
	// CgroupRoot is a cgroup file system root to find that hierarchy in:
	// the host's /sys/fs/cgroup as a container sees it (an agent in a pod
	// with the host's root at /host: /host/sys/fs/cgroup), or the hierarchy's
	// own mount point. Empty: found in /proc/self/mountinfo.
	CgroupRoot string
	// Programs to load; empty: AllPrograms.
	Programs []Program
	// Pods lists the pods bound to this node, to name pod cgroups by
	// namespace, pod and container; nil: pods are named by UID and
	// containers by short id.
	Pods PodLister
	// MaxCgroups bounds each per-cgroup map in the kernel (LRU: the least
	// recently updated cgroup is evicted when full). Default 10240.
	MaxCgroups uint32
	// Interval is how often dead cgroups are evicted from the maps and the
	// baseline of Top's rates is taken. Default one minute.
	Interval time.Duration
	// RecentOOMKills bounds the OOM kills remembered for Top. Default 64.
	RecentOOMKills int
	Logger         *slog.Logger
}

// Monitor runs the node monitor's programs. Its methods are safe for
// concurrent use.
type Monitor struct {
	opts      Options
	hierarchy cgroups.Hierarchy
	resolver  *cgroups.Resolver
	names     *namer
	disks     *diskNames
	loaded    map[Program]*loadedProgram
	status    []ProgramStatus
	oom       *oomReader

	mu         sync.Mutex
	baseline   snapshot
	readErrors float64

	stop chan struct{}
	done sync.WaitGroup
}

// loadedProgram is a program in the kernel and attached.
type loadedProgram struct {
	coll  *ebpf.Collection
	links []link.Link
}

func (l *loadedProgram) close() error {
	var errs []error
	for _, ln := range l.links {
		errs = append(errs, ln.Close())
	}
	l.coll.Close()
	return errors.Join(errs...)
}

// ProgramStatus says whether a program runs and, if not, why.
type ProgramStatus struct {
	Program Program `json:"program"`
	Loaded  bool    `json:"loaded"`
	// Reason is why it is not loaded.
	Reason string `json:"reason,omitempty"`
	// Dropped counts events it could not record (a full map or ring buffer).
	Dropped uint64 `json:"dropped"`
}

// New loads and attaches the programs. A program the kernel cannot run is
// left out and reported by Status; New fails only when no program loads,
// or when the cgroup hierarchy cannot be found.
func New(opts Options) (*Monitor, error) {
	opts = withDefaults(opts)
	h, err := hierarchy(opts)
	if err != nil {
		return nil, err
	}
	resolver, err := cgroups.NewResolver(h)
	if err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		resolver.Close()
		return nil, fmt.Errorf("monitor: %w", err)
	}
	m := &Monitor{
		opts: opts, hierarchy: h, resolver: resolver,
		names:  newNamer(resolver, opts.Pods, opts.Logger),
		disks:  newDiskNames(),
		loaded: map[Program]*loadedProgram{},
		stop:   make(chan struct{}),
	}
	m.loadPrograms(h.Mode)
	// The kernel's BTF (several MiB parsed) was needed only while loading.
	debug.FreeOSMemory()
	if len(m.loaded) == 0 {
		m.Close()
		var reasons []string
		for _, s := range m.status {
			reasons = append(reasons, fmt.Sprintf("%s: %s", s.Program, s.Reason))
		}
		return nil, fmt.Errorf("monitor: no program loaded: %s", strings.Join(reasons, "; "))
	}
	if lp := m.loaded[OOMKills]; lp != nil {
		rd, err := ringbuf.NewReader(lp.coll.Maps[programs.OomkillMapOomVictims])
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("monitor: OOM ring buffer: %w", err)
		}
		m.oom = newOOMReader(rd, m.names, opts.RecentOOMKills)
		m.done.Go(m.oom.run)
	}
	m.baseline = snapshot{at: time.Now()}
	m.done.Go(m.loop)
	return m, nil
}

// loadPrograms loads each program requested, recording why one did not.
func (m *Monitor) loadPrograms(mode cgroups.Mode) {
	kernel, kernelErr := btf.LoadKernelSpec()
	for _, p := range m.opts.Programs {
		lp, err := load(p, m.opts, mode, kernel, kernelErr)
		if err != nil {
			m.opts.Logger.Warn("eBPF program not loaded", "program", p, "reason", err)
			m.status = append(m.status, ProgramStatus{Program: p, Reason: errorReason(err)})
			continue
		}
		m.loaded[p] = lp
		m.status = append(m.status, ProgramStatus{Program: p, Loaded: true})
	}
}

func withDefaults(o Options) Options {
	if len(o.Programs) == 0 {
		o.Programs = AllPrograms
	}
	if o.MaxCgroups == 0 {
		o.MaxCgroups = DefaultMaxCgroups
	}
	if o.Interval <= 0 {
		o.Interval = DefaultInterval
	}
	if o.RecentOOMKills <= 0 {
		o.RecentOOMKills = 64
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func hierarchy(opts Options) (cgroups.Hierarchy, error) {
	if opts.CgroupRoot != "" {
		h, err := cgroups.DetectRoot(opts.Cgroups, opts.CgroupRoot)
		if err != nil {
			return cgroups.Hierarchy{}, fmt.Errorf("monitor: %w", err)
		}
		return h, nil
	}
	mounts, err := cgroups.Mounts()
	if err != nil {
		return cgroups.Hierarchy{}, fmt.Errorf("monitor: %w", err)
	}
	h, err := cgroups.Detect(opts.Cgroups, mounts)
	if err != nil {
		return cgroups.Hierarchy{}, fmt.Errorf("monitor: %w", err)
	}
	return h, nil
}

// load checks what p needs, loads it with the cgroup mode set and attaches
// its programs.
func load(p Program, opts Options, mode cgroups.Mode, kernel *btf.Spec, kernelErr error) (_ *loadedProgram, err error) {
	def, ok := definitions[p]
	if !ok {
		return nil, fmt.Errorf("unknown program %q", p)
	}
	if kernelErr != nil {
		return nil, &UnsupportedError{Program: p, Missing: featureBTF.String()}
	}
	if err := checkFeatures(p, def); err != nil {
		return nil, err
	}
	if err := checkKernel(p, def, kernel); err != nil {
		return nil, err
	}
	spec, err := def.load()
	if err != nil {
		return nil, err
	}
	if err := spec.Variables["cgroup_mode"].Set(kernelMode(mode)); err != nil {
		return nil, fmt.Errorf("program %s: %w", p, err)
	}
	for _, name := range def.cgroupMaps {
		spec.Maps[name].MaxEntries = opts.MaxCgroups
	}
	if def.configure != nil {
		if err := def.configure(spec, kernel); err != nil {
			return nil, fmt.Errorf("program %s: %w", p, err)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Programs: ebpf.ProgramOptions{KernelTypes: kernel},
	})
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", p, err)
	}
	lp := &loadedProgram{coll: coll}
	defer func() {
		if err != nil {
			lp.close()
		}
	}()
	names := make([]string, 0, len(coll.Programs))
	for name := range coll.Programs {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		l, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs[name]})
		if err != nil {
			return nil, fmt.Errorf("program %s: attach %s: %w", p, name, err)
		}
		lp.links = append(lp.links, l)
	}
	return lp, nil
}

// kernelMode is the programs' cgroup_mode for a hierarchy (CGROUP_V2 or
// CGROUP_V1_MEMORY in bpf/programs/include/common.h).
func kernelMode(m cgroups.Mode) uint32 {
	if m == cgroups.V1Memory {
		return 1
	}
	return 0
}

// Hierarchy is the cgroup hierarchy the monitor names cgroups in.
func (m *Monitor) Hierarchy() cgroups.Hierarchy { return m.hierarchy }

// TCPAttribution says what TCP retransmits are charged to: "socket-cgroup"
// (the v2 cgroup that created the socket) or "node" (on v1 nodes, where
// the socket's cgroup is not the pod's).
func (m *Monitor) TCPAttribution() string {
	if m.hierarchy.Mode == cgroups.V2 {
		return "socket-cgroup"
	}
	return "node"
}

// Status reports each program requested, loaded or not, with the events
// it dropped so far.
func (m *Monitor) Status() []ProgramStatus {
	out := slices.Clone(m.status)
	for i := range out {
		if lp := m.loaded[out[i].Program]; lp != nil {
			out[i].Dropped = dropped(lp)
		}
	}
	return out
}

func dropped(lp *loadedProgram) uint64 {
	var n uint64
	if v := lp.coll.Variables["dropped"]; v != nil {
		_ = v.Get(&n)
	}
	return n
}

// loop evicts dead cgroups and moves Top's baseline every Interval.
func (m *Monitor) loop() {
	t := time.NewTicker(m.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			if err := m.evictDead(); err != nil {
				m.opts.Logger.Warn("evict dead cgroups", "error", err)
			}
			s, err := m.read()
			if err != nil {
				m.opts.Logger.Warn("read eBPF maps", "error", err)
				continue
			}
			m.mu.Lock()
			m.baseline = s
			m.mu.Unlock()
		}
	}
}

// Close detaches and unloads the programs.
func (m *Monitor) Close() error {
	select {
	case <-m.stop:
		return nil
	default:
		close(m.stop)
	}
	if m.oom != nil {
		m.oom.close()
	}
	m.done.Wait()
	var errs []error
	for _, lp := range m.loaded {
		errs = append(errs, lp.close())
	}
	errs = append(errs, m.resolver.Close())
	return errors.Join(errs...)
}

// PodLister lists the pods bound to this node.
type PodLister func(ctx context.Context) ([]Pod, error)

// Pod is a pod bound to this node, as the monitor names its cgroups.
type Pod struct {
	UID, Namespace, Name string
	// Containers maps container runtime ids (without the "containerd://"
	// scheme) to container names, init and ephemeral containers included.
	Containers map[string]string
}
