package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

var hexRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

// apply takes the node one step towards want, or all the way. It returns nil
// when the node is at want (reported Idle) or a reboot was requested
// (a.rebootAt set), a *refusal, or a transient error.
func (a *Agent) apply(ctx context.Context, want key) error {
	st, err := a.osStatus(ctx)
	if err != nil {
		return fmt.Errorf("read OSTree status: %w", err)
	}
	booted, ok := st.Booted()
	if !ok {
		return refusef("the OSTree sysroot %s has no booted deployment", a.opts.Sysroot.Path)
	}
	def, _ := st.Default()
	a.booted, a.staged = booted.Checksum, ""
	if def.ID() != booted.ID() {
		a.staged = def.Checksum
	}

	// A reboot since the journal was written took every pending restart
	// and reboot on: the services started with the files on disk.
	rebooted := a.j.BootID != "" && a.bootID != "" && a.j.BootID != a.bootID
	if rebooted {
		a.j.Pending = nil
	}
	if a.j.Refused != nil && (a.j.Refused.Config != want.Config || a.j.Refused.OS != want.OS) {
		a.j.Refused = nil // the desired state changed: try again
	}

	if want.Config == "" {
		if rebooted {
			a.j.BootID = a.bootID
			if err := saveJournal(a.opts.StateDir, a.j); err != nil {
				return err
			}
		}
		msg := "no desired config"
		if want.OS != "" {
			msg = "desired-os is set without desired-config: waiting for both"
		}
		return a.publish(ctx, a.report(schema.StateIdle, msg))
	}
	if r := a.j.Refused; r != nil {
		return &refusal{msg: r.Message, recorded: true}
	}
	if !hexRE.MatchString(want.Config) {
		return refusef("desired-config %q is not a config hash", want.Config)
	}
	if want.OS != "" && !hexRE.MatchString(want.OS) {
		return refusef("desired-os %q is not an OSTree commit checksum", want.OS)
	}

	r, err := a.fetch(ctx, want.Config)
	if err != nil {
		return err
	}
	commit := r.Config.OS.Commit
	if want.OS != "" {
		if commit != "" && commit != want.OS {
			return refusef("desired-os %s is not the OS commit %s of config %s", schema.Short(want.OS), schema.Short(commit), schema.Short(want.Config))
		}
		commit = want.OS
	}
	if !hexRE.MatchString(commit) {
		return refusef("config %s names no valid OS commit (%q) and desired-os is not set", schema.Short(want.Config), commit)
	}
	kargs := r.Config.KernelArgs
	if kargs == nil {
		kargs = []string{}
	}
	if err := checkKernelArgs(kargs); err != nil {
		return refusef("config %s: %v", schema.Short(want.Config), err)
	}
	bootedOK := booted.Checksum == commit && slices.Equal(booted.KernelArgs, kargs)

	// After the reboot this change asked for: the target must be running.
	if rebooted && a.j.Step == stepReboot && a.j.is(want.Config, commit, kargs) {
		how := deployedHow(a.j)
		a.j.Step, a.j.Applied, a.j.BootID = stepDone, want.Config, a.bootID
		if err := saveJournal(a.opts.StateDir, a.j); err != nil {
			return err
		}
		if !bootedOK {
			return refusef("rebooted into OS commit %s (kernel arguments %q) for config %s, but the node booted %s (kernel arguments %q): it fell back to the previous deployment",
				schema.Short(commit), kargs, schema.Short(want.Config), schema.Short(booted.Checksum), booted.KernelArgs)
		}
		if err := a.opts.Sysroot.Cleanup(ctx); err != nil {
			a.log.Warn("ostree cleanup after boot", "err", err)
		}
		a.metrics.add(func(c *Counters) { c.Applied++ })
		return a.publish(ctx, a.report(schema.StateIdle, idleMessage(want.Config, commit, how)))
	}

	if err := apply.CheckSysctls(a.opts.Root, r.Config.Sysctl); err != nil {
		var se *apply.SysctlError
		if errors.As(err, &se) {
			return refusef("config %s: %v", schema.Short(want.Config), se)
		}
		return err
	}
	changes, err := a.files.Plan(r.Files)
	if err != nil {
		return err
	}
	manifest, err := a.files.Manifest()
	if err != nil {
		return err
	}
	needOS := !bootedOK
	// The default deployment is the target already: deployed before a
	// restart of the agent, waiting for the reboot.
	staged := a.staged != "" && def.Checksum == commit && slices.Equal(def.KernelArgs, kargs) && !def.Staged
	// While retrying, the failure stays the message until it is over.
	if a.failures == 0 && (len(changes) > 0 || needOS || len(a.j.Pending) > 0 || a.j.Applied != want.Config || a.staged != "") {
		msg := "applying config " + schema.Short(want.Config)
		if needOS {
			msg += " and OS commit " + schema.Short(commit)
		}
		if err := a.publish(ctx, a.report(schema.StateWorking, msg)); err != nil {
			return err
		}
	}
	if !a.j.is(want.Config, commit, kargs) {
		// A new change. Pending disruptions of the one before carry over.
		a.j.Config, a.j.OS, a.j.KernelArgs, a.j.Step = want.Config, commit, kargs, ""
		a.j.Pulled, a.j.Deployed, a.j.SameCommit = false, false, commit == booted.Checksum
		a.j.Prestaged = false
		if needOS && commit == a.j.PrePulled {
			a.j.Prestaged, a.j.PrePulled = true, "" // this change takes the pre-staged commit on
		}
	}

	// Pull first: a commit that is missing or fails verification is
	// refused before any file changes. Deploying waits for the files.
	if needOS && !staged {
		pulled, took, err := PullOS(ctx, a.opts.Sysroot, r.Config.OS, commit, a.stageOptions())
		if err != nil {
			return err
		}
		if pulled {
			a.j.Pulled = true
			a.metrics.add(func(c *Counters) { c.Pulls++ })
			a.log.Info("pulled", "commit", commit, "took", took)
		}
	}

	// Files, then sysctls.
	if len(changes) > 0 || manifest.Hash != want.Config {
		a.j.Step = stepFiles
		a.j.addPending(apply.Classes(changes)...)
		a.j.BootID = a.bootID
		if err := saveJournal(a.opts.StateDir, a.j); err != nil {
			return err
		}
		if err := a.hook(ctx, HookFilesPlanned); err != nil {
			return err
		}
		a.files.AfterWrite = func(string) error { return a.hook(ctx, HookFileWritten) }
		done, err := a.files.Apply(want.Config, r.Files)
		a.files.AfterWrite = nil
		if err != nil {
			if ctx.Err() != nil {
				return err // killed: the next start rewrites what is missing
			}
			if undone, uerr := a.files.Undo(); uerr != nil {
				err = fmt.Errorf("%w; restoring the previous files failed too: %v", err, uerr)
			} else {
				a.j.addPending(apply.Classes(undone)...)
				err = fmt.Errorf("%w; restored the previous files", err)
			}
			return err
		}
		a.j.addPending(apply.Classes(done)...)
		a.metrics.add(func(c *Counters) { c.Files += len(done) })
		if len(done) > 0 {
			a.log.Info("files written", "config", schema.Short(want.Config), "changed", len(done))
		}
		if err := a.hook(ctx, HookFilesWritten); err != nil {
			return err
		}
	}
	written, err := apply.ApplySysctls(a.opts.Root, r.Config.Sysctl)
	a.metrics.add(func(c *Counters) { c.Sysctls += len(written) })
	if err != nil {
		return err
	}
	if err := a.hook(ctx, HookSysctls); err != nil {
		return err
	}

	needReboot := needOS || slices.Contains(a.j.Pending, schema.DisruptionReboot)
	if !needReboot {
		for _, s := range []struct {
			d    schema.Disruption
			unit string
		}{{schema.DisruptionRestartContainerd, ContainerdUnit}, {schema.DisruptionRestartKubelet, KubeletUnit}} {
			if !slices.Contains(a.j.Pending, s.d) {
				continue
			}
			if err := a.opts.Services.Restart(ctx, s.unit); err != nil {
				return fmt.Errorf("config %s: %w", schema.Short(want.Config), err)
			}
			a.metrics.restarted(s.unit)
			a.log.Info("restarted", "unit", s.unit)
			a.j.dropPending(s.d)
			if err := saveJournal(a.opts.StateDir, a.j); err != nil {
				return err
			}
			if err := a.hook(ctx, HookRestarted); err != nil {
				return err
			}
		}
		if a.staged != "" {
			// A deployment staged for an earlier target would boot next:
			// make the running commit the default again.
			if err := a.opts.Sysroot.Deploy(ctx, booted.Checksum, kargs); err != nil {
				return fmt.Errorf("unstage %s: %w", schema.Short(a.staged), err)
			}
			a.metrics.add(func(c *Counters) { c.Deploys++ })
			a.staged = ""
		}
		fresh := a.j.Applied != want.Config
		a.j.Applied, a.j.Step, a.j.Pending, a.j.BootID = want.Config, stepDone, nil, a.bootID
		if err := saveJournal(a.opts.StateDir, a.j); err != nil {
			return err
		}
		if fresh {
			a.metrics.add(func(c *Counters) { c.Applied++ })
		}
		return a.publish(ctx, a.report(schema.StateIdle, idleMessage(want.Config, commit, "")))
	}

	// A reboot: into a new deployment when the OS target changed. The files
	// are written, so ostree merges them into the new deployment's /etc.
	msg := "rebooting to take on config " + schema.Short(want.Config)
	if needOS {
		if !staged {
			start := time.Now()
			if err := a.opts.Sysroot.Deploy(ctx, commit, kargs); err != nil {
				if errors.Is(err, ostree.ErrCommitNotFound) {
					return &refusal{msg: fmt.Sprintf("OS commit %s: %v", schema.Short(commit), err), err: err}
				}
				return fmt.Errorf("deploy OS commit %s: %w", schema.Short(commit), err)
			}
			a.metrics.add(func(c *Counters) {
				c.Deploys++
				if !a.j.Pulled && !a.j.Prestaged {
					c.FastPaths++
				}
			})
			a.log.Info("deployed", "commit", commit, "kernelArgs", kargs, "pulled", a.j.Pulled, "prestaged", a.j.Prestaged, "took", time.Since(start))
			if !a.j.Pulled && !a.j.SameCommit && !a.j.Prestaged {
				a.log.Info("rollback fast path: the commit was on disk, no pull", "commit", commit)
			}
		}
		a.staged = commit
		a.j.Step, a.j.Deployed = stepStaged, true
		if err := saveJournal(a.opts.StateDir, a.j); err != nil {
			return err
		}
		if err := a.hook(ctx, HookDeployed); err != nil {
			return err
		}
		msg = "rebooting into OS commit " + schema.Short(commit) + " for config " + schema.Short(want.Config)
		if how := deployedHow(a.j); how != "" {
			msg += " (" + how + ")"
		}
	}
	a.j.Step, a.j.BootID = stepReboot, a.bootID
	if err := saveJournal(a.opts.StateDir, a.j); err != nil {
		return err
	}
	if err := a.publish(ctx, a.report(schema.StateRebooting, msg)); err != nil {
		return err
	}
	if err := a.hook(ctx, HookRebooting); err != nil {
		return err
	}
	if err := a.opts.Rebooter.Reboot(ctx); err != nil {
		return fmt.Errorf("request reboot: %w", err)
	}
	a.metrics.add(func(c *Counters) { c.Reboots++ })
	a.log.Info("reboot requested", "commit", commit)
	a.rebootAt = time.Now()
	return nil
}

