package controller_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
// steady state, then, per iteration, the time from a webhook delivery for a
// new commit to the first batch's desired annotations on the nodes.
//
//	go test ./sync/controller -run '^$' -bench Controller1000Nodes -benchtime 10x
func BenchmarkController1000Nodes(b *testing.B) {
	e := newBenchEnv(b)
	const nodes = 1000
	e.addNodesFast(b, "general", nodes)
	stopBeats := e.heartbeats(b, 10*time.Second)
	defer stopBeats()

	herdBin := filepath.Join(b.TempDir(), "herd")
	build := exec.Command("go", "build", "-o", herdBin, "herd.dev/herd/cmd/herd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build does
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build herd: %v\n%s", err, out)
	}
	hook := freeAddr(b)
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	cmd := exec.CommandContext(ctx, herdBin, "controller",
		"--kubeconfig", e.cp.KubeconfigPath(), "--repo", e.remote, "--cluster", "bench",
		"--interval", "10m", "--webhook-addr", hook, "--metrics-addr", "0", "--insecure-skip-verify",
		"--cache-dir", filepath.Join(b.TempDir(), "cache"), "--log-level", "info", "--pprof-addr", os.Getenv("HERD_BENCH_PPROF"))
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
	e.waitForB(b, "pools up to date", 2*time.Minute, func() bool {
		var np herdpool.HerdPool
		err := e.c.Get(b.Context(), client.ObjectKey{Name: "general"}, &np)
		return err == nil && np.Status.Phase == herdpool.PhaseUpToDate && np.Status.Nodes == nodes
	})
	cpu0, wall0 := cpuSeconds(b, cmd.Process.Pid), time.Now()
	if addr := os.Getenv("HERD_BENCH_PPROF"); addr != "" {
		go func() {
			out, err := exec.Command("curl", "-s", "-o", filepath.Join(os.TempDir(), "herd-controller.pprof"), "http://"+addr+"/debug/pprof/profile?seconds=20").CombinedOutput()
			b.Logf("profile: %v %s", err, out)
		}()
	}
	e.waitForB(b, "a 30 s steady-state window", 40*time.Second, func() bool { return time.Since(wall0) >= 30*time.Second })
	cpu1, wall1 := cpuSeconds(b, cmd.Process.Pid), time.Now()
	rss, anon, idleCPU := rssMiB(b, cmd.Process.Pid, "VmRSS"), rssMiB(b, cmd.Process.Pid, "RssAnon"), 100*(cpu1-cpu0)/wall1.Sub(wall0).Seconds()

	// Webhook to first dispatch: each iteration is a new commit changing
	// general's kubelet config (a restart, so no drain to wait for).
	var total time.Duration
	n := 0
	for b.Loop() {
		b.StopTimer()
		maxPods := 120 + n
		e.editGeneral(b, maxPods)
		e.pushB(b, fmt.Sprintf("general: maxPods %d", maxPods))
		target := e.generalHash(b)
		w, err := e.kube.CoreV1().Nodes().Watch(b.Context(), metav1.ListOptions{LabelSelector: "herd.dev/pool=general"})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		if os.Getenv("HERD_BENCH_LOG") != "" {
			b.Logf("%s webhook for %s", start.UTC().Format("15:04:05.000"), schema.Short(target))
		}
		postWebhook(b, hook, "bench")
		waitDispatched(b, w, target, 30*time.Second)
		total += time.Since(start)
		w.Stop()
		n++
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(n), "ms/webhook-to-dispatch")
	b.ReportMetric(rss, "RSS-MiB")
	b.ReportMetric(anon, "RSS-anon-MiB")
	b.ReportMetric(idleCPU, "steady-CPU-%")
}

// newBenchEnv is newEnv for benchmarks.
func newBenchEnv(b *testing.B) *env {
	e := newEnvTB(b)
	// One general pool of 1,000 nodes, 10% at a time, no canary.
	e.edit("pools/general.cue", `maxUnavailable: "25%"`, `maxUnavailable: "10%"`)
	e.edit("pools/general.cue", `canary:         1`, ``)
	e.push("general: 10% at a time")
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
// kubelets do, so the controller's watch sees a realistic stream of updates.
func (e *env) heartbeats(b *testing.B, period time.Duration) func() {
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
				_, _ = e.kube.CoreV1().Nodes().PatchStatus(ctx, name, []byte(patch))
			}
		}
	}()
	return func() { cancel(); <-done }
}

func waitDispatched(b *testing.B, w watch.Interface, hash string, timeout time.Duration) {
	deadline := time.After(timeout)
	for {
		select {
		case ev := <-w.ResultChan():
			if n, ok := ev.Object.(*corev1.Node); ok && n.Annotations[schema.AnnotationDesiredConfig] == hash {
				return
			}
		case <-deadline:
			b.Fatalf("no node dispatched to %s within %s", schema.Short(hash), timeout)
		}
	}
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
