package node

import (
	"context"
	"fmt"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/schema"
)

// prestage pulls the OS commit the prestage-os annotation names, ahead of
// the node's rollout, so that the apply that later deploys it needs no pull.
// It runs only at a desired state reached and reported Idle (never while a
// change is applied), and does nothing else: no deploy, no file, no reboot,
// no change of state. Once the commit is on disk (pulled, or there already)
// it reports it in os-pulled. A failure is reported in the message only:
// the node stays Idle, and the apply pulls the commit when it gets there.
//
// Each prestage-os value is handled once per agent process; a restarted
// agent checks again and finds a pulled commit on disk. A change of the
// desired state or of prestage-os interrupts the pull, so that the apply
// waits for no pre-stage. It reports whether it ran a pull, which may have
// consumed Node events: sync must look again at once.
func (a *Agent) prestage(ctx context.Context, n *corev1.Node, want key) bool {
	commit := n.Annotations[schema.AnnotationPrestageOS]
	if commit == "" || commit == a.prestageDone || !a.hasReported || a.reported.State != schema.StateIdle {
		return false
	}
	a.prestageDone = commit
	defer func() {
		if a.prestageDone == commit && ctx.Err() == nil {
			_ = a.hook(ctx, HookPrestaged) // handled: on disk, pulled, or failed
		}
	}()
	if !hexRE.MatchString(commit) {
		a.prestageFailed(ctx, commit, fmt.Errorf("prestage-os %q is not an OSTree commit checksum", commit))
		return false
	}
	has, err := a.opts.Sysroot.HasCommit(ctx, commit)
	if err != nil {
		a.prestageFailed(ctx, commit, err)
		return false
	}
	if has {
		if a.j.OSPulled != commit {
			a.log.Info("pre-stage: the commit is on disk already", "commit", commit)
			a.j.OSPulled = commit
			if err := a.saveAndPublish(ctx, a.report(a.reported.State, a.reported.Message)); err != nil {
				a.log.Warn("report failed", "err", err)
				return true // settledSync reports again, with a backoff
			}
		}
		return false
	}
	osc, err := a.prestageSource(ctx, want)
	if err != nil {
		a.prestageFailed(ctx, commit, err)
		return false
	}

	state, msg := a.reported.State, a.reported.Message
	if err := a.publish(ctx, a.report(state, "pulling OS commit "+schema.Short(commit)+" ahead of its rollout (pre-stage)")); err != nil {
		a.log.Warn("report failed", "err", err)
	}
	pctx, done := a.whileUnchanged(ctx, want, commit)
	pulled, took, err := PullOS(pctx, a.opts.Sysroot, osc, commit, a.stageOptions())
	interrupted := done()
	if ctx.Err() != nil {
		return true
	}
	if interrupted {
		a.log.Info("pre-stage interrupted: the desired state or prestage-os changed", "commit", commit)
		a.prestageDone = ""
		if err := a.publish(ctx, a.report(state, msg)); err != nil {
			a.log.Warn("report failed", "err", err)
		}
		return true
	}
	if err != nil {
		a.prestageFailed(ctx, commit, err)
		return true
	}
	a.j.OSPulled = commit
	if pulled {
		a.j.PrePulled = commit
		a.metrics.add(func(c *Counters) { c.Pulls++; c.Prestaged++ })
	}
	a.log.Info("pre-staged", "commit", commit, "pulled", pulled, "took", took)
	if err := a.saveAndPublish(ctx, a.report(state, msg)); err != nil {
		a.log.Warn("report failed", "err", err) // settledSync reports again, with a backoff
	}
	return true
}

// prestageSource returns the OS config whose remote and ref a pre-stage
// pulls from: the current config's (the one applied), or the desired one's
// when none was applied yet; with neither, no remote but the default.
func (a *Agent) prestageSource(ctx context.Context, want key) (schema.OSConfig, error) {
	hash := a.j.Applied
	if hash == "" {
		hash = want.Config
	}
	if hash == "" {
		return schema.OSConfig{}, nil
	}
	if !hexRE.MatchString(hash) {
		return schema.OSConfig{}, fmt.Errorf("config %q is not a config hash", hash)
	}
	r, err := a.fetch(ctx, hash)
	if err != nil {
		return schema.OSConfig{}, err
	}
	return r.Config.OS, nil
}

// prestageFailed reports a failed pre-stage in the message, keeping the
// state: the node is not Degraded by it.
func (a *Agent) prestageFailed(ctx context.Context, commit string, err error) {
	a.log.Warn("pre-stage failed; the apply will pull the commit", "commit", commit, "err", err)
	msg := fmt.Sprintf("pre-staging OS commit %s failed (the apply will pull it): %v", schema.Short(commit), err)
	if perr := a.publish(ctx, a.report(a.reported.State, msg)); perr != nil {
		a.log.Warn("report failed", "err", perr)
	}
}

// whileUnchanged returns a context that ends when the Node's desired state
// or its prestage-os annotation changes from want and commit, and a
// function that ends the watch and says whether that happened. The watch
// takes the feed's signals: after it, sync must look at the Node again.
func (a *Agent) whileUnchanged(ctx context.Context, want key, commit string) (context.Context, func() bool) {
	pctx, cancel := context.WithCancel(ctx)
	var changed atomic.Bool
	stop, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			select {
			case <-stop:
				return
			case <-pctx.Done():
				return
			case <-a.feed.Changed():
				n := a.feed.Node()
				if n == nil || desired(n) != want || n.Annotations[schema.AnnotationPrestageOS] != commit {
					changed.Store(true)
					cancel()
					return
				}
			}
		}
	}()
	return pctx, func() bool {
		close(stop)
		<-exited
		cancel()
		return changed.Load()
	}
}

// saveAndPublish writes the journal, then reports r.
func (a *Agent) saveAndPublish(ctx context.Context, r report) error {
	if err := saveJournal(a.opts.StateDir, a.j); err != nil {
		return err
	}
	return a.publish(ctx, r)
}
