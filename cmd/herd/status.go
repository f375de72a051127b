package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/sync/controller"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/sync/statusview"
)

// minGitPoll bounds how often --watch --from-git fetches the remote.
const minGitPoll = 10 * time.Second

// statusView is what `herd status -o json|yaml` prints.
type statusView struct {
	Source *statusview.Source  `json:"source,omitempty"`
	Shards []statusview.Source `json:"shards,omitempty"` // controller shards' sources
	Pools  []statusview.Line   `json:"pools"`
}

func newStatusCmd() *cobra.Command {
	var (
		kube    kubeFlags
		out     outputFlag
		fromGit string
		branch  string
		cluster string
		watch   bool
		every   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "One line per pool: progress, batch, phase, and why it halted",
		Long: `Status shows the fleet source (the cluster's HerdSource) and every pool:
nodes at target (with a progress bar), the current batch, the phase and its
message (the halt or block reason). It reads the cluster's HerdPools, or,
with --from-git DIR, the status branch of the fleet repo cloned at DIR
(fetched from origin first).

--watch prints again on every change: from the cluster it watches the
HerdPools (no polling); from Git it fetches every --interval (at least
10s). On a terminal it redraws the screen; piped, or with NO_COLOR set, it
prints each new state after a blank line, without terminal escapes.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			var read func() (statusView, error)
			var changed func() (<-chan struct{}, error)
			if fromGit != "" {
				if watch && every < minGitPoll {
					return usageError("--interval %s: --watch --from-git fetches at most every %s", every, minGitPoll)
				}
				read = func() (statusView, error) {
					fetch := exec.CommandContext(ctx, "git", "fetch", "-q", "origin", "+refs/heads/"+branch+":refs/remotes/origin/"+branch)
					fetch.Dir = fromGit
					_ = fetch.Run() // offline, the last fetched state is shown
					lines, err := statusview.FromGit(fromGit, branch, cluster)
					return statusView{Pools: lines}, err
				}
				changed = func() (<-chan struct{}, error) { return ticks(ctx, every), nil }
			} else {
				rc, err := kube.config()
				if err != nil {
					return failure(err)
				}
				c, err := client.NewWithWatch(rc, client.Options{Scheme: controller.Scheme()})
				if err != nil {
					return failure(err)
				}
				read = func() (statusView, error) {
					src, shards, err := statusview.SourcesFromCluster(ctx, c)
					if err != nil {
						return statusView{}, err
					}
					lines, err := statusview.FromCluster(ctx, c)
					return statusView{Source: src, Shards: shards, Pools: lines}, err
				}
				changed = func() (<-chan struct{}, error) { return watchAll(ctx, c) }
			}
			return showStatus(ctx, cmd.OutOrStdout(), &out, watch, read, changed)
		},
	}
	kube.bind(cmd.Flags())
	out.bind(cmd, "text")
	cmd.Flags().StringVar(&fromGit, "from-git", "", "read the status branch of the fleet repo cloned at this directory instead of the cluster")
	cmd.Flags().StringVar(&branch, "status-branch", "herd/status", "the status branch, with --from-git")
	cmd.Flags().StringVar(&cluster, "cluster", "", "only this cluster, with --from-git")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "print again on every change until interrupted")
	cmd.Flags().DurationVar(&every, "interval", minGitPoll, "how often --watch --from-git fetches (at least 10s)")
	return cmd
}

// showStatus prints the view once, or on every change with --watch.
func showStatus(ctx context.Context, w io.Writer, out *outputFlag, watch bool, read func() (statusView, error), changed func() (<-chan struct{}, error)) error {
	var events <-chan struct{}
	if watch {
		var err error
		if events, err = changed(); err != nil {
			return failure(err)
		}
	}
	var last []byte
	for {
		v, err := read()
		if err != nil {
			return failure(err)
		}
		var buf bytes.Buffer
		if out.structured() {
			err = out.write(&buf, v)
		} else if err = statusview.WriteSource(&buf, v.Source, v.Shards); err == nil {
			err = statusview.Write(&buf, v.Pools)
		}
		if err != nil {
			return failure(err)
		}
		if !bytes.Equal(buf.Bytes(), last) {
			switch {
			case !watch:
			case styled(w) && !out.structured():
				fmt.Fprintf(w, "\033[H\033[2J%s\n", time.Now().Format("15:04:05"))
			case last != nil:
				fmt.Fprintln(w)
			}
			if _, err := w.Write(buf.Bytes()); err != nil {
				return err
			}
			last = buf.Bytes()
		}
		if !watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				return nil
			}
		}
	}
}

// watchAll signals every change of the HerdPools and the HerdSource.
func watchAll(ctx context.Context, c client.WithWatch) (<-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	for _, list := range []client.ObjectList{&herdpool.HerdPoolList{}, &herdsource.HerdSourceList{}} {
		w, err := c.Watch(ctx, list)
		if err != nil {
			return nil, fmt.Errorf("watch %T: %w", list, err)
		}
		go rewatch(ctx, c, list, w, ch)
	}
	return ch, nil
}

// rewatch forwards w's events to ch, and opens a new watch when the API
// server ends one, until ctx ends.
func rewatch(ctx context.Context, c client.WithWatch, list client.ObjectList, w watch.Interface, ch chan<- struct{}) {
	for {
		for range w.ResultChan() {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		w.Stop()
		for {
			if ctx.Err() != nil {
				return
			}
			var err error
			if w, err = c.Watch(ctx, list); err == nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

// ticks signals every d until ctx ends.
func ticks(ctx context.Context, d time.Duration) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		t := time.NewTicker(d)
		defer t.Stop()
		defer close(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				select {
				case ch <- struct{}{}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return ch
}
