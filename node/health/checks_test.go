package health

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"herd.dev/herd/node/cri"
	"herd.dev/herd/schema"
)

var t0 = time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)

// verdict is what a table test compares: status and reason.
type verdict struct {
	Status corev1.ConditionStatus
	Reason schema.HealthReason
}

func verdictOf(r Result) verdict { return verdict{r.Status, r.Reason} }

var (
	T = corev1.ConditionTrue
	F = corev1.ConditionFalse
	U = corev1.ConditionUnknown
)

func TestLeaseResult(t *testing.T) {
	sec := func(n int32) *int32 { return &n }
	at := func(d time.Duration) *metav1.MicroTime { m := metav1.NewMicroTime(t0.Add(-d)); return &m }
	for _, tc := range []struct {
		name string
		spec coordinationv1.LeaseSpec
		want verdict
	}{
		{"fresh", coordinationv1.LeaseSpec{RenewTime: at(5 * time.Second), LeaseDurationSeconds: sec(40)}, verdict{F, schema.ReasonKubeletHealthy}},
		{"at the duration", coordinationv1.LeaseSpec{RenewTime: at(40 * time.Second), LeaseDurationSeconds: sec(40)}, verdict{F, schema.ReasonKubeletHealthy}},
		{"expired", coordinationv1.LeaseSpec{RenewTime: at(41 * time.Second), LeaseDurationSeconds: sec(40)}, verdict{T, schema.ReasonKubeletLeaseExpired}},
		{"longer lease", coordinationv1.LeaseSpec{RenewTime: at(50 * time.Second), LeaseDurationSeconds: sec(60)}, verdict{F, schema.ReasonKubeletHealthy}},
		{"no duration: kubelet's 40s", coordinationv1.LeaseSpec{RenewTime: at(45 * time.Second)}, verdict{T, schema.ReasonKubeletLeaseExpired}},
		{"never renewed", coordinationv1.LeaseSpec{}, verdict{T, schema.ReasonKubeletLeaseExpired}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := leaseResult(&coordinationv1.Lease{Spec: tc.spec}, t0)
			if d := cmp.Diff(tc.want, verdictOf(got)); d != "" {
				t.Errorf("(-want +got):\n%s\nmessage: %s", d, got.Message)
			}
		})
	}
}

func TestPLEGResult(t *testing.T) {
	ready := func(s corev1.ConditionStatus, msg string) *corev1.NodeCondition {
		return &corev1.NodeCondition{Type: corev1.NodeReady, Status: s, Message: msg}
	}
	const plegMsg = "container runtime is down, PLEG is not healthy: pleg was last seen active 3m5s ago; threshold is 3m0s"
	for _, tc := range []struct {
		name     string
		ready    *corev1.NodeCondition
		lastSeen time.Time
		metric   bool
		want     verdict
	}{
		{"ready, no metrics", ready(T, "kubelet is posting ready status"), time.Time{}, false, verdict{F, schema.ReasonPLEGHealthy}},
		{"kubelet says PLEG", ready(F, plegMsg), time.Time{}, false, verdict{T, schema.ReasonPLEGNotHealthy}},
		{"not ready for another reason", ready(F, "container runtime network not ready"), time.Time{}, false, verdict{F, schema.ReasonPLEGHealthy}},
		{"ready with a stale message", ready(T, plegMsg), time.Time{}, false, verdict{F, schema.ReasonPLEGHealthy}},
		{"metric fresh", ready(T, ""), t0.Add(-time.Second), true, verdict{F, schema.ReasonPLEGHealthy}},
		{"metric stalled", ready(T, ""), t0.Add(-4 * time.Minute), true, verdict{T, schema.ReasonPLEGRelistStalled}},
		{"metric stalled, no Node", nil, t0.Add(-4 * time.Minute), true, verdict{T, schema.ReasonPLEGRelistStalled}},
		{"nothing to read", nil, time.Time{}, false, verdict{U, schema.ReasonPLEGUnknown}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := plegResult(tc.ready, tc.lastSeen, tc.metric, t0, DefaultPLEGThreshold)
			if d := cmp.Diff(tc.want, verdictOf(got)); d != "" {
				t.Errorf("(-want +got):\n%s\nmessage: %s", d, got.Message)
			}
		})
	}
}

func TestPLEGLastSeen(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       time.Time
		found      bool
	}{
		{"plain", "# HELP x\nkubelet_pleg_last_seen_seconds 1.7645e+09\n", time.Unix(1764500000, 0), true},
		{"labels and fraction", "kubelet_pleg_relist_duration_seconds_sum 3\nkubelet_pleg_last_seen_seconds{a=\"b c\"} 1764500000.5\n", time.Unix(1764500000, 5e8), true},
		{"prefix of another metric", "kubelet_pleg_last_seen_seconds_total 5\n", time.Time{}, false},
		{"absent", "up 1\n", time.Time{}, false},
		{"garbage value", "kubelet_pleg_last_seen_seconds NaNx\n", time.Time{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, found := PLEGLastSeen(strings.NewReader(tc.text))
			if found != tc.found || !got.Equal(tc.want) {
				t.Errorf("got %v %v, want %v %v", got, found, tc.want, tc.found)
			}
		})
	}
}

