package monitor

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"herd.dev/herd/bpf/cgroups"
	"herd.dev/herd/bpf/internal/testkernel"
)

// The benchmarks of docs/benchmarks.md (eBPF section). They need root;
// run them with -benchtime 1x (the first) or the default (the scrape).

// BenchmarkEventCost loads every program, makes each kind of event, and
// reports the kernel's accounting (kernel.bpf_stats_enabled: run_time_ns /
// run_cnt) per program as <tracepoint>-ns/event, side by side with two
// reference programs on sched_switch in the same run: an empty one (the
// floor: tracepoint dispatch plus the accounting's own clock reads) and
// one that only reads the clock (bpf_ktime_get_ns), which the block I/O
// programs must do.
func BenchmarkEventCost(b *testing.B) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	m := newMonitor(b, cgroups.V2)
	refs := referencePrograms(b)
	for b.Loop() {
		makeEvents(b, m)
	}
	st, err := m.Stats()
	if err != nil {
		b.Fatal(err)
	}
	for name, p := range refs {
		s, err := p.Stats()
		if err != nil {
			b.Fatal(err)
		}
		st = append(st, ProgramStats{Program: "reference", Tracepoint: name, Runs: s.RunCount, Runtime: s.Runtime})
	}
	for _, s := range st {
		b.Logf("%-10s %-22s %9d runs %7.1f ns/event", s.Program, s.Tracepoint, s.Runs, s.NsPerRun())
		b.ReportMetric(s.NsPerRun(), s.Tracepoint+"-ns/event")
	}
}

// referencePrograms attaches the empty and the clock-reading program to
// sched_switch.
func referencePrograms(b *testing.B) map[string]*ebpf.Program {
	refs := map[string]*ebpf.Program{}
	for name, body := range map[string]asm.Instructions{
		"empty": {asm.Mov.Imm(asm.R0, 0), asm.Return()},
		"clock": {asm.FnKtimeGetNs.Call(), asm.Mov.Imm(asm.R0, 0), asm.Return()},
	} {
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: name, Type: ebpf.Tracing, AttachType: ebpf.AttachTraceRawTp, AttachTo: "sched_switch",
			License: "GPL", Instructions: body,
		})
		if err != nil {
			b.Fatal(err)
		}
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { l.Close(); p.Close() })
		refs[name+"-sched_switch"] = p
	}
	return refs
}

// makeEvents makes a few seconds of every kind of event: context switches
// (a pipe ping-pong), execs, O_DIRECT I/O on a loop device, TCP
// retransmits, and one OOM kill.
func makeEvents(b *testing.B, m *Monitor) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	pingPong(ctx, 5000)
	for range 200 {
		if err := exec.Command("/bin/true").Run(); err != nil {
			b.Fatal(err)
		}
	}
	loop := loopDevice(b)
	for range 10 {
		directIO(b, loop, 100)
	}
	retransmits(b, m.Hierarchy())
	oomKill(b)
}

