package main

import (
	"fmt"

	"github.com/spf13/cobra"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/config"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/controller"
)

func newInstallCmd() *cobra.Command {
	var (
		print      bool
		kubeconfig string
	)
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install Herd's CRD, RBAC and controller in a cluster (or --print them)",
		Long: `Install renders Herd's manifests (config/, assembled with kustomize) and
applies them with server-side apply. With --print it only prints them, for
"kubectl apply -f -" or a GitOps repository.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			manifests, err := config.Render()
			if err != nil {
				return failure(err)
			}
			if print {
				_, err := cmd.OutOrStdout().Write(manifests)
				return err
			}
			rc, err := restConfig(kubeconfig)
			if err != nil {
				return failure(err)
			}
			s := controller.Scheme()
			_ = apiextensionsv1.AddToScheme(s)
			c, err := client.New(rc, client.Options{Scheme: s})
			if err != nil {
				return failure(err)
			}
			if err := cluster.Apply(cmd.Context(), c, manifests); err != nil {
				return failure(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "installed")
			return nil
		},
	}
	cmd.Flags().BoolVar(&print, "print", false, "print the manifests instead of applying them")
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, then $KUBECONFIG)")
	return cmd
}
