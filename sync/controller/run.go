package controller

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/schema/sandbox"

	"github.com/fluxcd/pkg/runtime/events"
	"github.com/fluxcd/pkg/runtime/leaderelection"
	fluxmetrics "github.com/fluxcd/pkg/runtime/metrics"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/gitutil"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/sync/receiver"
	"herd.dev/herd/sync/revisions"
	"herd.dev/herd/sync/source"
	"herd.dev/herd/sync/sourcestatus"
	"herd.dev/herd/sync/writeback"
)

// Config is everything `herd controller` needs.
type Config struct {
	Rest *rest.Config
	// QPS and Burst limit the controller's requests to the API server.
	// Both zero: no client-side limit when the API server applies
	// priority and fairness, as Flux's controllers do; else DefaultQPS
	// and DefaultBurst.
	QPS   float32
	Burst int

	Repo         string // fleet repo URL
	Branch       string // default "main"
	Path         string // fleet root inside the repo
	StatusBranch string // default "herd/status"; "-" for no status branch
	Cluster      string
	Auth         gitutil.Auth
	Verify       *source.Verification
	Signer       gitutil.Signer

	AllowNonFastForward bool
	Interval            time.Duration // poll interval; default 1m
	StatusInterval      time.Duration // default 5s
	CacheDir            string

	// WebhookAddr is where every replica receives forge deliveries ("" for
	// none); WebhookSecret is the forges' HMAC key (GitLab's token),
	// WebhookToken a bearer token. See sync/receiver.
	WebhookAddr   string
	WebhookSecret string
	WebhookToken  string
	MetricsAddr   string // "0" for none
	HealthAddr    string // "" for none
	PprofAddr     string // "" for none
	// ReplaceWebhook is posted every node a repair marks for replacement
	// ("" for none): the operator's, never the fleet repo's.
	ReplaceWebhook string

	// Budget bounds the evaluation of each fleet revision, in a child
	// process; a revision over budget is rejected (BudgetExceeded).
	Budget sandbox.Budget

	// Shard is the pools this controller acts on (ParseShard); the zero
	// Shard: all of them. Each shard has its own leader election,
	// HerdSource and source file on the status branch.
	Shard Shard

	LeaderElection leaderelection.Options
	Namespace      string // for the leader election lease; default herd-system
	Log            logr.Logger
}

// Scheme knows the Kubernetes types and HerdPool.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = herdpool.AddToScheme(s)
	_ = herdsource.AddToScheme(s)
	return s
}

