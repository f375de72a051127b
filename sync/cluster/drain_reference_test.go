package cluster_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/config"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/controller"
	"herd.dev/herd/test/controlplane"
)

// The pods every node of the reference test carries: one of each kind that
// a drain treats differently.
const (
	kindRS        = "replicaset" // run by a ReplicaSet
	kindDS        = "daemonset"  // run by a DaemonSet
	kindMirror    = "mirror"     // a static pod's mirror
	kindUnmanaged = "unmanaged"  // no controller
	kindEmptyDir  = "emptydir"   // a ReplicaSet's, with an emptyDir volume
	kindPDB       = "pdb"        // a ReplicaSet's, its PodDisruptionBudget allows no disruption
	kindCompleted = "completed"  // no controller, Succeeded
	kindStuck     = "stuck"      // a ReplicaSet's, deleted, held by a finalizer: stuck terminating
	kind500       = "error500"   // a ReplicaSet's, covered by two PodDisruptionBudgets: evictions answer 500
)

// pending marks a pod kubectl lists as still pending when it gives up,
// without an error of its own.
const pending cluster.PodReason = "pending"

var podKinds = []string{kindRS, kindDS, kindMirror, kindUnmanaged, kindEmptyDir, kindPDB, kindCompleted, kindStuck, kind500}

// end is where a pod ends after a drain.
type end string

const (
	stays       end = "stays"
	gone        end = "gone"
	terminating end = "terminating"
)

// expect is what happens to one kind of pod under one policy, with each
// tool. kubectlBy and herdBy say how a pod that went was removed ("evict" or
// "delete"); kubectlNames is the reason kubectl's output gives for the pod
// being in the way (pending: listed as pending, with no reason of its own);
// herd is the pod's outcome in Herd's last pass ("" when the pass does not
// list it: gone, or not selected).
type expect struct {
	end          end
	kubectlBy    string
	herdBy       string
	kubectlNames cluster.PodReason
	herd         cluster.PodOutcome
	herdReason   cluster.PodReason
}

// drainTimeout is the policies' timeout: short, but longer than kubectl's
// 5 s retry after a PodDisruptionBudget refusal, so both retry.
const drainTimeout = 6 * time.Second

type policyCase struct {
	name    string
	herd    schema.Drain
	kubectl []string
	drained bool // both drain the node; otherwise both stop with pods in the way
	refused bool // both refuse the node: nothing is asked of any pod
	want    map[string]expect
}

var (
	held    = func(r cluster.PodReason) expect { return expect{end: stays, herd: cluster.PodHeld, herdReason: r} }
	skipped = func(r cluster.PodReason) expect { return expect{end: stays, herd: cluster.PodSkipped, herdReason: r} }
	evicted = expect{end: gone, kubectlBy: "evict", herdBy: "evict"}
	ignored = expect{end: stays}
)

