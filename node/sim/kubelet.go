package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"herd.dev/herd/schema"
)

// kubelet plays the kubelet for all simulated nodes at once: it registers
// the Nodes, posts Ready (NotReady while a node reboots), renews the node
// Leases, serves each node's /healthz, runs Pods bound to the nodes (Running
// and Ready), and finishes the deletion of Pods being deleted there, so that
// drains complete. Faults make a node's kubelet misbehave (KubeletFault).
type kubelet struct {
	f  *Fleet
	cs kubernetes.Interface

	mu    sync.Mutex
	state map[string]*nodeState

	pods  cache.SharedIndexInformer
	queue workqueue.TypedRateLimitingInterface[string]
	wg    sync.WaitGroup
}

type nodeState struct {
	uid        types.UID
	ready      bool
	transition metav1.Time
	fault      KubeletFault // what is wrong with its kubelet now
	starts     int          // kubelet starts: its invocation, for restarts
}

// KubeletFault is what goes wrong with a simulated node's kubelet. A
// kubelet restart clears it unless it Survives the restart (a runtime
// restart clears PLEG too); a reboot clears it unless it Survives the
// reboot too.
type KubeletFault struct {
	NoLease   bool // it stops renewing the node's Lease (the node goes NotReady once the Lease expires)
	NoHealthz bool // its /healthz answers 500
	PLEG      bool // it posts Ready False: "PLEG is not healthy"
	Survives  Survival
}

// Survival is the gentlest repair a fault survives.
type Survival int

// Survivals.
const (
	SurvivesNothing Survival = iota // a kubelet restart clears it
	SurvivesRestart                 // a reboot clears it
	SurvivesReboot                  // nothing Herd does clears it
)

// any reports whether the fault does anything.
func (f KubeletFault) any() bool { return f.NoLease || f.NoHealthz || f.PLEG }

// plegMessage is kubelet's own Ready message when PLEG is stuck.
const plegMessage = "container runtime is down, PLEG is not healthy: pleg was last seen active 3m20s ago; threshold is 3m0s"

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }

func startKubelet(ctx context.Context, f *Fleet) (*kubelet, error) {
	k := &kubelet{
		f:     f,
		cs:    f.cs,
		state: map[string]*nodeState{},
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]()),
	}
	factory := informers.NewSharedInformerFactoryWithOptions(f.cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName!=" }))
	k.pods = factory.Core().V1().Pods().Informer()
	if err := k.pods.SetTransform(func(obj any) (any, error) {
		if p, ok := obj.(*corev1.Pod); ok {
			p.ManagedFields = nil
		}
		return obj, nil
	}); err != nil {
		return nil, fmt.Errorf("sim: pods: %w", err)
	}
	enqueue := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok || f.node(p.Spec.NodeName) == nil {
			return
		}
		if key, err := cache.MetaNamespaceKeyFunc(p); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := k.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	}); err != nil {
		return nil, fmt.Errorf("sim: pods: %w", err)
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), k.pods.HasSynced) {
		return nil, fmt.Errorf("sim: pod cache not filled: %w", ctx.Err())
	}
	for range 2 {
		k.wg.Add(1)
		go k.podWorker(ctx)
	}
	k.wg.Add(2)
	go k.loop(ctx, f.opts.LeaseRenew, k.renewLeases)
	go k.loop(ctx, f.opts.StatusInterval, k.postStatuses)
	go func() {
		<-ctx.Done()
		k.queue.ShutDown()
	}()
	return k, nil
}

// wait waits for the kubelet's goroutines, after the fleet's context ended.
func (k *kubelet) wait() { k.wg.Wait() }

func (k *kubelet) loop(ctx context.Context, every time.Duration, f func(context.Context)) {
	defer k.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f(ctx)
		}
	}
}

// register creates (or adopts) the Node, posts its status Ready and
// creates its Lease. A converging node registers with the taint
// herd.dev/converging, as a kubelet started with
// --register-with-taints=herd.dev/converging=:NoSchedule does.
func (k *kubelet) register(ctx context.Context, n *simNode) error {
	labels := map[string]string{
		LabelPool:            n.pool,
		LabelZone:            n.zone,
		LabelHostname:        n.name,
		"kubernetes.io/os":   "linux",
		"kubernetes.io/arch": "amd64",
		// A kubelet sets the beta labels too; without them the node
		// lifecycle controller adds them, a write per node.
		"beta.kubernetes.io/os":   "linux",
		"beta.kubernetes.io/arch": "amd64",
	}
	var taints []corev1.Taint
	if n.converging {
		taints = []corev1.Taint{{Key: schema.TaintConverging, Effect: corev1.TaintEffectNoSchedule}}
	}
	now := metav1.Now()
	status := corev1.NodeStatus{
		Capacity:    resources(),
		Allocatable: resources(),
		Conditions:  conditions(true, now, now),
		Addresses:   []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: n.name}},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion:          "v1.37.2-herd-sim",
			OperatingSystem:         "linux",
			Architecture:            "amd64",
			OSImage:                 "Herd OS (simulated)",
			ContainerRuntimeVersion: "containerd://2.0.0-herd-sim",
		},
	}
	// Created with its status, as a kubelet registers (a Node's status may
	// be set on create): one request.
	no, err := k.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: labels},
		Spec:       corev1.NodeSpec{Taints: taints},
		Status:     status,
	}, metav1.CreateOptions{})
	adopted := apierrors.IsAlreadyExists(err)
	if adopted {
		patch := map[string]any{"metadata": map[string]any{"labels": labels}}
		if n.converging {
			patch["spec"] = map[string]any{"taints": taints}
		}
		body, _ := json.Marshal(patch)
		no, err = k.cs.CoreV1().Nodes().Patch(ctx, n.name, types.MergePatchType, body, metav1.PatchOptions{})
	}
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	k.mu.Lock()
	k.state[n.name] = &nodeState{uid: no.UID, ready: true, transition: now}
	k.mu.Unlock()
	if adopted {
		// A patch, not an update: the node controllers change the Node too.
		body, err := json.Marshal(map[string]any{"status": status})
		if err != nil {
			return err
		}
		if _, err := k.cs.CoreV1().Nodes().PatchStatus(ctx, n.name, body); err != nil {
			return fmt.Errorf("post node status: %w", err)
		}
	}
	return k.renewLease(ctx, n.name, no.UID)
}

