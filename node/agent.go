package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

// Systemd units the agent restarts when files of their class change.
const (
	KubeletUnit    = "kubelet.service"
	ContainerdUnit = "containerd.service"
)

// Defaults of Options.
const (
	DefaultRoot           = "/"
	DefaultStateDir       = "/var/lib/herd"
	DefaultTrustedKeysDir = "/etc/herd/trusted.gpg.d"
	// DefaultOSTrustFile is where the agent's DaemonSet mounts the
	// operator's ConfigMap herd-system/herd-os-trust.
	DefaultOSTrustFile   = "/etc/herd/os-trust/remotes.yaml"
	DefaultRebootTimeout = 15 * time.Minute
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

// Points at which the agent calls Options.Hook.
const (
	HookFilesPlanned = "files-planned" // the journal names the change, no file written yet
	HookFileWritten  = "file-written"  // after each file written or removed
	HookFilesWritten = "files-written" // all files written
	HookSysctls      = "sysctls"       // sysctls applied
	HookRestarted    = "restarted"     // after each service restart
	HookDeployed     = "deployed"      // the OS commit is deployed for the next boot
	HookRebooting    = "rebooting"     // Rebooting reported, before Rebooter.Reboot
	HookPrestaged    = "prestaged"     // a prestage-os commit handled: found on disk, pulled, or failed
)

// Options configure an Agent. NodeName, Client, Sysroot, Services and
// Rebooter are required.
type Options struct {
	NodeName string
	Client   kubernetes.Interface
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
	// (tests and simulations); the herd agent command always sets it.
	OSTrustFile string
	Services    ServiceManager
	Rebooter    Rebooter
	// Feed delivers the Node; nil means a watch of this one Node (WatchNode).
	Feed NodeFeed
	// Metrics receives counters; nil means a new one (see Agent.Metrics).
	Metrics *Metrics
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
// annotations its Node carries. See Run.
type Agent struct {
	opts    Options
	log     *slog.Logger
	files   *apply.Files
	metrics *Metrics
	bootID  string

	j journal

	render *schema.Rendered // the last render fetched (renders are immutable)

	settled   bool // desired state `want` reached or refused: nothing to do until it changes
	settledAt key
	failures  int // transient failures in a row
	retryAt   time.Time
	retryFor  key
	rebootAt  time.Time // when a reboot was requested; zero when none is
	booted    string    // the booted commit, as last read
	staged    string    // the commit deployed for the next boot when it is not the booted one

	reported    report // what the Node's annotations say, as last patched
	hasReported bool
	patchedRV   string // resource version of the Node after the last patch

	osCache *ostree.Status // the sysroot's status as last read, valid while osStamp holds
	osStamp string

	feed NodeFeed // where Run learns about the Node

	prestageDone string    // the prestage-os commit handled (on disk, pulled or failed) by this process
	taintFails   int       // failed removals of the converging taint in a row
	taintRetryAt time.Time // when to try removing it again after a failure
}

// key is a desired state: the controller's two annotations.
type key struct{ Config, OS string }

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
	if opts.RebootTimeout <= 0 {
		opts.RebootTimeout = DefaultRebootTimeout
	}
	if opts.Metrics == nil {
		opts.Metrics = &Metrics{}
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
		bootID:  bootID,
		j:       j,
	}, nil
}

// Metrics returns the agent's counters.
func (a *Agent) Metrics() *Metrics { return a.metrics }

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
		f, err := WatchNode(ctx, a.opts.Client, a.opts.NodeName)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent: %w", err)
		}
		feed = f
	}
	a.feed = feed
	a.log.Info("agent started", "bootID", a.bootID, "applied", schema.Short(a.j.Applied), "step", a.j.Step)
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

