package controller_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/controller"
	"herd.dev/herd/sync/herdpool"
)

// The controller repairs on the real API server, the test playing the
// agents: it publishes the health conditions and answers the requests in
// herd.dev/remediate as herd-agent does. A rung heals a node; a rung that
// does not gives way to a reboot, which cordons, drains and gives the node
// back; too many sick nodes at once stop every repair (Stalled); every rung
// is on the node, in the HerdPool status and on the status branch.
func TestRepairs(t *testing.T) {
	e := newEnv(t)
	e.edit("pools/general.cue", `remediation: maxUnhealthy: "34%"`, `remediation: {
		maxUnhealthy: "34%"
		problems: HerdKubeletUnhealthy: {duration: "1s", rungs: [{action: "restart-kubelet", timeout: "3s"}, {action: "reboot", timeout: "1m"}]}
	}`)
	e.push("general: quick repairs")
	ctrl := e.startController("herd", false)
	defer ctrl.stop(t)
	nodes := e.addNodes("general", 6)
	e.waitFor("general up to date", time.Minute, func() (bool, error) {
		var np herdpool.HerdPool
		err := e.c.Get(e.t.Context(), client.ObjectKey{Name: "general"}, &np)
		return err == nil && np.Status.Phase == herdpool.PhaseUpToDate, nil
	})

	// A hung kubelet: restart-kubelet heals it.
	sick := nodes[1]
	e.health(sick, corev1.ConditionTrue, schema.ReasonKubeletHealthzFailed)
	req := e.waitRequest(sick, schema.RepairRestartKubelet)
	e.report(sick, req, schema.ResultSucceeded)
	e.health(sick, corev1.ConditionFalse, schema.ReasonKubeletHealthy)
	e.waitFor(sick+"'s repair to end", 30*time.Second, func() (bool, error) {
		n := e.node(sick)
		return n.Annotations[schema.AnnotationRemediation] == "", nil
	})
	h := e.history(sick)
	if len(h) != 1 || h[0].Action != schema.RepairRestartKubelet || h[0].Outcome != schema.OutcomeHealed || h[0].ID != req.ID {
		t.Fatalf("%s's history: %+v", sick, h)
	}
	if n := e.node(sick); n.Spec.Unschedulable {
		t.Errorf("%s cordoned by a kubelet restart", sick)
	}

	// A kubelet restart that does not help: after its timeout (3s) a
	// reboot, which cordons and drains the node first, and gives it back.
	sick = nodes[2]
	e.health(sick, corev1.ConditionTrue, schema.ReasonKubeletHealthzTimeout)
	req = e.waitRequest(sick, schema.RepairRestartKubelet)
	e.report(sick, req, schema.ResultSucceeded)
	e.health(sick, corev1.ConditionTrue, schema.ReasonKubeletHealthzTimeout) // still hung
	reboot := e.waitRequest(sick, schema.RepairReboot)
	n := e.node(sick)
	if !n.Spec.Unschedulable || n.Annotations[schema.AnnotationDrainStarted] == "" {
		t.Fatalf("%s asked to reboot, uncordoned (%v) or undrained (%q)", sick, n.Spec.Unschedulable, n.Annotations[schema.AnnotationDrainStarted])
	}
	e.report(sick, reboot, schema.ResultSucceeded)
	e.health(sick, corev1.ConditionFalse, schema.ReasonKubeletHealthy)
	e.waitFor(sick+" given back after its reboot", 30*time.Second, func() (bool, error) {
		n := e.node(sick)
		return n.Annotations[schema.AnnotationRemediation] == "" && !n.Spec.Unschedulable, nil
	})
	if h := e.history(sick); len(h) != 2 || h[0].Outcome != schema.OutcomeTimedOut || h[1].Action != schema.RepairReboot || h[1].Outcome != schema.OutcomeHealed {
		t.Fatalf("%s's history: %+v", sick, h)
	}
	log := e.nodePool("general").Status.Repairs.Log
	if len(log) != 3 {
		t.Fatalf("the HerdPool keeps %d rungs, want 3: %+v", len(log), log)
	}
	e.waitFor("the repairs on the status branch", 30*time.Second, func() (bool, error) {
		out := statusFile(e, "general")
		return strings.Count(out, "outcome: Healed") == 2 && strings.Contains(out, "outcome: TimedOut"), nil
	})

	// Three of six sick at once, more than maxUnhealthy (34%: 2): nothing
	// is repaired, and the pool is Stalled until fewer are sick.
	for _, name := range nodes[3:] {
		e.health(name, corev1.ConditionTrue, schema.ReasonKubeletHealthzFailed)
	}
	e.waitFor("general Stalled", 30*time.Second, func() (bool, error) {
		c := conditions.Get(e.nodePool("general"), meta.StalledCondition)
		return c != nil && c.Reason == "RepairsStopped", nil
	})
	// Past the problem's duration (1s) several times over, still nothing.
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		for _, name := range nodes[3:] {
			if r := e.node(name).Annotations[schema.AnnotationRemediate]; r != "" {
				t.Fatalf("%s asked for %s while the breaker holds", name, r)
			}
		}
		<-time.After(200 * time.Millisecond)
	}
	e.health(nodes[3], corev1.ConditionFalse, schema.ReasonKubeletHealthy)
	e.health(nodes[4], corev1.ConditionFalse, schema.ReasonKubeletHealthy)
	e.waitRequest(nodes[5], schema.RepairRestartKubelet)
	if c := conditions.Get(e.nodePool("general"), meta.StalledCondition); c != nil && c.Reason == "RepairsStopped" {
		t.Errorf("still Stalled once fewer are sick: %s", c.Message)
	}
}

