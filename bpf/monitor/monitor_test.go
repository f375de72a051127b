package monitor

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/bpf/cgroups"
	"herd.dev/herd/bpf/internal/testkernel"
)

// These tests load the real programs into this machine's kernel and make
// the events they count: they need root and a kernel with BTF. A kernel
// without a feature skips the test naming it (skipIfUnsupported); CI's
// kernel has them all.

func newMonitor(t testing.TB, mode cgroups.Mode, progs ...Program) *Monitor {
	t.Helper()
	h := testkernel.Hierarchy(t, mode)
	m, err := New(Options{Cgroups: mode, CgroupRoot: h.Root, Programs: progs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close monitor: %v", err)
		}
	})
	for _, s := range m.Status() {
		if !s.Loaded {
			skipIfUnsupported(t, s)
		}
	}
	return m
}

// skipIfUnsupported skips when the kernel lacks what a program needs, the
// way cilium/ebpf's testutils.SkipIfNotSupported does, naming it; any
// other load failure fails the test.
func skipIfUnsupported(t testing.TB, s ProgramStatus) {
	t.Helper()
	if strings.HasPrefix(s.Reason, "kernel lacks ") {
		t.Skipf("program %s: %s", s.Program, s.Reason)
	}
	t.Fatalf("program %s not loaded: %s", s.Program, s.Reason)
}

func snap(t testing.TB, m *Monitor) snapshot {
	t.Helper()
	s, err := m.read()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestExecs counts the execs of a shell and the N programs it runs, in a
// cgroup of its own: exactly N+1.
func TestExecs(t *testing.T) {
	m := newMonitor(t, cgroups.V2, Execs)
	cg := testkernel.NewCgroup(t, m.Hierarchy(), "execs")
	const n = 25
	cmd := exec.Command("/bin/sh", "-c", strings.Repeat("/bin/true; ", n))
	if err := cg.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	testkernel.Eventually(t, 10*time.Second, func() (bool, string) {
		got := snap(t, m).execs[cg.ID]
		return got >= n+1, fmt.Sprintf("%d execs in %s, want %d", got, cg.Path, n+1)
	})
	if got := snap(t, m).execs[cg.ID]; got != n+1 {
		t.Errorf("%d execs in %s, want exactly %d", got, cg.Path, n+1)
	}
	metrics := gather(t, m)
	want := fmt.Sprintf(`herd_monitor_execs_total{cgroup=%q,container="",namespace="",pod=""} %d`, cg.Path, n+1)
	if !strings.Contains(metrics, want) {
		t.Errorf("metrics lack %s:\n%s", want, metrics)
	}
	r, err := m.Top(5)
	if err != nil {
		t.Fatal(err)
	}
	if !hasRate(r.Execs, cg.Path, n+1) {
		t.Errorf("Top(5).Execs lacks %s with %d: %+v", cg.Path, n+1, r.Execs)
	}
}

func hasRate(rates []Rate, cgroup string, count uint64) bool {
	for _, r := range rates {
		if r.Cgroup == cgroup && r.Count == count {
			return true
		}
	}
	return false
}

// TestRunQueueLatency runs three CPU-bound shells pinned to one CPU in a
// cgroup: each waits while the others run. The cgroup's histogram must
// agree with the scheduler's own accounting in /proc/PID/schedstat (the
// run_delay sum and the count of arrivals on a CPU), and every bucket with
// its bounds: sum(slot counts x lower bound) <= sum <= sum(slot counts x
// upper bound).
func TestRunQueueLatency(t *testing.T) {
	m := newMonitor(t, cgroups.V2, RunQueueLatency)
	cg := testkernel.NewCgroup(t, m.Hierarchy(), "spin")
	var pids []int
	for range 3 {
		cmd := exec.Command("taskset", "-c", "0", "/bin/sh", "-c", "while :; do :; done")
		if err := cg.Start(cmd); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, cmd.Process.Pid)
		go cmd.Wait()
	}
	testkernel.Eventually(t, 60*time.Second, func() (bool, string) {
		h := snap(t, m).runQueue[cg.ID]
		return count(h) >= 200 && h.SumNs >= uint64(time.Second), fmt.Sprintf("%d switch-ins waiting %v in %s, want 200 and 1s", count(h), time.Duration(h.SumNs), cg.Path)
	})
	for _, pid := range pids {
		if err := stop(pid); err != nil {
			t.Fatal(err)
		}
	}
	var runDelay, arrivals uint64
	for _, pid := range pids {
		d, n := schedstat(t, pid)
		runDelay, arrivals = runDelay+d, arrivals+n
	}
	h := snap(t, m).runQueue[cg.ID]
	t.Logf("switch-ins %d (schedstat: %d), sum %v (schedstat run_delay %v), slots %v", count(h), arrivals, time.Duration(h.SumNs), time.Duration(runDelay), h.Slots)
	// Most runs agree to the nanosecond; on a busy machine a run now and
	// then differs by one switch-in (of up to tens of ms) that schedstat
	// counted and the program did not see.
	if diff := absDiff(h.SumNs, runDelay); diff*20 > runDelay {
		t.Errorf("histogram sum %v differs from schedstat run_delay %v by more than 5%%", time.Duration(h.SumNs), time.Duration(runDelay))
	}
	if diff := absDiff(count(h), arrivals); diff > 2 && diff*100 > arrivals {
		t.Errorf("%d switch-ins differ from schedstat's %d arrivals by more than 2 and 1%%", count(h), arrivals)
	}
	var low, high float64
	for k, n := range h.Slots[:histSlots-1] {
		if k > 0 {
			low += float64(n) * bucketBound(k-1)
		}
		high += float64(n) * bucketBound(k)
	}
	if sum := float64(h.SumNs) / 1e9; sum < low || sum > high || h.Slots[histSlots-1] != 0 {
		t.Errorf("sum %.6fs outside the bounds its buckets allow [%.6f, %.6f]: %v", sum, low, high, h.Slots)
	}
	r, err := m.Top(3)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(r.RunQueue, func(l Latency) bool { return l.Cgroup == cg.Path && l.Count == count(h) }) {
		t.Errorf("Top(3).RunQueue lacks %s with %d switch-ins: %+v", cg.Path, count(h), r.RunQueue)
	}
}

