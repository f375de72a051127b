package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"

	"herd.dev/herd/node/apply"
	"herd.dev/herd/node/fsm"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/schema"
)

// do carries out one action of the state machine and returns its result.
func (a *Agent) do(ctx context.Context, act fsm.Action) fsm.Result {
	r := fsm.Result{Of: act.Kind}
	switch act.Kind {
	case fsm.ReadOS:
		r.OS, r.Err = a.readOS(ctx)
	case fsm.FetchRender:
		r.Render, r.Err = a.fetch(ctx, act.Config)
	case fsm.Inspect:
		r = a.inspect(act.Render)
	case fsm.Publish:
		r.ResourceVersion, r.Err = a.patch(ctx, act.Report)
	case fsm.Pull:
		r.Done, r.Took, r.Err = PullOS(ctx, a.opts.Sysroot, act.OS, act.Commit, a.stageOptions())
	case fsm.WriteFiles:
		r = a.writeFiles(ctx, act)
	case fsm.ApplySysctls:
		var written []string
		written, r.Err = apply.ApplySysctls(a.opts.Root, act.Render.Config.Sysctl)
		r.Count = len(written)
	case fsm.Restart:
		r.Err = a.opts.Services.Restart(ctx, act.Unit)
	case fsm.Deploy:
		start := time.Now()
		r.Err = a.opts.Sysroot.Deploy(ctx, act.Commit, act.KernelArgs)
		r.Took = time.Since(start)
		if errors.Is(r.Err, ostree.ErrCommitNotFound) {
			r.Err = &fsm.Refusal{Msg: fmt.Sprintf("OS commit %s: %v", schema.Short(act.Commit), r.Err), Err: r.Err}
		} else if r.Err != nil {
			r.Err = fmt.Errorf("deploy OS commit %s: %w", schema.Short(act.Commit), r.Err)
		}
	case fsm.Reboot:
		if r.Err = a.hook(ctx, HookRebooting); r.Err == nil {
			r.Err = a.opts.Rebooter.Reboot(ctx)
		}
	case fsm.Cleanup:
		r.Err = a.opts.Sysroot.Cleanup(ctx)
	case fsm.Untaint:
		r.Done, r.Err = a.untaint(ctx, fsm.Key{Config: act.Config, OS: act.Commit})
	case fsm.HasCommit:
		r.Done, r.Err = a.opts.Sysroot.HasCommit(ctx, act.Commit)
	case fsm.Prestage:
		r = a.prestage(ctx, act)
	default:
		r.Err = fmt.Errorf("unknown action %v", act.Kind)
	}
	return r
}

// readOS returns the sysroot's status, reading it with ostree admin status
// only when the sysroot changed since the last read: an agent that is told
// to change the OS does not pay for a status command first. A real reboot
// starts a new agent, which reads it afresh.
func (a *Agent) readOS(ctx context.Context) (fsm.OS, error) {
	stamp := sysrootStamp(a.opts.Sysroot)
	if a.osCache == nil || stamp != a.osStamp {
		st, err := a.opts.Sysroot.Status(ctx)
		if err != nil {
			return fsm.OS{}, err
		}
		a.osCache, a.osStamp = &st, stamp
	}
	var os fsm.OS
	if b, ok := a.osCache.Booted(); ok {
		os.Booted = deploymentOf(b)
	}
	if d, ok := a.osCache.Default(); ok {
		os.Default = deploymentOf(d)
	}
	return os, nil
}

func deploymentOf(d *ostree.Deployment) *fsm.Deployment {
	return &fsm.Deployment{ID: d.ID(), Checksum: d.Checksum, KernelArgs: d.KernelArgs, Staged: d.Staged}
}

