package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"herd.dev/herd/schema/loader"

	"github.com/spf13/cobra"

	"herd.dev/herd/planner"
	"herd.dev/herd/planner/report"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/revisions"
)

func newPlanCmd() *cobra.Command {
	var (
		nodesFile string
		output    string
		detailed  bool
		history   int
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
changes and 1 for any error, as with terraform plan.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := runPlan(cmd.OutOrStdout(), cmd.ErrOrStderr(), cmd.InOrStdin(), args, nodesFile, output, history, detailed)
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
	cmd.Flags().IntVar(&history, "history", 50, "how many earlier fleet revisions to evaluate for exact diffs (0: none)")
	return cmd
}

func runPlan(stdout, stderr io.Writer, stdin io.Reader, args []string, nodesFile, output string, history int, detailed bool) error {
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
	res, err := loader.LoadDir(dir)
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

	in, err := planInput(res, stdin, nodesFile)
	if err != nil {
		return failure(err)
	}
	if history > 0 {
		if err := addHistory(&in, dir, history); err != nil {
			fmt.Fprintln(stderr, "warning: no exact diffs from Git history:", err)
		}
	}
	plan := planner.Compute(in)
	if err := report.Write(stdout, output, plan); err != nil {
		return failure(err)
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

// planInput builds the planner's input from an evaluated fleet and a node list.
func planInput(res *loader.Result, stdin io.Reader, nodesFile string) (planner.Input, error) {
	var r io.Reader = stdin
	if nodesFile != "-" {
		f, err := os.Open(nodesFile)
		if err != nil {
			return planner.Input{}, err
		}
		defer f.Close()
		r = f
	}
	kubeNodes, err := cluster.ReadNodeList(r)
	if err != nil {
		return planner.Input{}, fmt.Errorf("%s: %w", nodesFile, err)
	}
	in := planner.Input{Nodes: make([]planner.Node, len(kubeNodes))}
	for i := range kubeNodes {
		in.Nodes[i] = cluster.PlannerNode(&kubeNodes[i])
	}
	for _, name := range res.PoolNames() {
		rd := res.Rendered[name]
		in.Pools = append(in.Pools, planner.Pool{Name: name, Spec: res.Fleet.Pools[name], Rendered: rd, Hash: rd.Hash()})
	}
	return in, nil
}

// addHistory adds the renders of the fleet's earlier revisions, when the
// fleet lives in a Git repository.
func addHistory(in *planner.Input, dir string, limit int) error {
	repo, err := revisions.Open(dir)
	if err != nil {
		return err
	}
	h, err := repo.Load(limit)
	if err != nil {
		return err
	}
	in.Earlier = h.Renders
	in.History = h.Searched
	in.Rollbacks = map[string]bool{}
	for _, p := range in.Pools {
		if h.Rollback(p.Name, p.Hash) {
			in.Rollbacks[p.Hash] = true
		}
	}
	return nil
}

func joinOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
