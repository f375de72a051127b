package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/sync/controller"
	"herd.dev/herd/sync/statusview"
)

func newStatusCmd() *cobra.Command {
	var (
		kubeconfig string
		fromGit    string
		branch     string
		cluster    string
		watch      bool
		every      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "One line per pool: progress, batch, phase, and why it halted",
		Long: `Status shows every pool: nodes at target (with a progress bar), the current
batch, the phase and its message (the halt or block reason). It reads the
cluster's HerdPools, or, with --from-git DIR, the status branch of the fleet
repo cloned at DIR (fetched from origin first). --watch redraws it until
interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var read func() ([]statusview.Line, error)
			if fromGit != "" {
				read = func() ([]statusview.Line, error) {
					fetch := exec.CommandContext(cmd.Context(), "git", "fetch", "-q", "origin", "+refs/heads/"+branch+":refs/remotes/origin/"+branch)
					fetch.Dir = fromGit
					_ = fetch.Run() // offline, the last fetched state is shown
					return statusview.FromGit(fromGit, branch, cluster)
				}
			} else {
				rc, err := restConfig(kubeconfig)
				if err != nil {
					return failure(err)
				}
				c, err := client.New(rc, client.Options{Scheme: controller.Scheme()})
				if err != nil {
					return failure(err)
				}
				read = func() ([]statusview.Line, error) { return statusview.FromCluster(cmd.Context(), c) }
			}
			for {
				lines, err := read()
				if err != nil {
					return failure(err)
				}
				var buf bytes.Buffer
				if err := statusview.Write(&buf, lines); err != nil {
					return failure(err)
				}
				if watch {
					fmt.Fprintf(cmd.OutOrStdout(), "\033[H\033[2J%s\n", time.Now().Format("15:04:05"))
				}
				_, _ = cmd.OutOrStdout().Write(buf.Bytes())
				if !watch {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, then $KUBECONFIG)")
	cmd.Flags().StringVar(&fromGit, "from-git", "", "read the status branch of the fleet repo cloned at this directory instead of the cluster")
	cmd.Flags().StringVar(&branch, "status-branch", "herd/status", "the status branch, with --from-git")
	cmd.Flags().StringVar(&cluster, "cluster", "", "only this cluster, with --from-git")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "redraw until interrupted")
	cmd.Flags().DurationVar(&every, "interval", time.Second, "how often --watch redraws")
	return cmd
}
