package node_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"herd.dev/herd/node"
	"herd.dev/herd/node/sim/hostbus"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
)

// BenchmarkStageOS compares the agent's OSTree apply — node.StageOS: look
// for the commit, pull it if missing, deploy it with the kernel arguments —
// with the raw command it comes down to,
//
//	ostree admin deploy --sysroot=P --os=herd --karg-none --karg-append=... CHECKSUM
//
// as os/ostree's BenchmarkDeploy does for the driver. Both sysroots hold v1
// (booted) and v2 and alternate between them, so every iteration writes a
// new deployment and no pull is needed. Each iteration runs one of each, in
// alternating order, and the ratio agent/raw is reported (target ≤ 1.2).
// "plus-status" adds one ostree admin status: the agent reads the status
// when it starts (once per boot) and again only when the sysroot changed
// under it (see osStatus), so an OS change normally runs none; the variant
// shows what one costs. Sysroots on disk and on tmpfs (/dev/shm):
//
//	go test -run '^$' -bench StageOS -benchtime 40x ./node/
func BenchmarkStageOS(b *testing.B) {
	for _, where := range []string{"disk", "tmpfs"} {
		for _, withStatus := range []bool{false, true} {
			name := where
			if withStatus {
				name += "/plus-status"
			}
			b.Run(name, func(b *testing.B) {
				dir := b.TempDir()
				if where == "tmpfs" {
					dir = shmDir(b)
				}
				r, err := osfixture.NewRepo(b.Context(), dir, osfixture.Options{Versions: 2})
				if err != nil {
					b.Fatal(err)
				}
				kargs := []string{"console=ttyS0,115200", "herd.bench=1"}
				osc := schema.OSConfig{Ref: r.Ref, Remote: &schema.RemoteConfig{Name: osfixture.DefaultRemote, URL: r.URL}}
				setup := func(name string) *ostree.Sysroot {
					s, err := r.NewSysroot(b.Context(), filepath.Join(dir, name), osfixture.SysrootOptions{KernelArgs: kargs})
					if err != nil {
						b.Fatal(err)
					}
					if err := s.Pull(b.Context(), osfixture.DefaultRemote, r.Ref, r.Commits[1]); err != nil {
						b.Fatal(err)
					}
					return s
				}
				sa, sr := setup("agent"), setup("raw")
				agent := func(i int) {
					if withStatus {
						if _, err := sa.Status(b.Context()); err != nil {
							b.Fatal(err)
						}
					}
					pulled, err := node.StageOS(b.Context(), sa, osc, r.Commits[(i+1)%2], kargs, node.StageOptions{})
					if err != nil || pulled {
						b.Fatalf("StageOS: pulled %v, %v", pulled, err)
					}
				}
				raw := func(i int) {
					args := []string{"admin", "deploy", "--sysroot=" + sr.Path, "--os=" + sr.OSName, "--karg-none"}
					for _, k := range kargs {
						args = append(args, "--karg-append="+k)
					}
					args = append(args, r.Commits[(i+1)%2])
					cmd := exec.CommandContext(b.Context(), "ostree", args...)
					cmd.Env = append(os.Environ(), osfixture.Env...)
					if out, err := cmd.CombinedOutput(); err != nil {
						b.Fatalf("%v: %s", err, out)
					}
				}
				var ta, tr time.Duration
				timed := func(f func(int), i int) time.Duration {
					start := time.Now()
					f(i)
					return time.Since(start)
				}
				i := 0
				for b.Loop() {
					if i%2 == 0 {
						ta += timed(agent, i)
						tr += timed(raw, i)
					} else {
						tr += timed(raw, i)
						ta += timed(agent, i)
					}
					i++
				}
				b.ReportMetric(float64(ta.Microseconds())/1000/float64(i), "agent-ms/op")
				b.ReportMetric(float64(tr.Microseconds())/1000/float64(i), "raw-ms/op")
				b.ReportMetric(float64(ta)/float64(tr), "agent/raw")
			})
		}
	}
}

// buildAgent builds the herd-agent binary as make build does (static).
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

// procStatus reads a field of /proc/<pid>/status in MiB.
func procStatusMiB(tb testing.TB, pid int, field string) float64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// cpuTicks returns utime+stime of pid from /proc/<pid>/stat, in clock ticks.
func cpuTicks(tb testing.TB, pid int) int64 {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}

