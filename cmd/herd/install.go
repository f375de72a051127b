package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/config"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/controller"
)

func newInstallCmd() *cobra.Command {
	var (
		print       bool
		kube        kubeFlags
		opts        config.Options
		webhookFile string
		gitDir      string
		trustedKeys []string
		osTrustDir  string
		shards      []string
	)
	cmd := &cobra.Command{
		Use:   "install [--repo URL --cluster NAME]",
		Short: "Install Herd in a cluster: CRDs, RBAC, controller, agent (or --print them)",
		Long: `Install renders Herd's manifests (config/, assembled with kustomize) for
this cluster and applies them with server-side apply: the HerdPool and
HerdSource CRDs, the herd-system namespace (Pod Security "privileged", for
the agent), RBAC, the admission policy that keeps each agent to its own
Node, the controller (two replicas, leader election, a PodDisruptionBudget,
Services for the webhook and metrics) following --repo, and the agent
DaemonSet. With --print it prints them instead, for "kubectl apply
--server-side -f -" or a GitOps repository.

Images are <image>:<version> for the controller and <image>-agent:<version>
for the agent; --version defaults to this binary's own version.

Secrets: --webhook-secret-file stores the webhook's HMAC key (GitLab: its
token) in the Secret herd-webhook; --git-secret-dir stores a directory of
Git credentials in Flux's format (files username, password, bearerToken,
identity, known_hosts) in the Secret herd-git. Both are optional: without a
webhook secret the controller polls; a public repository needs no
credentials.

The controller checks the signature of every fleet commit: put the public
keys that sign them in the ConfigMap herd-system/herd-trusted-keys (OpenPGP
keyrings as *.asc, an ssh-keygen allowed_signers file as allowed_signers);
until then it accepts no commit and says so on the HerdSource, and a key
added later takes effect without a restart. --insecure-skip-verify turns
the check off, so whoever can push to the fleet repo changes every node.

--shard NAME=SELECTOR (repeatable) installs one controller per shard,
herd-controller-NAME, acting on the pools whose labels SELECTOR matches
(docs/controller.md, Shards), instead of one for the whole fleet; the
controller Deployments an install no longer renders are deleted, so
switching between one controller and shards never leaves both running.

Without --repo and --cluster it installs everything but the controller
(CRDs, RBAC, the admission policy, the agent): a controller can follow
later with a second herd install.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.Version == "" {
				opts.Version = herdVersion()
			}
			var err error
			if webhookFile != "" {
				var b []byte
				b, err = os.ReadFile(webhookFile)
				if err != nil {
					return failure(fmt.Errorf("--webhook-secret-file: %w", err))
				}
				opts.WebhookSecret = strings.TrimRight(string(b), "\r\n")
				if opts.WebhookSecret == "" {
					return failure(fmt.Errorf("--webhook-secret-file %s is empty", webhookFile))
				}
			}
			if gitDir != "" {
				var err error
				if opts.Git, err = readSecretDir(gitDir, "username", "password", "bearerToken", "identity", "known_hosts"); err != nil {
					return failure(fmt.Errorf("--git-secret-dir: %w", err))
				}
			}
			if opts.TrustedKeys, err = readTrustedKeys(trustedKeys); err != nil {
				return usageError("--trusted-key: %v", err)
			}
			if osTrustDir != "" {
				if opts.OSTrust, err = readOSTrust(osTrustDir); err != nil {
					return failure(fmt.Errorf("--os-trust-dir: %w", err))
				}
			}
			if opts.Shards, err = parseShards(shards); err != nil {
				return usageError("%v", err)
			}
			if (opts.Repo == "") != (opts.Cluster == "") {
				return usageError("--repo and --cluster go together (neither installs no controller)")
			}
			manifests, err := config.Install(opts)
			if err != nil {
				return failure(err)
			}
			if print {
				_, err := cmd.OutOrStdout().Write(manifests)
				return err
			}
			rc, err := kube.config()
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
			if !opts.NoController() {
				gone, err := pruneControllers(cmd.Context(), c, opts.ControllerNames())
				if err != nil {
					return failure(err)
				}
				for _, name := range gone {
					fmt.Fprintf(cmd.OutOrStdout(), "deleted %s: this install does not run it\n", name)
				}
			}
			if opts.NoController() {
				fmt.Fprintf(cmd.OutOrStdout(), "installed herd %s in %s without a controller: give --repo and --cluster to follow a fleet repo\n", opts.Version, config.Namespace)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed herd %s in %s, following %s\n", opts.Version, config.Namespace, opts.Repo)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&print, "print", false, "print the manifests instead of applying them")
	kube.bind(f)
	f.StringVar(&opts.Repo, "repo", "", "fleet repo URL, without credentials")
	f.StringVar(&opts.Branch, "branch", "", `branch to follow (default "main")`)
	f.StringVar(&opts.Path, "path", "", "fleet root inside the repo")
	f.StringVar(&opts.Cluster, "cluster", "", "this cluster's name on the status branch")
	f.DurationVar(&opts.Interval, "interval", 0, "how often the controller checks the remote (default 1m)")
	f.StringVar(&opts.Image, "image", config.DefaultImage, "controller image repository; the agent's is this with -agent appended")
	f.StringVar(&opts.AgentImage, "agent-image", "", "agent image repository (default <image>-agent)")
	f.StringVar(&opts.Version, "version", "", "image tag (default: this binary's version)")
	f.StringVar(&webhookFile, "webhook-secret-file", "", "file holding the webhook HMAC key (GitLab: token), stored in the Secret herd-webhook")
	f.StringVar(&gitDir, "git-secret-dir", "", "directory of Git credentials in Flux's format, stored in the Secret herd-git")
	f.StringArrayVar(&trustedKeys, "trusted-key", nil, "a file of keys trusted to sign fleet commits (*.asc or *.gpg OpenPGP keyring, or an ssh-keygen allowed_signers file), stored in the ConfigMap herd-trusted-keys (repeatable)")
	f.StringVar(&osTrustDir, "os-trust-dir", "", "a directory with remotes.yaml (the OSTree remotes nodes may pull from) and the key files it names, stored in the ConfigMap herd-os-trust")
	f.BoolVar(&opts.InsecureSkipVerify, "insecure-skip-verify", false, "install a controller that does not check fleet commit signatures (by default it trusts the keys of the ConfigMap herd-trusted-keys, and accepts no commit without one)")
	f.StringArrayVar(&shards, "shard", nil, "install a controller shard NAME acting on the pools whose labels match SELECTOR, as NAME=SELECTOR, e.g. a=herd.dev/shard=a and main='!herd.dev/shard' (repeatable; replaces the single controller)")
	f.StringArrayVar(&opts.ExtraArgs, "controller-arg", nil, "extra controller argument, e.g. --controller-arg=--verify-allowed-signers=... (repeatable)")
	return cmd
}

// readTrustedKeys reads the --trusted-key files, keyed by base name, which
// says what each is.
func readTrustedKeys(files []string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, f := range files {
		name := filepath.Base(f)
		if name != "allowed_signers" && !strings.HasSuffix(name, ".asc") && !strings.HasSuffix(name, ".gpg") {
			return nil, fmt.Errorf("%s: name an OpenPGP keyring *.asc or *.gpg, or an ssh-keygen file allowed_signers", f)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("%s: two files are named %s", f, name)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
	return out, nil
}

// readOSTrust reads the regular files of dir; remotes.yaml must be one.
func readOSTrust(dir string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		if out[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name())); err != nil {
			return nil, err
		}
	}
	if _, ok := out["remotes.yaml"]; !ok {
		return nil, fmt.Errorf("%s has no remotes.yaml", dir)
	}
	return out, nil
}

// readSecretDir reads the named files of dir that exist; it fails when
// none does.
func readSecretDir(dir string, names ...string) (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[n] = b
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s has none of %s", dir, strings.Join(names, ", "))
	}
	return out, nil
}

// parseShards reads --shard NAME=SELECTOR values, checked as the
// controller checks its own flags.
func parseShards(values []string) ([]config.Shard, error) {
	var out []config.Shard
	for _, v := range values {
		name, sel, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("--shard %q: want NAME=SELECTOR", v)
		}
		if _, err := controller.ParseShard(name, sel); err != nil {
			return nil, fmt.Errorf("--shard %q: %w", v, err)
		}
		out = append(out, config.Shard{Name: name, Selector: sel})
	}
	return out, nil
}

// pruneControllers deletes the controller Deployments and
// PodDisruptionBudgets in Herd's namespace not named in keep: the single
// controller after an install with shards, or the shards after one
// without. It returns what it deleted, as kind/name.
func pruneControllers(ctx context.Context, c client.Client, keep []string) ([]string, error) {
	sel := client.MatchingLabels{"app.kubernetes.io/name": "herd", "app.kubernetes.io/component": "controller"}
	var deps appsv1.DeploymentList
	var pdbs policyv1.PodDisruptionBudgetList
	var objs []client.Object
	for _, l := range []client.ObjectList{&deps, &pdbs} {
		if err := c.List(ctx, l, client.InNamespace(config.Namespace), sel); err != nil {
			return nil, fmt.Errorf("list the installed controllers: %w", err)
		}
	}
	for i := range deps.Items {
		objs = append(objs, &deps.Items[i])
	}
	for i := range pdbs.Items {
		objs = append(objs, &pdbs.Items[i])
	}
	var gone []string
	for _, o := range objs {
		kind := "deployment"
		if _, ok := o.(*policyv1.PodDisruptionBudget); ok {
			kind = "poddisruptionbudget"
		}
		if slices.Contains(keep, o.GetName()) {
			continue
		}
		if err := c.Delete(ctx, o); client.IgnoreNotFound(err) != nil {
			return gone, fmt.Errorf("delete %s %s: %w", kind, o.GetName(), err)
		}
		gone = append(gone, kind+"/"+o.GetName())
	}
	return gone, nil
}
