package health_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/node/health"
	"herd.dev/herd/schema"
	"herd.dev/herd/test/containerd"
)

func expect(t *testing.T, got health.Result, status corev1.ConditionStatus, reason schema.HealthReason) {
	t.Helper()
	if got.Status != status || got.Reason != reason {
		t.Fatalf("%s: got %s %s (%s), want %s %s", got.Type, got.Status, got.Reason, got.Message, status, reason)
	}
}

// fakeKubelet serves /healthz as kubelet does, in a mode the test sets.
type fakeKubelet struct{ mode atomic.Value }

func (k *fakeKubelet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch k.mode.Load() {
	case "ok":
		fmt.Fprint(w, "ok")
	case "hang":
		<-r.Context().Done()
	default:
		http.Error(w, "[-]syncloop failed", http.StatusInternalServerError)
	}
}

func newNode(t *testing.T, cs kubernetes.Interface, name string, conds ...corev1.NodeCondition) *corev1.Node {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(conds) > 0 {
		// A patch, not an update: the node lifecycle controller may have
		// changed the new Node already.
		body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
		if err != nil {
			t.Fatal(err)
		}
		if n, err = cs.CoreV1().Nodes().PatchStatus(t.Context(), name, body); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
	return n
}

func leaseFor(node string, renew metav1.MicroTime) *coordinationv1.Lease {
	dur := int32(40)
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: node, Namespace: "kube-node-lease"},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &node, LeaseDurationSeconds: &dur, RenewTime: &renew},
	}
}

func renewLease(t *testing.T, cs kubernetes.Interface, node string, at time.Time) {
	t.Helper()
	ctx := t.Context()
	renew := metav1.NewMicroTime(at)
	leases := cs.CoordinationV1().Leases("kube-node-lease")
	l, err := leases.Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		if _, err := leases.Create(ctx, leaseFor(node, renew), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return
	}
	l.Spec.RenewTime = &renew
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationKubelet: kubelet's /healthz from a real HTTP server that
// answers, fails, hangs and goes away, and its Lease on a real API server.
func TestIntegrationKubelet(t *testing.T) {
	cs := client(t)
	ctx := t.Context()
	fk := &fakeKubelet{}
	fk.mode.Store("ok")
	srv := httptest.NewServer(fk)
	defer srv.Close()
	const node = "kubelet-node"
	// The control plane outlives a run (go test -count): no Lease yet.
	_ = cs.CoordinationV1().Leases("kube-node-lease").Delete(ctx, node, metav1.DeleteOptions{})
	check := &health.Kubelet{HealthzURL: srv.URL + "/healthz", Timeout: 300 * time.Millisecond, Lease: health.NodeLease(lean(t), node)}

	expect(t, check.Check(ctx, time.Now()), corev1.ConditionUnknown, schema.ReasonKubeletLeaseUnknown)
	renewLease(t, cs, node, time.Now())
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionFalse, schema.ReasonKubeletHealthy)
	renewLease(t, cs, node, time.Now().Add(-2*time.Minute))
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonKubeletLeaseExpired)
	renewLease(t, cs, node, time.Now())

	fk.mode.Store("fail")
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonKubeletHealthzFailed)
	fk.mode.Store("hang")
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonKubeletHealthzTimeout)
	fk.mode.Store("ok")
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionFalse, schema.ReasonKubeletHealthy)
	srv.Close()
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonKubeletHealthzFailed)
}

