package sourcestatus

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/sync/source"
)

// The source's metrics are timestamps, not ages: an age is only as fresh
// as the last time it was set, a timestamp is right until it changes, and
// Prometheus computes the age (time() - metric) at query time.
var (
	lastFetch = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "herd_source_last_fetch_timestamp_seconds",
		Help: "When the controller last tried to reach the fleet repo's remote (Unix time).",
	})
	lastSuccess = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "herd_source_last_success_timestamp_seconds",
		Help: "When the fleet repo's remote last answered (Unix time).",
	})
	revisionTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "herd_source_revision_timestamp_seconds",
		Help: "Commit time of the accepted fleet revision (Unix time).",
	})
	ready = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herd_source_ready",
		Help: "1 when the source's head is the accepted revision, else 0; reason is the source's (Succeeded, FetchFailed, VerificationFailed, ValidationFailed, ...).",
	}, []string{"reason"})
	rejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herd_source_rejections_total",
		Help: "Fleet heads refused, by reason.",
	}, []string{"reason"})
)

func init() {
	ctrlmetrics.Registry.MustRegister(lastFetch, lastSuccess, revisionTime, ready, rejections)
}

// recordMetrics sets the gauges from the source's state and counts a
// rejection not seen before (prev is the rejection the object showed).
func recordMetrics(st source.Status, cur source.Revision, hasCur bool, prev *herdsource.Rejection) {
	if !st.LastFetchTime.IsZero() {
		lastFetch.Set(float64(st.LastFetchTime.UnixMilli()) / 1e3)
	}
	if !st.LastSuccessTime.IsZero() {
		lastSuccess.Set(float64(st.LastSuccessTime.UnixMilli()) / 1e3)
	}
	if hasCur {
		revisionTime.Set(float64(cur.Time.Unix()))
	}
	if Classify(st) != Pending {
		ready.Reset()
		v := 0.0
		if Classify(st) == Succeeded {
			v = 1
		}
		ready.WithLabelValues(string(st.Reason)).Set(v)
	}
	if rj := st.LastRejected; rj != nil && (prev == nil || prev.Commit != rj.Commit || prev.Reason != string(rj.Reason)) {
		rejections.WithLabelValues(string(rj.Reason)).Inc()
	}
}