var policyCases = []policyCase{{
	name:    "default",
	herd:    schema.Drain{IgnoreDaemonSets: true},
	kubectl: []string{"--ignore-daemonsets"},
	refused: true,
	want: map[string]expect{
		kindRS:        held(""),
		kindDS:        skipped(cluster.ReasonDaemonSet),
		kindMirror:    skipped(cluster.ReasonMirror),
		kindUnmanaged: {end: stays, kubectlNames: cluster.ReasonUnmanaged, herd: cluster.PodBlocked, herdReason: cluster.ReasonUnmanaged},
		kindEmptyDir:  {end: stays, kubectlNames: cluster.ReasonEmptyDir, herd: cluster.PodBlocked, herdReason: cluster.ReasonEmptyDir},
		kindPDB:       held(""),
		kindCompleted: held(cluster.ReasonCompleted),
		kindStuck:     {end: terminating, herd: cluster.PodHeld},
		kind500:       held(""),
	},
}, {
	name:    "no-ignore-daemonsets",
	herd:    schema.Drain{Force: true, DeleteEmptyDirData: true},
	kubectl: []string{"--force", "--delete-emptydir-data"},
	refused: true,
	want: map[string]expect{
		kindRS:        held(""),
		kindDS:        {end: stays, kubectlNames: cluster.ReasonDaemonSet, herd: cluster.PodBlocked, herdReason: cluster.ReasonDaemonSet},
		kindMirror:    skipped(cluster.ReasonMirror),
		kindUnmanaged: held(cluster.ReasonUnmanaged),
		kindEmptyDir:  held(cluster.ReasonEmptyDir),
		kindPDB:       held(""),
		kindCompleted: held(cluster.ReasonCompleted),
		kindStuck:     {end: terminating, herd: cluster.PodHeld},
		kind500:       held(""),
	},
}, {
	name:    "force",
	herd:    schema.Drain{IgnoreDaemonSets: true, Force: true, DeleteEmptyDirData: true},
	kubectl: []string{"--ignore-daemonsets", "--force", "--delete-emptydir-data"},
	want: map[string]expect{
		kindRS:        evicted,
		kindDS:        skipped(cluster.ReasonDaemonSet),
		kindMirror:    skipped(cluster.ReasonMirror),
		kindUnmanaged: evicted,
		kindEmptyDir:  evicted,
		kindPDB:       {end: stays, kubectlNames: cluster.ReasonDisruptionBudget, herd: cluster.PodBlocked, herdReason: cluster.ReasonDisruptionBudget},
		kindCompleted: evicted,
		kindStuck:     {end: terminating, kubectlNames: cluster.ReasonStuckTerminating, herd: cluster.PodBlocked, herdReason: cluster.ReasonStuckTerminating},
		kind500:       {end: stays, kubectlNames: cluster.ReasonEvictionError, herd: cluster.PodBlocked, herdReason: cluster.ReasonEvictionError},
	},
}, {
	// kubectl deletes every pod at once; Herd evicts first, and deletes at
	// the timeout what evictions could not move. Every pod ends the same.
	name:    "disable-eviction",
	herd:    schema.Drain{IgnoreDaemonSets: true, Force: true, DeleteEmptyDirData: true, DisableEviction: true},
	kubectl: []string{"--ignore-daemonsets", "--force", "--delete-emptydir-data", "--disable-eviction"},
	want: map[string]expect{
		kindRS:        {end: gone, kubectlBy: "delete", herdBy: "evict"},
		kindDS:        skipped(cluster.ReasonDaemonSet),
		kindMirror:    skipped(cluster.ReasonMirror),
		kindUnmanaged: {end: gone, kubectlBy: "delete", herdBy: "evict"},
		kindEmptyDir:  {end: gone, kubectlBy: "delete", herdBy: "evict"},
		kindPDB:       {end: gone, kubectlBy: "delete", herdBy: "delete", herd: cluster.PodDeleted},
		kindCompleted: {end: gone, kubectlBy: "delete", herdBy: "evict"},
		// kubectl lists it as pending at the timeout, without a reason.
		kindStuck: {end: terminating, kubectlNames: pending, herd: cluster.PodBlocked, herdReason: cluster.ReasonStuckTerminating},
		kind500:   {end: gone, kubectlBy: "delete", herdBy: "delete", herd: cluster.PodDeleted},
	},
}, {
	name:    "pod-selector",
	herd:    schema.Drain{IgnoreDaemonSets: true, PodSelector: &schema.LabelSelector{MatchExpressions: []schema.LabelSelectorRequirement{{Key: "kind", Operator: "NotIn", Values: []string{kindUnmanaged, kindEmptyDir, kindPDB, kindStuck, kind500}}}}},
	kubectl: []string{"--ignore-daemonsets", "--pod-selector=kind notin (unmanaged,emptydir,pdb,stuck,error500)"},
	drained: true,
	want: map[string]expect{
		kindRS:        evicted,
		kindDS:        skipped(cluster.ReasonDaemonSet),
		kindMirror:    skipped(cluster.ReasonMirror),
		kindUnmanaged: ignored,
		kindEmptyDir:  ignored,
		kindPDB:       ignored,
		kindCompleted: evicted,
		kindStuck:     {end: terminating},
		kind500:       ignored,
	},
}, {
	name: "skip-wait",
	herd: schema.Drain{IgnoreDaemonSets: true, Force: true, DeleteEmptyDirData: true, GracePeriod: "5s", SkipWaitForDeleteTimeout: "1s",
		PodSelector: &schema.LabelSelector{MatchExpressions: []schema.LabelSelectorRequirement{{Key: "kind", Operator: "NotIn", Values: []string{kindPDB, kind500}}}}},
	kubectl: []string{"--ignore-daemonsets", "--force", "--delete-emptydir-data", "--grace-period=5", "--skip-wait-for-delete-timeout=1", "--pod-selector=kind notin (pdb,error500)"},
	drained: true,
	want: map[string]expect{
		kindRS:        evicted,
		kindDS:        skipped(cluster.ReasonDaemonSet),
		kindMirror:    skipped(cluster.ReasonMirror),
		kindUnmanaged: evicted,
		kindEmptyDir:  evicted,
		kindPDB:       ignored,
		kindCompleted: evicted,
		kindStuck:     {end: terminating, herd: cluster.PodSkipped, herdReason: cluster.ReasonStuckTerminating},
		kind500:       ignored,
	},
}}

