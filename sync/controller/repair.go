package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdpool"
)

// Repair metrics.
var (
	repairsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herd_repairs_total",
		Help: "Repair rungs started, per pool, problem, action and whether a dry run planned it.",
	}, []string{"pool", "problem", "action", "dry_run"})
	repairOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "herd_repair_outcomes_total",
		Help: "Repair rungs ended, per pool, action and outcome (Healed, TimedOut, Failed, Replaced, Quarantined, Abandoned).",
	}, []string{"pool", "action", "outcome", "dry_run"})
	unhealthyNodes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herd_unhealthy_nodes",
		Help: "Nodes with a problem the pool's remediation declares, per pool.",
	}, []string{"pool"})
	repairsStopped = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "herd_repairs_stopped",
		Help: "1 while the pool's repair breaker holds every repair, else 0.",
	}, []string{"pool"})
	faultToRepair = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "herd_problem_to_repair_seconds",
		Help:    "From a problem's condition turning on to the first rung of its repair, per pool and problem.",
		Buckets: prometheus.ExponentialBucketsRange(1, 24*3600, 16),
	}, []string{"pool", "problem"})
)

func init() {
	ctrlmetrics.Registry.MustRegister(repairsTotal, repairOutcomes, unhealthyNodes, repairsStopped, faultToRepair)
}

// ReasonRepairsStopped is the Stalled condition's reason while the repair
// breaker holds.
const ReasonRepairsStopped = "RepairsStopped"

// repair carries out a repair action. A dry run's are only recorded.
func (r *Reconciler) repair(ctx context.Context, obs *observation, p planner.Pool, node *corev1.Node, a planner.Action, out *outcome) error {
	rs := a.Repair
	if rs.DryRun {
		return nil
	}
	switch a.Kind {
	case planner.ActRemediate:
		return r.remediate(ctx, obs, p, node, a, out)
	case planner.ActReplace:
		if err := r.callReplaceHook(ctx, p.Name, node.Name, *rs.State, a.Why.Message()); err != nil {
			return err
		}
		return r.nodes.MarkReplace(ctx, node, *rs.State, a.Why.Message(), rs.DeleteNode)
	case planner.ActRemediated:
		quarantine := ""
		if rs.Quarantine {
			quarantine = a.Why.Message()
		}
		return r.nodes.EndRepair(ctx, node, *rs.State, *rs.Ended, quarantine)
	}
	return fmt.Errorf("node %s: unknown repair action %q", a.Node, a.Kind)
}

// remediate takes the node to a rung: records it (cordoned when it takes
// the node down), drains it when asked, then asks its agent.
func (r *Reconciler) remediate(ctx context.Context, obs *observation, p planner.Pool, node *corev1.Node, a planner.Action, out *outcome) error {
	st := *a.Repair.State
	node, err := r.nodes.StartRepair(ctx, node, st, a.Repair.Ended, a.Cordon)
	if err != nil {
		return err
	}
	if a.Drain {
		if err := r.drain(ctx, obs, p, node, out); err != nil {
			return err
		}
	}
	if st.Requested.IsZero() {
		_, err = r.nodes.RequestRepair(ctx, node, st, obs.now)
	}
	return err
}

// ReplaceRequest is what the replacement webhook receives: a node marked
// for replacement. ID is the same for every delivery of one replacement
// (they may repeat after a controller restart): receivers act once per ID.
type ReplaceRequest struct {
	Cluster string    `json:"cluster,omitempty"`
	Pool    string    `json:"pool"`
	Node    string    `json:"node"`
	ID      string    `json:"id"`
	Problem string    `json:"problem"`
	Reason  string    `json:"reason"`
	Time    time.Time `json:"time"`
}

