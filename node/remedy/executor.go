package remedy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/schema"
)

// Units restarts systemd units and tells one run of a unit from the next
// (systemd's InvocationID): node/systemd on a node.
type Units interface {
	Restart(ctx context.Context, unit string) error
	InvocationID(ctx context.Context, unit string) (string, error)
}

// Rebooter requests a reboot (logind on a node); it returns once the
// reboot is under way.
type Rebooter interface {
	Reboot(ctx context.Context) error
}

// Feed delivers the agent's own Node: node.NodeFeed.
type Feed interface {
	Node() *corev1.Node
	Changed() <-chan struct{}
}

// NodePatcher patches a Node (kube.Client).
type NodePatcher interface {
	PatchNode(ctx context.Context, name string, pt types.PatchType, body []byte, fieldManager string) (*corev1.Node, error)
}

// Executor carries the steps out for one node. Node, Client, StateDir,
// Units, Rebooter, Capture and Clean are required.
type Executor struct {
	Node     string
	Client   NodePatcher // writes herd.dev/remediated
	StateDir string      // holds remedy.json
	BootID   string
	Units    Units
	Rebooter Rebooter
	// Capture takes an evidence bundle and keeps it where herd diagnose
	// finds it (diagnose.Capture and SaveEvidence).
	Capture func(ctx context.Context, reason string) error
	// Clean removes the node's leftover pod sandboxes and says how many.
	Clean func(ctx context.Context) (int, error)
	Log   *slog.Logger
	// Hook, for tests, runs after the journal is written and before each
	// action; an executor whose context is cancelled in it stops there,
	// as if killed.
	Hook func(ActionKind)

	j      Journal
	loaded bool
}

// JournalFile is the executor's journal in its state directory.
const JournalFile = "remedy.json"

func (e *Executor) log() *slog.Logger {
	if e.Log == nil {
		return slog.Default()
	}
	return e.Log
}

// load reads the journal once, and resumes it in this boot.
func (e *Executor) load() error {
	if e.loaded {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(e.StateDir, JournalFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read the repair journal: %w", err)
	default:
		if err := json.Unmarshal(b, &e.j); err != nil {
			return fmt.Errorf("read the repair journal %s: %w", filepath.Join(e.StateDir, JournalFile), err)
		}
	}
	if j := Resume(e.j, e.BootID); j != e.j {
		if err := apply.WriteState(filepath.Join(e.StateDir, JournalFile), j); err != nil {
			return fmt.Errorf("write the repair journal: %w", err)
		}
		e.j = j
	}
	e.loaded = true
	return nil
}

// Sync moves the repair asked of the node on as far as it goes now: until
// Step waits (done, or the reboot under way).
func (e *Executor) Sync(ctx context.Context, n *corev1.Node) error {
	if err := e.load(); err != nil {
		return err
	}
	in := Input{Request: n.Annotations[schema.AnnotationRemediate], Reported: n.Annotations[schema.AnnotationRemediated], BootID: e.BootID}
	for {
		j, act := Step(e.j, in)
		if j != e.j {
			if err := apply.WriteState(filepath.Join(e.StateDir, JournalFile), j); err != nil {
				return fmt.Errorf("write the repair journal: %w", err)
			}
			e.j = j
		}
		if act.Kind == Wait {
			return nil
		}
		if e.Hook != nil {
			e.Hook(act.Kind)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		res := e.do(ctx, act)
		if err := ctx.Err(); err != nil {
			return err // stopped mid-action: the journal says where
		}
		if act.Kind == Report {
			if res.Err != nil {
				return res.Err
			}
			in.Reported = act.Report
		}
		in.Result = &res
	}
}

// do carries one action out.
func (e *Executor) do(ctx context.Context, act Action) Result {
	res := Result{Of: act.Kind}
	log := e.log().With("node", e.Node, "repair", e.j.Request)
	switch act.Kind {
	case Capture:
		if err := e.Capture(ctx, act.Reason); err != nil {
			log.Warn("evidence bundle not kept; the repair goes on", "err", err)
		}
	case ReadMarker:
		res.Marker, res.Err = e.Units.InvocationID(ctx, act.Unit)
	case Restart:
		log.Info("restarting", "unit", act.Unit)
		res.Err = e.Units.Restart(ctx, act.Unit)
	case Clean:
		res.Removed, res.Err = e.Clean(ctx)
		log.Info("cleaned pod sandboxes", "removed", res.Removed, "err", res.Err)
	case Reboot:
		log.Info("rebooting")
		res.Err = e.Rebooter.Reboot(ctx)
	case Report:
		res.Err = e.report(ctx, act.Report)
	}
	return res
}

// report writes herd.dev/remediated: a merge patch of that one annotation.
func (e *Executor) report(ctx context.Context, value string) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{schema.AnnotationRemediated: value}}})
	if err != nil {
		return err
	}
	if _, err := e.Client.PatchNode(ctx, e.Node, types.MergePatchType, body, "herd-agent"); err != nil {
		return fmt.Errorf("report %s: %w", value, err)
	}
	e.log().Info("repair reported", "node", e.Node, "report", value)
	return nil
}

// Run syncs whenever the Node changes until ctx ends; failures are tried
// again after a pause.
func (e *Executor) Run(ctx context.Context, feed Feed) error {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		if n := feed.Node(); n != nil {
			if err := e.Sync(ctx, n); err != nil && ctx.Err() == nil {
				e.log().Warn("repair", "node", e.Node, "err", err)
				retry.Reset(5 * time.Second)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-feed.Changed():
		case <-retry.C:
		}
	}
}