// sync reacts to the Node as it is now and returns when to look again
// without an event (0: only on the next event; negative: at once).
func (a *Agent) sync(ctx context.Context, n *corev1.Node) time.Duration {
	want := desired(n)
	now := time.Now()
	if a.j.OSPulled != "" && n.Annotations[schema.AnnotationPrestageOS] != a.j.OSPulled {
		// The pre-stage request is over or changed: os-pulled goes with the
		// next report.
		a.j.OSPulled = ""
	}
	if !a.rebootAt.IsZero() {
		if left := a.opts.RebootTimeout - now.Sub(a.rebootAt); left > 0 {
			return a.ensureReported(ctx, n, left)
		}
		a.log.Warn("the reboot requested did not happen; requesting it again", "requested", a.rebootAt)
		a.rebootAt = time.Time{}
	}
	if a.settled && want == a.settledAt {
		return a.settledSync(ctx, n, want)
	}
	if want == a.retryFor && now.Before(a.retryAt) {
		return a.retryAt.Sub(now) // backing off: events do not cut it short
	}
	if want != a.retryFor {
		a.failures = 0 // a new desired state starts afresh
	}
	err := a.apply(ctx, want)
	if ctx.Err() != nil {
		return 0
	}
	var ref *refusal
	switch {
	case err == nil:
		a.failures, a.retryFor = 0, key{}
		if !a.rebootAt.IsZero() {
			return a.opts.RebootTimeout
		}
		a.settled, a.settledAt = true, want
		return a.settledSync(ctx, n, want)
	case errors.As(err, &ref):
		a.failures, a.retryFor = 0, key{}
		a.refuse(ctx, want, ref)
		return 0
	default:
		a.failures++
		delay := backoff(a.failures)
		state := schema.StateWorking
		if a.failures >= 3 {
			state = schema.StateDegraded
		}
		msg := fmt.Sprintf("%v (attempt %d, retrying in %s)", err, a.failures, delay.Round(time.Second))
		a.log.Warn("apply failed; will retry", "err", err, "attempt", a.failures, "in", delay)
		if perr := a.publish(ctx, a.report(state, msg)); perr != nil {
			a.log.Warn("report failed", "err", perr)
		}
		a.retryFor, a.retryAt = want, now.Add(delay)
		return delay
	}
}

// desired returns the Node's desired state: the controller's annotations.
func desired(n *corev1.Node) key {
	return key{Config: n.Annotations[schema.AnnotationDesiredConfig], OS: n.Annotations[schema.AnnotationDesiredOS]}
}

// settledSync is what the agent does at a desired state reached or
// refused: report what changed since (os-pulled), remove the converging
// taint at the target, and pre-stage the commit prestage-os names. It
// returns when to look again, as sync.
func (a *Agent) settledSync(ctx context.Context, n *corev1.Node, want key) time.Duration {
	if a.hasReported && a.reported.OSPulled != a.j.OSPulled {
		if err := a.saveAndPublish(ctx, a.report(a.reported.State, a.reported.Message)); err != nil {
			a.log.Warn("report failed", "err", err)
			return 5 * time.Second
		}
	}
	wait := a.removeConvergingTaint(ctx, n, want)
	if ctx.Err() != nil {
		return 0
	}
	if a.prestage(ctx, n, want) {
		return -1
	}
	if w := a.ensureReported(ctx, n, 0); w > 0 && (wait == 0 || w < wait) {
		wait = w
	}
	return wait
}

func backoff(failures int) time.Duration {
	d := time.Second << min(failures-1, 9)
	return min(d, 5*time.Minute)
}

// refuse records and reports a refused desired state.
func (a *Agent) refuse(ctx context.Context, want key, ref *refusal) {
	if !ref.recorded {
		a.log.Error("refusing the desired state", "config", want.Config, "os", want.OS, "reason", ref.msg)
		a.metrics.add(func(c *Counters) { c.Refusals++ })
		a.j.Refused = &refusedState{Config: want.Config, OS: want.OS, Message: ref.msg}
		a.j.BootID = a.bootID
		if err := saveJournal(a.opts.StateDir, a.j); err != nil {
			a.log.Error("journal", "err", err)
		}
	}
	if err := a.publish(ctx, a.report(schema.StateDegraded, ref.msg)); err != nil {
		// Not settled: the next event or the retry reports again.
		a.log.Warn("report failed", "err", err)
		a.retryFor, a.retryAt = want, time.Now().Add(5*time.Second)
		return
	}
	a.settled, a.settledAt = true, want
}

// refusal is an error that makes the node Degraded until the desired state
// changes.
type refusal struct {
	msg      string
	recorded bool  // read back from the journal
	err      error // the underlying error, if any
}

func (r *refusal) Error() string { return r.msg }
func (r *refusal) Unwrap() error { return r.err }

func refusef(format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...)}
}