func TestRuntimeResult(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   cri.Status
		err  error
		want verdict
	}{
		{"ready", cri.Status{RuntimeReady: true, NetworkReady: true}, nil, verdict{F, schema.ReasonRuntimeHealthy}},
		{"unreachable", cri.Status{}, errors.New("connection refused"), verdict{T, schema.ReasonRuntimeUnreachable}},
		{"runtime not ready", cri.Status{NetworkReady: true}, nil, verdict{T, schema.ReasonRuntimeNotReady}},
		{"network not ready", cri.Status{RuntimeReady: true, Reason: "NetworkPluginNotReady"}, nil, verdict{T, schema.ReasonRuntimeNetworkDown}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := cmp.Diff(tc.want, verdictOf(runtimeResult(tc.st, tc.err, t0))); d != "" {
				t.Errorf("(-want +got):\n%s", d)
			}
		})
	}
}

func TestLeftoverSandboxes(t *testing.T) {
	sb := func(id, uid string, age time.Duration) cri.Sandbox {
		return cri.Sandbox{ID: id, PodUID: uid, CreatedAt: t0.Add(-age)}
	}
	all := []cri.Sandbox{
		sb("bound-old", "u1", time.Hour),
		sb("gone-old", "u2", time.Hour),
		sb("gone-young", "u3", time.Minute),
		sb("gone-at-grace", "u4", 10*time.Minute),
		sb("not-kubelets", "", time.Hour),
	}
	got := LeftoverSandboxes(all, map[string]bool{"u1": true}, t0, 10*time.Minute)
	var ids []string
	for _, s := range got {
		ids = append(ids, s.ID)
	}
	if d := cmp.Diff([]string{"gone-old"}, ids); d != "" {
		t.Errorf("leftovers (-want +got):\n%s", d)
	}
}

func TestDiskResult(t *testing.T) {
	u := func(path string, freePct, freeInodePct uint64) FSUsage {
		return FSUsage{Path: path, Bytes: 1000, BytesFree: freePct * 10, Inodes: 100, InodesFree: freeInodePct}
	}
	for _, tc := range []struct {
		name   string
		usages []FSUsage
		errs   []string
		want   verdict
	}{
		{"plenty", []FSUsage{u("/a", 50, 50), u("/b", 30, 90)}, nil, verdict{F, schema.ReasonDiskOK}},
		{"space low on one", []FSUsage{u("/a", 50, 50), u("/b", 9, 90)}, nil, verdict{T, schema.ReasonDiskSpaceLow}},
		{"at the threshold", []FSUsage{u("/a", 10, 5)}, nil, verdict{F, schema.ReasonDiskOK}},
		{"inodes low", []FSUsage{u("/a", 50, 4)}, nil, verdict{T, schema.ReasonDiskInodesLow}},
		{"no inode limit", []FSUsage{{Path: "/btrfs", Bytes: 100, BytesFree: 50}}, nil, verdict{F, schema.ReasonDiskOK}},
		{"unreadable", []FSUsage{u("/a", 50, 50)}, []string{"statfs /b: no such file"}, verdict{U, schema.ReasonDiskUnreadable}},
		{"low beats unreadable", []FSUsage{u("/a", 1, 50)}, []string{"statfs /b: no such file"}, verdict{T, schema.ReasonDiskSpaceLow}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := diskResult(tc.usages, tc.errs, DefaultMinFreePercent, DefaultMinFreeInodesPercent, t0)
			if d := cmp.Diff(tc.want, verdictOf(got)); d != "" {
				t.Errorf("(-want +got):\n%s\nmessage: %s", d, got.Message)
			}
		})
	}
}