// sysrootStamp is a cheap fingerprint of a sysroot's deployments: ostree
// swaps boot/loader between loader.0 and loader.1 on every change of the
// boot entries, deployments come and go in ostree/deploy/<os>/deploy, a
// staged deployment appears in run/ostree, and SimulateBoot records the
// booted deployment in run/herd. Any change there changes the stamp.
func sysrootStamp(s *ostree.Sysroot) string {
	var b strings.Builder
	link, _ := os.Readlink(filepath.Join(s.Path, "boot", "loader"))
	b.WriteString(link)
	for _, p := range []string{
		filepath.Join(s.Path, "ostree", "deploy", s.OSName, "deploy"),
		filepath.Join(s.Path, "run", "ostree", "staged-deployment"),
		filepath.Join(s.Path, "run", "herd", "booted"),
	} {
		if st, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "|%d.%d", st.ModTime().UnixNano(), st.Size())
		} else {
			b.WriteString("|-")
		}
	}
	return b.String()
}

// fetch reads and checks the render named by hash, from its ConfigMap (by
// name, nothing else is read) or from memory: renders are immutable.
func (a *Agent) fetch(ctx context.Context, hash string) (*schema.Rendered, error) {
	if a.render != nil && a.render.Hash() == hash {
		return a.render, nil
	}
	name := schema.RenderedName(hash)
	cm, err := a.opts.Client.ConfigMap(ctx, schema.RenderedNamespace, name)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("rendered config %s/%s not found", schema.RenderedNamespace, name)
	}
	if err != nil {
		return nil, fmt.Errorf("read rendered config %s/%s: %w", schema.RenderedNamespace, name, err)
	}
	data, ok := cm.Data[schema.RenderedDataKey]
	if !ok {
		return nil, fsm.Refusef("rendered config %s/%s has no key %s", schema.RenderedNamespace, name, schema.RenderedDataKey)
	}
	r, err := schema.ParseRendered([]byte(data), hash)
	if err != nil {
		return nil, fsm.Refusef("config %s: %v", schema.Short(hash), err)
	}
	a.render = r
	return r, nil
}

// inspect checks the render's sysctls against the kernel and compares its
// files with the disk.
func (a *Agent) inspect(r *schema.Rendered) fsm.Result {
	res := fsm.Result{Of: fsm.Inspect}
	if err := apply.CheckSysctls(a.opts.Root, r.Config.Sysctl); err != nil {
		var se *apply.SysctlError
		if errors.As(err, &se) {
			err = &fsm.Refusal{Msg: fmt.Sprintf("config %s: %v", schema.Short(r.Hash()), se), Err: se}
		}
		res.Err = err
		return res
	}
	changes, err := a.files.Plan(r.Files)
	if err != nil {
		res.Err = err
		return res
	}
	m, err := a.files.Manifest()
	if err != nil {
		res.Err = err
		return res
	}
	res.Classes, res.Differ, res.ManifestHash = apply.Classes(changes), len(changes), m.Hash
	return res
}

// writeFiles writes the render's files; on failure it restores the
// previous ones.
func (a *Agent) writeFiles(ctx context.Context, act fsm.Action) fsm.Result {
	r := fsm.Result{Of: fsm.WriteFiles}
	if r.Err = a.hook(ctx, HookFilesPlanned); r.Err != nil {
		return r
	}
	a.files.AfterWrite = func(string) error { return a.hook(ctx, HookFileWritten) }
	done, err := a.files.Apply(act.Config, act.Render.Files)
	a.files.AfterWrite = nil
	if err != nil {
		if ctx.Err() != nil {
			r.Err = err // killed: the next start rewrites what is missing
			return r
		}
		undone, uerr := a.files.Undo()
		if uerr != nil {
			r.Err = fmt.Errorf("%w; restoring the previous files failed too: %v", err, uerr)
			return r
		}
		r.Classes, r.Count = apply.Classes(undone), len(undone)
		r.Err = fmt.Errorf("%w; restored the previous files", err)
		return r
	}
	r.Classes, r.Count = apply.Classes(done), len(done)
	return r
}