// TestDrainMatchesKubectl is the reference for Herd's drain: for each
// policy, two identical nodes carry the same pods; `kubectl drain`, built
// with the control plane, drains one, Herd the other, at the same time.
// Every pod must end the same way (gone, still there, still terminating),
// removed the same way (evicted or deleted) except where the table says
// why not, and Herd must name every pod kubectl names as in its way, for
// the same reason. The API server's audit log tells what each tool asked.
func TestDrainMatchesKubectl(t *testing.T) {
	e := startDrainEnv(t)
	var mu sync.Mutex
	report := map[string]string{}
	t.Run("policies", func(t *testing.T) {
		for _, pc := range policyCases {
			t.Run(pc.name, func(t *testing.T) {
				t.Parallel()
				table := e.compare(t, pc)
				mu.Lock()
				report[pc.name] = table
				mu.Unlock()
			})
		}
	})
	for _, pc := range policyCases {
		t.Logf("policy %s (kubectl drain %s):\n%s", pc.name, strings.Join(pc.kubectl, " "), report[pc.name])
	}
}

// drainEnv is a control plane with an audit log, Herd's RBAC installed, and
// a stand-in kubelet for the test's nodes.
type drainEnv struct {
	cp    *controlplane.ControlPlane
	admin *kubernetes.Clientset
	herd  client.Client // as Herd's controller: its ServiceAccount and rights
	audit string        // the API server's audit log
}

const (
	herdAgent    = "herd-drain-reference"
	kubeletAgent = "drain-reference-kubelet"
	testLabel    = "drain-test"
	phaseLabel   = "drain-test/phase"
)

func startDrainEnv(t *testing.T) *drainEnv {
	t.Helper()
	dir := t.TempDir()
	policy := filepath.Join(dir, "audit-policy.yaml")
	// Evictions and deletions of pods, with their bodies (grace periods).
	if err := os.WriteFile(policy, []byte(`apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Request
    verbs: [create]
    resources: [{group: "", resources: ["pods/eviction"]}]
  - level: Request
    verbs: [delete]
    resources: [{group: "", resources: ["pods"]}]
  - level: None
`), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &drainEnv{audit: filepath.Join(dir, "audit.log")}
	e.cp = controlplane.StartTest(t, controlplane.Options{
		ExtraAPIServerFlags: []string{"--audit-policy-file=" + policy, "--audit-log-path=" + e.audit, "--audit-log-mode=blocking"},
		// The stand-in kubelet posts Ready once; keep the nodes from being
		// marked unreachable meanwhile.
		ExtraControllerManagerFlags: []string{"--node-monitor-grace-period=1h"},
	})
	ctx := t.Context()
	rc := e.cp.Config()
	rc.UserAgent = "drain-reference-setup"
	rc.QPS, rc.Burst = 200, 400
	e.admin = kubernetes.NewForConfigOrDie(rc)

	sch := controller.Scheme()
	_ = apiextensionsv1.AddToScheme(sch)
	c, err := client.New(rc, client.Options{Scheme: sch})
	if err != nil {
		t.Fatal(err)
	}
	manifests, err := config.Render()
	if err != nil {
		t.Fatal(err)
	}
	if err := cluster.Apply(ctx, c, manifests); err != nil {
		t.Fatal(err)
	}
	sa, err := e.cp.ServiceAccountConfig(ctx, "herd-system", "herd-controller")
	if err != nil {
		t.Fatal(err)
	}
	sa.UserAgent = herdAgent
	if e.herd, err = client.New(sa, client.Options{Scheme: controller.Scheme()}); err != nil {
		t.Fatal(err)
	}
	startKubelet(t, rest.CopyConfig(rc))
	return e
}

// startKubelet plays the kubelet for the test's pods: a pod bound to a node
// runs (Running and Ready, or Succeeded when its label says so), and a pod
// being deleted is finished at once, as a kubelet confirms a stopped pod.
// A finalizer keeps the last one there, stuck terminating.
func startKubelet(t *testing.T, rc *rest.Config) {
	rc.UserAgent = kubeletAgent
	cs := kubernetes.NewForConfigOrDie(rc)
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.LabelSelector = testLabel
	}))
	pods := factory.Core().V1().Pods().Informer()
	work := make(chan *corev1.Pod, 1024)
	handle := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			work <- p
		}
	}
	if _, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: handle, UpdateFunc: func(_, obj any) { handle(obj) }}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case p := <-work:
				if err := runPod(ctx, cs, p); err != nil && ctx.Err() == nil {
					t.Logf("kubelet: pod %s/%s: %v", p.Namespace, p.Name, err)
				}
			}
		}
	}()
	factory.Start(ctx.Done())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
		<-done
	})
	if !cache.WaitForCacheSync(t.Context().Done(), pods.HasSynced) {
		t.Fatal("kubelet: pod cache not filled")
	}
}