// callReplaceHook posts the replacement to the operator's webhook, when
// one is configured (Options.ReplaceWebhook; never the fleet repo's).
func (r *Reconciler) callReplaceHook(ctx context.Context, pool, node string, st schema.RemediationState, why string) error {
	if r.ReplaceWebhook == "" {
		return nil
	}
	body, err := json.Marshal(ReplaceRequest{Cluster: r.Cluster, Pool: pool, Node: node, ID: node + "/" + st.ID,
		Problem: string(st.Problem), Reason: why, Time: st.Marked.UTC()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.ReplaceWebhook, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("replacement webhook: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("replacement webhook for node %s: %w", node, err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("replacement webhook for node %s: %s", node, resp.Status)
	}
	return nil
}

// summarizeRepairs fills the HerdPool status's repair fields.
func summarizeRepairs(pp *planner.PoolPlan, np *herdpool.HerdPool) {
	s := &np.Status
	s.Repairs = pp.NextRepairs
	s.Repairing, s.Unhealthy = nil, nil
	for _, x := range pp.Repairs.Repairing {
		s.Repairing = append(s.Repairing, x.Node)
	}
	for _, x := range pp.Repairs.Sick {
		s.Unhealthy = append(s.Unhealthy, x.Node)
	}
}

// repairEvents records the repairs carried out (or planned by a dry run)
// as events on the HerdPool.
func (r *Reconciler) repairEvents(np *herdpool.HerdPool, pp *planner.PoolPlan, out *outcome) {
	ev := func(typ, reason, format string, args ...any) {
		r.Events.Eventf(np, nil, typ, reason, "Repair", format, args...)
	}
	for _, e := range pp.Events {
		switch e.Kind {
		case planner.EventRepairsStopped:
			ev(corev1.EventTypeWarning, string(e.Kind), "%s", e.Why.Message())
		case planner.EventRepairsResumed:
			ev(corev1.EventTypeNormal, string(e.Kind), "fewer nodes unhealthy than maxUnhealthy: repairs go on")
		}
	}
	for _, a := range out.done {
		rs := a.Repair
		if rs == nil {
			continue
		}
		dry := ""
		if rs.DryRun {
			dry = "dry run: "
		}
		switch {
		case a.Kind == planner.ActRemediate && rs.New:
			ev(corev1.EventTypeNormal, "Remediate", "%s%s: %s (rung %d of %s): %s", dry, a.Node, rs.State.Action, rs.State.Rung+1, rs.State.Problem, a.Why.Message())
		case a.Kind == planner.ActReplace:
			ev(corev1.EventTypeWarning, "NodeReplace", "%s%s marked for replacement after %s", dry, a.Node, rs.State.Problem)
		case a.Kind == planner.ActRemediated && rs.Ended.Outcome == schema.OutcomeHealed:
			ev(corev1.EventTypeNormal, "Remediated", "%s%s: %s", dry, a.Node, a.Why.Message())
		case a.Kind == planner.ActRemediated:
			ev(corev1.EventTypeWarning, "RemediationEnded", "%s%s: %s", dry, a.Node, a.Why.Message())
		case a.Kind == planner.ActQuarantine:
			ev(corev1.EventTypeWarning, "NodeQuarantined", "%s%s quarantined: %s", dry, a.Node, a.Why.Message())
		}
	}
}

// repairMetrics counts the repairs carried out, and sets the gauges.
func repairMetrics(pp *planner.PoolPlan, out *outcome) {
	unhealthyNodes.WithLabelValues(pp.Name).Set(float64(len(pp.Repairs.Sick) + len(pp.Repairs.Repairing)))
	stopped := 0.0
	if pp.Repairs.Stopped != nil {
		stopped = 1
	}
	repairsStopped.WithLabelValues(pp.Name).Set(stopped)
	for _, a := range out.done {
		rs := a.Repair
		if rs == nil || rs.State == nil {
			continue
		}
		dry := fmt.Sprint(rs.DryRun)
		if a.Kind == planner.ActRemediate && rs.New {
			repairsTotal.WithLabelValues(pp.Name, string(rs.State.Problem), string(rs.State.Action), dry).Inc()
			if rs.State.Rung == 0 && a.Why != nil && a.Why.Code == planner.CodeProblem {
				faultToRepair.WithLabelValues(pp.Name, string(rs.State.Problem)).Observe(a.Why.Duration.Seconds())
			}
		}
		switch {
		case rs.Ended != nil:
			repairOutcomes.WithLabelValues(pp.Name, string(rs.Ended.Action), string(rs.Ended.Outcome), dry).Inc()
		case a.Kind == planner.ActReplace:
			repairOutcomes.WithLabelValues(pp.Name, string(rs.State.Action), string(schema.OutcomeReplaced), dry).Inc()
		}
	}
}
