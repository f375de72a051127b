package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/planner"
	"herd.dev/herd/sync/controller"
	"herd.dev/herd/sync/herdpool"
)

func newResumeCmd() *cobra.Command {
	var kube kubeFlags
	cmd := &cobra.Command{
		Use:   "resume POOL",
		Short: "Lift a pool's halt (or stop its rollback) and retry its failed nodes",
		Long: `Resume asks the controller to lift the halt of POOL, or to stop its
rollback, and to try its failed nodes again; their failures so far no
longer count against rollout.maxFailures. It sets the herd.dev/resume
annotation on the HerdPool. In Git, a new value of rollout.resume does
the same.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rc, err := kube.config()
			if err != nil {
				return failure(err)
			}
			c, err := client.New(rc, client.Options{Scheme: controller.Scheme()})
			if err != nil {
				return failure(err)
			}
			var np herdpool.HerdPool
			if err := c.Get(cmd.Context(), client.ObjectKey{Name: args[0]}, &np); err != nil {
				return failure(fmt.Errorf("pool %s: %w", args[0], err))
			}
			patch := client.MergeFrom(np.DeepCopy())
			if np.Annotations == nil {
				np.Annotations = map[string]string{}
			}
			np.Annotations[herdpool.AnnotationResume] = time.Now().UTC().Format(time.RFC3339Nano)
			if err := c.Patch(cmd.Context(), &np, patch); err != nil {
				return failure(err)
			}
			halt := np.Status.Rollout.Halt
			if halt == nil && !np.Status.Rollout.RollingBack {
				fmt.Fprintf(cmd.OutOrStdout(), "%s is not halted; its failed nodes, if any, will be tried again\n", args[0])
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "asked the controller to resume %s (%s)\n", args[0], haltText(halt))
			return nil
		},
	}
	kube.bind(cmd.Flags())
	return cmd
}

func haltText(h *planner.Reason) string {
	if h == nil {
		return "rolling back"
	}
	return "halted: " + h.Message()
}
