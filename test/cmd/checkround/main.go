// Command checkround measures what the agent's health checks cost on a
// node: it runs rounds of them against a real containerd and prints the CPU
// time per round and the process's RSS.
//
// It starts containerd (test/containerd, as root) with sandboxes, then runs
// the checks that read the node itself (runtime, sandboxes, disk, memory,
// OS drift, kubelet /healthz on a local server); the checks that read the
// API (Lease, pods) are measured by node/health's BenchmarkRound. Build it
// as the agent is built (CGO_ENABLED=0 -tags grpcnotrace), see
// docs/benchmarks.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/node/health"
	"herd.dev/herd/test/containerd"
)

func main() {
	rounds := flag.Int("rounds", 100, "rounds of checks")
	interval := flag.Duration("interval", 0, "pause between rounds (the agent's is 10s)")
	sandboxes := flag.Int("sandboxes", 10, "pod sandboxes in containerd")
	flag.Parse()
	if err := run(*rounds, *interval, *sandboxes); err != nil {
		fmt.Fprintln(os.Stderr, "checkround:", err)
		os.Exit(1)
	}
}

func run(rounds int, interval time.Duration, sandboxes int) error {
	ctx := context.Background()
	ctd, err := containerd.Start(ctx, containerd.Options{CNI: true})
	if err != nil {
		return err
	}
	defer ctd.Stop()
	uids := map[string]bool{}
	for i := range sandboxes {
		uid := fmt.Sprintf("uid-%d", i)
		uids[uid] = true
		if _, err := ctd.RunSandbox(ctx, containerd.Pod{Name: fmt.Sprintf("pod-%d", i), Namespace: "default", UID: uid}); err != nil {
			return err
		}
	}
	c, err := cri.New(ctd.Socket())
	if err != nil {
		return err
	}
	defer c.Close()
	healthz, err := serveHealthz()
	if err != nil {
		return err
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	self := func(context.Context) (*corev1.Node, error) { return node, nil }
	checks := []health.Check{
		&health.Kubelet{HealthzURL: healthz},
		&health.PLEG{Node: self},
		&health.Runtime{CRI: c},
		&health.Sandboxes{CRI: c, Pods: func(context.Context) (map[string]bool, error) { return uids, nil }},
		&health.Disk{Paths: []string{"/", ctd.Root()}},
		&health.Memory{},
		&health.OSDrift{Node: self},
	}
	health.Round(ctx, checks, time.Now(), 0) // warm up: connections made
	before := cpu()
	for range rounds {
		for _, r := range health.Round(ctx, checks, time.Now(), 0) {
			if r.Status == corev1.ConditionUnknown {
				return fmt.Errorf("%s: %s: %s", r.Type, r.Reason, r.Message)
			}
		}
		time.Sleep(interval)
	}
	per := (cpu() - before) / time.Duration(rounds)
	fmt.Printf("rounds %d, CPU per round %s, %.4f%% of a core at a 10s interval\n", rounds, per, 100*per.Seconds()/10)
	fmt.Println(memory())
	return nil
}

// serveHealthz answers /healthz with "ok" on a loopback port.
func serveHealthz() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") }))
	return "http://" + l.Addr().String() + "/healthz", nil
}

func cpu() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// memory is the VmRSS and VmHWM lines of /proc/self/status.
func memory() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS") || strings.HasPrefix(line, "VmHWM") {
			out = append(out, strings.Join(strings.Fields(line), " "))
		}
	}
	return strings.Join(out, ", ")
}