// TestIntegrationPLEG: kubelet's Ready condition read from a real API
// server, and its PLEG gauge from a real HTTP server.
func TestIntegrationPLEG(t *testing.T) {
	cs := client(t)
	ctx := t.Context()
	const node = "pleg-node"
	newNode(t, cs, node, corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status"})
	getNode := func(ctx context.Context) (*corev1.Node, error) {
		return cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	}
	var lastSeen atomic.Int64
	lastSeen.Store(time.Now().Unix())
	metrics := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "# TYPE kubelet_pleg_last_seen_seconds gauge\nkubelet_pleg_last_seen_seconds %d\n", lastSeen.Load())
	}))
	defer metrics.Close()

	onlyNode := &health.PLEG{Node: getNode}
	withMetrics := &health.PLEG{Node: getNode, Metrics: health.HTTPMetrics(metrics.Client(), metrics.URL+"/metrics")}
	expect(t, onlyNode.Check(ctx, time.Now()), corev1.ConditionFalse, schema.ReasonPLEGHealthy)
	expect(t, withMetrics.Check(ctx, time.Now()), corev1.ConditionFalse, schema.ReasonPLEGHealthy)

	lastSeen.Store(time.Now().Add(-5 * time.Minute).Unix())
	expect(t, withMetrics.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonPLEGRelistStalled)

	kubeletUpdate(t, cs, node, func(n *corev1.Node) {
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == corev1.NodeReady {
				n.Status.Conditions[i].Status = corev1.ConditionFalse
				n.Status.Conditions[i].Reason = "KubeletNotReady"
				n.Status.Conditions[i].Message = "PLEG is not healthy: pleg was last seen active 3m5s ago; threshold is 3m0s"
			}
		}
	})
	expect(t, onlyNode.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonPLEGNotHealthy)
}

// TestIntegrationRuntimeAndSandboxes: the runtime check and the leftover
// sandbox check against a real containerd, with pods bound in a real API
// server; the leftover is then removed through the CRI.
func TestIntegrationRuntimeAndSandboxes(t *testing.T) {
	cs := client(t)
	ctd := containerd.StartTest(t, containerd.Options{})
	ctx := t.Context()
	c, err := cri.New(ctd.Socket())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	rt := &health.Runtime{CRI: c, Timeout: 2 * time.Second}
	expect(t, rt.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonRuntimeNetworkDown)
	if err := ctd.EnableCNI(); err != nil {
		t.Fatal(err)
	}
	pollResult(t, rt, corev1.ConditionFalse, schema.ReasonRuntimeHealthy)

	const node = "sandbox-node"
	newNode(t, cs, node)
	pod, err := cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "default"},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "web", Image: "web"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctd.RunSandbox(ctx, containerd.Pod{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID)}); err != nil {
		t.Fatal(err)
	}
	goneID, err := ctd.RunSandbox(ctx, containerd.Pod{Name: "deleted-0", Namespace: "default", UID: "uid-of-a-deleted-pod"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctd.RunSandbox(ctx, containerd.Pod{Name: "other-tool", Namespace: "x", UID: "", Unlabelled: true}); err != nil {
		t.Fatal(err)
	}

	sb := &health.Sandboxes{CRI: c, Pods: health.PodsOnNode(lean(t).ListPods, node), Grace: time.Minute}
	expect(t, sb.Check(ctx, time.Now()), corev1.ConditionFalse, schema.ReasonNoLeftoverSandboxes) // younger than the grace period
	later := time.Now().Add(2 * time.Minute)
	r := sb.Check(ctx, later)
	expect(t, r, corev1.ConditionTrue, schema.ReasonLeftoverSandboxes)
	if !strings.Contains(r.Message, "default/deleted-0") || strings.Contains(r.Message, "web-0") {
		t.Errorf("message names the wrong sandboxes: %s", r.Message)
	}
	left, err := sb.Leftover(ctx, later)
	if err != nil || len(left) != 1 || left[0].ID != goneID {
		t.Fatalf("leftover: %+v, %v; want only %s", left, err, goneID)
	}
	if err := c.RemoveSandbox(ctx, goneID); err != nil {
		t.Fatal(err)
	}
	expect(t, sb.Check(ctx, later), corev1.ConditionFalse, schema.ReasonNoLeftoverSandboxes)

	// A pod deleted from the API leaves its sandbox behind once the cached
	// pod list is older than PodsTTL.
	if err := cs.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	pollResultAt(t, sb, func() time.Time { return time.Now().Add(3 * time.Minute) }, corev1.ConditionTrue, schema.ReasonLeftoverSandboxes)

	if err := ctd.Kill(); err != nil {
		t.Fatal(err)
	}
	expect(t, rt.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonRuntimeUnreachable)
	expect(t, sb.Check(ctx, later), corev1.ConditionUnknown, schema.ReasonSandboxesUnknown)
}

func pollResult(t *testing.T, c health.Check, status corev1.ConditionStatus, reason schema.HealthReason) {
	t.Helper()
	pollResultAt(t, c, time.Now, status, reason)
}

func pollResultAt(t *testing.T, c health.Check, now func() time.Time, status corev1.ConditionStatus, reason schema.HealthReason) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := c.Check(t.Context(), now())
		if r.Status == status && r.Reason == reason {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never %s %s: last %s %s (%s)", c.Type(), status, reason, r.Status, r.Reason, r.Message)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestIntegrationDisk: statfs of a real tmpfs of known size, filled with
// bytes and then with inodes.
func TestIntegrationDisk(t *testing.T) {
	dir := t.TempDir()
	const size = 4 << 20
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,nr_inodes=200", size)); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	check := &health.Disk{Paths: []string{dir}}
	ctx := t.Context()

	u, err := health.Statfs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Bytes != size || u.BytesFree != size || u.Inodes != 200 {
		t.Fatalf("empty tmpfs: %+v, want %d bytes free of %d and 200 inodes", u, size, size)
	}
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionFalse, schema.ReasonDiskOK)

	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, size*95/100), 0o644); err != nil {
		t.Fatal(err)
	}
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonDiskSpaceLow)
	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}
	for i := range 195 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	expect(t, check.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonDiskInodesLow)

	missing := &health.Disk{Paths: []string{filepath.Join(dir, "no-such-dir")}}
	expect(t, missing.Check(ctx, time.Now()), corev1.ConditionUnknown, schema.ReasonDiskUnreadable)
}