func runPod(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod) error {
	if p.DeletionTimestamp != nil {
		if p.DeletionGracePeriodSeconds != nil && *p.DeletionGracePeriodSeconds == 0 {
			return nil // confirmed already; a finalizer holds it
		}
		zero := int64(0)
		err := cs.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if p.Status.Phase != corev1.PodPending && p.Status.Phase != "" {
		return nil
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := cs.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil || cur.UID != p.UID || cur.DeletionTimestamp != nil || cur.Status.Phase != corev1.PodPending && cur.Status.Phase != "" {
			return client.IgnoreNotFound(err)
		}
		now := metav1.Now()
		cur.Status.StartTime = &now
		if cur.Labels[phaseLabel] == string(corev1.PodSucceeded) {
			cur.Status.Phase = corev1.PodSucceeded
		} else {
			cur.Status.Phase = corev1.PodRunning
			for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
				cur.Status.Conditions = append(cur.Status.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now})
			}
		}
		_, err = cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
}

// side is one of the two nodes of a policy: Herd's or kubectl's.
type side struct {
	tool string // "herd" or "kubectl"
	node string
	pods map[string]corev1.Pod // by kind, as they were before the drain
}

// compare drains the policy's two nodes, one with each tool, checks every
// pod's end against the table, and returns the table as observed.
func (e *drainEnv) compare(t *testing.T, pc policyCase) string {
	ns := "drain-" + pc.name
	sides := []*side{{tool: "herd", node: pc.name + "-herd"}, {tool: "kubectl", node: pc.name + "-kubectl"}}
	e.setUp(t, ns, sides)
	res, out, kubectlOK := e.drainBoth(t, pc, sides[0].node, sides[1].node)

	if pc.drained != (res.State == cluster.Drained) || pc.drained != kubectlOK {
		t.Errorf("drained: want %v; herd %s, kubectl succeeded %v", pc.drained, res.State, kubectlOK)
	}
	if pc.refused != (res.State == cluster.Refused) {
		t.Errorf("refused: want %v; herd %s", pc.refused, res.State)
	}
	if !pc.drained && !pc.refused && res.State != cluster.TimedOut {
		t.Errorf("herd: %s, want TimedOut", res.State)
	}
	for _, p := range res.Blocking() {
		if !strings.Contains(res.String(), p.Pod) {
			t.Errorf("herd's report does not name %s: %s", p.Pod, res)
		}
	}

	// What each tool asked of each pod, as the API server saw it.
	e.settle(t, ns)
	asked := e.readAudit(t, ns)
	named := kubectlNamed(out, ns)
	outcomes := map[string]cluster.PodResult{}
	for _, p := range res.Pods {
		outcomes[p.Pod] = p
	}
	var table strings.Builder
	fmt.Fprintf(&table, "  %-11s %-24s %-45s %s\n", "pod", "end (kubectl/herd)", "kubectl: asked; named in the way", "herd: asked; outcome")
	for _, kind := range podKinds {
		hp, kp := sides[0].pods[kind], sides[1].pods[kind]
		h := observed{end: e.endOf(t, &hp), asked: asked[podKey(&hp)].requests(herdAgent), result: outcomes[podKey(&hp)]}
		k := observed{end: e.endOf(t, &kp), asked: asked[podKey(&kp)].requests("kubectl/"), named: named[podKey(&kp)]}
		fmt.Fprintf(&table, "  %-11s %-24s %-45s %s\n", kind, k.end+"/"+h.end, k.describe(string(k.named)), h.describe(joinReason(h.result)))
		checkPod(t, kind, pc, k, h)
	}
	return table.String()
}