// patch patches the agent's annotations to r in one merge patch; empty
// values remove the annotation. It returns the Node's resource version
// after the patch.
func (a *Agent) patch(ctx context.Context, r fsm.Report) (string, error) {
	ann := map[string]any{}
	for k, v := range r.Annotations() {
		if v == "" {
			ann[k] = nil
		} else {
			ann[k] = v
		}
	}
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	n, err := a.opts.Client.PatchNode(ctx, a.opts.NodeName, types.MergePatchType, body, FieldManager)
	if err != nil {
		return "", fmt.Errorf("report to Node %s: %w", a.opts.NodeName, err)
	}
	return n.ResourceVersion, nil
}

// untaint removes the herd.dev/converging taint (effect NoSchedule) from
// the Node as it is on the API server now, provided the Node still desires
// want (the state the agent is at): the controller may have moved the
// target on since the agent saw it, and a node takes no work until it is
// at its current target. One JSON patch tests the desired annotations and
// that the taint is at the index it removes, then removes it: a concurrent
// change fails it instead of removing the taint too early or another one.
// It removes nothing else; the admission policy lets the agent make
// exactly this change to its Node's spec. It reports whether it removed
// the taint.
func (a *Agent) untaint(ctx context.Context, want fsm.Key) (bool, error) {
	if err := a.hook(ctx, HookUntainting); err != nil {
		return false, err
	}
	n, err := a.opts.Client.Node(ctx, a.opts.NodeName)
	if err != nil {
		return false, fmt.Errorf("read Node %s: %w", a.opts.NodeName, err)
	}
	if desired(n) != want {
		return false, nil // the target moved: the next sync takes the node there first
	}
	i := -1
	for k, t := range n.Spec.Taints {
		if t.Key == schema.TaintConverging && t.Effect == corev1.TaintEffectNoSchedule {
			i = k
			break
		}
	}
	if i < 0 {
		return false, nil
	}
	ops := []map[string]any{{"op": "test", "path": annotationPath(schema.AnnotationDesiredConfig), "value": want.Config}}
	if want.OS != "" {
		ops = append(ops, map[string]any{"op": "test", "path": annotationPath(schema.AnnotationDesiredOS), "value": want.OS})
	}
	at := fmt.Sprintf("/spec/taints/%d", i)
	ops = append(ops,
		map[string]any{"op": "test", "path": at + "/key", "value": schema.TaintConverging},
		map[string]any{"op": "test", "path": at + "/effect", "value": string(corev1.TaintEffectNoSchedule)},
		map[string]any{"op": "remove", "path": at})
	body, err := json.Marshal(ops)
	if err != nil {
		return false, err
	}
	if _, err := a.opts.Client.PatchNode(ctx, a.opts.NodeName, types.JSONPatchType, body, FieldManager); err != nil {
		return false, fmt.Errorf("remove the taint %s from Node %s: %w", schema.TaintConverging, a.opts.NodeName, err)
	}
	return true, nil
}

// annotationPath is the JSON pointer of an annotation.
func annotationPath(key string) string {
	return "/metadata/annotations/" + strings.NewReplacer("~", "~0", "/", "~1").Replace(key)
}

// prestage pulls the commit ahead of its rollout, until the Node's desired
// state or prestage-os changes: the apply waits for no pre-stage.
func (a *Agent) prestage(ctx context.Context, act fsm.Action) fsm.Result {
	r := fsm.Result{Of: fsm.Prestage}
	pctx, done := a.whileUnchanged(ctx, desired(a.node), act.Commit)
	r.Done, r.Took, r.Err = PullOS(pctx, a.opts.Sysroot, act.OS, act.Commit, a.stageOptions())
	r.Interrupted = done()
	return r
}

// whileUnchanged returns a context that ends when the Node's desired state
// or its prestage-os annotation changes from want and commit, and a
// function that ends the watch and says whether that happened. The watch
// takes the feed's signals: after it, the agent must look at the Node
// again (the state machine says Resync).
func (a *Agent) whileUnchanged(ctx context.Context, want fsm.Key, commit string) (context.Context, func() bool) {
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

func (a *Agent) stageOptions() StageOptions {
	return StageOptions{TrustedKeysDir: a.opts.TrustedKeysDir, DefaultRemote: a.opts.DefaultRemote,
		TrustFile: a.opts.OSTrustFile, Metrics: a.metrics}
}