// TestIntegrationPSI reads this kernel's /proc/pressure/memory; a kernel
// without PSI is reported Unknown with that reason.
func TestIntegrationPSI(t *testing.T) {
	ctx := t.Context()
	r := (&health.Memory{}).Check(ctx, time.Now())
	_, err := os.ReadFile(health.DefaultPSIPath)
	if err != nil {
		t.Logf("this kernel has no PSI (%v)", err)
		expect(t, r, corev1.ConditionUnknown, schema.ReasonPSIUnavailable)
	} else {
		p, err := health.ReadPSI(health.DefaultPSIPath)
		if err != nil {
			t.Fatalf("this kernel's PSI does not parse: %v", err)
		}
		want := schema.ReasonMemoryOK
		if p.Full.Avg60 >= health.DefaultFullAvg60Max {
			want = schema.ReasonMemoryStalled
		}
		if r.Reason != want || !strings.Contains(r.Message, "full avg10=") {
			t.Fatalf("got %+v with PSI %+v", r, p)
		}
		// Any threshold below the current value reports pressure.
		low := &health.Memory{FullAvg60Max: 1e-9}
		if p.Full.Avg60 > 0 {
			expect(t, low.Check(ctx, time.Now()), corev1.ConditionTrue, schema.ReasonMemoryStalled)
		}
	}
	absent := &health.Memory{Path: filepath.Join(t.TempDir(), "memory")}
	expect(t, absent.Check(ctx, time.Now()), corev1.ConditionUnknown, schema.ReasonPSIUnavailable)
}