func resources() corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
}

func conditions(ready bool, heartbeat, transition metav1.Time) []corev1.NodeCondition {
	return conditionsWith(ready, "node is rebooting (herd sim)", heartbeat, transition)
}

// conditionsWith is the node's conditions, with why it is not ready.
func conditionsWith(ready bool, why string, heartbeat, transition metav1.Time) []corev1.NodeCondition {
	c := corev1.NodeCondition{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		Message: "kubelet is posting ready status (herd sim)", LastHeartbeatTime: heartbeat, LastTransitionTime: transition,
	}
	if !ready {
		c.Status, c.Reason, c.Message = corev1.ConditionFalse, "KubeletNotReady", why
	}
	conds := []corev1.NodeCondition{c}
	for _, t := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure} {
		conds = append(conds, corev1.NodeCondition{Type: t, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficient" + string(t)[:len(t)-len("Pressure")],
			LastHeartbeatTime: heartbeat, LastTransitionTime: transition})
	}
	return conds
}

// setReady posts the node Ready or NotReady; a node that comes back renews
// its Lease at once.
func (k *kubelet) setReady(n *simNode, ready bool) {
	k.mu.Lock()
	st := k.state[n.name]
	if st == nil {
		k.mu.Unlock()
		return
	}
	if st.ready != ready {
		st.ready, st.transition = ready, metav1.Now()
	}
	uid := st.uid
	k.mu.Unlock()
	ctx := k.f.ctx
	if err := k.postStatus(ctx, n.name); err != nil && ctx.Err() == nil {
		k.f.log.Error("sim: post node status", "node", n.name, "err", err)
	}
	if ready {
		if err := k.renewLease(ctx, n.name, uid); err != nil && ctx.Err() == nil {
			k.f.log.Error("sim: renew lease", "node", n.name, "err", err)
		}
	}
}

func (k *kubelet) postStatus(ctx context.Context, name string) error {
	k.mu.Lock()
	sp := k.state[name]
	if sp == nil { // not registered yet
		k.mu.Unlock()
		return nil
	}
	st := *sp
	k.mu.Unlock()
	ready, why := st.ready, "node is rebooting (herd sim)"
	if st.ready && st.fault.PLEG {
		ready, why = false, plegMessage
	}
	body, err := json.Marshal(map[string]any{"status": map[string]any{
		"conditions": conditionsWith(ready, why, metav1.Now(), st.transition)[:1],
	}})
	if err != nil {
		return err
	}
	_, err = k.cs.CoreV1().Nodes().PatchStatus(ctx, name, body)
	return err
}

// postStatuses re-posts the status of every node: the heartbeat in the Ready
// condition, every StatusInterval.
func (k *kubelet) postStatuses(ctx context.Context) {
	for _, name := range k.f.Nodes() {
		if err := k.postStatus(ctx, name); err != nil && ctx.Err() == nil {
			k.f.log.Warn("sim: post node status", "node", name, "err", err)
		}
	}
}

// renewLeases renews the Lease of every node that is up.
func (k *kubelet) renewLeases(ctx context.Context) {
	type up struct {
		name string
		uid  types.UID
	}
	var nodes []up
	k.mu.Lock()
	for name, st := range k.state {
		if st.ready && !st.fault.NoLease {
			nodes = append(nodes, up{name, st.uid})
		}
	}
	k.mu.Unlock()
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := k.renewLease(ctx, n.name, n.uid); err != nil && ctx.Err() == nil {
				k.f.log.Warn("sim: renew lease", "node", n.name, "err", err)
			}
		}()
	}
	wg.Wait()
}

