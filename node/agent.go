package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/node/fsm"
	"herd.dev/herd/node/kube"
	"herd.dev/herd/node/metrics"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

// Systemd units the agent restarts when files of their class change.
const (
	KubeletUnit    = fsm.KubeletUnit
	ContainerdUnit = fsm.ContainerdUnit
)

// Defaults of Options.
const (
	DefaultRoot           = "/"
	DefaultStateDir       = "/var/lib/herd"
	DefaultTrustedKeysDir = "/etc/herd/trusted.gpg.d"
	// DefaultOSTrustFile is where the agent's DaemonSet mounts the
	// operator's ConfigMap herd-system/herd-os-trust.
	DefaultOSTrustFile   = "/etc/herd/os-trust/remotes.yaml"
	DefaultRebootTimeout = fsm.DefaultRebootTimeout
	// FieldManager names the agent's patches in managedFields.
	FieldManager = "herd-agent"
)

// ServiceManager restarts services; systemd over D-Bus on a node
// (node/systemd), a recorder in tests.
type ServiceManager interface {
	Restart(ctx context.Context, unit string) error
}

// Rebooter reboots the node. Reboot returns once the reboot is under way;
// the agent then waits to be stopped by it.
type Rebooter interface {
	Reboot(ctx context.Context) error
}

// NodeFeed is how an agent learns about its Node: the latest copy from a
// watch cache, and a signal whenever it may have changed (kube.Feed).
type NodeFeed interface {
	// Node returns the cached Node, or nil while it does not exist. The
	// object is shared with the cache: never modify it.
	Node() *corev1.Node
	// Changed receives a value (coalesced) whenever Node may return
	// something new.
	Changed() <-chan struct{}
}

// Points at which the agent calls Options.Hook.
const (
	HookFilesPlanned = "files-planned" // the journal names the change, no file written yet
	HookFileWritten  = "file-written"  // after each file written or removed
	HookFilesWritten = "files-written" // all files written
	HookSysctls      = "sysctls"       // sysctls applied
	HookRestarted    = "restarted"     // after each service restart, recorded in the journal
	HookDeployed     = "deployed"      // the OS commit is deployed for the next boot, and the journal says so
	HookRebooting    = "rebooting"     // Rebooting reported, before Rebooter.Reboot
	HookPrestaged    = "prestaged"     // a prestage-os commit handled: found on disk, pulled, or failed
	HookUntainting   = "untainting"    // at the target, before the agent reads the Node to remove the converging taint
)

// Options configure an Agent. NodeName, Client, Sysroot, Services and
// Rebooter are required.
type Options struct {
	NodeName string
	Client   *kube.Client
	// Sysroot is the node's OSTree sysroot and stateroot.
	Sysroot *ostree.Sysroot
	// Root is where rendered files are written and where proc/sys and
	// proc/sys/kernel/random/boot_id are read; DefaultRoot when empty.
	Root string
	// StateDir holds the journal, the manifest of written files and their
	// previous versions; DefaultStateDir when empty.
	StateDir string
	// TrustedKeysDir holds a GPG public key per OSTree remote, named
	// <remote>.asc or <remote>.gpg, trusted when the rendered config asks
	// for GPG verification; DefaultTrustedKeysDir when empty.
	TrustedKeysDir string
	// DefaultRemote is pulled from when a rendered config names no remote.
	DefaultRemote string
	// OSTrustFile is the cluster operator's list of trusted OSTree remotes
	// and their keys (ostree.LoadTrust): only those are pulled from, always
	// with signature verification. Empty trusts the fleet repo's remotes
	// (tests and simulations); herd-agent always sets it.
	OSTrustFile string
	Services    ServiceManager
	Rebooter    Rebooter
	// Feed delivers the Node; nil means a watch of this one Node
	// (kube.WatchNode).
	Feed NodeFeed
	// Metrics receives what the agent does; nil means new, unregistered
	// ones (see Agent.Metrics).
	Metrics *metrics.Agent
	// Log receives the agent's log; nil means slog.Default().
	Log *slog.Logger
	// RebootTimeout is how long the agent waits to be stopped by a reboot it
	// requested before it requests it again; DefaultRebootTimeout when zero.
	RebootTimeout time.Duration
	// Hook, for tests, is called at the Hook* points. An agent whose context
	// is cancelled in the hook stops right there, as if killed.
	Hook func(point string)
}

// Agent reconciles one node towards the desired-config and desired-os
// annotations its Node carries: it runs the state machine of package fsm
// and carries out its actions. See Run.
type Agent struct {
	opts    Options
	log     *slog.Logger
	files   *apply.Files
	metrics *metrics.Agent

	state fsm.State
	saved fsm.Journal // the journal as on disk

	render *schema.Rendered // the last render fetched (renders are immutable)

	osCache *ostree.Status // the sysroot's status as last read, valid while osStamp holds
	osStamp string

	feed  NodeFeed     // where Run learns about the Node
	node  *corev1.Node // the Node of the sync in progress
	ready atomic.Bool  // watching the Node, and reported once
}

