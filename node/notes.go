package node

import (
	"context"
	"time"

	"herd.dev/herd/node/fsm"
	"herd.dev/herd/node/metrics"
	"herd.dev/herd/schema"
)

// noted logs what the state machine says happened, counts it, and calls
// the test hooks that follow a journal write.
func (a *Agent) noted(ctx context.Context, notes []fsm.Note) {
	for _, n := range notes {
		a.note(ctx, n)
	}
}

func (a *Agent) note(ctx context.Context, n fsm.Note) {
	log, m := a.log, a.metrics
	switch n.Kind {
	case fsm.NotePulled:
		m.Pulled(false)
		log.Info("pulled", "commit", n.Commit, "took", n.Took)
	case fsm.NoteDeployed:
		how := metrics.DeployPulled
		switch {
		case n.FastPath:
			how = metrics.DeployOnDisk
		case !n.Pulled:
			how = metrics.DeployPrestaged
		}
		m.Deployed(how)
		log.Info("deployed", "commit", n.Commit, "kernelArgs", n.KernelArgs, "how", how, "took", n.Took)
		if n.Msg != "" {
			log.Info(n.Msg, "commit", n.Commit)
		}
	case fsm.NoteUnstaged:
		m.Deployed(metrics.DeployUnstage)
		log.Info("made the booted commit the default again, undoing a deployment staged for an earlier target", "commit", n.Commit)
	case fsm.NoteStaged:
		_ = a.hook(ctx, HookDeployed)
	case fsm.NoteFilesWritten:
		m.FilesWritten(n.Count)
		if n.Count > 0 {
			log.Info("files written", "config", schema.Short(n.Config), "changed", n.Count)
		}
		_ = a.hook(ctx, HookFilesWritten)
	case fsm.NoteFilesRestored:
		m.FilesWritten(n.Count)
	case fsm.NoteSysctls:
		m.SysctlsWritten(n.Count)
		if n.Err == nil {
			_ = a.hook(ctx, HookSysctls)
		}
	case fsm.NoteRestarted:
		m.Restarted(n.Unit)
		log.Info("restarted", "unit", n.Unit)
		_ = a.hook(ctx, HookRestarted)
	case fsm.NoteRebooting:
		m.Rebooted()
		log.Info("reboot requested", "commit", n.Commit)
	case fsm.NoteRebootAgain:
		log.Warn("the reboot requested did not happen; requesting it again")
	case fsm.NoteApplied:
		m.Applied(time.Now(), n.Took)
	case fsm.NoteRefused:
		m.Error(metrics.ErrorRefused)
		log.Error("refusing the desired state", "config", n.Config, "os", n.Commit, "reason", n.Msg)
	case fsm.NoteRetry:
		m.Error(metrics.ErrorApply)
		log.Warn("apply failed; will retry", "error", n.Err, "attempt", n.Count, "in", n.Took)
	case fsm.NoteState:
		m.State(n.State)
		a.ready.Store(true)
		log.Info("state", "state", n.State, "message", n.Msg)
	case fsm.NoteUntainted:
		m.Untainted()
		log.Info("at the target: removed the taint "+schema.TaintConverging, "config", schema.Short(n.Config))
	case fsm.NoteUntaintFailed:
		m.Error(metrics.ErrorUntaint)
		log.Warn("removing the converging taint failed; will retry", "error", n.Err, "attempt", n.Count, "in", n.Took)
	case fsm.NotePrestaged:
		if n.Pulled {
			m.Pulled(true)
			log.Info("pre-staged", "commit", n.Commit, "took", n.Took)
		} else {
			log.Info("pre-stage: the commit is on disk already", "commit", n.Commit)
		}
	case fsm.NotePrestageFailed:
		m.Error(metrics.ErrorPrestage)
		log.Warn("pre-stage failed; the apply will pull the commit", "commit", n.Commit, "error", n.Err)
	case fsm.NotePrestageInterrupted:
		log.Info("pre-stage interrupted: the desired state or prestage-os changed", "commit", n.Commit)
	case fsm.NotePrestageHandled:
		_ = a.hook(ctx, HookPrestaged)
	case fsm.NoteReportFailed:
		m.Error(metrics.ErrorReport)
		log.Warn("report failed", "error", n.Err)
	case fsm.NoteWarning:
		log.Warn(n.Msg, "error", n.Err)
	}
}
