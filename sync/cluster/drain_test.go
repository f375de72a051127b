package cluster

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/schema"
)

// TestJudge runs kubectl drain's filters on each kind of pod under each
// policy flag that matters to it.
func TestJudge(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	yes := true
	owned := func(kind string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			api := "apps/v1"
			p.OwnerReferences = []metav1.OwnerReference{{APIVersion: api, Kind: kind, Name: "owner", Controller: &yes}}
		}
	}
	emptyDir := func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
	}
	phase := func(ph corev1.PodPhase) func(*corev1.Pod) { return func(p *corev1.Pod) { p.Status.Phase = ph } }
	mirror := func(p *corev1.Pod) {
		p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "hash"}
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: "n", Controller: &yes}}
	}
	deleted := func(ago time.Duration) func(*corev1.Pod) {
		return func(p *corev1.Pod) { ts := metav1.NewTime(now.Add(-ago)); p.DeletionTimestamp = &ts }
	}
	pod := func(edits ...func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}, Status: corev1.PodStatus{Phase: corev1.PodRunning}}
		for _, e := range edits {
			e(p)
		}
		return p
	}
	def := DrainPolicy{Timeout: time.Minute, IgnoreDaemonSets: true}
	all := DrainPolicy{Timeout: time.Minute, IgnoreDaemonSets: true, Force: true, DeleteEmptyDirData: true}
	tests := []struct {
		name   string
		pod    *corev1.Pod
		policy DrainPolicy
		dsGone string
		want   verdict
	}{
		{"ReplicaSet pod", pod(owned("ReplicaSet")), def, "", verdict{}},
		{"DaemonSet pod, ignored", pod(owned("DaemonSet")), def, "", verdict{PodSkipped, ReasonDaemonSet, ""}},
		{"DaemonSet pod, not ignored", pod(owned("DaemonSet")), DrainPolicy{}, "", verdict{PodBlocked, ReasonDaemonSet, ""}},
		{"finished DaemonSet pod", pod(owned("DaemonSet"), phase(corev1.PodSucceeded)), DrainPolicy{}, "", verdict{"", ReasonCompleted, ""}},
		{"orphaned DaemonSet pod", pod(owned("DaemonSet")), def, "gone", verdict{PodBlocked, ReasonOrphanedDaemonSet, "gone"}},
		{"orphaned DaemonSet pod, force", pod(owned("DaemonSet")), all, "gone", verdict{"", ReasonOrphanedDaemonSet, "gone"}},
		{"mirror pod", pod(mirror), def, "", verdict{PodSkipped, ReasonMirror, ""}},
		{"finished mirror pod", pod(mirror, phase(corev1.PodFailed)), def, "", verdict{PodSkipped, ReasonMirror, ""}},
		{"bare pod", pod(), def, "", verdict{PodBlocked, ReasonUnmanaged, ""}},
		{"bare pod, force", pod(), all, "", verdict{"", ReasonUnmanaged, ""}},
		{"emptyDir pod", pod(owned("ReplicaSet"), emptyDir), def, "", verdict{PodBlocked, ReasonEmptyDir, ""}},
		{"emptyDir pod, deleteEmptyDirData", pod(owned("ReplicaSet"), emptyDir), all, "", verdict{"", ReasonEmptyDir, ""}},
		{"bare emptyDir pod: emptyDir first", pod(emptyDir), DrainPolicy{Force: true, IgnoreDaemonSets: true}, "", verdict{PodBlocked, ReasonEmptyDir, ""}},
		{"bare emptyDir pod, deleteEmptyDirData only", pod(emptyDir), DrainPolicy{DeleteEmptyDirData: true, IgnoreDaemonSets: true}, "", verdict{PodBlocked, ReasonUnmanaged, ""}},
		{"completed bare pod", pod(phase(corev1.PodSucceeded)), def, "", verdict{"", ReasonCompleted, ""}},
		{"failed emptyDir pod", pod(phase(corev1.PodFailed), emptyDir), def, "", verdict{"", ReasonCompleted, ""}},
		{"terminating pod", pod(owned("ReplicaSet"), deleted(time.Hour)), def, "", verdict{}},
		{"terminating pod past skipWaitForDeleteTimeout", pod(deleted(time.Hour)), DrainPolicy{SkipWaitForDeleteTimeout: time.Minute}, "", verdict{PodSkipped, ReasonStuckTerminating, "its grace period ended at 2026-05-01T11:00:00Z"}},
		{"terminating pod within skipWaitForDeleteTimeout", pod(owned("ReplicaSet"), deleted(time.Second)), DrainPolicy{SkipWaitForDeleteTimeout: time.Minute}, "", verdict{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := judge(tt.pod, tt.policy, tt.dsGone, now)
			if got != tt.want {
				t.Errorf("judge = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDrainPolicyFor(t *testing.T) {
	p, err := DrainPolicyFor(schema.Drain{
		Timeout: "90s", GracePeriod: "30s", SkipWaitForDeleteTimeout: "2m", Force: true, DisableEviction: true,
		PodSelector: &schema.LabelSelector{
			MatchLabels:      map[string]string{"tier": "web"},
			MatchExpressions: []schema.LabelSelectorRequirement{{Key: "app", Operator: "NotIn", Values: []string{"db"}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Timeout != 90*time.Second || *p.GracePeriod != 30 || p.SkipWaitForDeleteTimeout != 2*time.Minute || !p.Force || !p.DisableEviction || p.IgnoreDaemonSets {
		t.Errorf("policy: %+v", p)
	}
	if got, want := p.PodSelector.String(), "app notin (db),tier=web"; got != want {
		t.Errorf("pod selector %q, want %q", got, want)
	}
	for _, bad := range []schema.Drain{{Timeout: "0s"}, {Timeout: "1m", GracePeriod: "-1s"}, {Timeout: "1m", PodSelector: &schema.LabelSelector{MatchExpressions: []schema.LabelSelectorRequirement{{Key: "a", Operator: "In"}}}}} {
		if _, err := DrainPolicyFor(bad); err == nil {
			t.Errorf("DrainPolicyFor(%+v) did not fail", bad)
		}
	}
}

func TestDrainResultString(t *testing.T) {
	r := DrainResult{State: TimedOut, Pods: []PodResult{
		{Pod: "a/ds", Outcome: PodSkipped, Reason: ReasonDaemonSet},
		{Pod: "a/db", Outcome: PodBlocked, Reason: ReasonDisruptionBudget, Message: "The disruption budget db needs 1 healthy pods and has 1 currently"},
		{Pod: "a/two", Outcome: PodBlocked, Reason: ReasonEvictionError, Message: "This pod has more than one PodDisruptionBudget"},
		{Pod: "a/web", Outcome: PodTerminating},
	}}
	want := "blocked by a/db (DisruptionBudget: The disruption budget db needs 1 healthy pods and has 1 currently), a/two (EvictionError: This pod has more than one PodDisruptionBudget); waiting for a/web"
	if diff := cmp.Diff(want, r.String()); diff != "" {
		t.Errorf("String (-want +got):\n%s", diff)
	}
	refused := DrainResult{State: Refused, Pods: []PodResult{{Pod: "a/bare", Outcome: PodBlocked, Reason: ReasonUnmanaged}, {Pod: "a/web", Outcome: PodHeld}}}
	if got := refused.String(); got != "refused: blocked by a/bare (Unmanaged)" {
		t.Errorf("String = %q", got)
	}
	if !refused.Blocked() || refused.Done() || (DrainResult{State: Draining}).Blocked() {
		t.Errorf("Blocked/Done wrong")
	}
}
