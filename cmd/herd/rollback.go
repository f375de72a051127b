package main

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"herd.dev/herd/schema"
	"herd.dev/herd/schema/sandbox"

	"github.com/spf13/cobra"
)

func newRollbackCmd() *cobra.Command {
	var (
		noPush bool
		dir    string
		path   string
	)
	cmd := &cobra.Command{
		Use:   "rollback COMMIT",
		Short: "Revert a fleet commit in the working fleet repo and push it",
		Long: `Rollback reverts COMMIT with git in the fleet repo at --dir (default "."),
in a commit whose message names it, after checking that the fleet is still
valid, and pushes it (unless --no-push). It refuses a working tree with
uncommitted changes. Herd sees the revert as a new desired state equal to
an earlier one, and nodes take the OSTree rollback fast path.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			git := func(args ...string) (string, error) {
				c := exec.CommandContext(cmd.Context(), "git", args...)
				c.Dir = dir
				var out, errOut bytes.Buffer
				c.Stdout, c.Stderr = &out, &errOut
				if err := c.Run(); err != nil {
					return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
				}
				return strings.TrimSpace(out.String()), nil
			}
			commit, err := git("rev-parse", "--verify", "--quiet", args[0]+"^{commit}")
			if err != nil {
				return usageError("%s is not a commit of the repository at %s", args[0], dir)
			}
			status, err := git("status", "--porcelain", "--untracked-files=no")
			if err != nil {
				return failure(err)
			}
			if status != "" {
				return failure(errors.New("the working tree has uncommitted changes; commit or stash them first:\n" + status))
			}
			subject, err := git("log", "-1", "--format=%s", commit)
			if err != nil {
				return failure(err)
			}
			if _, err := git("revert", "--no-commit", commit); err != nil {
				_, _ = git("revert", "--abort")
				return failure(fmt.Errorf("cannot revert %s cleanly; nothing changed: %w", schema.Short(commit), err))
			}
			if _, err := sandbox.LoadDir(cmd.Context(), filepath.Join(dir, path), sandbox.DefaultBudget); err != nil {
				_, _ = git("revert", "--abort")
				return failure(fmt.Errorf("reverting %s leaves an invalid fleet; nothing changed:\n%w", schema.Short(commit), err))
			}
			msg := fmt.Sprintf("Roll back %q\n\nThis reverts commit %s.\nRolled back with herd rollback.\n", subject, commit)
			if _, err := git("commit", "-q", "-m", msg); err != nil {
				return failure(err)
			}
			head, _ := git("rev-parse", "--short=8", "HEAD")
			fmt.Fprintf(cmd.OutOrStdout(), "%s rolls back %s (%s)\n", head, schema.Short(commit), subject)
			if noPush {
				return nil
			}
			if _, err := git("push", "-q"); err != nil {
				return failure(fmt.Errorf("the rollback is committed as %s but not pushed: %w", head, err))
			}
			fmt.Fprintln(cmd.OutOrStdout(), "pushed")
			return nil
		},
	}
	cmd.Flags().BoolVar(&noPush, "no-push", false, "commit the revert but do not push it")
	cmd.Flags().StringVar(&dir, "dir", ".", "the working fleet repo")
	cmd.Flags().StringVar(&path, "path", ".", "the fleet root inside the repo")
	return cmd
}