// stop stops pid with SIGSTOP and waits until it is stopped.
func stop(pid int) error {
	p, _ := os.FindProcess(pid)
	if err := p.Signal(sigStop); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		s := string(b)
		if fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(fields) > 0 && fields[0] == "T" {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("pid %d not stopped", pid)
}

// schedstat reads the run_delay (ns) and arrivals on a CPU of pid.
func schedstat(t testing.TB, pid int) (runDelay, arrivals uint64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	runDelay, err1 := strconv.ParseUint(f[1], 10, 64)
	arrivals, err2 := strconv.ParseUint(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/schedstat: %q", pid, b)
	}
	return runDelay, arrivals
}

func absDiff(a, b uint64) uint64 {
	if a > b {
		return a - b
	}
	return b - a
}

// TestOOMKill makes `tail /dev/zero` (which buffers forever, looking for a
// newline) run into a 32 MiB limit of the v1 memory controller. A monitor
// on the v2 hierarchy and one on the v1 memory hierarchy both see it, each
// charged to its own cgroup of the victim, with the victim's pid and
// command.
func TestOOMKill(t *testing.T) {
	v2 := newMonitor(t, cgroups.V2, OOMKills)
	v1 := newMonitor(t, cgroups.V1Memory, OOMKills)
	cg2 := testkernel.NewCgroup(t, v2.Hierarchy(), "oom")
	cg1 := testkernel.NewCgroup(t, v1.Hierarchy(), "oom")
	write(t, filepath.Join(cg1.Dir(), "memory.limit_in_bytes"), "33554432")

	cmd := exec.Command("/bin/sh", "-c", "read go && exec tail /dev/zero")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cg2.Start(cmd); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if err := cg1.Move(pid); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "go\n")
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(interface{ Signaled() bool }); !ok || !ws.Signaled() {
		t.Fatalf("tail /dev/zero ended with %v, not killed", err)
	}

	for _, c := range []struct {
		m  *Monitor
		cg testkernel.Cgroup
	}{{v2, cg2}, {v1, cg1}} {
		testkernel.Eventually(t, 10*time.Second, func() (bool, string) {
			kills := c.m.oom.latest(10)
			return len(kills) > 0, "no OOM kill reported on the ring buffer"
		})
		if got := snap(t, c.m).oomKills[c.cg.ID]; got != 1 {
			t.Errorf("%s: %d OOM kills in %s, want 1", c.m.Hierarchy().Mode, got, c.cg.Path)
		}
		r, err := c.m.Top(10)
		if err != nil {
			t.Fatal(err)
		}
		k := r.OOMKills[0]
		if k.PID != uint32(pid) || k.Command != "tail" || k.CgroupID != c.cg.ID || k.Victim.Cgroup != c.cg.Path {
			t.Errorf("%s: OOM kill %+v, want pid %d, command tail, cgroup %d (%s)", c.m.Hierarchy().Mode, k, pid, c.cg.ID, c.cg.Path)
		}
	}
}

func write(t testing.TB, path, value string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readLine reads one line from r with a deadline.
func readLine(t testing.TB, r io.Reader) string {
	t.Helper()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		return s
	case <-time.After(30 * time.Second):
		t.Fatal("no line from the helper in 30s")
		return ""
	}
}

// TestV1Attribution runs a shell in a cgroup of the v1 memory controller,
// as pods run on v1 nodes: its execs and its switch-ins are charged to
// that cgroup by a monitor in v1-memory mode.
func TestV1Attribution(t *testing.T) {
	m := newMonitor(t, cgroups.V1Memory, Execs, RunQueueLatency)
	cg := testkernel.NewCgroup(t, m.Hierarchy(), "v1")
	cmd := exec.Command("/bin/sh", "-c", "read go && /bin/true && /bin/true")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cg.Move(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "go\n")
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	testkernel.Eventually(t, 10*time.Second, func() (bool, string) {
		s := snap(t, m)
		return s.execs[cg.ID] == 2 && count(s.runQueue[cg.ID]) > 0,
			fmt.Sprintf("%d execs and %d switch-ins in v1 cgroup %s, want 2 and some", s.execs[cg.ID], count(s.runQueue[cg.ID]), cg.Path)
	})
	want := fmt.Sprintf(`herd_monitor_execs_total{cgroup=%q,container="",namespace="",pod=""} 2`, cg.Path)
	if metrics := gather(t, m); !strings.Contains(metrics, want) {
		t.Errorf("metrics lack %s:\n%s", want, metrics)
	}
}