// New checks the options, creates the state directory and reads the journal
// and the boot ID.
func New(opts Options) (*Agent, error) {
	switch {
	case opts.NodeName == "":
		return nil, errors.New("agent: NodeName is required")
	case opts.Client == nil:
		return nil, errors.New("agent: Client is required")
	case opts.Sysroot == nil:
		return nil, errors.New("agent: Sysroot is required")
	case opts.Services == nil:
		return nil, errors.New("agent: Services is required")
	case opts.Rebooter == nil:
		return nil, errors.New("agent: Rebooter is required")
	}
	if opts.Root == "" {
		opts.Root = DefaultRoot
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	if opts.TrustedKeysDir == "" {
		opts.TrustedKeysDir = DefaultTrustedKeysDir
	}
	if opts.Metrics == nil {
		m, err := metrics.New(nil)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		opts.Metrics = m
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("node", opts.NodeName)
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: state directory: %w", err)
	}
	j, err := loadJournal(opts.StateDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	bootID, err := readBootID(opts.Root)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if bootID == "" {
		log.Warn("no boot ID under the root: reboots cannot be told apart", "path", filepath.Join(opts.Root, bootIDFile))
	}
	return &Agent{
		opts:    opts,
		log:     log,
		files:   &apply.Files{Root: opts.Root, StateDir: filepath.Join(opts.StateDir, "files")},
		metrics: opts.Metrics,
		state:   fsm.New(j, bootID, opts.RebootTimeout),
		saved:   j.Clone(),
	}, nil
}

// Metrics returns the agent's metrics.
func (a *Agent) Metrics() *metrics.Agent { return a.metrics }

// Ready returns nil once the agent watches its Node and has reported on
// it, else why it is not ready: the /readyz probe.
func (a *Agent) Ready() error {
	if !a.ready.Load() {
		return errors.New("the agent has not reported on its Node yet")
	}
	return nil
}

const bootIDFile = "proc/sys/kernel/random/boot_id"

func readBootID(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, bootIDFile))
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read boot ID: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Run watches the Node and reconciles it whenever its desired state changes,
// until ctx ends; it returns nil then. Between changes it only waits on the
// watch: no polling. Transient failures (API errors, a failed pull over the
// network) are retried with exponential backoff up to 5 minutes; refusals
// (a bad render, an unknown sysctl, a missing or unverifiable commit, a boot
// that fell back) leave the node Degraded until the desired state changes.
func (a *Agent) Run(ctx context.Context) error {
	feed := a.opts.Feed
	if feed == nil {
		f, err := kube.WatchNode(ctx, a.opts.Client, a.opts.NodeName)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent: %w", err)
		}
		feed = f
	}
	a.feed = feed
	j := a.state.Journal
	a.log.Info("agent started", "bootID", a.state.BootID, "applied", schema.Short(j.Applied), "step", j.Phase)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		var wait time.Duration
		if n := feed.Node(); n != nil {
			wait = a.sync(ctx, n)
		}
		if ctx.Err() != nil {
			return nil
		}
		if wait < 0 {
			continue // look again at once
		}
		var tick <-chan time.Time
		if wait > 0 {
			timer.Reset(wait)
			tick = timer.C
		}
		select {
		case <-ctx.Done():
			return nil
		case <-feed.Changed():
		case <-tick:
		}
		if wait > 0 && !timer.Stop() {
			select { // drain a tick that fired alongside another event
			case <-timer.C:
			default:
			}
		}
	}
}

// sync runs the state machine on the Node as it is now, carrying out its
// actions, until it waits. It returns when to look again without an event
// (0: only on the next event; negative: at once).
func (a *Agent) sync(ctx context.Context, n *corev1.Node) time.Duration {
	a.node = n
	in := fsm.Input{Now: time.Now(), Node: nodeOf(n)}
	for {
		var out fsm.Output
		a.state, out = fsm.Step(a.state, in)
		act := out.Action
		perr := a.persist()
		a.noted(ctx, out.Notes)
		if ctx.Err() != nil {
			return 0
		}
		switch act.Kind {
		case fsm.Wait:
			if perr != nil {
				a.log.Error("journal", "error", perr)
				return 5 * time.Second // write it again soon
			}
			return act.After
		case fsm.Resync:
			return -1
		}
		res := fsm.Result{Of: act.Kind, Err: perr}
		if perr == nil {
			res = a.do(ctx, act)
		}
		if ctx.Err() != nil {
			return 0 // stopped, or killed in a hook: the next start resumes from the journal
		}
		in = fsm.Input{Now: time.Now(), Result: &res}
	}
}

// nodeOf is what the state machine needs of a Node.
func nodeOf(n *corev1.Node) *fsm.Node {
	tainted := false
	for _, t := range n.Spec.Taints {
		if t.Key == schema.TaintConverging && t.Effect == corev1.TaintEffectNoSchedule {
			tainted = true
		}
	}
	return &fsm.Node{
		Desired:         desired(n),
		PrestageOS:      n.Annotations[schema.AnnotationPrestageOS],
		Tainted:         tainted,
		Reported:        fsm.ReportOf(n.Annotations),
		ResourceVersion: n.ResourceVersion,
	}
}

// desired returns the Node's desired state: the controller's annotations.
func desired(n *corev1.Node) fsm.Key {
	return fsm.Key{Config: n.Annotations[schema.AnnotationDesiredConfig], OS: n.Annotations[schema.AnnotationDesiredOS]}
}

// persist writes the journal when the state machine changed it.
func (a *Agent) persist() error {
	if a.state.Journal.Equal(a.saved) {
		return nil
	}
	if err := saveJournal(a.opts.StateDir, a.state.Journal); err != nil {
		return err
	}
	a.saved = a.state.Journal.Clone()
	return nil
}

func (a *Agent) hook(ctx context.Context, point string) error {
	if a.opts.Hook != nil {
		a.opts.Hook(point)
	}
	return ctx.Err()
}
