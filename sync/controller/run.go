package controller

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"herd.dev/herd/schema/loader"

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
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/gitutil"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/revisions"
	"herd.dev/herd/sync/source"
	"herd.dev/herd/sync/writeback"
)

// Config is everything `herd controller` needs.
type Config struct {
	Rest *rest.Config
	// QPS and Burst limit the controller's requests to the API server;
	// default 100 and 300 (a batch of 100 nodes is a few hundred writes).
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

	WebhookAddr         string // "" for none
	WebhookToken        string
	WebhookGitHubSecret string
	MetricsAddr         string // "0" for none
	HealthAddr          string // "" for none
	PprofAddr           string // "" for none

	LeaderElection leaderelection.Options
	Namespace      string // for the leader election lease; default herd-system
	Log            logr.Logger
}

// Scheme knows the Kubernetes types and HerdPool.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = herdpool.AddToScheme(s)
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
	rc.QPS, rc.Burst = cmp.Or(cfg.QPS, 100), cmp.Or(cfg.Burst, 300)
	mgr, err := ctrl.NewManager(rc, ctrl.Options{
		Scheme:                        Scheme(),
		Logger:                        cfg.Log,
		Metrics:                       metricsserver.Options{BindAddress: cfg.MetricsAddr},
		HealthProbeBindAddress:        cfg.HealthAddr,
		PprofBindAddress:              cfg.PprofAddr,
		LeaderElection:                cfg.LeaderElection.Enable,
		LeaderElectionID:              leaderelection.GenerateID("herd-controller", cfg.Cluster),
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

	lastApplied, err := appliedRevision(ctx, mgr.GetAPIReader())
	if err != nil {
		return err
	}
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
		Validate:            validateFleet,
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
		hook := src.Webhook(source.WebhookOptions{Token: cfg.WebhookToken, GitHubSecret: cfg.WebhookGitHubSecret})
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			return serve(ctx, cfg.WebhookAddr, hook)
		})); err != nil {
			return err
		}
	}

	recorder, err := events.NewRecorder(cfg.Log, "", "herd-controller", events.WithManager(mgr))
	if err != nil {
		return fmt.Errorf("event recorder: %w", err)
	}
	r := New(mgr, Options{
		Source:  src,
		History: gitHistory(src.GitDir(), cfg.Path),
		Status:  sink,
		Events:  recorder,
		Metrics: reconcileMetrics(),
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
		conds[i].LastHeartbeatTime = metav1.Time{} // changes every heartbeat; nothing reads it
	}
	n.Status = corev1.NodeStatus{Conditions: conds}
	return n, nil
}

// reconcileMetrics is the Flux-compatible gotk_reconcile_* recorder; it
// registers with controller-runtime's registry once per process.
var reconcileMetrics = sync.OnceValue(fluxmetrics.MustMakeRecorder)

// appliedRevision reads the revision the fleet runs from the HerdPools, so
// a restarted controller checks new commits against it.
func appliedRevision(ctx context.Context, c client.Reader) (string, error) {
	var list herdpool.HerdPoolList
	if err := c.List(ctx, &list); err != nil {
		return "", fmt.Errorf("read HerdPools (is the CRD installed? `herd install --print | kubectl apply -f -`): %w", err)
	}
	for _, np := range list.Items {
		if np.Status.ObservedRevision != "" {
			return np.Status.ObservedRevision, nil
		}
	}
	return "", nil
}

// validateFleet is the source's validation hook: `herd validate`.
func validateFleet(_ context.Context, dir string) error {
	_, err := loader.LoadDir(dir)
	return err
}

// gitHistory evaluates the fleet's earlier revisions from the source's copy
// of the remote, keeping evaluated trees between calls.
func gitHistory(gitDir, path string) func(commit string) (*revisions.History, error) {
	cache := revisions.NewCache()
	return func(commit string) (*revisions.History, error) {
		// Opened for each new revision: go-git caches the list of packs,
		// and the source fetches new ones.
		repo, err := revisions.OpenGitDir(gitDir, path)
		if err != nil {
			return nil, err
		}
		repo.Cache = cache
		return repo.LoadFrom(commit, HistoryDepth)
	}
}

// serve runs an HTTP server until ctx ends.
func serve(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("webhook receiver: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func nonZero(d time.Duration) *time.Duration {
	if d == 0 {
		return nil
	}
	return &d
}