// Run runs the controller until ctx ends: the Git source, the status
// writer and the reconciler run only while this replica leads.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Namespace == "" {
		cfg.Namespace = schema.RenderedNamespace
	}
	if cfg.StatusBranch == "" {
		cfg.StatusBranch = "herd/status"
	}
	if cfg.Log.GetSink() == nil {
		// fluxcd/pkg/runtime/events calls the logger's sink; logr.Discard()
		// has none, so give it one that drops everything.
		cfg.Log = funcr.New(func(string, string) {}, funcr.Options{})
	}
	ctrl.SetLogger(cfg.Log)
	rc := rest.CopyConfig(cfg.Rest)
	cfg.Log.Info("Kubernetes API requests: " + clientRate(ctx, rc, cfg.QPS, cfg.Burst))
	mgr, err := ctrl.NewManager(rc, ctrl.Options{
		Scheme:                        Scheme(),
		Logger:                        cfg.Log,
		Metrics:                       metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress:        cfg.HealthAddr,
		PprofBindAddress:              cfg.PprofAddr,
		LeaderElection:                cfg.LeaderElection.Enable,
		LeaderElectionID:              leaderelection.GenerateID("herd-controller", cfg.Cluster, cfg.Shard.Expr),
		LeaderElectionNamespace:       cfg.Namespace,
		LeaderElectionReleaseOnCancel: cfg.LeaderElection.ReleaseOnCancel,
		LeaseDuration:                 nonZero(cfg.LeaderElection.LeaseDuration),
		RenewDeadline:                 nonZero(cfg.LeaderElection.RenewDeadline),
		RetryPeriod:                   nonZero(cfg.LeaderElection.RetryPeriod),
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				// Only the rendered ConfigMaps, not every ConfigMap in the cluster.
				&corev1.ConfigMap{}: {Namespaces: map[string]cache.Config{schema.RenderedNamespace: {}}},
				// Of a node, only what plans read: a thousand nodes' images,
				// addresses and system info would fill the cache.
				&corev1.Node{}: {Transform: slimNode},
			},
		},
	})
	if err != nil {
		return fmt.Errorf("controller manager: %w", err)
	}

	if cfg.HealthAddr != "" {
		// Liveness: the process answers. Readiness: the same, plus the
		// webhook receiver listening when there is one (addReceiver).
		if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
			return err
		}
		if err := mgr.AddReadyzCheck("ping", healthz.Ping); err != nil {
			return err
		}
	}

	lastApplied, err := appliedRevision(ctx, mgr.GetAPIReader(), cfg.Shard)
	if err != nil {
		return err
	}
	fleets := &evaluator{budget: cfg.Budget}
	src, err := source.New(source.Options{
		URL:                 cfg.Repo,
		Branch:              cfg.Branch,
		Path:                cfg.Path,
		CacheDir:            filepath.Join(cfg.CacheDir, "source"),
		Auth:                cfg.Auth,
		Interval:            cfg.Interval,
		Verify:              cfg.Verify,
		AllowNonFastForward: cfg.AllowNonFastForward,
		LastApplied:         lastApplied,
		Validate:            fleets.validate,
		Logger:              slog.New(logr.ToSlogHandler(cfg.Log.WithName("source"))),
	})
	if err != nil {
		return err
	}
	if err := mgr.Add(manager.RunnableFunc(src.Run)); err != nil {
		return err
	}

	var sink StatusSink
	if cfg.StatusBranch != "-" {
		w, err := writeback.New(writeback.Options{
			URL:      cfg.Repo,
			Branch:   cfg.StatusBranch,
			Cluster:  cfg.Cluster,
			Shard:    cfg.Shard.Name,
			Auth:     cfg.Auth,
			Interval: cfg.StatusInterval,
			Signer:   cfg.Signer,
			Logger:   slog.New(logr.ToSlogHandler(cfg.Log.WithName("status"))),
		})
		if err != nil {
			return err
		}
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			err := w.Run(ctx)
			flush, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = w.Flush(flush) // the last state, as the leader steps down
			return err
		})); err != nil {
			return err
		}
		sink = w
	}

	if cfg.WebhookAddr != "" {
		if err := addReceiver(mgr, cfg); err != nil {
			return err
		}
	}

	recorder, err := events.NewRecorder(cfg.Log, "", "herd-controller", events.WithManager(mgr))
	if err != nil {
		return fmt.Errorf("event recorder: %w", err)
	}
	status := &sourcestatus.Updater{
		Client: mgr.GetClient(),
		Name:   herdsource.NameOf(cfg.Shard.Name),
		Source: src,
		Spec: herdsource.Spec{URL: gitutil.RedactURL(cfg.Repo), Branch: cmp.Or(cfg.Branch, "main"), Path: cfg.Path,
			Interval: metav1.Duration{Duration: cmp.Or(cfg.Interval, time.Minute)}, Verify: cfg.Verify != nil,
			ShardSelector: cfg.Shard.Expr},
		Events: recorder,
	}
	if err := status.SetupWithManager(mgr); err != nil {
		return err
	}
	r := New(mgr, Options{
		Source:         src,
		History:        gitHistory(src, cfg.Path, fleets.loadFiles),
		Status:         sink,
		Events:         recorder,
		Metrics:        reconcileMetrics(),
		Evaluate:       fleets.load,
		Cluster:        cfg.Cluster,
		ReplaceWebhook: cfg.ReplaceWebhook,
		Shard:          cfg.Shard,
	})
	if err := r.SetupWithManager(mgr, src.Updates()); err != nil {
		return err
	}
	return mgr.Start(ctx)
}

// slimNode keeps of a cached Node its metadata (without managed fields),
// its spec and its conditions (health checks read them).
func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	n.ManagedFields = nil
	conds := n.Status.Conditions
	for i := range conds {
		if !schema.IsHealthCondition(string(conds[i].Type)) {
			// Kubelet's changes every heartbeat and nothing reads it; the
			// agent's says whether its condition is stale (repairs).
			conds[i].LastHeartbeatTime = metav1.Time{}
		}
	}
	n.Status = corev1.NodeStatus{Conditions: conds}
	return n, nil
}

// reconcileMetrics is the Flux-compatible gotk_reconcile_* recorder; it
// registers with controller-runtime's registry once per process.
var reconcileMetrics = sync.OnceValue(fluxmetrics.MustMakeRecorder)

// appliedRevision reads the revision the fleet runs from the HerdPools, so
// a restarted controller checks new commits against it.
func appliedRevision(ctx context.Context, c client.Reader, shard Shard) (string, error) {
	var list herdpool.HerdPoolList
	if err := c.List(ctx, &list); err != nil {
		return "", fmt.Errorf("read HerdPools (is the CRD installed? `herd install --print | kubectl apply -f -`): %w", err)
	}
	for _, np := range list.Items {
		if np.Status.ObservedRevision != "" && shard.Owns(np.Labels) {
			return np.Status.ObservedRevision, nil
		}
	}
	return "", nil
}

// evaluator evaluates fleet revisions in a child process under the budget
// and keeps the last result, so the reconciler, and the history walk that
// starts at the same revision, take on what the source validated without
// evaluating it again.
type evaluator struct {
	budget sandbox.Budget

	mu  sync.Mutex
	dir string
	key string // of the files the result was evaluated from
	res *loader.Result
}

// validate is the source's validation hook: `herd validate`, bounded. An
// over-budget revision is marked so the source reports BudgetExceeded.
func (e *evaluator) validate(ctx context.Context, dir string) error {
	_, err := e.load(ctx, dir)
	var diags loader.Diagnostics
	if errors.As(err, &diags) {
		if _, over := diags.OverBudget(); over {
			return fmt.Errorf("%w: %w", source.ErrBudgetExceeded, err)
		}
	}
	return err
}