func checkKernelArgs(kargs []string) error {
	for _, arg := range kargs {
		if why, denied := schema.DeniedKernelArg(arg); denied {
			return fmt.Errorf("kernel argument %q is denied: %s", arg, why)
		}
	}
	return nil
}

func idleMessage(config, commit, how string) string {
	msg := "up to date: config " + schema.Short(config) + " on OS commit " + schema.Short(commit)
	if how != "" {
		msg += " (" + how + ")"
	}
	return msg
}

// deployedHow says how the change's commit got deployed, when that was
// without a pull; "" otherwise.
func deployedHow(j journal) string {
	switch {
	case !j.Deployed || j.Pulled:
		return ""
	case j.SameCommit:
		return "same commit, new kernel arguments: no pull"
	case j.Prestaged:
		return "commit pre-staged: no pull"
	default:
		return "commit already on disk: rollback fast path, no pull"
	}
}

func (a *Agent) hook(ctx context.Context, point string) error {
	if a.opts.Hook != nil {
		a.opts.Hook(point)
	}
	return ctx.Err()
}

// fetch reads and checks the render named by hash, from its ConfigMap (by
// name, nothing else is read) or from memory: renders are immutable.
func (a *Agent) fetch(ctx context.Context, hash string) (*schema.Rendered, error) {
	if a.render != nil && a.render.Hash() == hash {
		return a.render, nil
	}
	name := schema.RenderedName(hash)
	cm, err := a.opts.Client.CoreV1().ConfigMaps(schema.RenderedNamespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("rendered config %s/%s not found", schema.RenderedNamespace, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read rendered config %s/%s: %w", schema.RenderedNamespace, name, err)
	}
	data, ok := cm.Data[schema.RenderedDataKey]
	if !ok {
		return nil, refusef("rendered config %s/%s has no key %s", schema.RenderedNamespace, name, schema.RenderedDataKey)
	}
	r, err := schema.ParseRendered([]byte(data), hash)
	if err != nil {
		return nil, refusef("config %s: %v", schema.Short(hash), err)
	}
	a.render = r
	return r, nil
}

func (a *Agent) stageOptions() StageOptions {
	return StageOptions{TrustedKeysDir: a.opts.TrustedKeysDir, DefaultRemote: a.opts.DefaultRemote,
		TrustFile: a.opts.OSTrustFile, Metrics: a.metrics}
}

// StageOptions configure StageOS.
type StageOptions struct {
	// TrustedKeysDir holds <remote>.asc or <remote>.gpg, the key trusted for
	// a remote that requires GPG verification.
	TrustedKeysDir string
	// DefaultRemote is pulled from when the OS config names no remote.
	DefaultRemote string
	// TrustFile is the operator-owned list of remotes nodes pull from
	// (see ostree.LoadTrust). When set, a remote it does not list, or at
	// another URL, is refused, and pulls always verify signatures with the
	// key it names, whatever the rendered config says. TrustedKeysDir is
	// then unused.
	TrustFile string
	// Metrics counts pulls that used a static delta; nil counts nothing.
	Metrics *Metrics
}

// PullOS makes sure commit is in the sysroot's repository: when it is not,
// it configures the remote the OS config names (with its GPG policy) and
// pulls exactly that commit. It reports whether it pulled and how long that
// took. A commit already on disk (e.g. the rollback deployment's) needs no
// remote at all: the rollback fast path.
//
// A commit the remote does not have, or that fails verification, is a
// refusal for the agent; the error wraps ostree.ErrCommitNotFound or
// ostree.ErrVerification.
func PullOS(ctx context.Context, s *ostree.Sysroot, osc schema.OSConfig, commit string, opts StageOptions) (bool, time.Duration, error) {
	has, err := s.HasCommit(ctx, commit)
	if err != nil {
		return false, 0, fmt.Errorf("look for OS commit %s: %w", schema.Short(commit), err)
	}
	if has {
		return false, 0, nil
	}
	remote := opts.DefaultRemote
	if opts.TrustFile != "" {
		if osc.Remote != nil {
			remote = osc.Remote.Name
		}
		if err := ensureTrusted(ctx, s, opts.TrustFile, remote, osc.Remote); err != nil {
			return false, 0, err
		}
	} else if osc.Remote != nil {
		remote = osc.Remote.Name
		ropts := ostree.RemoteOptions{GPGVerify: osc.Remote.GPGVerify}
		if osc.Remote.GPGVerify {
			ropts.GPGKeyPath = trustedKey(opts.TrustedKeysDir, remote)
		}
		if err := s.EnsureRemote(ctx, remote, osc.Remote.URL, ropts); err != nil {
			return false, 0, fmt.Errorf("pull OS commit %s: %w", schema.Short(commit), err)
		}
	}
	if remote == "" {
		return false, 0, &refusal{
			msg: fmt.Sprintf("OS commit %s is not on disk and the rendered config names no remote to pull it from", schema.Short(commit)),
			err: ostree.ErrCommitNotFound,
		}
	}
	start := time.Now()
	stats, err := s.PullWithStats(ctx, remote, osc.Ref, commit)
	if err != nil {
		if errors.Is(err, ostree.ErrCommitNotFound) || errors.Is(err, ostree.ErrVerification) {
			return false, 0, &refusal{msg: fmt.Sprintf("OS commit %s: %v", schema.Short(commit), err), err: err}
		}
		return false, 0, fmt.Errorf("pull OS commit %s: %w", schema.Short(commit), err)
	}
	if stats.DeltaParts > 0 {
		opts.Metrics.add(func(c *Counters) { c.DeltaPulls++ })
	}
	return true, time.Since(start), nil
}

// ensureTrusted points the sysroot's remote at what the operator's trust
// file says for it, with signature verification on, or refuses a remote
// the file does not list (or lists at another URL than the fleet's).
// Nothing on the node changes before the check passes.
func ensureTrusted(ctx context.Context, s *ostree.Sysroot, file, remote string, fleet *schema.RemoteConfig) error {
	trust, err := ostree.LoadTrust(file)
	if err != nil {
		return &refusal{msg: err.Error(), err: ostree.ErrUntrustedRemote}
	}
	url := ""
	if fleet != nil {
		url = fleet.URL
	}
	r, err := trust.Check(remote, url)
	if err != nil {
		return &refusal{msg: err.Error(), err: err}
	}
	ropts := ostree.RemoteOptions{GPGVerify: true, GPGKeyPath: r.GPGKeyFile}
	if err := s.EnsureRemote(ctx, r.Name, r.URL, ropts); err != nil {
		return fmt.Errorf("trusted remote %s: %w", r.Name, err)
	}
	return nil
}

// StageOS is the agent's whole OSTree apply in one call, PullOS then
// Deploy: it makes commit, with exactly kargs, the default deployment for
// the next boot. (The agent itself writes the config files between the two,
// so that ostree merges them into the new deployment's /etc.) It reports
// whether it pulled.
func StageOS(ctx context.Context, s *ostree.Sysroot, osc schema.OSConfig, commit string, kargs []string, opts StageOptions) (bool, error) {
	pulled, _, err := PullOS(ctx, s, osc, commit, opts)
	if err != nil {
		return pulled, err
	}
	if err := s.Deploy(ctx, commit, kargs); err != nil {
		return pulled, fmt.Errorf("deploy OS commit %s: %w", schema.Short(commit), err)
	}
	return pulled, nil
}

func trustedKey(dir, remote string) string {
	if dir == "" {
		return ""
	}
	for _, ext := range []string{".asc", ".gpg"} {
		p := filepath.Join(dir, remote+ext)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	return ""
}