// drainBoth drains one node with Herd and the other with kubectl, at once.
func (e *drainEnv) drainBoth(t *testing.T, pc policyCase, herdNode, kubectlNode string) (cluster.DrainResult, string, bool) {
	policy, err := cluster.DrainPolicyFor(withTimeout(pc.herd))
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg        sync.WaitGroup
		res       cluster.DrainResult
		herdErr   error
		out       []byte
		kubectlOK bool
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		res, herdErr = e.herdDrain(t.Context(), herdNode, policy)
	}()
	go func() {
		defer wg.Done()
		args := append([]string{"--kubeconfig", e.cp.KubeconfigPath(), "drain", kubectlNode, "--timeout=" + drainTimeout.String()}, pc.kubectl...)
		var err error
		out, err = exec.CommandContext(t.Context(), e.cp.KubectlPath(), args...).CombinedOutput()
		kubectlOK = err == nil
	}()
	wg.Wait()
	if herdErr != nil {
		t.Fatalf("herd drain: %v", herdErr)
	}
	t.Logf("kubectl drain %s:\n%s", strings.Join(pc.kubectl, " "), out)
	t.Logf("herd: %s: %s", res.State, res)
	return res, string(out), kubectlOK
}

// observed is what became of one pod with one tool.
type observed struct {
	end    end
	asked  requests          // the tool's evictions and deletions of it
	named  cluster.PodReason // kubectl: why its output names it in the way
	result cluster.PodResult // herd: its outcome in the last pass
}

// by says how the tool removed the pod: the verb of its first request the
// API server granted.
func (o observed) by() string {
	for _, r := range o.asked {
		if r.code >= 200 && r.code < 300 {
			return r.verb
		}
	}
	return ""
}

// describe is the tool's column: what it asked ("evict", "evict 429"),
// then what it says of the pod.
func (o observed) describe(says string) string {
	var asked []string
	if by := o.by(); by != "" {
		asked = append(asked, by)
	}
	for _, r := range o.asked {
		if s := fmt.Sprintf("%s %d", r.verb, r.code); (r.code < 200 || r.code >= 300) && !slices.Contains(asked, s) {
			asked = append(asked, s)
		}
	}
	if len(asked) == 0 {
		asked = []string{"-"}
	}
	if says == "" {
		says = "-"
	}
	return strings.Join(asked, ", ") + "; " + says
}

// checkPod compares what became of one kind of pod with each tool against
// the table, and Herd's report against kubectl's.
func checkPod(t *testing.T, kind string, pc policyCase, k, h observed) {
	t.Helper()
	want := pc.want[kind]
	if h.end != want.end || k.end != want.end {
		t.Errorf("%s: ends %s with kubectl, %s with herd; want %s", kind, k.end, h.end, want.end)
	}
	if want.end == gone && (k.by() != want.kubectlBy || h.by() != want.herdBy) {
		t.Errorf("%s: removed by %q with kubectl, %q with herd; want %q, %q", kind, k.by(), h.by(), want.kubectlBy, want.herdBy)
	}
	if k.named != want.kubectlNames {
		t.Errorf("%s: kubectl names it %q, want %q", kind, k.named, want.kubectlNames)
	}
	if h.result.Outcome != want.herd || h.result.Reason != want.herdReason {
		t.Errorf("%s: herd's outcome %s (%s), want %s (%s)", kind, h.result.Outcome, h.result.Reason, want.herd, want.herdReason)
	}
	// Herd names every pod kubectl names, for the same reason.
	if r := k.named; r != "" && (h.result.Outcome != cluster.PodBlocked || r != pending && h.result.Reason != r) {
		t.Errorf("%s: kubectl names it in the way (%s); herd reports %s (%s)", kind, r, h.result.Outcome, h.result.Reason)
	}
	if pc.refused && len(h.asked)+len(k.asked) > 0 {
		t.Errorf("%s: asked of a refused node: kubectl %v, herd %v", kind, k.asked, h.asked)
	}
	grace := strings.TrimSuffix(pc.herd.GracePeriod, "s")
	for _, r := range append(slices.Clone(h.asked), k.asked...) {
		if r.grace != grace {
			t.Errorf("%s: %s %s with grace period %q, want %q", kind, r.agent, r.verb, r.grace, grace)
		}
	}
}

func podKey(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }

func withTimeout(d schema.Drain) schema.Drain {
	d.Timeout = drainTimeout.String()
	return d
}

