package sim_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/node/sim"
	"herd.dev/herd/test/controlplane"
)

// BenchmarkFleetLight starts HERD_SIM_NODES (default 10,000) simulated
// nodes in light mode (linked sysroots; Leases of HERD_SIM_LEASE, default
// 240s, renewed every quarter of it, as kubelet's nodeLeaseDurationSeconds)
// against a real control plane, and reports how long the start took, and
// the RSS of the simulator, kube-apiserver and etcd, and their CPU while
// the fleet idles for HERD_SIM_IDLE (default 60s):
//
//	go test -run '^$' -bench FleetLight -benchtime 1x -timeout 60m ./node/sim/
func BenchmarkFleetLight(b *testing.B) {
	nodes := envInt(b, "HERD_SIM_NODES", 10000)
	lease := envDuration(b, "HERD_SIM_LEASE", 240*time.Second)
	idle := envDuration(b, "HERD_SIM_IDLE", time.Minute)
	cp := controlplane.StartTest(b, controlplane.Options{
		// Nodes whose Leases are renewed every minute are not late.
		ExtraControllerManagerFlags: []string{fmt.Sprintf("--node-monitor-grace-period=%s", 2*lease)},
	})
	pids := cp.PIDs()
	api, etcd := pids[controlplane.APIServer], pids[controlplane.Etcd]
	pools := sim.ScalePools(map[string]int{"system": 3, "general": 6, "batch": 3}, nodes)
	for b.Loop() {
		f, err := sim.Start(b.Context(), sim.Options{
			Config: cp.Config(), Pools: pools, LinkSysroots: true,
			LeaseDuration: lease, LeaseRenew: lease / 4,
			// One client for all: each real kubelet and agent has its own.
			QPS: 2000, Burst: 2000, Parallel: 16,
			// Deleting ten thousand Nodes takes longer than the control
			// plane, which goes with the benchmark.
			KeepNodes: true,
		})
		if err != nil {
			b.Fatal(err)
		}
		start := f.StartupTime()
		self0, api0, etcd0 := cpuTicks(b, 0), cpuTicks(b, api), cpuTicks(b, etcd)
		t0 := time.Now()
		timer := time.NewTimer(idle)
		<-timer.C
		el := time.Since(t0).Seconds()
		self1, api1, etcd1 := cpuTicks(b, 0), cpuTicks(b, api), cpuTicks(b, etcd)
		rss := map[string]float64{"sim": procRSS(b, os.Getpid()), "kube-apiserver": procRSS(b, api), "etcd": procRSS(b, etcd)}
		pct := func(t0, t1 int64) float64 { return 100 * float64(t1-t0) / ticksPerSecond / el }
		b.Logf("%d nodes started in %v; RSS MiB %v; idle CPU %% sim %.1f, kube-apiserver %.1f, etcd %.1f", nodes, start.Round(time.Second), rss,
			pct(self0, self1), pct(api0, api1), pct(etcd0, etcd1))
		b.ReportMetric(start.Seconds(), "start-s")
		b.ReportMetric(rss["sim"], "sim-RSS-MiB")
		b.ReportMetric(rss["kube-apiserver"], "apiserver-RSS-MiB")
		b.ReportMetric(rss["etcd"], "etcd-RSS-MiB")
		b.ReportMetric(pct(self0, self1), "sim-idle-CPU-%")
		b.ReportMetric(pct(api0, api1), "apiserver-idle-CPU-%")
		b.ReportMetric(pct(etcd0, etcd1), "etcd-idle-CPU-%")
		if err := f.Stop(); err != nil {
			b.Fatal(err)
		}
	}
}

// procRSS returns VmRSS of process pid in MiB.
func procRSS(tb testing.TB, pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	tb.Fatalf("no VmRSS for process %d", pid)
	return 0
}

func envInt(tb testing.TB, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a positive number", name, s)
	}
	return n
}

func envDuration(tb testing.TB, name string, def time.Duration) time.Duration {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		tb.Fatalf("%s=%q: want a positive duration", name, s)
	}
	return d
}
