package main

import (
	"os/exec"

	"github.com/spf13/cobra"

	"herd.dev/herd/sync/history"
)

func newHistoryCmd() *cobra.Command {
	var (
		opts    history.Options
		noFetch bool
		out     outputFlag
	)
	cmd := &cobra.Command{
		Use:   "history [DIR]",
		Short: "Show the fleet's spec commits joined with what Herd did with them",
		Long: `History runs inside a clone of the fleet repo (DIR, default "."). For each
commit that changed the fleet, newest first, it shows who changed what
("general: os 1fff1fd9 -> 7a3283c6, kubelet.maxPods 110 -> 200") and, from
the status branch, when each cluster applied it, completed, halted or
rolled it back. Without a status branch it shows the spec history alone.

It fetches the status branch from origin first, unless --no-fetch.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Dir = "."
			if len(args) == 1 {
				opts.Dir = args[0]
			}
			if !noFetch {
				// Best effort: offline, the local copy of the branch is used.
				fetch := exec.CommandContext(cmd.Context(), "git", "fetch", "-q", "origin", "+refs/heads/herd/status:refs/remotes/origin/herd/status")
				fetch.Dir = opts.Dir
				_ = fetch.Run()
			}
			entries, err := history.Load(opts)
			if err != nil {
				return failure(err)
			}
			if out.structured() {
				if entries == nil {
					entries = []history.Entry{}
				}
				return out.write(cmd.OutOrStdout(), entries)
			}
			return history.Write(cmd.OutOrStdout(), entries)
		},
	}
	out.bind(cmd, "text")
	cmd.Flags().StringVar(&opts.Cluster, "cluster", "", "only this cluster's status")
	cmd.Flags().StringVar(&opts.Pool, "pool", "", "only this pool")
	cmd.Flags().IntVarP(&opts.Limit, "limit", "n", 20, "how many fleet revisions to show")
	cmd.Flags().BoolVar(&noFetch, "no-fetch", false, "do not fetch the status branch from origin")
	return cmd
}