// herdDrain drains the node as the controller does: cordon, then a pass
// every half second until the node is drained or blocked.
func (e *drainEnv) herdDrain(ctx context.Context, name string, policy cluster.DrainPolicy) (cluster.DrainResult, error) {
	nodes := &cluster.Nodes{Client: e.herd, Pods: e.herd}
	var node corev1.Node
	if err := e.herd.Get(ctx, client.ObjectKey{Name: name}, &node); err != nil {
		return cluster.DrainResult{}, err
	}
	if err := nodes.Cordon(ctx, &node); err != nil {
		return cluster.DrainResult{}, err
	}
	var res cluster.DrainResult
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := e.herd.Get(ctx, client.ObjectKey{Name: name}, &node); err != nil {
			return false, err
		}
		var err error
		res, err = nodes.Drain(ctx, &node, policy, time.Now())
		return err == nil && (res.Done() || res.Blocked()), err
	})
	return res, err
}

// setUp creates the policy's namespace, its two nodes and the same pods on
// each, and waits until they run and the budgets are in force.
func (e *drainEnv) setUp(t *testing.T, ns string, sides []*side) {
	if _, err := e.admin.CoreV1().Namespaces().Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, s := range sides {
		s.pods = map[string]corev1.Pod{}
		node := e.readyNode(t, s.node, ns)
		e.createPods(t, ns, s, node)
	}
	e.createDaemonSet(t, ns)
	e.bindAndRun(t, ns, sides)
	e.makeStuck(t, ns, sides)
}

// readyNode registers a Ready node, labelled for the policy's DaemonSet.
func (e *drainEnv) readyNode(t *testing.T, name, ns string) *corev1.Node {
	ctx := t.Context()
	node, err := e.admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{testLabel: ns}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := e.admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		_, err = e.admin.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return node
}

var podSpec = corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app:1"}}}

func podLabels(kind, tool string) map[string]string {
	return map[string]string{testLabel: "1", "kind": kind, "side": tool}
}

// createPods makes one side's pods but the DaemonSet's: ReplicaSets of
// one, pods without a controller, a mirror pod owned by the node, and the
// PodDisruptionBudgets.
func (e *drainEnv) createPods(t *testing.T, ns string, s *side, node *corev1.Node) {
	ctx := t.Context()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	one := int32(1)
	for _, kind := range []string{kindRS, kindEmptyDir, kindPDB, kindStuck, kind500} {
		spec := podSpec
		if kind == kindEmptyDir {
			spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
		}
		must(e.admin.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: kind + "-" + s.tool},
			Spec: appsv1.ReplicaSetSpec{Replicas: &one, Selector: &metav1.LabelSelector{MatchLabels: podLabels(kind, s.tool)},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: podLabels(kind, s.tool)}, Spec: spec}},
		}, metav1.CreateOptions{}))
	}
	yes := true
	bare := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: kindUnmanaged + "-" + s.tool, Labels: podLabels(kindUnmanaged, s.tool)}},
		{ObjectMeta: metav1.ObjectMeta{Name: kindCompleted + "-" + s.tool, Labels: podLabels(kindCompleted, s.tool)}},
		{ObjectMeta: metav1.ObjectMeta{Name: kindMirror + "-" + s.tool, Labels: podLabels(kindMirror, s.tool),
			Annotations:     map[string]string{corev1.MirrorPodAnnotationKey: "static"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID, Controller: &yes}}}},
	}
	bare[1].Labels[phaseLabel] = string(corev1.PodSucceeded)
	for _, p := range bare {
		p.Spec = podSpec
		p.Spec.NodeName = node.Name
		must(e.admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}))
	}
	// One budget allows no disruption; two cover one pod.
	zero, oneInt := intstr.FromInt32(0), intstr.FromInt32(1)
	for name, b := range map[string]struct {
		kind string
		min  *intstr.IntOrString
	}{"pdb": {kindPDB, &oneInt}, "two-a": {kind500, &zero}, "two-b": {kind500, &zero}} {
		must(e.admin.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
			ObjectMeta: metav1.ObjectMeta{Name: name + "-" + s.tool},
			Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: b.min, Selector: &metav1.LabelSelector{MatchLabels: podLabels(b.kind, s.tool)}},
		}, metav1.CreateOptions{}))
	}
}

