package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"herd.dev/herd/bpf/cgroups"
	"herd.dev/herd/bpf/internal/testkernel"
	"herd.dev/herd/bpf/programs"
)

// TestUnsupportedProgram asks for a program whose tracepoint this kernel
// lacks next to one it has: the monitor runs the one, and reports the
// other as not loaded, with the reason, in Status, in the metrics and in
// the report; never as a silent zero.
func TestUnsupportedProgram(t *testing.T) {
	const missing Program = "missing"
	def := definitions[Execs]
	def.tracepoints = []tracepoint{{"no_such_tracepoint", nil}}
	definitions[missing] = def
	t.Cleanup(func() { delete(definitions, missing) })

	m := newMonitor(t, cgroups.V2, Execs)
	h := m.Hierarchy()
	m2, err := New(Options{Cgroups: h.Mode, CgroupRoot: h.Root, Programs: []Program{Execs, missing}})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	want := "kernel lacks the BTF-enabled tracepoint no_such_tracepoint"
	st := m2.Status()
	if len(st) != 2 || !st[0].Loaded || st[1].Loaded || st[1].Reason != want {
		t.Errorf("Status() = %+v, want execs loaded and missing not, because %q", st, want)
	}
	metrics := gather(t, m2)
	for _, line := range []string{
		fmt.Sprintf(`herd_monitor_program_loaded{program="missing",reason=%q} 0`, want),
		`herd_monitor_program_loaded{program="execs",reason=""} 1`,
	} {
		if !strings.Contains(metrics, line) {
			t.Errorf("metrics lack %s:\n%s", line, metrics)
		}
	}
	var buf strings.Builder
	r, err := m2.Top(5)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "program missing not loaded: "+want) {
		t.Errorf("report does not say why missing is not loaded:\n%s", buf.String())
	}

	_, err = New(Options{Cgroups: h.Mode, CgroupRoot: h.Root, Programs: []Program{missing}})
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("New with no loadable program: %v, want an error saying %q", err, want)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Unavailable(err))
	got, err := testutil.GatherAndCount(reg, "herd_monitor_program_loaded")
	if err != nil || got != len(AllPrograms) {
		t.Errorf("Unavailable: %d program_loaded series (%v), want %d", got, err, len(AllPrograms))
	}
}

// TestCheckKernel checks this kernel's BTF against what each program
// reads; a made-up member is reported by what the kernel lacks.
func TestCheckKernel(t *testing.T) {
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Skipf("kernel BTF: %v", err)
	}
	for p, def := range definitions {
		if err := checkKernel(p, def, kernel); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	def := definitions[RunQueueLatency]
	def.members = append(def.members, member{"task_struct", "no_such_member", "task_struct.no_such_member (CONFIG_MADE_UP)"})
	err = checkKernel(RunQueueLatency, def, kernel)
	if err == nil || err.Error() != "program runqlat: kernel lacks task_struct.no_such_member (CONFIG_MADE_UP)" {
		t.Errorf("checkKernel with a missing member: %v", err)
	}
	def = definitions[OOMKills]
	def.tracepoints = []tracepoint{{"mark_victim", []string{"*sock"}}}
	if err := checkKernel(OOMKills, def, kernel); err == nil || !strings.Contains(err.Error(), "argument 0 of type *sock (it is *task_struct)") {
		t.Errorf("checkKernel with a wrong prototype: %v", err)
	}
}

// TestEvictDead removes a cgroup that has counts in the kernel's maps:
// eviction deletes its entries and keeps those of live cgroups.
func TestEvictDead(t *testing.T) {
	m := newMonitor(t, cgroups.V2, Execs)
	live := testkernel.NewCgroup(t, m.Hierarchy(), "live")
	dead := testkernel.NewCgroup(t, m.Hierarchy(), "dead")
	for _, cg := range []testkernel.Cgroup{live, dead} {
		cmd := exec.Command("/bin/true")
		if err := cg.Start(cmd); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
	}
	testkernel.Eventually(t, 10*time.Second, func() (bool, string) {
		s := snap(t, m)
		return s.execs[live.ID] == 1 && s.execs[dead.ID] == 1, fmt.Sprintf("execs %v", s.execs)
	})
	gather(t, m) // names both
	if err := os.Remove(dead.Dir()); err != nil {
		t.Fatal(err)
	}
	if err := m.evictDead(); err != nil {
		t.Fatal(err)
	}
	s := snap(t, m)
	if _, ok := s.execs[dead.ID]; ok || s.execs[live.ID] != 1 {
		t.Errorf("after eviction: execs %v, want %d gone and %d kept", s.execs, dead.ID, live.ID)
	}
	if _, ok := m.names.labels[dead.ID]; ok {
		t.Errorf("the name of removed cgroup %d is still cached", dead.ID)
	}
	if ids, err := cgroupIDs(m.loaded[Execs].coll.Maps[programs.ExecsMapExecs]); err != nil || len(ids) == 0 {
		t.Errorf("cgroupIDs: %v, %v", ids, err)
	}
}