// pingPong bounces a byte between two threads over blocking pipes,
// roundTrips times a second, until ctx ends: every hop blocks one thread
// and wakes the other, two or more context switches a round trip.
func pingPong(ctx context.Context, roundTrips int) {
	var ab, ba [2]int
	unix.Pipe2(ab[:], unix.O_CLOEXEC)
	unix.Pipe2(ba[:], unix.O_CLOEXEC)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		buf := []byte{0}
		for {
			if n, _ := unix.Read(ab[0], buf); n != 1 || buf[0] == 1 {
				close(done)
				return
			}
			unix.Write(ba[1], buf)
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := []byte{0}
	const batch = 50
	tick := time.Duration(batch) * time.Second / time.Duration(roundTrips)
	next := time.Now()
	for ctx.Err() == nil {
		for range batch {
			unix.Write(ab[1], buf)
			unix.Read(ba[0], buf)
		}
		next = next.Add(tick)
		time.Sleep(time.Until(next))
	}
	unix.Write(ab[1], []byte{1})
	<-done
	for _, fd := range []int{ab[0], ab[1], ba[0], ba[1]} {
		unix.Close(fd)
	}
}

func loopDevice(b *testing.B) string {
	file := b.TempDir() + "/disk"
	if err := os.WriteFile(file, make([]byte, 1<<20), 0o600); err != nil {
		b.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", file).Output()
	if err != nil {
		b.Fatalf("losetup: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	b.Cleanup(func() { exec.Command("losetup", "--detach", loop).Run() })
	return loop
}

// retransmits runs the TCP test's helper for two seconds with its segments
// dropped.
func retransmits(b *testing.B, h cgroups.Hierarchy) {
	ns := netns(b)
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=tcp")
	stdout, _ := cmd.StdoutPipe()
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	port := readLine(b, stdout)
	rule := []string{"INPUT", "-p", "tcp", "--dport", port, "-j", "DROP"}
	exec.Command("ip", append([]string{"netns", "exec", ns, "iptables", "-A"}, rule...)...).Run()
	io.WriteString(stdin, "go\n")
	time.Sleep(2 * time.Second)
	exec.Command("ip", append([]string{"netns", "exec", ns, "iptables", "-D"}, rule...)...).Run()
	cmd.Process.Kill()
	cmd.Wait()
}

// oomKill runs `tail /dev/zero` into a 32 MiB v1 memory limit.
func oomKill(b *testing.B) {
	h := testkernel.Hierarchy(b, cgroups.V1Memory)
	dir := filepath.Join(h.Root, fmt.Sprintf("herd-bench-%d", os.Getpid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	defer os.Remove(dir)
	os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte("33554432"), 0o644)
	cmd := exec.Command("/bin/sh", "-c", "read go && exec tail /dev/zero")
	stdin, _ := cmd.StdinPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644)
	io.WriteString(stdin, "go\n")
	cmd.Wait()
}

// BenchmarkScrape500Cgroups reads the monitor's metrics for 500 cgroups,
// each holding a sleeping process that was started (exec, switch-ins) in
// it: from the eBPF maps (the Collector, names cached as in steady state),
// and the cAdvisor way, from cgroupfs and /proc: per cgroup its
// cgroup.procs, cpu.stat and cpu.pressure, per process /proc/PID/schedstat
// (run delay), /proc/PID/stat and /proc/PID/net/netstat (TCP retransmits),
// and /proc/diskstats once. Besides ns/op it reports cpu-ns/op, the
// process's user+system CPU time per scrape.
func BenchmarkScrape500Cgroups(b *testing.B) {
	m := newMonitor(b, cgroups.V2, AllPrograms...)
	h := m.Hierarchy()
	base := fmt.Sprintf("/herd-bench-%d", os.Getpid())
	var dirs []string
	var cmds []*exec.Cmd
	defer func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
		for _, d := range dirs {
			os.Remove(d)
		}
		os.Remove(filepath.Join(h.Root, base))
	}()
	for i := range 500 {
		cg := testkernel.Cgroup{Hierarchy: h, Path: fmt.Sprintf("%s/c%03d", base, i)}
		if err := os.MkdirAll(cg.Dir(), 0o755); err != nil {
			b.Fatal(err)
		}
		dirs = append(dirs, cg.Dir())
		cmd := exec.Command("/bin/sleep", "3600")
		if err := cg.Start(cmd); err != nil {
			b.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	testkernel.Eventually(b, 30*time.Second, func() (bool, string) {
		s := snap(b, m)
		return len(s.execs) >= 500, fmt.Sprintf("%d cgroups with execs", len(s.execs))
	})
	b.Run("ebpf", func(b *testing.B) {
		c := m.Collector()
		scrape := func() int {
			ch := make(chan prometheus.Metric, 4096)
			go func() { c.Collect(ch); close(ch) }()
			n := 0
			for range ch {
				n++
			}
			return n
		}
		if n := scrape(); n < 1000 {
			b.Fatalf("a scrape gave %d metrics, want runqlat and execs for 500 cgroups", n)
		}
		measureCPU(b, func() { scrape() })
	})
	for _, netstat := range []bool{true, false} {
		name := "cgroupfs"
		if !netstat {
			name = "cgroupfs-without-netstat"
		}
		b.Run(name, func(b *testing.B) {
			if n := readCgroupfs(b, dirs, netstat); n < 500 {
				b.Fatalf("read %d processes, want 500", n)
			}
			measureCPU(b, func() { readCgroupfs(b, dirs, netstat) })
		})
	}
}

// measureCPU runs f b.N times and reports the process's CPU time per run.
func measureCPU(b *testing.B, f func()) {
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	for b.Loop() {
		f()
	}
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	cpu := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

var numbers = regexp.MustCompile(`\d+`)

// readCgroupfs reads what cAdvisor would for the same metrics, and parses
// every number; it returns the processes read. Without netstat it leaves
// out /proc/PID/net/netstat (the TCP counters), the most expensive file.
func readCgroupfs(b *testing.B, dirs []string, netstat bool) int {
	procs := 0
	var sum uint64
	parse := func(data []byte) {
		for _, f := range numbers.FindAll(data, -1) {
			v, _ := strconv.ParseUint(string(f), 10, 64)
			sum += v
		}
	}
	read := func(path string) []byte {
		data, err := os.ReadFile(path)
		if err != nil {
			b.Fatal(err)
		}
		return data
	}
	for _, d := range dirs {
		pids := read(filepath.Join(d, "cgroup.procs"))
		parse(read(filepath.Join(d, "cpu.stat")))
		parse(read(filepath.Join(d, "cpu.pressure")))
		for _, pid := range strings.Fields(string(pids)) {
			procs++
			parse(read("/proc/" + pid + "/schedstat"))
			parse(read("/proc/" + pid + "/stat"))
			if netstat {
				parse(read("/proc/" + pid + "/net/netstat"))
			}
		}
	}
	parse(read("/proc/diskstats"))
	return procs
}

// BenchmarkMonitorCPU runs herd-monitor (all programs) as its own process
// for 60 s under a load of at least 10,000 context switches a second (a
// pipe ping-pong on top of whatever else runs), scraped every 10 s, and reports its CPU as a share of one core: the
// process's user+system time (/proc/PID/stat) plus the time the kernel
// spent in its programs (bpf_stats), with the context switch rate
// measured (/proc/stat ctxt).
func BenchmarkMonitorCPU(b *testing.B) {
	bin := filepath.Join(b.TempDir(), "herd-monitor")
	if out, err := exec.Command("go", "build", "-o", bin, "herd.dev/herd/bpf/cmd/herd-monitor").CombinedOutput(); err != nil {
		b.Fatalf("build herd-monitor: %v\n%s", err, out)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	cmd := exec.Command(bin, "--metrics-addr", "127.0.0.1:0")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	addr := servingAddr(b, stderr)
	const window = 60 * time.Second
	for b.Loop() {
		scrapeBPF(b, addr) // names every cgroup once, as a first scrape does
		cpu0, bpf0, ctxt0, t0 := procCPU(b, cmd.Process.Pid), scrapeBPF(b, addr), ctxt(b), time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), window)
		go func() {
			for ctx.Err() == nil {
				select {
				case <-ctx.Done():
				case <-time.After(10 * time.Second):
					scrapeBPF(b, addr)
				}
			}
		}()
		pingPong(ctx, 5000)
		cancel()
		elapsed := time.Since(t0).Seconds()
		bpf := scrapeBPF(b, addr) - bpf0
		cpu := procCPU(b, cmd.Process.Pid) - cpu0
		b.ReportMetric(float64(ctxt(b)-ctxt0)/elapsed, "ctxsw/s")
		b.ReportMetric(100*cpu/elapsed, "process-%core")
		b.ReportMetric(100*bpf/elapsed, "bpf-%core")
		b.ReportMetric(100*(cpu+bpf)/elapsed, "total-%core")
	}
}

func servingAddr(b *testing.B, stderr io.Reader) string {
	s := bufio.NewScanner(stderr)
	for s.Scan() {
		if _, addr, ok := strings.Cut(s.Text(), "addr="); ok {
			go io.Copy(io.Discard, stderr)
			return strings.Fields(addr)[0]
		}
	}
	b.Fatal("herd-monitor did not say where it serves")
	return ""
}

// scrapeBPF scrapes /metrics and returns the seconds spent in the
// programs so far.
func scrapeBPF(b *testing.B, addr string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var total float64
	s := bufio.NewScanner(resp.Body)
	s.Buffer(nil, 1<<20)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "herd_monitor_program_run_seconds_total{") {
			f := strings.Fields(s.Text())
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += v
		}
	}
	return total
}

// procCPU is pid's user+system time in seconds.
func procCPU(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

func ctxt(b *testing.B) uint64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "ctxt "); ok {
			n, _ := strconv.ParseUint(v, 10, 64)
			return n
		}
	}
	b.Fatal("no ctxt in /proc/stat")
	return 0
}