// createDaemonSet makes a DaemonSet that runs on both nodes of the policy.
func (e *drainEnv) createDaemonSet(t *testing.T, ns string) {
	labels := map[string]string{testLabel: "1", "kind": kindDS}
	spec := podSpec
	spec.NodeSelector = map[string]string{testLabel: ns}
	_, err := e.admin.AppsV1().DaemonSets(ns).Create(t.Context(), &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "ds"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// bindAndRun binds the controllers' pods as a scheduler would, and waits
// until every pod of both sides runs (or has completed).
func (e *drainEnv) bindAndRun(t *testing.T, ns string, sides []*side) {
	ctx := t.Context()
	poll(t, "every pod bound and running", func() (bool, error) {
		list, err := e.admin.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, s := range sides {
			clear(s.pods)
		}
		for i := range list.Items {
			p := &list.Items[i]
			if p.Spec.NodeName == "" {
				if node := boundFor(p, sides); node != "" {
					err := e.admin.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, UID: p.UID}, Target: corev1.ObjectReference{Kind: "Node", Name: node}}, metav1.CreateOptions{})
					if err != nil && !apierrors.IsConflict(err) {
						return false, err
					}
				}
				continue
			}
			for _, s := range sides {
				if s.node == p.Spec.NodeName && (p.Status.Phase == corev1.PodRunning || p.Status.Phase == corev1.PodSucceeded) {
					s.pods[p.Labels["kind"]] = *p
				}
			}
		}
		for _, s := range sides {
			if len(s.pods) != len(podKinds) {
				return false, nil
			}
		}
		return true, nil
	})
}

// makeStuck deletes each side's stuck pod, which the kubelet confirms and a
// finalizer holds, and waits for that and for the budget that allows no
// disruption to be in force.
func (e *drainEnv) makeStuck(t *testing.T, ns string, sides []*side) {
	ctx := t.Context()
	for _, s := range sides {
		p := s.pods[kindStuck]
		if _, err := e.admin.CoreV1().Pods(ns).Patch(ctx, p.Name, types.MergePatchType, []byte(`{"metadata":{"finalizers":["drain-test/hold"]}}`), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := e.admin.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = e.admin.CoreV1().Pods(ns).Patch(context.Background(), p.Name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
		})
	}
	poll(t, "the stuck pods terminating, and the budgets in force", func() (bool, error) {
		for _, s := range sides {
			p, err := e.admin.CoreV1().Pods(ns).Get(ctx, s.pods[kindStuck].Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if p.DeletionGracePeriodSeconds == nil || *p.DeletionGracePeriodSeconds != 0 {
				return false, nil
			}
			s.pods[kindStuck] = *p
			pdb, err := e.admin.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "pdb-"+s.tool, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if pdb.Status.ObservedGeneration != pdb.Generation || pdb.Status.CurrentHealthy != 1 || pdb.Status.DisruptionsAllowed != 0 {
				return false, nil
			}
		}
		return true, nil
	})
}

// boundFor says where a pod of the test's controllers goes, as a scheduler
// would: a DaemonSet's to the node its affinity names, a ReplicaSet's to its
// side's node. (Replacements of evicted pods come after the set-up, and stay
// unbound.)
func boundFor(p *corev1.Pod, sides []*side) string {
	if a := p.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
			for _, f := range term.MatchFields {
				if f.Key == "metadata.name" && len(f.Values) == 1 {
					return f.Values[0]
				}
			}
		}
	}
	for _, s := range sides {
		if p.Labels["side"] == s.tool && metav1.GetControllerOf(p) != nil {
			return s.node
		}
	}
	return ""
}

// settle waits until no pod of the namespace is terminating but those a
// finalizer holds.
func (e *drainEnv) settle(t *testing.T, ns string) {
	poll(t, "evicted pods to go", func() (bool, error) {
		list, err := e.admin.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp != nil && len(p.Finalizers) == 0 {
				return false, nil
			}
		}
		return true, nil
	})
}

// endOf says where the pod (as it was before the drain) ended.
func (e *drainEnv) endOf(t *testing.T, p *corev1.Pod) end {
	cur, err := e.admin.CoreV1().Pods(p.Namespace).Get(t.Context(), p.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return gone
	case err != nil:
		t.Fatal(err)
	case cur.UID != p.UID:
		return gone
	case cur.DeletionTimestamp != nil:
		return terminating
	}
	return stays
}

// request is an eviction or deletion of a pod, as the audit log has it.
type request struct {
	agent string
	verb  string // "evict" or "delete"
	code  int
	grace string // deleteOptions.gracePeriodSeconds, "" when unset
}

type requests []request

func (rs requests) requests(agent string) requests {
	var out requests
	for _, r := range rs {
		if strings.HasPrefix(r.agent, agent) {
			out = append(out, r)
		}
	}
	return out
}

