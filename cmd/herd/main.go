// Command herd keeps a fleet of Kubernetes nodes in step with a Git repository
// of CUE node-pool specs: validate, plan, and (later) roll changes out.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"herd.dev/herd/schema/sandbox"
)

// exitError carries the process exit code for an error.
type exitError struct {
	code int
	err  error // printed unless nil
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// Exit codes shared by every command.
const (
	exitOK      = 0
	exitFailure = 1 // invalid input, or the command failed
	exitUsage   = 2 // bad flags or arguments
)

func main() {
	// A child started to evaluate a fleet under a budget serves that and exits.
	sandbox.Main()
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit status.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	// SIGINT and SIGTERM cancel the command's context, so long-running
	// commands (controller, agent, sim) stop cleanly, also when started in
	// the background of a script (where SIGINT starts out ignored).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, "herd:", ee.err)
		}
		return ee.code
	}
	// Anything cobra itself rejects (unknown flag, wrong arguments) is usage.
	fmt.Fprintln(stderr, "herd:", err)
	return exitUsage
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "herd",
		Short: "Keep a fleet of Kubernetes nodes in step with Git",
		Long: `Herd keeps a fleet of Kubernetes nodes in step with a Git repository of
CUE node-pool specs. It validates the specs, plans per-node changes in
batches, and rolls OSTree images and node configuration out safely.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newValidateCmd(),
		newPlanCmd(),
		newSchemaCmd(),
		newControllerCmd(),
		newSimCmd(),
		newHistoryCmd(),
		newStatusCmd(),
		newDiagnoseCmd(),
		newResumeCmd(),
		newRollbackCmd(),
		newOSCmd(),
		newInstallCmd(),
		newVersionCmd(),
	)
	return root
}

// usageError wraps an error as a usage error.
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// failure wraps an error as a failure.
func failure(err error) error {
	return &exitError{code: exitFailure, err: err}
}
