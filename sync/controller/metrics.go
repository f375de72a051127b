package controller

import (
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"

	"herd.dev/herd/planner"
	"herd.dev/herd/sync/herdpool"
)

// Herd's own metrics, beside the Flux-compatible gotk_reconcile_* ones
// (the source's are in sync/sourcestatus).
var (
	nodesGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herd_nodes",
		Help: "Nodes per pool and state (upToDate, updating, pending, waiting, unavailable, degraded).",
	}, []string{"pool", "state"})
	batchesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herd_rollout_batches_total",
		Help: "Rollout batches started, per pool.",
	}, []string{"pool"})
	commitToNode = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herd_commit_to_node_seconds",
		Help:    "From a fleet commit to a node running it, per pool.",
		Buckets: prometheus.ExponentialBucketsRange(1, 7*24*3600, 16),
	}, []string{"pool"})
)

func init() {
	ctrlmetrics.Registry.MustRegister(nodesGauge, batchesTotal, commitToNode)
}

// recordMetrics updates a pool's metrics after a reconcile. The commit-to-node
// latency is observed when a node is first seen at its target (act).
func (r *Reconciler) recordMetrics(obs *observation, pp *planner.PoolPlan, np *herdpool.HerdPool, out *outcome) {
	s := np.Status
	for state, n := range map[string]int{
		"upToDate":    s.UpToDate,
		"updating":    s.Updating,
		"pending":     pp.Nodes - s.UpToDate - s.Updating - s.Waiting,
		"waiting":     s.Waiting,
		"unavailable": s.Unavailable,
		"degraded":    s.Degraded,
	} {
		nodesGauge.WithLabelValues(pp.Name, state).Set(float64(n))
	}
	for _, e := range pp.Events {
		if e.Kind == planner.EventBatchStarted {
			batchesTotal.WithLabelValues(pp.Name).Inc()
		}
	}
	repairMetrics(pp, out)
	if r.Metrics != nil {
		ref := corev1.ObjectReference{Kind: herdpool.Kind, Name: np.Name, APIVersion: herdpool.GroupVersion.String()}
		for _, t := range []string{meta.ReadyCondition, meta.ReconcilingCondition, meta.StalledCondition} {
			if c := conditions.Get(np, t); c != nil {
				r.Metrics.RecordCondition(ref, *c)
			} else {
				r.Metrics.DeleteCondition(ref, t)
			}
		}
		r.Metrics.RecordDuration(ref, obs.now)
	}
}

// forgetMetrics drops the gauges of a pool this controller no longer acts
// on (it moved to another shard), so that only its new shard reports it.
func (r *Reconciler) forgetMetrics(pool string) {
	nodesGauge.DeletePartialMatch(prometheus.Labels{"pool": pool})
	if r.Metrics != nil {
		ref := corev1.ObjectReference{Kind: herdpool.Kind, Name: pool, APIVersion: herdpool.GroupVersion.String()}
		for _, t := range []string{meta.ReadyCondition, meta.ReconcilingCondition, meta.StalledCondition} {
			r.Metrics.DeleteCondition(ref, t)
		}
	}
}