func TestParsePSI(t *testing.T) {
	got, err := ParsePSI([]byte("some avg10=1.50 avg60=2.25 avg300=0.00 total=12345\nfull avg10=0.50 avg60=21.00 avg300=3.00 total=678\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := PSI{Some: PSILine{1.5, 2.25, 0, 12345}, Full: PSILine{0.5, 21, 3, 678}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
	if v := memoryResult(got, nil, DefaultFullAvg60Max, t0); verdictOf(v) != (verdict{T, schema.ReasonMemoryStalled}) {
		t.Errorf("full avg60 21 over 20: %+v", v)
	}
	if v := memoryResult(PSI{}, nil, DefaultFullAvg60Max, t0); verdictOf(v) != (verdict{F, schema.ReasonMemoryOK}) {
		t.Errorf("no pressure: %+v", v)
	}
	for _, bad := range []string{"", "half avg10=1", "some avg10=x", "some avg10"} {
		if _, err := ParsePSI([]byte(bad)); err == nil {
			t.Errorf("ParsePSI(%q): no error", bad)
		}
	}
}

func TestOSDriftResult(t *testing.T) {
	const a, b = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
	ann := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	const (
		desired    = schema.AnnotationDesiredOS
		booted     = schema.AnnotationOSBooted
		state      = schema.AnnotationState
		dispatched = schema.AnnotationDispatched
		atTarget   = schema.AnnotationAtTarget
	)
	for _, tc := range []struct {
		name string
		a    map[string]string
		want verdict
	}{
		{"no desired", ann(booted, a), verdict{F, schema.ReasonOSNoDesired}},
		{"booted unknown", ann(desired, a), verdict{U, schema.ReasonOSUnknown}},
		{"at desired", ann(desired, a, booted, a, state, "Idle"), verdict{F, schema.ReasonOSAtDesired}},
		{"agent working", ann(desired, b, booted, a, state, "Working"), verdict{F, schema.ReasonOSInRollout}},
		{"agent rebooting", ann(desired, b, booted, a, state, "Rebooting"), verdict{F, schema.ReasonOSInRollout}},
		{"dispatched, not yet at target", ann(desired, b, booted, a, state, "Degraded", dispatched, "2026-11-30T11:00:00Z"), verdict{F, schema.ReasonOSInRollout}},
		{"was at target, now boots another", ann(desired, b, booted, a, state, "Idle", dispatched, "2026-11-30T11:00:00Z", atTarget, "2026-11-30T11:10:00Z"), verdict{T, schema.ReasonOSDrifted}},
		{"degraded after a fallback boot", ann(desired, b, booted, a, state, "Degraded", dispatched, "2026-11-30T11:00:00Z", atTarget, "2026-11-30T11:10:00Z"), verdict{T, schema.ReasonOSDrifted}},
		{"never dispatched", ann(desired, b, booted, a, state, "Idle"), verdict{T, schema.ReasonOSDrifted}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := OSDriftResult(tc.a, t0)
			if d := cmp.Diff(tc.want, verdictOf(got)); d != "" {
				t.Errorf("(-want +got):\n%s\nmessage: %s", d, got.Message)
			}
		})
	}
}

func TestConditionsKeepTransitions(t *testing.T) {
	old := metav1.NewTime(t0.Add(-time.Hour))
	existing := []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: T},
		{Type: "HerdDiskPressure", Status: F, Reason: "DiskOK", LastTransitionTime: old, LastHeartbeatTime: old},
		{Type: "HerdMemoryPressure", Status: F, Reason: "MemoryOK", LastTransitionTime: old, LastHeartbeatTime: old},
	}
	results := []Result{
		{Type: schema.ConditionDiskPressure, Status: F, Reason: schema.ReasonDiskOK, Message: "fine"},
		{Type: schema.ConditionMemoryPressure, Status: T, Reason: schema.ReasonMemoryStalled},
		{Type: schema.ConditionOSDrift, Status: F, Reason: schema.ReasonOSAtDesired},
	}
	got := Conditions(existing, results, t0)
	now := metav1.NewTime(t0)
	want := []corev1.NodeCondition{
		{Type: "HerdDiskPressure", Status: F, Reason: "DiskOK", Message: "fine", LastHeartbeatTime: now, LastTransitionTime: old},
		{Type: "HerdMemoryPressure", Status: T, Reason: "MemoryStalled", LastHeartbeatTime: now, LastTransitionTime: now},
		{Type: "HerdOSDrift", Status: F, Reason: "OSAtDesired", LastHeartbeatTime: now, LastTransitionTime: now},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got):\n%s", d)
	}
}

func TestNeedsPublish(t *testing.T) {
	beat := func(d time.Duration) metav1.Time { return metav1.NewTime(t0.Add(-d)) }
	existing := []corev1.NodeCondition{{Type: "HerdDiskPressure", Status: F, Reason: "DiskOK", Message: "40% free", LastHeartbeatTime: beat(30 * time.Second)}}
	same := []Result{{Type: schema.ConditionDiskPressure, Status: F, Reason: schema.ReasonDiskOK, Message: "39% free"}}
	for _, tc := range []struct {
		name     string
		existing []corev1.NodeCondition
		results  []Result
		want     bool
	}{
		{"only the message changed", existing, same, false},
		{"missing", nil, same, true},
		{"status changed", existing, []Result{{Type: schema.ConditionDiskPressure, Status: T, Reason: schema.ReasonDiskSpaceLow}}, true},
		{"reason changed", existing, []Result{{Type: schema.ConditionDiskPressure, Status: F, Reason: "Other"}}, true},
		{"heartbeat due", []corev1.NodeCondition{{Type: "HerdDiskPressure", Status: F, Reason: "DiskOK", LastHeartbeatTime: beat(time.Minute)}}, same, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NeedsPublish(tc.existing, tc.results, t0, time.Minute); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestStale(t *testing.T) {
	for _, tc := range []struct {
		age  time.Duration
		want bool
	}{{0, false}, {3 * time.Minute, false}, {3*time.Minute + time.Second, true}} {
		c := corev1.NodeCondition{LastHeartbeatTime: metav1.NewTime(t0.Add(-tc.age))}
		if got := Stale(c, t0, time.Minute); got != tc.want {
			t.Errorf("heartbeat %s old: stale %v, want %v", tc.age, got, tc.want)
		}
	}
	if !Stale(corev1.NodeCondition{}, t0, 0) {
		t.Error("a condition without a heartbeat is not stale")
	}
}