// readAudit reads the evictions and deletions of the namespace's pods, by
// pod.
func (e *drainEnv) readAudit(t *testing.T, ns string) map[string]requests {
	f, err := os.Open(e.audit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]requests{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			Stage     string `json:"stage"`
			Verb      string `json:"verb"`
			UserAgent string `json:"userAgent"`
			ObjectRef struct {
				Namespace   string `json:"namespace"`
				Name        string `json:"name"`
				Subresource string `json:"subresource"`
			} `json:"objectRef"`
			ResponseStatus struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
			RequestObject struct {
				GracePeriodSeconds *int64 `json:"gracePeriodSeconds"`
				DeleteOptions      *struct {
					GracePeriodSeconds *int64 `json:"gracePeriodSeconds"`
				} `json:"deleteOptions"`
			} `json:"requestObject"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("audit log: %v", err)
		}
		if ev.Stage != "ResponseComplete" || ev.ObjectRef.Namespace != ns || !strings.HasPrefix(ev.UserAgent, "kubectl/") && ev.UserAgent != herdAgent {
			continue
		}
		r := request{agent: ev.UserAgent, verb: "delete", code: ev.ResponseStatus.Code}
		g := ev.RequestObject.GracePeriodSeconds
		if ev.ObjectRef.Subresource == "eviction" {
			r.verb, g = "evict", nil
			if d := ev.RequestObject.DeleteOptions; d != nil {
				g = d.GracePeriodSeconds
			}
		}
		if g != nil {
			r.grace = fmt.Sprint(*g)
		}
		id := ev.ObjectRef.Namespace + "/" + ev.ObjectRef.Name
		out[id] = append(out[id], r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// What kubectl drain prints about the pods in its way, and what Herd calls
// each reason.
var (
	kubectlRefusals = map[string]cluster.PodReason{
		"cannot delete Pods that declare no controller (use --force to override): ":        cluster.ReasonUnmanaged,
		"cannot delete Pods with local storage (use --delete-emptydir-data to override): ": cluster.ReasonEmptyDir,
		"cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): ":       cluster.ReasonDaemonSet,
	}
	podList         = regexp.MustCompile(`^[a-z0-9-]+/[a-z0-9-]+(, [a-z0-9-]+/[a-z0-9-]+)*`)
	kubectlBudget   = regexp.MustCompile(`error when evicting pods/"([^"]+)" -n "([^"]+)" \(will retry after [^)]*\): Cannot evict pod as it would violate the pod's disruption budget`)
	kubectlEvictErr = regexp.MustCompile(`error when evicting pods/"([^"]+)" -n "([^"]+)": This pod has more than one PodDisruptionBudget`)
	kubectlWaiting  = regexp.MustCompile(`error when waiting for pod "([^"]+)" in namespace "([^"]+)" to terminate`)
	kubectlPending  = regexp.MustCompile(`There are pending pods in node "[^"]+" when an error occurred: [^\n]*\n((?:pod/[a-z0-9-]+\n)+)`)
)

// kubectlNamed reads the pods kubectl drain's output names as in its way,
// with the reason it gives, in Herd's words.
func kubectlNamed(out, ns string) map[string]cluster.PodReason {
	named := map[string]cluster.PodReason{}
	for phrase, reason := range kubectlRefusals {
		for rest := out; ; {
			i := strings.Index(rest, phrase)
			if i < 0 {
				break
			}
			rest = rest[i+len(phrase):]
			for _, pod := range strings.Split(podList.FindString(rest), ", ") {
				named[pod] = reason
			}
		}
	}
	// The pending pods kubectl lists have no namespace: the policy's.
	for _, m := range kubectlPending.FindAllStringSubmatch(out, -1) {
		for _, line := range strings.Fields(m[1]) {
			named[ns+"/"+strings.TrimPrefix(line, "pod/")] = pending
		}
	}
	for re, reason := range map[*regexp.Regexp]cluster.PodReason{kubectlBudget: cluster.ReasonDisruptionBudget, kubectlEvictErr: cluster.ReasonEvictionError, kubectlWaiting: cluster.ReasonStuckTerminating} {
		for _, m := range re.FindAllStringSubmatch(out, -1) {
			named[m[2]+"/"+m[1]] = reason
		}
	}
	return named
}

func joinReason(r cluster.PodResult) string {
	switch {
	case r.Outcome == "":
		return ""
	case r.Reason == "":
		return string(r.Outcome)
	}
	return string(r.Outcome) + " " + string(r.Reason)
}

func poll(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) { return cond() })
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}
