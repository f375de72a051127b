package health

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/schema"
)

// PLEG defaults: kubelet's own relist threshold.
const DefaultPLEGThreshold = 3 * time.Minute

// plegMessage is what kubelet writes in its Ready condition's message when
// the PLEG health check fails ("PLEG is not healthy: pleg was last seen
// active 3m5s ago; threshold is 3m0s"). Reading kubelet's text is parsing
// kubelet's output; what Herd decides on is the typed reason set here.
const plegMessage = "PLEG is not healthy"

// plegMetric is kubelet's gauge of when PLEG last relisted (Unix seconds).
const plegMetric = "kubelet_pleg_last_seen_seconds"

// NodeGetter returns the agent's own Node, as last seen.
type NodeGetter func(ctx context.Context) (*corev1.Node, error)

// MetricsGetter returns kubelet's /metrics in the Prometheus text format.
type MetricsGetter func(ctx context.Context) (io.ReadCloser, error)

// PLEG checks kubelet's pod lifecycle event generator as kubelet reports
// it: in the Node's Ready condition and, when Metrics is set, in the
// kubelet_pleg_last_seen_seconds gauge.
type PLEG struct {
	Node      NodeGetter
	Metrics   MetricsGetter // nil: only the Ready condition is read
	Threshold time.Duration // DefaultPLEGThreshold when zero
}

// Type is HerdPLEGUnhealthy.
func (p *PLEG) Type() schema.NodeConditionType { return schema.ConditionPLEGUnhealthy }

// Check reads the Node, then the metrics.
func (p *PLEG) Check(ctx context.Context, now time.Time) Result {
	var ready *corev1.NodeCondition
	if p.Node != nil {
		if n, err := p.Node(ctx); err == nil && n != nil {
			ready = findCondition(n.Status.Conditions, corev1.NodeReady)
		}
	}
	lastSeen, haveMetric := time.Time{}, false
	if p.Metrics != nil {
		if rc, err := p.Metrics(ctx); err == nil {
			lastSeen, haveMetric = PLEGLastSeen(rc)
			rc.Close()
		}
	}
	threshold := p.Threshold
	if threshold <= 0 {
		threshold = DefaultPLEGThreshold
	}
	return plegResult(ready, lastSeen, haveMetric, now, threshold)
}

// plegResult judges kubelet's Ready condition and PLEG gauge.
func plegResult(ready *corev1.NodeCondition, lastSeen time.Time, haveMetric bool, now time.Time, threshold time.Duration) Result {
	t := schema.ConditionPLEGUnhealthy
	if ready != nil && ready.Status != corev1.ConditionTrue && strings.Contains(ready.Message, plegMessage) {
		return problem(t, schema.ReasonPLEGNotHealthy, now, "kubelet reports: "+ready.Message)
	}
	if haveMetric {
		if age := now.Sub(lastSeen); age > threshold {
			return problem(t, schema.ReasonPLEGRelistStalled, now,
				fmt.Sprintf("PLEG last relisted %s ago (threshold %s)", age.Round(time.Second), threshold))
		}
		return ok(t, schema.ReasonPLEGHealthy, now, "PLEG relists in time")
	}
	if ready == nil {
		return unknown(t, schema.ReasonPLEGUnknown, now, "neither kubelet's Ready condition nor its PLEG metric could be read")
	}
	return ok(t, schema.ReasonPLEGHealthy, now, "kubelet reports no PLEG problem")
}

// PLEGLastSeen scans kubelet metrics for kubelet_pleg_last_seen_seconds,
// stopping at it, and returns the time it holds.
func PLEGLastSeen(r io.Reader) (time.Time, bool) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		rest, found := strings.CutPrefix(line, plegMetric)
		if !found || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if i := strings.LastIndexByte(rest, '}'); i >= 0 {
			rest = rest[i+1:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return time.Time{}, false
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil || v <= 0 {
			return time.Time{}, false
		}
		sec := int64(v)
		return time.Unix(sec, int64((v-float64(sec))*1e9)), true
	}
	return time.Time{}, false
}

// HTTPMetrics fetches url (kubelet's /metrics) with client.
func HTTPMetrics(client *http.Client, url string) MetricsGetter {
	return func(ctx context.Context) (io.ReadCloser, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("kubelet metrics: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("kubelet metrics: %s", resp.Status)
		}
		return resp.Body, nil
	}
}

func findCondition(conds []corev1.NodeCondition, t corev1.NodeConditionType) *corev1.NodeCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}
