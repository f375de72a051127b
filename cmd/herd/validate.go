package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/schema/sandbox"

	"github.com/spf13/cobra"
)

func newValidateCmd() *cobra.Command {
	var output string
	var budget sandbox.Budget
	cmd := &cobra.Command{
		Use:   "validate [DIR]",
		Short: "Check a fleet repo: CUE evaluation plus Herd's own rules",
		Long: `Validate evaluates the fleet rooted at DIR (default ".") against herd's
schema and checks what the schema cannot express: overlapping selectors,
files outside the allowlist, unknown OSTree remotes, and more.

Every problem is printed on stderr as path:line:col: message, paths relative
to DIR. Exit status: 0 valid, 1 invalid, 2 usage error.

The fleet is evaluated in a child process under a budget (memory, CPU and
wall-clock time, nesting, instances, sizes; the --max-* and --timeout
flags): a fleet over budget is invalid, with a message naming the limit.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageError("--output %q: want text or json", output)
			}
			dir, err := fleetDir(args)
			if err != nil {
				return err
			}
			res, err := sandbox.LoadDir(cmd.Context(), dir, budget)
			if cmd.Context().Err() != nil {
				return failure(fmt.Errorf("validation interrupted: %w", cmd.Context().Err()))
			}
			return reportValidation(cmd.OutOrStdout(), cmd.ErrOrStderr(), output, res, err)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	addBudgetFlags(cmd.Flags(), &budget)
	return cmd
}

// fleetDir returns the fleet directory argument, checking that it exists.
func fleetDir(args []string) (string, error) {
	dir := "."
	if len(args) > 0 {
		dir = args[0]
	}
	info, err := os.Stat(dir)
	if err != nil {
		return "", usageError("fleet directory: %w", err)
	}
	if !info.IsDir() {
		return "", usageError("fleet directory: %s is not a directory", dir)
	}
	return dir, nil
}

type validation struct {
	Valid    bool               `json:"valid"`
	Pools    []string           `json:"pools"`
	Errors   loader.Diagnostics `json:"errors"`
	Warnings loader.Diagnostics `json:"warnings"`
}

func reportValidation(stdout, stderr io.Writer, output string, res *loader.Result, err error) error {
	v := validation{Valid: err == nil, Pools: []string{}, Errors: loader.Diagnostics{}, Warnings: loader.Diagnostics{}}
	var diags loader.Diagnostics
	switch {
	case errors.As(err, &diags):
		v.Errors = diags
	case err != nil:
		v.Errors = loader.Diagnostics{{Message: err.Error()}}
	default:
		v.Pools = res.PoolNames()
		v.Warnings = res.Warnings
	}
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return failure(err)
		}
	} else {
		for _, d := range v.Errors {
			fmt.Fprintln(stderr, d)
		}
		for _, d := range v.Warnings {
			fmt.Fprintln(stderr, "warning:", d)
		}
		if v.Valid {
			fmt.Fprintf(stdout, "fleet is valid: %d pools (%s)\n", len(v.Pools), joinOrNone(v.Pools))
		}
	}
	if !v.Valid {
		return &exitError{code: exitFailure}
	}
	return nil
}