func (e *env) node(name string) *corev1.Node {
	e.t.Helper()
	var n corev1.Node
	if err := e.c.Get(e.t.Context(), client.ObjectKey{Name: name}, &n); err != nil {
		e.t.Fatal(err)
	}
	return &n
}

// health publishes the node's HerdKubeletUnhealthy condition, as the
// agent's Publisher does: a strategic merge patch of its status, with a
// fresh heartbeat.
func (e *env) health(name string, status corev1.ConditionStatus, reason schema.HealthReason) {
	e.t.Helper()
	now := metav1.Now()
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{{
		Type: corev1.NodeConditionType(schema.ConditionKubeletUnhealthy), Status: status, Reason: string(reason),
		LastHeartbeatTime: now, LastTransitionTime: now,
	}}}})
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.kube.CoreV1().Nodes().PatchStatus(e.t.Context(), name, body); err != nil {
		e.t.Fatal(err)
	}
}

// waitRequest waits until the node's agent is asked for action, and
// returns the request.
func (e *env) waitRequest(name string, action schema.RemediationAction) schema.RemediationRequest {
	e.t.Helper()
	var req schema.RemediationRequest
	e.waitFor(fmt.Sprintf("%s asked for %s", name, action), 30*time.Second, func() (bool, error) {
		r, err := schema.ParseRemediationRequest(e.node(name).Annotations[schema.AnnotationRemediate])
		req = r
		return err == nil && r.Action == action, nil
	})
	return req
}