func (k *kubelet) renewLease(ctx context.Context, name string, uid types.UID) error {
	now := metav1.NewMicroTime(time.Now())
	body, err := json.Marshal(map[string]any{"spec": map[string]any{"renewTime": now}})
	if err != nil {
		return err
	}
	_, err = k.cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{})
	if !apierrors.IsNotFound(err) {
		return err
	}
	secs := int32(k.f.opts.LeaseDuration / time.Second)
	holder := name
	_, err = k.cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Create(ctx, &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: corev1.NamespaceNodeLease,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: name, UID: uid,
			}},
		},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &secs, RenewTime: &now},
	}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil // the renewal loop created it meanwhile, just now
	}
	return err
}

// serveHealthz answers each node's kubelet /healthz at /<node>/healthz:
// "ok", or 500 while its kubelet has the NoHealthz fault, or 404 for a
// node that is not running. It returns the server's base URL.
func (k *kubelet) serveHealthz(ctx context.Context) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("sim: kubelet healthz: %w", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/"), "/healthz")
		k.mu.Lock()
		st := k.state[name]
		up := ok && st != nil && st.ready
		bad := up && st.fault.NoHealthz
		k.mu.Unlock()
		switch {
		case !up:
			http.NotFound(w, r)
		case bad:
			http.Error(w, "[-]syncloop failed: reason withheld (herd sim)", http.StatusInternalServerError)
		default:
			fmt.Fprint(w, "ok")
		}
	})}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		_ = srv.Serve(l)
	}()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return "http://" + l.Addr().String(), nil
}

// setFault gives the node's kubelet a fault (a zero one clears it), and
// posts its status at once.
func (k *kubelet) setFault(name string, f KubeletFault) error {
	k.mu.Lock()
	st := k.state[name]
	if st != nil {
		st.fault = f
	}
	k.mu.Unlock()
	if st == nil {
		return fmt.Errorf("sim: no node %q", name)
	}
	return k.postStatus(k.f.ctx, name)
}

// restart restarts the node's kubelet: a new invocation, and the fault
// gone unless it survives restarts; a live kubelet renews its Lease at
// once.
func (k *kubelet) restart(name string) error {
	k.mu.Lock()
	st := k.state[name]
	if st == nil {
		k.mu.Unlock()
		return fmt.Errorf("sim: no node %q", name)
	}
	st.starts++
	if st.fault.Survives < SurvivesRestart {
		st.fault = KubeletFault{}
	}
	uid, renew := st.uid, st.ready && !st.fault.NoLease
	k.mu.Unlock()
	ctx := k.f.ctx
	if err := k.postStatus(ctx, name); err != nil {
		return err
	}
	if renew {
		return k.renewLease(ctx, name, uid)
	}
	return nil
}

// runtimeRestarted clears a PLEG fault that a runtime restart clears: a
// PLEG that stalls on a hung runtime relists once it answers again.
func (k *kubelet) runtimeRestarted(name string) {
	k.mu.Lock()
	st := k.state[name]
	cleared := st != nil && st.fault.PLEG && st.fault.Survives < SurvivesRestart
	if cleared {
		st.fault.PLEG = false
	}
	k.mu.Unlock()
	if cleared {
		_ = k.postStatus(k.f.ctx, name)
	}
}

// booted clears the faults a reboot clears.
func (k *kubelet) booted(name string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if st := k.state[name]; st != nil {
		st.starts++
		if st.fault.Survives < SurvivesReboot {
			st.fault = KubeletFault{}
		}
	}
}

// invocation is the node's kubelet's current start.
func (k *kubelet) invocation(name string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if st := k.state[name]; st != nil {
		return fmt.Sprintf("kubelet-%d", st.starts)
	}
	return ""
}

func (k *kubelet) podWorker(ctx context.Context) {
	defer k.wg.Done()
	for {
		key, quit := k.queue.Get()
		if quit {
			return
		}
		err := k.syncPod(ctx, key)
		switch {
		case err == nil:
			k.queue.Forget(key)
		case ctx.Err() == nil:
			k.f.log.Warn("sim: pod", "pod", key, "err", err)
			k.queue.AddRateLimited(key)
		}
		k.queue.Done(key)
	}
}

// syncPod runs a Pod bound to a simulated node: Running and Ready at once,
// or, once it is being deleted (drained), deleted for good.
func (k *kubelet) syncPod(ctx context.Context, key string) error {
	obj, ok, err := k.pods.GetStore().GetByKey(key)
	if err != nil || !ok {
		return err
	}
	pod := obj.(*corev1.Pod)
	if k.f.node(pod.Spec.NodeName) == nil {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		zero := int64(0)
		err := k.cs.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: &zero,
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || runningReady(pod) {
		return nil
	}
	p := pod.DeepCopy()
	now := metav1.Now()
	p.Status.Phase = corev1.PodRunning
	if p.Status.StartTime == nil {
		p.Status.StartTime = &now
	}
	p.Status.Conditions = nil
	for _, t := range []corev1.PodConditionType{corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.PodScheduled, corev1.ContainersReady, corev1.PodReady} {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now})
	}
	p.Status.ContainerStatuses = nil
	started := true
	for _, c := range p.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: &started,
			ContainerID: "containerd://herd-sim-" + string(p.UID)[:8] + "-" + c.Name,
			State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	_, err = k.cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func runningReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
