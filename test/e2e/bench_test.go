package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/test/story"
)

// BenchmarkRollout100 rolls a new OS out to 100 simulated nodes with
// maxUnavailable 10, a fixed 2 s reboot and the pool's soak, and reports
// the wall time over the ideal: ⌈100/10⌉ batches × (the time one node
// takes, from its dispatch to its being back at work (the median over the
// nodes), + the soak, which a batch must pass before the next starts), as
// docs/benchmarks.md defines it. The nodes run herd-agent processes, or
// (agents=in-process) agents inside the simulator, for comparison:
//
//	go test ./test/e2e -run '^$' -bench Rollout100 -benchtime 1x -timeout 30m
func BenchmarkRollout100(b *testing.B) {
	b.Run("agents=processes", func(b *testing.B) { rollout100(b, agentBinary(b)) })
	b.Run("agents=in-process", func(b *testing.B) { rollout100(b, "") })
}

func rollout100(b *testing.B, agent string) {
	const nodes, maxUnavailable = 100, 10
	s, err := story.Start(b.Context(), story.Options{
		Dir:         b.TempDir(),
		Pools:       map[string]int{"general": nodes},
		RebootDelay: 2 * time.Second,
		AgentBinary: agent,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Stop()
	edit := func(old, new string) {
		p := filepath.Join(s.Work, "pools", "general.cue")
		src, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(src), old) {
			b.Fatalf("pools/general.cue has no %q", old)
		}
		if err := os.WriteFile(p, []byte(strings.Replace(string(src), old, new, 1)), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	run := func(args ...string) {
		if _, err := s.Git(args...); err != nil {
			b.Fatal(err)
		}
	}
	edit(`maxUnavailable: "25%"`, `maxUnavailable: 10`)
	edit(`canary:         1`, ``)
	run("commit", "-qam", "general: 10 at a time")
	run("push", "-q", "origin", "main")
	if err := s.WaitUpToDate(b.Context(), 10*time.Minute); err != nil {
		b.Fatal(err)
	}
	var np herdpool.HerdPool
	if err := s.Client.Get(b.Context(), client.ObjectKey{Name: "general"}, &np); err != nil {
		b.Fatal(err)
	}
	soak := np.Spec.Rollout.SoakDuration()

	for b.Loop() {
		times := watchNodeTimes(b, s)
		edit(`os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
		run("commit", "-qam", "general: 2026.11.0")
		start := time.Now()
		run("push", "-q", "origin", "main")
		if err := s.WaitUpToDate(b.Context(), 20*time.Minute); err != nil {
			b.Fatal(err)
		}
		total := time.Since(start)
		perNode := times.median()
		ideal := time.Duration((nodes+maxUnavailable-1)/maxUnavailable) * (perNode + soak)
		b.ReportMetric(total.Seconds(), "s/rollout")
		b.ReportMetric(perNode.Seconds(), "s/node")
		b.ReportMetric(soak.Seconds(), "s/soak")
		b.ReportMetric(total.Seconds()/ideal.Seconds(), "wall/ideal")
	}
}

// nodeTimes records, per node, when it was dispatched and when it was back
// at work (Ready, Idle, schedulable, at a new config).
type nodeTimes struct {
	mu         sync.Mutex
	dispatched map[string]time.Time
	done       map[string]time.Time
}

func watchNodeTimes(b *testing.B, s *story.Story) *nodeTimes {
	cs := kubernetes.NewForConfigOrDie(s.CP.Config())
	w, err := cs.CoreV1().Nodes().Watch(b.Context(), metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	nt := &nodeTimes{dispatched: map[string]time.Time{}, done: map[string]time.Time{}}
	start := map[string]string{} // node → desired-config at the start
	go func() {
		for ev := range w.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if !ok {
				continue
			}
			a := n.Annotations
			now := time.Now()
			nt.mu.Lock()
			if _, seen := start[n.Name]; !seen {
				start[n.Name] = a[schema.AnnotationDesiredConfig]
			}
			if a[schema.AnnotationDesiredConfig] != start[n.Name] {
				if _, ok := nt.dispatched[n.Name]; !ok {
					nt.dispatched[n.Name] = now
				}
				if _, ok := nt.done[n.Name]; !ok && a[schema.AnnotationCurrentConfig] == a[schema.AnnotationDesiredConfig] &&
					cluster.IsReady(n) && !n.Spec.Unschedulable && a[schema.AnnotationState] == string(schema.StateIdle) {
					nt.done[n.Name] = now
				}
			}
			nt.mu.Unlock()
		}
	}()
	b.Cleanup(w.Stop)
	return nt
}

func (nt *nodeTimes) median() time.Duration {
	nt.mu.Lock()
	defer nt.mu.Unlock()
	var d []time.Duration
	for n, t := range nt.done {
		d = append(d, t.Sub(nt.dispatched[n]))
	}
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[len(d)/2]
}