// report answers a request as the agent does.
func (e *env) report(name string, req schema.RemediationRequest, res schema.RepairResult) {
	e.t.Helper()
	n := e.node(name)
	before := n.DeepCopy()
	n.Annotations[schema.AnnotationRemediated] = schema.RemediationReport{Request: req, Result: res}.String()
	if err := e.c.Patch(e.t.Context(), n, client.MergeFrom(before)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) history(name string) []schema.RemediationRecord {
	e.t.Helper()
	h, err := schema.ParseRemediationRecords(e.node(name).Annotations[schema.AnnotationRemediations])
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

// statusFile reads the pool's file on the status branch ("" before it is
// there).
func statusFile(e *env, pool string) string {
	out, err := exec.Command("git", "-C", strings.TrimPrefix(e.remote, "file://"), "show", "herd/status:clusters/test/"+pool+".yaml").Output()
	if err != nil {
		return ""
	}
	return string(out)
}

// BenchmarkProblemToRepair measures, on a real API server with 1,000 nodes
// whose heartbeats are renewed every 10 s, the time from the end of a
// problem's declared duration (its condition's lastTransitionTime, as the
// API server keeps it, plus the ladder's 1s) to the first rung's request
// on the node: the controller's share of fault-to-repair. The agent's is
// at most one check interval (10 s) before the condition turns on.
//
//	go test ./sync/controller -run '^$' -bench ProblemToRepair -benchtime 20x
func BenchmarkProblemToRepair(b *testing.B) {
	e := newEnvTB(b)
	e.edit("pools/general.cue", `remediation: maxUnhealthy: "34%"`, `remediation: {
		maxPerHour: 100
		problems: HerdKubeletUnhealthy: {duration: "1s", rungs: [{action: "restart-kubelet", timeout: "1m"}]}
	}`)
	e.push("general: repairs after 1s")
	const nodes = 1000
	e.addNodesFast(b, "general", nodes)
	stopBeats := e.heartbeats(b, 10*time.Second)
	defer stopBeats()
	run := e.startControllerWith("herd", false, nil)
	defer run.cancel()
	e.waitForB(b, "general up to date", 2*time.Minute, func() bool {
		var np herdpool.HerdPool
		err := e.c.Get(b.Context(), client.ObjectKey{Name: "general"}, &np)
		return err == nil && np.Status.Phase == herdpool.PhaseUpToDate && np.Status.Nodes == nodes
	})
	var total, most time.Duration
	i := 0
	for b.Loop() {
		name := fmt.Sprintf("general-%04d", i*37%nodes)
		i++
		w, err := e.kube.CoreV1().Nodes().Watch(b.Context(), metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		if err != nil {
			b.Fatal(err)
		}
		e.health(name, corev1.ConditionTrue, schema.ReasonKubeletHealthzFailed)
		var since time.Time
		for _, c := range e.node(name).Status.Conditions {
			if c.Type == corev1.NodeConditionType(schema.ConditionKubeletUnhealthy) {
				since = c.LastTransitionTime.Time
			}
		}
		req, asked := waitRequested(b, w)
		w.Stop()
		d := asked.Sub(since.Add(time.Second))
		total, most = total+d, max(most, d)
		b.StopTimer()
		e.report(name, req, schema.ResultSucceeded)
		e.health(name, corev1.ConditionFalse, schema.ReasonKubeletHealthy)
		e.waitForB(b, name+"'s repair to end", time.Minute, func() bool {
			return e.node(name).Annotations[schema.AnnotationRemediation] == ""
		})
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(i), "ms-after-duration")
	b.ReportMetric(float64(most.Milliseconds()), "ms-after-duration-max")
}

// waitRequested waits for the watched node's repair request, and says when
// it arrived.
func waitRequested(b *testing.B, w watch.Interface) (schema.RemediationRequest, time.Time) {
	deadline := time.After(time.Minute)
	for {
		select {
		case ev := <-w.ResultChan():
			n, ok := ev.Object.(*corev1.Node)
			if !ok {
				continue
			}
			if r, err := schema.ParseRemediationRequest(n.Annotations[schema.AnnotationRemediate]); err == nil {
				return r, time.Now()
			}
		case <-deadline:
			b.Fatal("no repair asked for within a minute")
		}
	}
}

// TestReplace: the replace rung on the real API server. The controller
// cordons and drains the node and asks its agent for evidence; once the
// agent answered it posts the operator's webhook (--replace-webhook, one
// ID however often it is posted), marks the node herd.dev/replace and
// deletes the Node, as the pool says deleteNode: true. The repair
// metrics count the rung and its outcome.
func TestReplace(t *testing.T) {
	e := newEnv(t)
	e.edit("pools/general.cue", `remediation: maxUnhealthy: "34%"`, `remediation: {
		maxUnhealthy: "34%"
		replace: deleteNode: true
		problems: HerdKubeletUnhealthy: {duration: "1s", rungs: [{action: "replace", timeout: "1m"}]}
	}`)
	e.push("general: replace hung kubelets")
	var (
		mu    sync.Mutex
		hooks []controller.ReplaceRequest
	)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req controller.ReplaceRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || r.Method != http.MethodPost {
			t.Errorf("replacement webhook: %s with %v", r.Method, err)
		}
		mu.Lock()
		hooks = append(hooks, req)
		mu.Unlock()
	}))
	defer hook.Close()
	before := repairCounts(t)
	ctrl := e.startControllerWith("herd", false, func(c *controllerConfig) { c.ReplaceWebhook = hook.URL })
	defer ctrl.stop(t)
	nodes := e.addNodes("general", 6)
	e.waitFor("general up to date", time.Minute, func() (bool, error) {
		var np herdpool.HerdPool
		err := e.c.Get(e.t.Context(), client.ObjectKey{Name: "general"}, &np)
		return err == nil && np.Status.Phase == herdpool.PhaseUpToDate, nil
	})

	sick := nodes[3]
	w, err := e.kube.CoreV1().Nodes().Watch(t.Context(), metav1.ListOptions{FieldSelector: "metadata.name=" + sick})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	e.health(sick, corev1.ConditionTrue, schema.ReasonKubeletHealthzFailed)
	req := e.waitRequest(sick, schema.RepairReplace)
	n := e.node(sick)
	if !n.Spec.Unschedulable || n.Annotations[schema.AnnotationDrainStarted] == "" {
		t.Fatalf("%s asked for its evidence before replacement, uncordoned (%v) or undrained (%q)", sick, n.Spec.Unschedulable, n.Annotations[schema.AnnotationDrainStarted])
	}
	mu.Lock()
	early := len(hooks)
	mu.Unlock()
	if early != 0 {
		t.Fatalf("the webhook was posted before the agent captured its evidence: %+v", hooks)
	}
	e.report(sick, req, schema.ResultSucceeded)

	// The Node's last state, as the watch saw it deleted.
	var gone *corev1.Node
	deadline := time.After(30 * time.Second)
	for gone == nil {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatal("the watch of the node ended early")
			}
			if ev.Type == watch.Deleted {
				gone = ev.Object.(*corev1.Node)
			}
		case <-deadline:
			t.Fatalf("%s never deleted; annotations %v", sick, e.node(sick).Annotations)
		}
	}
	if gone.Annotations[schema.AnnotationReplace] == "" {
		t.Errorf("%s deleted without herd.dev/replace: %v", sick, gone.Annotations)
	}
	mu.Lock()
	got := slices.Clone(hooks)
	mu.Unlock()
	if len(got) == 0 {
		t.Fatal("the replacement webhook was never posted")
	}
	for _, h := range got {
		if h.Pool != "general" || h.Node != sick || h.Problem != string(schema.ConditionKubeletUnhealthy) || h.ID != got[0].ID || h.Cluster != "test" || h.Time.IsZero() {
			t.Errorf("webhook request %+v, want pool general, node %s, problem %s, one ID", h, sick, schema.ConditionKubeletUnhealthy)
		}
	}
	e.waitFor("the Replaced outcome counted", 30*time.Second, func() (bool, error) {
		after := repairCounts(t)
		return after[`herd_repair_outcomes_total{action="replace",dry_run="false",outcome="Replaced",pool="general"}`] >
			before[`herd_repair_outcomes_total{action="replace",dry_run="false",outcome="Replaced",pool="general"}`], nil
	})
	after := repairCounts(t)
	for _, k := range []string{
		`herd_repairs_total{action="replace",dry_run="false",pool="general",problem="HerdKubeletUnhealthy"}`,
		`herd_problem_to_repair_seconds_count{pool="general",problem="HerdKubeletUnhealthy"}`,
	} {
		if after[k] != before[k]+1 {
			t.Errorf("%s: %v, then %v; want one more", k, before[k], after[k])
		}
	}
	if after[`herd_repairs_stopped{pool="general"}`] != 0 {
		t.Errorf("herd_repairs_stopped{pool=general} %v with one node sick", after[`herd_repairs_stopped{pool="general"}`])
	}
}

// repairCounts reads the controller's repair metrics from its registry, by
// name and labels (sorted) as Prometheus writes them.
func repairCounts(t *testing.T) map[string]float64 {
	t.Helper()
	fams, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), "herd_repair") && !strings.HasPrefix(f.GetName(), "herd_problem_to_repair") {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			key := "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[f.GetName()+key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[f.GetName()+key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[f.GetName()+"_count"+key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}
