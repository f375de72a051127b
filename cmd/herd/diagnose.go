package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/diagnose"
)

func newDiagnoseCmd() *cobra.Command {
	var (
		kubeconfig string
		output     string
		namespace  string
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "diagnose NODE",
		Short: "Ask a node's agent for a report: health, disk, memory, load, network, OS, evidence",
		Long: `Diagnose asks the Herd agent on NODE for a report through the Kubernetes
API (no ssh, no node port): it creates a NodeDiagnostic in herd-system, waits
until the agent has filled it in, prints the report and deletes the request.
The report shows the health checks (kubelet, PLEG, runtime, sandboxes, disk,
memory, OS drift), disk and inode use, memory pressure (PSI), load, network
interface errors, conntrack use, the OSTree deployments, recent remediations
and the last evidence bundle. -o json prints the report as JSON.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageError("-o %q: want text or json", output)
			}
			rc, err := restConfig(kubeconfig)
			if err != nil {
				return failure(err)
			}
			node := args[0]
			cs, err := kubernetes.NewForConfig(rc)
			if err != nil {
				return failure(err)
			}
			n, err := cs.CoreV1().Nodes().Get(cmd.Context(), node, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) {
					return failure(fmt.Errorf("node %s not found", node))
				}
				return failure(fmt.Errorf("read node %s: %w", node, err))
			}
			dyn, err := dynamic.NewForConfig(rc)
			if err != nil {
				return failure(err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			report, err := diagnose.Request(ctx, dyn, namespace, node)
			if err != nil {
				return failure(err)
			}
			report.Remediations = diagnose.RemediationsOf(n.Annotations)
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(report)
			}
			return diagnose.WriteText(cmd.OutOrStdout(), report)
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, then $KUBECONFIG)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.Flags().StringVar(&namespace, "namespace", diagnose.Namespace, "namespace of the NodeDiagnostic requests")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the agent's answer")
	return cmd
}