// TestIntegrationPublish publishes conditions to a real API server's Node
// status while a kubelet-like writer updates its own: neither loses the
// other's conditions.
func TestIntegrationPublish(t *testing.T) {
	cs := client(t)
	ctx := t.Context()
	const node = "publish-node"
	ready := corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "kubelet is posting ready status",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}
	n := newNode(t, cs, node, ready)
	pub := &health.Publisher{Client: lean(t), NodeName: node, HeartbeatPeriod: time.Minute}

	t1 := time.Now().Truncate(time.Second)
	results := []health.Result{
		{Type: schema.ConditionDiskPressure, Status: corev1.ConditionFalse, Reason: schema.ReasonDiskOK, Message: "50% free"},
		{Type: schema.ConditionMemoryPressure, Status: corev1.ConditionFalse, Reason: schema.ReasonMemoryOK},
	}
	got, err := pub.Publish(ctx, n.Status.Conditions, results, t1)
	if err != nil || got == nil {
		t.Fatalf("first publish: %v, %v", got, err)
	}
	// Within the heartbeat period and unchanged: no write.
	if again, err := pub.Publish(ctx, got.Status.Conditions, results, t1.Add(10*time.Second)); err != nil || again != nil {
		t.Fatalf("second publish wrote: %v, %v", again, err)
	}

	// kubelet updates its Ready condition the way it does: a two-way
	// strategic merge patch from the Node it read to the Node it wants.
	kubeletUpdate(t, cs, node, func(n *corev1.Node) {
		for i := range n.Status.Conditions {
			if n.Status.Conditions[i].Type == corev1.NodeReady {
				n.Status.Conditions[i].Status = corev1.ConditionFalse
				n.Status.Conditions[i].Reason = "KubeletNotReady"
			}
		}
	})

	results[1] = health.Result{Type: schema.ConditionMemoryPressure, Status: corev1.ConditionTrue, Reason: schema.ReasonMemoryStalled}
	t2 := t1.Add(20 * time.Second)
	cur, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.Publish(ctx, cur.Status.Conditions, results, t2); err != nil {
		t.Fatal(err)
	}
	cur, err = cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byType := map[corev1.NodeConditionType]corev1.NodeCondition{}
	for _, c := range cur.Status.Conditions {
		byType[c.Type] = c
	}
	if len(byType) != 3 {
		t.Fatalf("conditions: %+v", cur.Status.Conditions)
	}
	if r := byType[corev1.NodeReady]; r.Status != corev1.ConditionFalse || r.Reason != "KubeletNotReady" {
		t.Errorf("kubelet's Ready was changed: %+v", r)
	}
	disk, mem := byType["HerdDiskPressure"], byType["HerdMemoryPressure"]
	if !disk.LastTransitionTime.Time.Equal(t1) || !disk.LastHeartbeatTime.Time.Equal(t2) {
		t.Errorf("disk condition: transition %v heartbeat %v, want %v and %v", disk.LastTransitionTime, disk.LastHeartbeatTime, t1, t2)
	}
	if mem.Status != corev1.ConditionTrue || mem.Reason != "MemoryStalled" || !mem.LastTransitionTime.Time.Equal(t2) {
		t.Errorf("memory condition: %+v", mem)
	}
	if health.Stale(mem, t2.Add(3*time.Minute), time.Minute) || !health.Stale(mem, t2.Add(3*time.Minute+time.Second), time.Minute) {
		t.Error("stale after three heartbeat periods, not before")
	}
}

// kubeletUpdate changes a Node's status as kubelet does (PatchNodeStatus):
// read, change, and patch the status with the two-way strategic merge
// patch between the two.
func kubeletUpdate(t *testing.T, cs kubernetes.Interface, name string, change func(*corev1.Node)) {
	t.Helper()
	ctx := t.Context()
	old, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	updated := old.DeepCopy()
	change(updated)
	oldJSON, _ := json.Marshal(old)
	newJSON, _ := json.Marshal(updated)
	patch, err := strategicpatch.CreateTwoWayMergePatch(oldJSON, newJSON, corev1.Node{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
}
