package sim_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/node/sim"
	"herd.dev/herd/test/controlplane"
)

// cpuTicks returns utime+stime of process pid (0: this one) in clock ticks.
func cpuTicks(tb testing.TB, pid int) int64 {
	tb.Helper()
	p := "/proc/self/stat"
	if pid != 0 {
		p = "/proc/" + strconv.Itoa(pid) + "/stat"
	}
	b, err := os.ReadFile(p)
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	s, _ := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	return u + s
}

// rssMiB returns VmRSS of this process in MiB.
func rssMiB(tb testing.TB) float64 {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

const ticksPerSecond = 100 // USER_HZ on Linux

// BenchmarkFleet starts a simulated fleet of N nodes against a real control
// plane and reports how long the start took, the simulator's RSS, and the
// CPU it and kube-apiserver use while the fleet idles (Lease renewals, no
// rollout) for HERD_SIM_IDLE (default 20s). The agents run in the
// simulator (agents=in-process, as herd sim --in-process) or as herd-agent
// processes (agents=processes, as herd sim), whose memory is reported as
// their total PSS (shared pages split between them). One start per run:
//
//	go test -run '^$' -bench Fleet -benchtime 1x -timeout 30m ./node/sim/
func BenchmarkFleet(b *testing.B) {
	idle := 20 * time.Second
	if s := os.Getenv("HERD_SIM_IDLE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatal(err)
		}
		idle = d
	}
	for _, tc := range []struct {
		n     int
		agent bool
	}{{50, false}, {200, false}, {50, true}} {
		mode := "in-process"
		if tc.agent {
			mode = "processes"
		}
		n := tc.n
		b.Run(fmt.Sprintf("agents=%s/nodes=%d", mode, n), func(b *testing.B) {
			cp := controlplane.StartTest(b, controlplane.Options{})
			api := cp.PIDs()[controlplane.APIServer]
			pools := sim.ScalePools(map[string]int{"system": 3, "general": 6, "batch": 3}, n)
			agent := ""
			if tc.agent {
				agent = buildAgent(b)
			}
			for b.Loop() {
				f, err := sim.Start(b.Context(), sim.Options{Config: cp.Config(), Pools: pools, AgentBinary: agent})
				if err != nil {
					b.Fatal(err)
				}
				start := f.StartupTime()
				rssStart := rssMiB(b)
				self0, api0 := cpuTicks(b, 0), cpuTicks(b, api)
				t0 := time.Now()
				timer := time.NewTimer(idle)
				<-timer.C
				el := time.Since(t0).Seconds()
				self1, api1 := cpuTicks(b, 0), cpuTicks(b, api)
				rssIdle := rssMiB(b)
				agents, pss := childrenPSSMiB(b, "herd-agent")
				if err := f.Stop(); err != nil {
					b.Fatal(err)
				}
				b.ReportMetric(start.Seconds(), "start-s")
				b.ReportMetric(rssStart, "rss-MiB")
				b.ReportMetric(rssIdle, "idle-rss-MiB")
				b.ReportMetric(100*float64(self1-self0)/ticksPerSecond/el, "sim-idle-cpu-%")
				b.ReportMetric(100*float64(api1-api0)/ticksPerSecond/el, "apiserver-idle-cpu-%")
				if tc.agent {
					b.ReportMetric(pss, "agents-pss-MiB")
					b.Logf("%d herd-agent processes: %.1f MiB PSS in all, %.2f MiB a node", agents, pss, pss/float64(agents))
				}
				b.Logf("%d nodes: started in %v, RSS %.1f MiB after start, %.1f MiB idle; idle CPU over %v: sim %.2f%%, kube-apiserver %.2f%%",
					n, start.Round(time.Millisecond), rssStart, rssIdle, idle,
					100*float64(self1-self0)/ticksPerSecond/el, 100*float64(api1-api0)/ticksPerSecond/el)
			}
		})
	}
}

// buildAgent builds herd-agent as make build does (static).
func buildAgent(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "herd-agent")
	build := exec.Command("go", "build", "-tags", "grpcnotrace", "-o", bin, "herd.dev/herd/cmd/herd-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("build herd-agent: %v\n%s", err, out)
	}
	return bin
}

// childrenPSSMiB returns how many child processes of this one are called
// comm, and the sum of their PSS in MiB.
func childrenPSSMiB(tb testing.TB, comm string) (int, float64) {
	tb.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	self := strconv.Itoa(os.Getpid())
	n, kb := 0, 0.0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		open, end := strings.IndexByte(string(stat), '('), strings.LastIndexByte(string(stat), ')')
		if open < 0 || end < 0 || string(stat[open+1:end]) != comm {
			continue
		}
		if f := strings.Fields(string(stat[end+2:])); len(f) < 2 || f[1] != self {
			continue // field 4, ppid
		}
		rollup, err := os.ReadFile("/proc/" + e.Name() + "/smaps_rollup")
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(rollup), "\n") {
			if rest, ok := strings.CutPrefix(line, "Pss:"); ok {
				v, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				kb += v
				n++
			}
		}
	}
	return n, kb / 1024
}
