package controller_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/test/fleettest"
)

// BenchmarkController1000Nodes runs `herd controller` as its own process
// against a real API server with 1,000 nodes whose heartbeats are renewed
// every 10 s, as kubelets do. It reports the controller's RSS and CPU at
// steady state, the time of a full reconcile with nothing to do, then, per
// iteration, the time from a webhook delivery for a new commit to the first
// batch's desired annotations on the nodes (the first node, and the whole
// batch).
//
//	go test ./sync/controller -run '^$' -bench Controller1000Nodes -benchtime 10x
func BenchmarkController1000Nodes(b *testing.B) { benchController(b, 1000) }

// BenchmarkController10000Nodes is the same with 10,000 nodes (one pool,
// 10% at a time: a first batch of 1,000).
//
//	go test ./sync/controller -run '^$' -bench Controller10000Nodes -benchtime 5x -timeout 30m
func BenchmarkController10000Nodes(b *testing.B) { benchController(b, 10000) }

// benchHeartbeat is how often each node's Ready condition is renewed:
// HERD_BENCH_HEARTBEAT, default 10s (kubelet's nodeStatusUpdateFrequency).
func benchHeartbeat(b *testing.B) time.Duration {
	s := os.Getenv("HERD_BENCH_HEARTBEAT")
	if s == "" {
		return 10 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		b.Fatalf("HERD_BENCH_HEARTBEAT: %v", err)
	}
	return d
}