// TestPodLabels runs processes in cgroups laid out as the kubelet lays out
// a pod (systemd driver) and names them through a pod lister: the series
// carry namespace, pod and container; a container the lister does not
// know yet counts for its pod; without a lister, pods are named by UID.
func TestPodLabels(t *testing.T) {
	const uid = "0b9f6c1e-8a61-4d1e-9d3b-5f2c7e8a9b10"
	const app = "4f6a1c2d3e4b5a69788796a5b4c3d2e1f0a1b2c3d4e5f60718293a4b5c6d7e8f"
	const sidecar = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"
	pod := "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	lister := func(context.Context) ([]Pod, error) {
		return []Pod{{UID: uid, Namespace: "shop", Name: "cart-7d9f", Containers: map[string]string{app: "app"}}}, nil
	}
	h := testkernel.Hierarchy(t, cgroups.V2)
	m, err := New(Options{Cgroups: cgroups.V2, CgroupRoot: h.Root, Programs: []Program{Execs}, Pods: lister})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	bare, err := New(Options{Cgroups: cgroups.V2, CgroupRoot: h.Root, Programs: []Program{Execs}})
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	for _, c := range []struct{ path, runs string }{
		{pod + "/cri-containerd-" + app + ".scope", "/bin/true; /bin/true"},
		{pod + "/cri-containerd-" + sidecar + ".scope", "/bin/true"},
	} {
		cg := testkernel.NewCgroup(t, h, c.path)
		cmd := exec.Command("/bin/sh", "-c", c.runs)
		if err := cg.Start(cmd); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		m    *Monitor
		want []string
	}{
		{m, []string{
			`herd_monitor_execs_total{cgroup="",container="app",namespace="shop",pod="cart-7d9f"} 3`,
			`herd_monitor_execs_total{cgroup="",container="",namespace="shop",pod="cart-7d9f"} 2`,
		}},
		{bare, []string{
			fmt.Sprintf(`herd_monitor_execs_total{cgroup="",container=%q,namespace="",pod=%q} 3`, app[:13], uid),
			fmt.Sprintf(`herd_monitor_execs_total{cgroup="",container=%q,namespace="",pod=%q} 2`, sidecar[:13], uid),
		}},
	} {
		testkernel.Eventually(t, 10*time.Second, func() (bool, string) {
			metrics := gather(t, c.m)
			for _, w := range c.want {
				if !strings.Contains(metrics, w) {
					return false, fmt.Sprintf("metrics lack %s:\n%s", w, metrics)
				}
			}
			return true, ""
		})
	}
}

// TestHandler serves Top as JSON, the form `herd diagnose` reads, and
// refuses a bad n.
func TestHandler(t *testing.T) {
	m := newMonitor(t, cgroups.V2, Execs)
	cg := testkernel.NewCgroup(t, m.Hierarchy(), "handler")
	cmd := exec.Command("/bin/true")
	if err := cg.Start(cmd); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	testkernel.Eventually(t, 10*time.Second, func() (bool, string) {
		resp, err := http.Get(srv.URL + "?n=100")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r Report
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			t.Fatal(err)
		}
		return hasRate(r.Execs, cg.Path, 1), fmt.Sprintf("report execs %+v lack %s", r.Execs, cg.Path)
	})
	resp, err := http.Get(srv.URL + "?n=zero")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET ?n=zero: %s, want 400", resp.Status)
	}
}
