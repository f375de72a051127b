package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/schema/sandbox"
	corev1 "k8s.io/api/core/v1"

	"github.com/spf13/cobra"

	"herd.dev/herd/planner"
	"herd.dev/herd/planner/report"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/planinput"
	"herd.dev/herd/sync/revisions"
)

func newPlanCmd() *cobra.Command {
	var (
		nodesFile string
		output    string
		detailed  bool
		history   int
		at        string
		osRepo    string
		md        report.MarkdownOptions
		budget    sandbox.Budget
	)
	cmd := &cobra.Command{
		Use:   "plan [DIR] --nodes FILE",
		Short: "Preview, per node, what the fleet at DIR would change",
		Long: `Plan shows which nodes the fleet rooted at DIR (default ".") changes, in
which batches, and how disruptively: none, restart-kubelet,
restart-containerd or reboot. It is the plan the controller executes.

FILE is a node list as "kubectl get nodes -o json" (or -o yaml) prints it;
"-" reads standard input. When DIR is inside a Git repository, the fleet's
last --history revisions are evaluated too, so a node still on one of them
gets an exact field-level diff instead of an assumed reboot.

With --detailed-exitcode the exit status is 0 for no changes, 2 for
changes and 1 for any error, as with terraform plan.

--output markdown is a pull-request comment: a hidden marker (` + report.Marker + `)
so CI updates its own comment, a Terraform-style summary line, and per
pool one row per group of nodes with the same change, their names folded
in <details>. It stays under --max-chars (60,000: GitHub refuses comments
over 65,536) by dropping node names, then groups, and then points to
--full-plan-url (say, the workflow artifact holding --output text).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			now := time.Now()
			if at != "" {
				t, err := time.Parse(time.RFC3339, at)
				if err != nil {
					return usageError("--now %q: want an RFC 3339 time such as 2026-11-02T22:00:00Z", at)
				}
				now = t
			}
			err := runPlan(cmd, args, nodesFile, output, history, detailed, now, osRepo, md, budget)
			var ee *exitError
			if detailed && errors.As(err, &ee) && ee.code != exitFailure && ee.code != exitOK && ee.err != nil {
				ee.code = exitFailure // 2 means "changes" here
			}
			return err
		},
	}
	cmd.Flags().StringVar(&nodesFile, "nodes", "", `node list file (kubectl get nodes -o json|yaml), "-" for stdin (required)`)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: "+strings.Join(report.Formats, ", "))
	cmd.Flags().BoolVar(&detailed, "detailed-exitcode", false, "exit 0 for no changes, 2 for changes, 1 for errors")
	cmd.Flags().StringVar(&at, "now", "", "plan for this time (RFC 3339) instead of now: maintenance windows depend on it")
	cmd.Flags().StringVar(&osRepo, "os-repo", "", "OSTree repository (path or http(s) URL) to show what an OS change changes in the image, per pool")
	cmd.Flags().IntVar(&history, "history", 50, "how many earlier fleet revisions to evaluate for exact diffs (0: none)")
	cmd.Flags().IntVar(&md.MaxChars, "max-chars", report.MaxCommentChars, "with --output markdown: the most characters to print (-1: no limit)")
	cmd.Flags().StringVar(&md.FullPlanURL, "full-plan-url", "", "with --output markdown: where the full plan is, linked when details are left out")
	addBudgetFlags(cmd.Flags(), &budget)
	return cmd
}

func runPlan(cmd *cobra.Command, args []string, nodesFile, output string, history int, detailed bool, now time.Time, osRepo string, md report.MarkdownOptions, budget sandbox.Budget) error {
	stdout, stderr, stdin := cmd.OutOrStdout(), cmd.ErrOrStderr(), cmd.InOrStdin()
	if nodesFile == "" {
		return usageError("--nodes is required: a node list as `kubectl get nodes -o json` prints it")
	}
	if !validFormat(output) {
		return usageError("--output %q: want %s", output, strings.Join(report.Formats, ", "))
	}
	if history < 0 {
		return usageError("--history must be 0 or more")
	}
	dir, err := fleetDir(args)
	if err != nil {
		return err
	}
	res, err := sandbox.LoadDir(cmd.Context(), dir, budget)
	if err != nil {
		var diags loader.Diagnostics
		if errors.As(err, &diags) {
			for _, d := range diags {
				fmt.Fprintln(stderr, d)
			}
			return failure(fmt.Errorf("the fleet at %s is invalid", dir))
		}
		return failure(err)
	}

	kubeNodes, err := readNodes(stdin, nodesFile)
	if err != nil {
		return failure(err)
	}
	src := planinput.Sources{Fleet: res, Nodes: kubeNodes, Now: now}
	if history > 0 {
		if src.Revision, src.History, err = gitHistory(cmd.Context(), dir, history, budget); err != nil {
			fmt.Fprintln(stderr, "warning: no exact diffs from Git history:", err)
		}
	}
	in, err := planinput.Build(src)
	if err != nil {
		return failure(err)
	}
	plan := planner.Compute(in)
	if output == "markdown" {
		err = report.Markdown(stdout, plan, md)
	} else {
		err = report.Write(stdout, output, plan)
	}
	if err != nil {
		return failure(err)
	}
	if osRepo != "" {
		diffs, err := osDiffs(cmd.Context(), osRepo, in, plan)
		if err != nil {
			fmt.Fprintln(stderr, "warning: no OS diff:", err)
		}
		writeOSDiffs(stdout, output, diffs)
	}
	if len(plan.Conflicts) > 0 {
		return failure(fmt.Errorf("%d nodes match more than one pool", len(plan.Conflicts)))
	}
	if detailed && plan.HasChanges() {
		return &exitError{code: 2}
	}
	return nil
}

func validFormat(f string) bool {
	for _, g := range report.Formats {
		if f == g {
			return true
		}
	}
	return false
}

// readNodes reads the node list, from stdin for "-".
func readNodes(stdin io.Reader, nodesFile string) ([]*corev1.Node, error) {
	r := stdin
	if nodesFile != "-" {
		f, err := os.Open(nodesFile)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	nodes, err := cluster.ReadNodeList(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", nodesFile, err)
	}
	return nodes, nil
}

// gitHistory evaluates the fleet's earlier revisions, when the fleet lives
// in a Git repository, and names the commit it is at.
func gitHistory(ctx context.Context, dir string, limit int, budget sandbox.Budget) (string, *revisions.History, error) {
	repo, err := revisions.Open(dir)
	if err != nil {
		return "", nil, err
	}
	// Any earlier commit may be hostile: each is evaluated under the budget.
	repo.Evaluate = func(files map[string][]byte) (*loader.Result, error) { return sandbox.Load(ctx, files, budget) }
	head, err := repo.Git().Head()
	if err != nil {
		return "", nil, fmt.Errorf("read HEAD: %w", err)
	}
	h, err := repo.LoadFrom(head.Hash().String(), limit)
	if err != nil {
		return "", nil, err
	}
	return head.Hash().String(), h, nil
}

func joinOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