// BenchmarkAgent runs one herd-agent (the real binary, built as make
// build builds it, serving its metrics) against a real API server and
// measures its memory and CPU: it applies a config and reaches Idle; idles
// for HERD_AGENT_IDLE (default 30s), reporting its RSS and CPU then; then
// applies a change of OS commit, files and sysctls (pull, write, deploy,
// and the reboot request, which a stand-in logind on a private D-Bus
// takes), reporting its peak RSS while it applies. HERD_AGENT_ARGS adds
// arguments (e.g. --monitor, the eBPF node monitor):
//
//	go test -run '^$' -bench 'Agent$' -benchtime 1x ./node/
func BenchmarkAgent(b *testing.B) {
	idle := 30 * time.Second
	if s := os.Getenv("HERD_AGENT_IDLE"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatal(err)
		}
		idle = d
	}
	c := cluster(b)
	agent := buildAgent(b)
	for b.Loop() {
		repo, err := osfixture.NewRepo(b.Context(), shmDir(b), osfixture.Options{Versions: 2, Sign: true})
		if err != nil {
			b.Fatal(err)
		}
		dir := shmDir(b)
		// The operator's trust file: the repository, signed with its key.
		trust := filepath.Join(dir, "os-trust", "remotes.yaml")
		writeFile(b, filepath.Join(dir, "os-trust", "herd.asc"), string(mustRead(b, repo.KeyPath)))
		writeFile(b, trust, "remotes:\n  - name: "+osfixture.DefaultRemote+"\n    url: "+repo.URL+"\n    gpgKeyFile: herd.asc\n")
		bus, err := hostbus.Start(dir)
		if err != nil {
			b.Fatal(err)
		}
		root := filepath.Join(dir, "root")
		for k, v := range knownSysctls {
			writeFile(b, filepath.Join(root, "proc/sys", strings.ReplaceAll(k, ".", "/")), v+"\n")
		}
		writeFile(b, filepath.Join(root, "proc/sys/kernel/random/boot_id"), "00000000-0000-4000-8000-000000000001\n")
		s, err := repo.NewSysroot(b.Context(), filepath.Join(dir, "sysroot"), osfixture.SysrootOptions{})
		if err != nil {
			b.Fatal(err)
		}
		cs := adminClient(b)
		name := fmt.Sprintf("agent-bench-%d", time.Now().UnixNano()%100000)
		createNode(b, cs, name)
		v1, v2 := repo.Commits[0], repo.Commits[1]
		h1 := publishRender(b, cs, render(b, repo, spec{commit: v1,
			files:  []schema.File{{Path: "/etc/herd/files/motd", Content: "hello\n", Mode: 0o644}},
			sysctl: map[string]string{"vm.max_map_count": "262144"}}))
		setAnnotations(b, cs, name, map[string]any{schema.AnnotationDesiredConfig: h1, schema.AnnotationDesiredOS: v1})

		cmd := exec.Command(agent, "--kubeconfig", c.KubeconfigPath(), "--node", name,
			"--root", root, "--sysroot", s.Path, "--osname", osfixture.DefaultOSName,
			"--state-dir", filepath.Join(root, "var/lib/herd"), "--os-trust", trust, "--metrics-addr", "127.0.0.1:0")
		cmd.Args = append(cmd.Args, strings.Fields(os.Getenv("HERD_AGENT_ARGS"))...)
		cmd.Env = append(append(os.Environ(), osfixture.Env...), bus.Env())
		var logs strings.Builder
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		pid := cmd.Process.Pid
		rebooted := make(chan struct{}, 1)
		bus.Track(pid, hostbus.Machine{Reboot: func() {
			select {
			case rebooted <- struct{}{}:
			default:
			}
		}})
		stopChild := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
			bus.Close()
		}
		if !poll(b, 60*time.Second, func() bool {
			n, err := cs.CoreV1().Nodes().Get(b.Context(), name, metav1.GetOptions{})
			return err == nil && n.Annotations[schema.AnnotationState] == "Idle" && n.Annotations[schema.AnnotationCurrentConfig] == h1
		}) {
			stopChild()
			b.Fatalf("the agent never reached Idle; its log:\n%s", logs.String())
		}
		// The agent settles (GC after the apply), then idles.
		settle := time.NewTimer(2 * time.Second)
		<-settle.C
		cpu0, t0 := cpuTicks(b, pid), time.Now()
		wait := time.NewTimer(idle)
		<-wait.C
		cpu1, el := cpuTicks(b, pid), time.Since(t0)
		rss := procStatusMiB(b, pid, "VmRSS")
		anon := procStatusMiB(b, pid, "RssAnon")

		// A change of OS, files and sysctls, up to the reboot request.
		h2 := publishRender(b, cs, render(b, repo, spec{commit: v2, maxPods: 64,
			files:  []schema.File{{Path: "/etc/herd/files/motd", Content: "hello again\n", Mode: 0o644}},
			sysctl: map[string]string{"vm.max_map_count": "524288", "net.core.somaxconn": "8192"}}))
		peak := 0.0
		sample := time.NewTicker(5 * time.Millisecond)
		start := time.Now()
		setAnnotations(b, cs, name, map[string]any{schema.AnnotationDesiredConfig: h2, schema.AnnotationDesiredOS: v2})
		deadline := time.NewTimer(60 * time.Second)
	apply:
		for {
			select {
			case <-rebooted:
				break apply
			case <-sample.C:
				peak = max(peak, procStatusMiB(b, pid, "VmRSS"))
			case <-deadline.C:
				stopChild()
				b.Fatalf("no reboot requested for the change; the agent's log:\n%s", logs.String())
			}
		}
		took := time.Since(start)
		sample.Stop()
		peak = max(peak, procStatusMiB(b, pid, "VmRSS"))
		hwm := procStatusMiB(b, pid, "VmHWM")
		stopChild()
		cpuPct := 100 * float64(cpu1-cpu0) / 100 / el.Seconds() // USER_HZ = 100
		b.ReportMetric(rss, "idle-rss-MiB")
		b.ReportMetric(anon, "idle-anon-MiB")
		b.ReportMetric(peak, "apply-rss-MiB")
		b.ReportMetric(hwm, "peak-rss-MiB")
		b.ReportMetric(cpuPct, "idle-cpu-%")
		b.Logf("agent pid %d: idle %v: CPU %d ms (%.3f%%), RSS %.1f MiB (%.1f anonymous); change applied to the reboot request in %v, RSS up to %.1f MiB sampled, %.1f MiB peak (VmHWM)",
			pid, el.Round(time.Second), (cpu1-cpu0)*10, cpuPct, rss, anon, took.Round(time.Millisecond), peak, hwm)
	}
}

func writeFile(tb testing.TB, p, content string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		tb.Fatal(err)
	}
}

func createNode(tb testing.TB, cs kubernetes.Interface, name string) {
	tb.Helper()
	_, err := cs.CoreV1().Nodes().Create(tb.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}
