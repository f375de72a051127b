package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fluxcd/pkg/runtime/leaderelection"
	"github.com/fluxcd/pkg/runtime/logger"
	"github.com/spf13/cobra"

	"herd.dev/herd/sync/controller"
	"herd.dev/herd/sync/gitutil"
	"herd.dev/herd/sync/source"
)

func newControllerCmd() *cobra.Command {
	var (
		cfg                    controller.Config
		kube                   kubeFlags
		logOpts                logger.Options
		leader                 leaderelection.Options
		pgpKeyrings            []string
		allowedSigners         string
		verifyDir              string
		skipVerify             bool
		signingKey, sshSignKey string
		sshKey, knownHosts     string
		gitSecretDir           string
		shardName, shardSel    string
	)
	cmd := &cobra.Command{
		Use:   "controller",
		Short: "Roll the fleet repo out to the cluster's nodes",
		Long: `The controller follows a branch of the fleet repo (poll and webhook),
verifies and validates each new head, and rolls it out batch by batch:
cordon, PDB-aware drain, the agent applies, uncordon. It mirrors each pool
as a HerdPool and writes status to the status branch of the same remote.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Repo == "" {
				return usageError("--repo is required")
			}
			if cfg.Cluster == "" {
				return usageError("--cluster is required: it names this cluster's directory on the status branch")
			}
			var err error
			if cfg.Shard, err = controller.ParseShard(shardName, shardSel); err != nil {
				return usageError("%v", err)
			}
			if cfg.Verify, err = verification(verifyDir, pgpKeyrings, allowedSigners, skipVerify); err != nil {
				return usageError("%v", err)
			}
			rc, err := kube.config()
			if err != nil {
				return failure(err)
			}
			cfg.Rest = rc
			cfg.LeaderElection = leader
			cfg.Log = logger.NewLogger(logOpts)
			if cfg.Verify != nil {
				if ok, _ := cfg.Verify.Trusted(); !ok {
					cfg.Log.Error(nil, "no trusted key: new fleet commits are rejected until one is added (the ConfigMap herd-trusted-keys when installed by herd install)", "dir", verifyDir)
				}
			}
			cfg.Auth = gitutil.Auth{
				Username:          os.Getenv("HERD_GIT_USERNAME"),
				Password:          os.Getenv("HERD_GIT_PASSWORD"),
				BearerToken:       os.Getenv("HERD_GIT_TOKEN"),
				SSHPrivateKeyFile: sshKey,
				KnownHostsFile:    knownHosts,
			}
			if err := readGitSecret(gitSecretDir, &cfg.Auth); err != nil {
				return failure(err)
			}
			if cfg.Signer, err = signer(signingKey, sshSignKey); err != nil {
				return failure(err)
			}
			cfg.WebhookSecret = os.Getenv("HERD_WEBHOOK_SECRET")
			cfg.WebhookToken = os.Getenv("HERD_WEBHOOK_TOKEN")
			if cfg.WebhookAddr != "" && cfg.WebhookToken == "" && cfg.WebhookSecret == "" {
				// The installed Deployment reads both from the optional
				// Secret herd-webhook: without it, poll rather than crash-loop.
				cfg.Log.Error(nil, "webhook receiver off: --webhook-addr is set but neither HERD_WEBHOOK_SECRET nor HERD_WEBHOOK_TOKEN (in a cluster: create the Secret herd-webhook, see herd install --webhook-secret-file); polling only")
				cfg.WebhookAddr = ""
			}
			if err := controller.Run(cmd.Context(), cfg); err != nil {
				return failure(err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	kube.bind(f)
	f.Float32Var(&cfg.QPS, "kube-api-qps", 0, fmt.Sprintf("client-side limit of requests per second to the Kubernetes API (default: none when the API server applies priority and fairness, as in Flux; else %d)", controller.DefaultQPS))
	f.IntVar(&cfg.Burst, "kube-api-burst", 0, fmt.Sprintf("burst of requests to the Kubernetes API over --kube-api-qps (default: none with priority and fairness; else %d)", controller.DefaultBurst))
	f.StringVar(&cfg.Repo, "repo", "", "fleet repo URL: file://, http(s)://, ssh:// or git:// (required)")
	f.StringVar(&cfg.Branch, "branch", "main", "branch to follow")
	f.StringVar(&cfg.Path, "path", "", "fleet root inside the repo")
	f.StringVar(&cfg.StatusBranch, "status-branch", "herd/status", `status branch in the same remote ("-" for none)`)
	f.StringVar(&cfg.Cluster, "cluster", "", "this cluster's name on the status branch (required)")
	f.StringVar(&shardSel, "shard-selector", "", "act only on the pools whose labels match this selector (e.g. herd.dev/shard=a, or '!herd.dev/shard' for the pools no shard names), as Flux's --watch-label-selector; each shard has its own leader election (docs/sharding.md)")
	f.StringVar(&shardName, "shard-name", "", "the shard's name: its HerdSource fleet-<name> and its status file clusters/<cluster>/shards/<name>.yaml (default: from a hash of --shard-selector)")
	f.DurationVar(&cfg.Interval, "interval", time.Minute, "how often to check the remote (jittered)")
	f.DurationVar(&cfg.StatusInterval, "status-interval", 5*time.Second, "at most one status commit per interval, plus one per phase change")
	f.BoolVar(&cfg.AllowNonFastForward, "allow-non-fast-forward", false, "accept heads that do not descend from the applied revision (force-pushes)")
	f.StringVar(&cfg.CacheDir, "cache-dir", filepath.Join(os.TempDir(), "herd"), "where the Git cache lives")
	f.StringVar(&cfg.WebhookAddr, "webhook-addr", "", "address of the webhook receiver on every replica (HERD_WEBHOOK_SECRET, HERD_WEBHOOK_TOKEN set its credentials)")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", ":8080", `address of /metrics ("0" for none)`)
	f.StringVar(&cfg.HealthAddr, "health-addr", "", "address of /healthz and /readyz")
	f.StringVar(&cfg.PprofAddr, "pprof-addr", "", "address of /debug/pprof (off when empty)")
	addBudgetFlags(f, &cfg.Budget)
	f.StringVar(&verifyDir, "verify-dir", "", "directory of keys trusted to sign fleet commits: OpenPGP keyrings (*.asc, *.gpg) and an ssh-keygen allowed_signers file")
	f.StringVar(&cfg.ReplaceWebhook, "replace-webhook", "", "URL posted a JSON request for every node a repair marks for replacement (docs/health.md); set by the operator, never by the fleet repo")
	f.StringSliceVar(&pgpKeyrings, "verify-pgp-keyring", nil, "armored OpenPGP public keys trusted to sign fleet commits (repeatable)")
	f.StringVar(&allowedSigners, "verify-allowed-signers", "", "ssh-keygen allowed_signers file trusted to sign fleet commits")
	f.BoolVar(&skipVerify, "insecure-skip-verify", false, "accept fleet commits without checking their signatures: whoever can push to the fleet repo then changes every node")
	f.StringVar(&signingKey, "sign-pgp-key", "", "armored OpenPGP private key to sign status commits")
	f.StringVar(&sshSignKey, "sign-ssh-key", "", "SSH private key to sign status commits")
	f.StringVar(&sshKey, "ssh-key", "", "SSH private key for ssh:// remotes")
	f.StringVar(&knownHosts, "known-hosts", "", "known_hosts file for ssh:// remotes")
	f.StringVar(&gitSecretDir, "git-secret-dir", "", "a mounted Git credentials Secret in Flux's format: files username, password, bearerToken, identity, known_hosts (each optional)")
	logOpts.BindFlags(f)
	leader.BindFlags(f)
	return cmd
}

// verification collects the keys trusted to sign fleet commits. Checking
// signatures is on unless turned off explicitly. Without any key flag the
// controller does not start; with --verify-dir (a mounted ConfigMap) it
// starts even while the directory holds no key, keeps the last accepted
// revision in force and rejects new commits until a key is added, which
// takes effect without a restart.
func verification(dir string, keyrings []string, allowedSigners string, skip bool) (*source.Verification, error) {
	v := &source.Verification{PGPKeyRings: keyrings, AllowedSigners: allowedSigners, Dir: dir}
	trusted, err := v.Trusted()
	if err != nil {
		return nil, fmt.Errorf("--verify-dir: %w", err)
	}
	switch {
	case skip && trusted:
		return nil, errors.New("--insecure-skip-verify with trusted keys: pick one")
	case skip:
		return nil, nil
	case !trusted && dir == "":
		return nil, errors.New("commit signature verification is on: give the keys that sign fleet commits (--verify-dir, --verify-pgp-keyring or --verify-allowed-signers), or turn it off with --insecure-skip-verify")
	}
	return v, nil
}

// signer reads a status-commit signing key, if one is given.
func signer(pgpKey, sshKey string) (gitutil.Signer, error) {
	switch {
	case pgpKey != "":
		b, err := os.ReadFile(pgpKey)
		if err != nil {
			return nil, err
		}
		return gitutil.NewPGPSigner(b, os.Getenv("HERD_SIGN_PASSPHRASE"))
	case sshKey != "":
		b, err := os.ReadFile(sshKey)
		if err != nil {
			return nil, err
		}
		return gitutil.NewSSHSigner(b, os.Getenv("HERD_SIGN_PASSPHRASE"))
	}
	return nil, nil
}

// readGitSecret fills auth from the files of a mounted Secret in Flux's Git
// secret format; missing files are skipped, so an optional Secret that
// does not exist (an empty directory, or none) means anonymous access.
func readGitSecret(dir string, auth *gitutil.Auth) error {
	if dir == "" {
		return nil
	}
	read := func(name string, into *string) error {
		b, err := os.ReadFile(filepath.Join(dir, name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil
		case err != nil:
			return fmt.Errorf("--git-secret-dir: %w", err)
		}
		*into = strings.TrimRight(string(b), "\r\n")
		return nil
	}
	for name, into := range map[string]*string{"username": &auth.Username, "password": &auth.Password, "bearerToken": &auth.BearerToken} {
		if err := read(name, into); err != nil {
			return err
		}
	}
	for name, into := range map[string]*string{"identity": &auth.SSHPrivateKeyFile, "known_hosts": &auth.KnownHostsFile} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			*into = p
		}
	}
	return nil
}