func benchController(b *testing.B, nodes int) {
	e := newBenchEnv(b)
	t0 := time.Now()
	e.addNodesFast(b, "general", nodes)
	b.Logf("%d nodes created in %v", nodes, time.Since(t0).Round(time.Millisecond))
	stopBeats := e.heartbeats(b, benchHeartbeat(b))
	beatsStart := time.Now()
	defer func() {
		made := stopBeats()
		b.ReportMetric(float64(made)/time.Since(beatsStart).Seconds(), "heartbeats/s")
	}()

	herdBin := os.Getenv("HERD_BENCH_BIN") // a herd binary built beforehand
	if herdBin == "" {
		herdBin = filepath.Join(b.TempDir(), "herd")
		build := exec.Command("go", "build", "-o", herdBin, "herd.dev/herd/cmd/herd")
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build does
		if out, err := build.CombinedOutput(); err != nil {
			b.Fatalf("build herd: %v\n%s", err, out)
		}
	}
	hook, metrics := freeAddr(b), freeAddr(b)
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	args := []string{"controller",
		"--kubeconfig", e.cp.KubeconfigPath(), "--repo", e.remote, "--cluster", "bench",
		"--interval", "10m", "--webhook-addr", hook, "--metrics-addr", metrics, "--insecure-skip-verify",
		"--cache-dir", filepath.Join(b.TempDir(), "cache"), "--log-level", "info", "--pprof-addr", os.Getenv("HERD_BENCH_PPROF")}
	args = append(args, strings.Fields(os.Getenv("HERD_BENCH_FLAGS"))...)
	cmd := exec.CommandContext(ctx, herdBin, args...)
	cmd.Env = append(os.Environ(), "HERD_WEBHOOK_TOKEN=bench")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
		if b.Failed() || os.Getenv("HERD_BENCH_LOG") != "" {
			os.WriteFile(filepath.Join(os.TempDir(), "herd-bench-controller.log"), logs.Bytes(), 0o644)
			b.Logf("controller logs in %s", filepath.Join(os.TempDir(), "herd-bench-controller.log"))
		}
	}()

	// Steady state: every pool mirrored and up to date.
	e.waitForB(b, "pools up to date", 5*time.Minute, func() bool {
		var np herdpool.HerdPool
		err := e.c.Get(b.Context(), client.ObjectKey{Name: "general"}, &np)
		return err == nil && np.Status.Phase == herdpool.PhaseUpToDate && np.Status.Nodes == nodes
	})
	e.waitQuiet(b, metrics)
	cpu0, wall0 := cpuSeconds(b, cmd.Process.Pid), time.Now()
	_, reconciles0 := reconcileTime(b, metrics)
	profile(b, "steady", 20*time.Second)
	e.waitForB(b, "a 30 s steady-state window", 40*time.Second, func() bool { return time.Since(wall0) >= 30*time.Second })
	cpu1, wall1 := cpuSeconds(b, cmd.Process.Pid), time.Now()
	_, reconciles1 := reconcileTime(b, metrics)
	b.Logf("%.0f reconciles in the steady-state window", reconciles1-reconciles0)
	rss, anon, idleCPU := rssMiB(b, cmd.Process.Pid, "VmRSS"), rssMiB(b, cmd.Process.Pid, "RssAnon"), 100*(cpu1-cpu0)/wall1.Sub(wall0).Seconds()
	profile(b, "idle", 10*time.Second)
	idle := e.idleReconcile(b, metrics, 30)

	// Webhook to first dispatch: each iteration is a new commit changing
	// general's kubelet config (a restart, so no drain to wait for), from
	// rest: the previous iteration's commit is reverted (its dispatched
	// nodes never left the config they run) and the pool is up to date.
	general := filepath.Join(e.work, "pools", "general.cue")
	base, err := os.ReadFile(general)
	if err != nil {
		b.Fatal(err)
	}
	profile(b, "webhook", 30*time.Second)
	var first, whole time.Duration
	n := 0
	batch := nodes / 10 // maxUnavailable: 10%
	for b.Loop() {
		b.StopTimer()
		maxPods := 120 + n
		e.editGeneral(b, maxPods)
		e.pushB(b, fmt.Sprintf("general: maxPods %d", maxPods))
		target := e.generalHash(b)
		w := e.watchNodesFromNow(b, "herd.dev/pool=general")
		b.StartTimer()
		start := time.Now()
		if os.Getenv("HERD_BENCH_LOG") != "" {
			b.Logf("%s webhook for %s", start.UTC().Format("15:04:05.000"), schema.Short(target))
		}
		postWebhook(b, hook, "bench")
		f, all := waitDispatched(b, w, target, batch, time.Minute)
		first += f.Sub(start)
		whole += all.Sub(start)
		w.Stop()
		n++
		b.StopTimer()
		if err := os.WriteFile(general, base, 0o644); err != nil {
			b.Fatal(err)
		}
		head := e.pushB(b, "general: back")
		postWebhook(b, hook, "bench")
		e.waitForB(b, "the pool back at rest", 5*time.Minute, func() bool {
			var np herdpool.HerdPool
			err := e.c.Get(b.Context(), client.ObjectKey{Name: "general"}, &np)
			return err == nil && np.Status.ObservedRevision == head && np.Status.Phase == herdpool.PhaseUpToDate
		})
		e.waitQuiet(b, metrics)
		b.StartTimer()
	}
	b.ReportMetric(float64(first.Milliseconds())/float64(n), "ms/webhook-to-dispatch")
	b.ReportMetric(float64(whole.Milliseconds())/float64(n), "ms/webhook-to-whole-batch")
	b.ReportMetric(idle, "ms/idle-reconcile")
	b.ReportMetric(rss, "RSS-MiB")
	b.ReportMetric(anon, "RSS-anon-MiB")
	b.ReportMetric(idleCPU, "steady-CPU-%")
}

// profile takes a CPU profile of the controller for d in the background
// when HERD_BENCH_PPROF is its --pprof-addr, into
// $TMPDIR/herd-controller-<phase>.pprof.
func profile(b *testing.B, phase string, d time.Duration) {
	addr := os.Getenv("HERD_BENCH_PPROF")
	if addr == "" {
		return
	}
	out := filepath.Join(os.TempDir(), "herd-controller-"+phase+".pprof")
	go func() {
		msg, err := exec.Command("curl", "-s", "-o", out, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds()))).CombinedOutput()
		b.Logf("%s profile in %s: %v %s", phase, out, err, msg)
	}()
}

