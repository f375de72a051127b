package main

import (
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// restConfig loads a kubeconfig: the named file, else the in-cluster
// config, else $KUBECONFIG or ~/.kube/config.
func restConfig(kubeconfig string) (*rest.Config, error) {
	return kubeFlags{kubeconfig: kubeconfig}.config()
}

// kubeFlags are the cluster flags of every command that talks to a
// cluster, as kubectl spells them.
type kubeFlags struct {
	kubeconfig string
	context    string
}

func (k *kubeFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster, then $KUBECONFIG or ~/.kube/config)")
	fs.StringVar(&k.context, "context", "", "kubeconfig context to use (default: the current context)")
}

// config loads the cluster's config: the in-cluster config when neither
// flag is given and the process runs in a pod, else the kubeconfig.
func (k kubeFlags) config() (*rest.Config, error) {
	if k.kubeconfig == "" && k.context == "" {
		if c, err := rest.InClusterConfig(); err == nil {
			return c, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: k.context}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides).ClientConfig()
}