// load returns the evaluated fleet at dir.
func (e *evaluator) load(ctx context.Context, dir string) (*loader.Result, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.dir == dir && e.res != nil {
		return e.res, nil
	}
	res, err := sandbox.LoadDir(ctx, dir, e.budget)
	if err != nil {
		return nil, err
	}
	e.dir, e.res, e.key = dir, res, ""
	if files, err := e.budget.ReadDir(dir); err == nil {
		e.key = filesKey(files)
	}
	return res, nil
}

// loadFiles evaluates a fleet's files, or returns the last result when they
// are the files it was evaluated from.
func (e *evaluator) loadFiles(ctx context.Context, files map[string][]byte) (*loader.Result, error) {
	e.mu.Lock()
	res, key := e.res, e.key
	e.mu.Unlock()
	if res != nil && key != "" && key == filesKey(files) {
		return res, nil
	}
	return sandbox.Load(ctx, files, e.budget)
}

// filesKey identifies a fleet's files by their names and contents.
func filesKey(files map[string][]byte) string {
	h := sha256.New()
	for _, name := range slices.Sorted(maps.Keys(files)) {
		fmt.Fprintf(h, "%d:%s%d:", len(name), name, len(files[name]))
		h.Write(files[name])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// gitHistory evaluates the fleet's earlier revisions from the source's copy
// of the remote with evaluate (in a child process under the budget: an
// earlier commit may be one the source rejected), keeping evaluated trees
// between calls. It reads while the source neither fetches nor repacks, so
// no pack changes under it.
func gitHistory(src gitDirReader, path string, evaluate func(context.Context, map[string][]byte) (*loader.Result, error)) func(ctx context.Context, commit string) (*revisions.History, error) {
	cache := revisions.NewCache()
	return func(ctx context.Context, commit string) (h *revisions.History, err error) {
		err = src.ReadGitDir(func(gitDir string) error {
			// Opened for each new revision: go-git caches the list of
			// packs, and the source fetches new ones.
			repo, err := revisions.OpenGitDir(gitDir, path)
			if err != nil {
				return err
			}
			repo.Cache = cache
			repo.Evaluate = func(files map[string][]byte) (*loader.Result, error) {
				return evaluate(ctx, files) // a stopping controller does not wait for the walk
			}
			h, err = repo.LoadFrom(commit, HistoryDepth)
			return err
		})
		return h, err
	}
}

// gitDirReader reads a Git directory while nothing writes to it: the
// source's cache (*source.Source).
type gitDirReader interface {
	ReadGitDir(read func(gitDir string) error) error
}

// addReceiver serves the webhook receiver on every replica: a delivery
// is recorded on the HerdSource, which the leader acts on. /readyz
// reports the receiver, so a Service routes deliveries to replicas that
// listen; /healthz and /readyz answer "ok" as the probes expect.
func addReceiver(mgr manager.Manager, cfg Config) error {
	c := mgr.GetClient()
	rc, err := receiver.New(receiver.Options{
		Branch: cmp.Or(cfg.Branch, "main"),
		Secret: cfg.WebhookSecret,
		Token:  cfg.WebhookToken,
		Trigger: func(ctx context.Context, _ receiver.Delivery) error {
			return requestChecks(ctx, c, cfg)
		},
		Logger: slog.New(logr.ToSlogHandler(cfg.Log.WithName("webhook"))),
	})
	if err != nil {
		return err
	}
	srv := &receiver.Server{Addr: cfg.WebhookAddr, Handler: rc}
	if err := mgr.Add(srv); err != nil {
		return err
	}
	if cfg.HealthAddr != "" {
		if err := mgr.AddReadyzCheck("webhook", srv.Ready); err != nil {
			return err
		}
	}
	return nil
}

func nonZero(d time.Duration) *time.Duration {
	if d == 0 {
		return nil
	}
	return &d
}

// requestChecks asks this controller, and every other shard following the
// same repository, branch and path, to check the remote now: a delivery
// that reaches any shard's replica (one Service fronts them all) wakes
// every shard.
func requestChecks(ctx context.Context, c client.Client, cfg Config) error {
	own := herdsource.NameOf(cfg.Shard.Name)
	names := []string{own}
	var list herdsource.HerdSourceList
	if err := c.List(ctx, &list); err == nil {
		url, branch := sourcestatus.Redact(gitutil.RedactURL(cfg.Repo)), cmp.Or(cfg.Branch, "main")
		for _, hs := range list.Items {
			if hs.Name != own && hs.Spec.URL == url && hs.Spec.Branch == branch && hs.Spec.Path == cfg.Path {
				names = append(names, hs.Name)
			}
		}
	}
	now := time.Now()
	var errs []error
	for _, name := range names {
		errs = append(errs, sourcestatus.RequestReconcile(ctx, c, name, now))
	}
	return errors.Join(errs...)
}