// newBenchEnv is newEnv for benchmarks. Three of kube-controller-manager's
// controllers act once on every new node: the node lifecycle controller
// (its not-ready taint, the beta labels), the DaemonSet controller (an
// agent Pod per node) and the TTL controller (an annotation per node). Over
// ten thousand new nodes their work goes on for minutes on two cores, and
// would be measured as the controller's steady state; they are off.
func newBenchEnv(b *testing.B) *env {
	e := newEnvTB(b, "--controllers=*,-node-lifecycle-controller,-daemonset-controller,-ttl-controller")
	// One general pool of 1,000 nodes, 10% at a time, no canary.
	e.edit("pools/general.cue", `maxUnavailable: "25%"`, `maxUnavailable: "10%"`)
	e.edit("pools/general.cue", `canary:         1`, ``)
	// No soak: a reverted commit leaves the pool at rest at once.
	e.edit("pools/general.cue", `soak:           "5m"`, ``)
	e.push("general: 10% at a time, no soak")
	return e
}

func (e *env) editGeneral(b *testing.B, maxPods int) {
	b.Helper()
	path := filepath.Join(e.work, "pools", "general.cue")
	src, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	lines := strings.Split(string(src), "\n")
	for i, l := range lines {
		if strings.Contains(l, "maxPods:") {
			lines[i] = "\t\tmaxPods: " + strconv.Itoa(maxPods)
		}
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		b.Fatal(err)
	}
}

func (e *env) pushB(b *testing.B, msg string) string {
	commit := fleettest.Commit(b, e.work, msg)
	fleettest.Git(b, e.work, "push", "-q", "origin", "main")
	return commit
}

func (e *env) generalHash(b *testing.B) string {
	return fleettest.Load(b, e.work).Hash("general")
}

// addNodesFast creates nodes concurrently, at the pool's current target.
func (e *env) addNodesFast(b *testing.B, pool string, n int) {
	res := fleettest.Load(b, e.work)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			fn := fleettest.Node{Name: fmt.Sprintf("%s-%04d", pool, i), Pool: pool, Zone: fmt.Sprintf("zone-%c", 'a'+i%3), Annotations: fleettest.AtTarget(res, pool)}
			node := fn.KubeNode()
			// The labels a kubelet registers with: without them the node
			// lifecycle controller adds the beta ones, a label change on
			// every node (and a reconcile each) in the measured window.
			maps.Copy(node.Labels, map[string]string{"beta.kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "beta.kubernetes.io/arch": "amd64"})
			status := node.Status
			if err := e.c.Create(b.Context(), &node); err != nil {
				errs <- err
				return
			}
			before := node.DeepCopy()
			node.Status = status
			if err := e.c.Status().Patch(b.Context(), &node, client.MergeFrom(before)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// heartbeats renews every node's Ready condition at the given period, as
// kubelets do, so the controller's watch sees a realistic stream of
// updates. The function it returns stops them and returns how many were
// made.
func (e *env) heartbeats(b *testing.B, period time.Duration) (stop func() int64) {
	var made atomic.Int64
	ctx, cancel := context.WithCancel(b.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(period / 100)
		defer tick.Stop()
		var list corev1.NodeList
		if err := e.c.List(ctx, &list); err != nil {
			return
		}
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		defer wg.Wait()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			// One hundredth of the nodes per tick: each node once per period.
			for j := i % 100; j < len(list.Items); j += 100 {
				name := list.Items[j].Name
				patch := fmt.Sprintf(`{"status":{"conditions":[{"type":"Ready","status":"True","lastHeartbeatTime":%q}]}}`, time.Now().UTC().Format(time.RFC3339))
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return
				}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done() }()
					if _, err := e.kube.CoreV1().Nodes().PatchStatus(ctx, name, []byte(patch)); err == nil {
						made.Add(1)
					}
				}()
			}
		}
	}()
	return func() int64 { cancel(); <-done; return made.Load() }
}

// waitQuiet waits until the controller started no reconcile for 3 s and
// runs none.
func (e *env) waitQuiet(b *testing.B, metrics string) {
	last, since := -1.0, time.Now() // the reconcile count, and since when
	e.waitForB(b, "no reconcile for 3 s", 5*time.Minute, func() bool {
		_, c := reconcileTime(b, metrics)
		if c != last {
			last, since = c, time.Now()
		}
		return time.Since(since) >= 3*time.Second && activeWorkers(b, metrics) == 0
	})
}

