package diagnose

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"herd.dev/herd/bpf/monitor"
	"herd.dev/herd/node/cri"
	"herd.dev/herd/node/health"
	"herd.dev/herd/os/ostree/osfixture"
)

func TestParseLoadAvg(t *testing.T) {
	got, err := parseLoadAvg("0.52 1.58 2.59 3/1234 5678\n")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(&LoadAvg{0.52, 1.58, 2.59, 3, 1234}, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	for _, bad := range []string{"", "1 2 3", "a 2 3 1/2", "1 2 3 12"} {
		if _, err := parseLoadAvg(bad); err == nil {
			t.Errorf("parseLoadAvg(%q): no error", bad)
		}
	}
}

func TestKmsgMessage(t *testing.T) {
	for rec, want := range map[string]string{
		"6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net": "[5.140900] NET: Registered protocol family 10",
		"no header":        "no header",
		"4,1,x,-;odd time": "odd time",
	} {
		if got := kmsgMessage(rec); got != want {
			t.Errorf("kmsgMessage(%q) = %q, want %q", rec, got, want)
		}
	}
	if got := kmsgMessage("6,1,1,-;" + strings.Repeat("x", 2000)); len(got) != maxKernelLine {
		t.Errorf("a long line is %d bytes, want %d", len(got), maxKernelLine)
	}
}

// TestEvidenceFits: however much there is, a bundle encodes within its
// limit and says what it cut.
func TestEvidenceFits(t *testing.T) {
	lines := make([]string, 5000)
	for i := range lines {
		lines[i] = fmt.Sprintf("[%d.000000] %s", i, strings.Repeat("k", 100))
	}
	sbs := make([]cri.Sandbox, 3000)
	for i := range sbs {
		sbs[i] = cri.Sandbox{ID: fmt.Sprintf("%064d", i), PodName: "p", PodNamespace: "n", PodUID: "u", State: cri.SandboxReady}
	}
	for _, limit := range []int{1 << 20, 64 << 10, 8 << 10, 300} {
		e := &Evidence{Reason: "test", KernelLog: append([]string(nil), lines...), Sandboxes: append([]cri.Sandbox(nil), sbs...),
			Health: []health.Result{{Type: "HerdKubeletUnhealthy", Message: strings.Repeat("m", 100)}}}
		e.fit(limit)
		if e.Size() > limit && limit >= 8<<10 {
			t.Errorf("limit %d: %d bytes", limit, e.Size())
		}
		if limit < 1<<20 && len(e.Truncated) == 0 {
			t.Errorf("limit %d: nothing noted as cut", limit)
		}
		if n := len(e.KernelLog); n > 0 && e.KernelLog[n-1] != lines[len(lines)-1] {
			t.Errorf("limit %d: the newest kernel line was cut", limit)
		}
	}
}

// TestIntegrationCapture captures a bundle from this machine's kernel
// log, PSI and filesystems, saves and loads it.
func TestIntegrationCapture(t *testing.T) {
	dir := t.TempDir()
	e := Capture(t.Context(), Sources{DiskPaths: []string{dir}}, "test", time.Now(), 16<<10)
	if len(e.KernelLog) == 0 {
		t.Fatalf("no kernel log lines (errors: %v)", e.Errors)
	}
	if len(e.Disk) != 1 || e.Disk[0].Bytes == 0 {
		t.Errorf("disk: %+v", e.Disk)
	}
	if e.Size() > 16<<10 {
		t.Errorf("bundle is %d bytes, over its 16 KiB limit", e.Size())
	}
	path := filepath.Join(dir, "state", "evidence.json")
	if got, err := LoadEvidence(path); got != nil || err != nil {
		t.Fatalf("no bundle yet: %v, %v", got, err)
	}
	if err := SaveEvidence(path, e); err != nil {
		t.Fatal(err)
	}
	got, err := LoadEvidence(path)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(e)
	have, _ := json.Marshal(got)
	if string(want) != string(have) {
		t.Error("the loaded bundle differs from the saved one")
	}
	if err := os.WriteFile(path, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadEvidence(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a damaged bundle: %v, want an error naming %s", err, path)
	}
}

// TestIntegrationCollect collects a report from this machine: its filesystems,
// PSI, load, network interfaces (lo at least) and a saved bundle.
func TestIntegrationCollect(t *testing.T) {
	dir := t.TempDir()
	ev := filepath.Join(dir, "evidence.json")
	if err := SaveEvidence(ev, &Evidence{Reason: "before reboot", KernelLog: []string{"[1.0] oops"}}); err != nil {
		t.Fatal(err)
	}
	repo, err := osfixture.NewRepo(t.Context(), t.TempDir(), osfixture.Options{Versions: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { repo.Close() })
	sysroot, err := repo.NewSysroot(t.Context(), t.TempDir(), osfixture.SysrootOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c := &Collector{Node: "n1", DiskPaths: []string{dir}, EvidencePath: ev, Sysroot: sysroot,
		Checks: []health.Check{&health.Memory{}, &health.Disk{Paths: []string{dir}}}}
	r := c.Collect(context.Background(), time.Now())
	if len(r.OS) != 1 || r.OS[0].Checksum != repo.Commits[0] || !r.OS[0].Booted || r.OS[0].Version != "v1" {
		t.Errorf("OSTree deployments: %+v, want %s booted", r.OS, repo.Commits[0])
	}
	if len(r.Disk) != 1 || r.Disk[0].Path != dir {
		t.Errorf("disk: %+v", r.Disk)
	}
	if r.Load == nil || r.Load.Total == 0 {
		t.Errorf("load: %+v", r.Load)
	}
	found := false
	for _, n := range r.Network {
		found = found || n.Name == "lo"
	}
	if !found {
		t.Errorf("no lo among %+v", r.Network)
	}
	if len(r.Health) != 2 || r.Health[1].Type != "HerdDiskPressure" {
		t.Errorf("health: %+v", r.Health)
	}
	if r.Evidence == nil || r.Evidence.Reason != "before reboot" {
		t.Errorf("evidence: %+v", r.Evidence)
	}
	var text strings.Builder
	if err := WriteText(&text, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Node n1", "HerdDiskPressure", dir, "Load", "lo", repo.Commits[0] + "  v1  booted", "(none recorded)", "before reboot", "[1.0] oops"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
}

// TestReportFits: a report over its limit loses its evidence, never its
// other parts.
func TestReportFits(t *testing.T) {
	e := &Evidence{KernelLog: make([]string, 10000)}
	for i := range e.KernelLog {
		e.KernelLog[i] = strings.Repeat("x", 200)
	}
	r := &Report{Node: "n", Evidence: e, Load: &LoadAvg{Total: 1}}
	r.fit(32 << 10)
	if s := size(r); s > 32<<10 {
		t.Errorf("report is %d bytes", s)
	}
	if r.Load == nil || r.Evidence == nil || len(r.Evidence.KernelLog) == 0 || len(r.Evidence.Truncated) == 0 {
		t.Errorf("report after fit: load %v, evidence %+v", r.Load, r.Evidence != nil)
	}
}

// TestIntegrationCollectMonitor puts a real eBPF node monitor's report
// (programs loaded into this kernel) into the node's report and its text.
func TestIntegrationCollectMonitor(t *testing.T) {
	m, err := monitor.New(monitor.Options{Programs: []monitor.Program{monitor.RunQueueLatency, monitor.Execs}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c := &Collector{Node: "n1", DiskPaths: []string{t.TempDir()}, Monitor: m}
	r := c.Collect(context.Background(), time.Now())
	if r.Monitor == nil || len(r.Monitor.Programs) != 2 || !r.Monitor.Programs[0].Loaded {
		t.Fatalf("monitor report: %+v (errors %v)", r.Monitor, r.Errors)
	}
	if len(r.Monitor.RunQueue) == 0 || len(r.Monitor.RunQueue) > MonitorEntries {
		t.Errorf("%d run-queue entries, want 1 to %d: the node switches tasks", len(r.Monitor.RunQueue), MonitorEntries)
	}
	var text strings.Builder
	if err := WriteText(&text, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Node monitor (eBPF)", "  RUN QUEUE", "  EXECS"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
}

type failingMonitor struct{}

func (failingMonitor) Top(int) (monitor.Report, error) {
	return monitor.Report{}, fmt.Errorf("maps unreadable")
}

// TestCollectMonitorError: a monitor that cannot be read is named among
// the report's errors, and the rest is reported.
func TestCollectMonitorError(t *testing.T) {
	r := (&Collector{Node: "n1", DiskPaths: []string{t.TempDir()}, Monitor: failingMonitor{}}).Collect(context.Background(), time.Now())
	if r.Monitor != nil || !slices.Contains(r.Errors, "eBPF monitor: maps unreadable") || r.Load == nil {
		t.Errorf("report with a failing monitor: monitor %+v, errors %q, load %+v", r.Monitor, r.Errors, r.Load)
	}
}