// watchNodesFromNow watches the selected nodes' changes from now on: not
// from an empty resource version, which first lists every node as added.
func (e *env) watchNodesFromNow(b *testing.B, selector string) watch.Interface {
	list, err := e.kube.CoreV1().Nodes().List(b.Context(), metav1.ListOptions{LabelSelector: selector, Limit: 1})
	if err != nil {
		b.Fatal(err)
	}
	w, err := e.kube.CoreV1().Nodes().Watch(b.Context(), metav1.ListOptions{LabelSelector: selector, ResourceVersion: list.ResourceVersion})
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// waitDispatched waits until batch nodes desire hash, and returns when the
// first did and when the last did.
func waitDispatched(b *testing.B, w watch.Interface, hash string, batch int, timeout time.Duration) (first, all time.Time) {
	deadline := time.After(timeout)
	seen := map[string]bool{}
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatal("the node watch ended")
			}
			n, isNode := ev.Object.(*corev1.Node)
			if !isNode || n.Annotations[schema.AnnotationDesiredConfig] != hash || seen[n.Name] {
				continue
			}
			seen[n.Name] = true
			if len(seen) == 1 {
				first = time.Now()
			}
			if len(seen) == batch {
				return first, time.Now()
			}
		case <-deadline:
			b.Fatalf("%d of %d nodes dispatched to %s within %s", len(seen), batch, schema.Short(hash), timeout)
		}
	}
}

// idleReconcile measures full reconciles with nothing to do: it changes a
// label no pool selects on one node, which the controller reconciles the
// fleet for, times times, and returns the mean reconcile time in
// milliseconds from the controller's reconcile-time histogram.
func (e *env) idleReconcile(b *testing.B, metricsAddr string, times int) float64 {
	sum0, count0 := reconcileTime(b, metricsAddr)
	count := count0
	for i := range times {
		patch := fmt.Sprintf(`{"metadata":{"labels":{"bench.herd.dev/touch":"%d"}}}`, i)
		if _, err := e.kube.CoreV1().Nodes().Patch(b.Context(), "general-0000", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			b.Fatal(err)
		}
		want := count + 1
		e.waitForB(b, "a reconcile", time.Minute, func() bool {
			_, count = reconcileTime(b, metricsAddr)
			return count >= want
		})
	}
	sum1, count1 := reconcileTime(b, metricsAddr)
	return 1000 * (sum1 - sum0) / (count1 - count0)
}

// activeWorkers reads the fleet reconciler's
// controller_runtime_active_workers: reconciles under way.
func activeWorkers(b *testing.B, addr string) float64 {
	v, _ := strconv.ParseFloat(metric(b, addr, `controller_runtime_active_workers{controller="herd"} `), 64)
	return v
}

// reconcileTime reads the sum and count of the fleet reconciler's
// controller_runtime_reconcile_time_seconds.
func reconcileTime(b *testing.B, addr string) (sum, count float64) {
	sum, _ = strconv.ParseFloat(metric(b, addr, `controller_runtime_reconcile_time_seconds_sum{controller="herd"} `), 64)
	count, _ = strconv.ParseFloat(metric(b, addr, `controller_runtime_reconcile_time_seconds_count{controller="herd"} `), 64)
	return sum, count
}

// metric returns the value of the line of the controller's /metrics that
// starts with prefix, or "".
func metric(b *testing.B, addr, prefix string) string {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Accept-Encoding", "identity") // no gzip: less of the controller's CPU
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			return v
		}
	}
	return ""
}

func postWebhook(b *testing.B, addr, token string) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b.Fatalf("webhook answered %s", resp.Status)
	}
}

func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (e *env) waitForB(b *testing.B, what string, timeout time.Duration, cond func() bool) {
	b.Helper()
	if err := wait.PollUntilContextTimeout(b.Context(), 200*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return cond(), nil
	}); err != nil {
		b.Fatalf("waiting for %s: %v", what, err)
	}
}

// cpuSeconds reads a process's user+system CPU time from /proc.
func cpuSeconds(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// rssMiB reads a memory figure of /proc/<pid>/status (VmRSS, RssAnon, ...).
func rssMiB(b *testing.B, pid int, field string) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	b.Fatal("no " + field)
	return 0
}
