package schema

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Fleet is an evaluated fleet repo: its pools and OSTree remotes.
type Fleet struct {
	Remotes     map[string]Remote   `json:"remotes,omitempty"`
	Pools       map[string]NodePool `json:"pools"`
	Maintenance *Maintenance        `json:"maintenance,omitempty"`
}

// Maintenance holds fleet-wide rollout settings.
type Maintenance struct {
	Windows []Window `json:"windows,omitempty"`
	Freeze  bool     `json:"freeze"`
}

// Window is a weekly maintenance window.
type Window struct {
	Days     []string `json:"days"`
	Start    string   `json:"start"`
	End      string   `json:"end"`
	TimeZone string   `json:"timeZone"`
}

// Remote is an OSTree remote nodes pull from.
type Remote struct {
	URL       string `json:"url"`
	GPGVerify bool   `json:"gpgVerify"`
}

// NodePool mirrors #NodePool in nodepool.cue. A test keeps the two in step.
type NodePool struct {
	Selector Selector `json:"selector"`
	// Labels are the pool's own labels (shards select pools by them);
	// they change no node.
	Labels     map[string]string `json:"labels,omitempty"`
	OS         OSTarget          `json:"os"`
	KernelArgs []string          `json:"kernelArgs,omitempty"`
	Kubelet    *Kubelet          `json:"kubelet,omitempty"`
	Containerd *Containerd       `json:"containerd,omitempty"`
	Sysctl     map[string]string `json:"sysctl,omitempty"`
	Files      []File            `json:"files,omitempty"`
	Paused     bool              `json:"paused"`
	Rollout    Rollout           `json:"rollout"`
	// Remediation repairs the pool's sick nodes; nil: Herd only reports.
	Remediation *Remediation `json:"remediation,omitempty"`
}

// Selector picks nodes by label.
type Selector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

// Matches reports whether labels carry every label of the selector.
func (s Selector) Matches(labels map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// String renders the selector as kubectl does: "k1=v1,k2=v2", sorted.
func (s Selector) String() string {
	parts := make([]string, 0, len(s.MatchLabels))
	for k, v := range s.MatchLabels {
		parts = append(parts, k+"="+v)
	}
	sortStrings(parts)
	return strings.Join(parts, ",")
}

// OSTarget is the OSTree commit a pool boots.
type OSTarget struct {
	Remote string `json:"remote,omitempty"`
	Ref    string `json:"ref"`
	Commit string `json:"commit"`
}

// Rollout is how a change reaches a pool's nodes.
type Rollout struct {
	MaxUnavailable IntOrPercent `json:"maxUnavailable"`
	Canary         int          `json:"canary,omitempty"`
	Soak           string       `json:"soak,omitempty"`
	FailurePolicy  string       `json:"failurePolicy"`
	MaxFailures    int          `json:"maxFailures"`
	NodeTimeout    string       `json:"nodeTimeout"`
	HealthChecks   *HealthCheck `json:"healthChecks,omitempty"`
	Quarantine     *Quarantine  `json:"quarantine,omitempty"`
	Windows        []Window     `json:"windows,omitempty"`
	Resume         string       `json:"resume,omitempty"`
	Prestage       int          `json:"prestage"`
	Drain          Drain        `json:"drain"`
}

// HealthCheck is what must hold for a node to count as done.
type HealthCheck struct {
	CEL        string           `json:"cel,omitempty"`
	Prometheus *PrometheusCheck `json:"prometheus,omitempty"`
}

// PrometheusCheck is a query that must return non-zero samples.
type PrometheusCheck struct {
	URL   string `json:"url"`
	Query string `json:"query"`
}

// Quarantine takes nodes that fail repeatedly out of rollouts.
type Quarantine struct {
	After int `json:"after"`
}

// SoakDuration returns rollout.soak as a duration (0 when unset).
func (r Rollout) SoakDuration() time.Duration {
	d, _ := time.ParseDuration(r.Soak)
	return max(d, 0)
}

// NodeTimeoutDuration returns rollout.nodeTimeout as a duration.
func (r Rollout) NodeTimeoutDuration() time.Duration {
	d, err := time.ParseDuration(r.NodeTimeout)
	if err != nil || d <= 0 {
		return 30 * time.Minute
	}
	return d
}

// Drain is how a node is emptied before a reboot, in kubectl drain's terms.
// Its defaults lose nothing: a pod without a controller or with emptyDir
// data keeps its node from draining until the pool says it may go.
type Drain struct {
	Timeout                  string         `json:"timeout"`
	DeleteEmptyDirData       bool           `json:"deleteEmptyDirData"`
	Force                    bool           `json:"force"`
	DisableEviction          bool           `json:"disableEviction"`
	IgnoreDaemonSets         bool           `json:"ignoreDaemonSets"`
	PodSelector              *LabelSelector `json:"podSelector,omitempty"`
	GracePeriod              string         `json:"gracePeriod,omitempty"`
	SkipWaitForDeleteTimeout string         `json:"skipWaitForDeleteTimeout,omitempty"`
}

// LabelSelector selects objects by label, as metav1.LabelSelector does.
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is one expression of a LabelSelector.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Failure policies.
const (
	FailurePolicyHalt     = "halt"
	FailurePolicyRollback = "rollback"
)

// Kubelet is the typed subset of KubeletConfiguration (kubelet.config.k8s.io/v1beta1)
// that a pool may set.
type Kubelet struct {
	MaxPods                         *int              `json:"maxPods,omitempty"`
	PodPidsLimit                    *int64            `json:"podPidsLimit,omitempty"`
	SystemReserved                  map[string]string `json:"systemReserved,omitempty"`
	KubeReserved                    map[string]string `json:"kubeReserved,omitempty"`
	EvictionHard                    map[string]string `json:"evictionHard,omitempty"`
	EvictionSoft                    map[string]string `json:"evictionSoft,omitempty"`
	EvictionSoftGracePeriod         map[string]string `json:"evictionSoftGracePeriod,omitempty"`
	FeatureGates                    map[string]bool   `json:"featureGates,omitempty"`
	CPUManagerPolicy                string            `json:"cpuManagerPolicy,omitempty"`
	MemoryManagerPolicy             string            `json:"memoryManagerPolicy,omitempty"`
	TopologyManagerPolicy           string            `json:"topologyManagerPolicy,omitempty"`
	ImageGCHighThresholdPercent     *int              `json:"imageGCHighThresholdPercent,omitempty"`
	ImageGCLowThresholdPercent      *int              `json:"imageGCLowThresholdPercent,omitempty"`
	ImageMaximumGCAge               string            `json:"imageMaximumGCAge,omitempty"`
	ContainerLogMaxSize             string            `json:"containerLogMaxSize,omitempty"`
	ContainerLogMaxFiles            *int              `json:"containerLogMaxFiles,omitempty"`
	SerializeImagePulls             *bool             `json:"serializeImagePulls,omitempty"`
	MaxParallelImagePulls           *int              `json:"maxParallelImagePulls,omitempty"`
	ShutdownGracePeriod             string            `json:"shutdownGracePeriod,omitempty"`
	ShutdownGracePeriodCriticalPods string            `json:"shutdownGracePeriodCriticalPods,omitempty"`
	AllowedUnsafeSysctls            []string          `json:"allowedUnsafeSysctls,omitempty"`
}

// Containerd is the part of containerd's configuration a pool may set.
type Containerd struct {
	Snapshotter             string              `json:"snapshotter,omitempty"`
	SandboxImage            string              `json:"sandboxImage,omitempty"`
	MaxConcurrentDownloads  *int                `json:"maxConcurrentDownloads,omitempty"`
	SystemdCgroup           *bool               `json:"systemdCgroup,omitempty"`
	DiscardUnpackedLayers   *bool               `json:"discardUnpackedLayers,omitempty"`
	MaxContainerLogLineSize *int                `json:"maxContainerLogLineSize,omitempty"`
	Registries              map[string]Registry `json:"registries,omitempty"`
}

// Registry configures pulls from one registry host.
type Registry struct {
	Mirrors    []string `json:"mirrors"`
	SkipVerify bool     `json:"skipVerify"`
}

// File is a file a pool writes on its nodes.
type File struct {
	Path    string `json:"path"`
	Content string `json:"content"`
	Mode    int    `json:"mode"`
}

// IntOrPercent is a count ("3") or a percentage of a total ("25%").
type IntOrPercent struct {
	Int     int
	Percent int
	IsPct   bool
}

// Resolve turns the value into a count out of total: percentages round down
// and never go below 1, so a rollout always makes progress.
func (v IntOrPercent) Resolve(total int) int {
	n := v.Int
	if v.IsPct {
		n = total * v.Percent / 100
	}
	return max(n, 1)
}

func (v IntOrPercent) String() string {
	if v.IsPct {
		return strconv.Itoa(v.Percent) + "%"
	}
	return strconv.Itoa(v.Int)
}

// MarshalJSON writes a number or a "N%" string.
func (v IntOrPercent) MarshalJSON() ([]byte, error) {
	if v.IsPct {
		return json.Marshal(v.String())
	}
	return json.Marshal(v.Int)
}

// UnmarshalJSON reads a number or a "N%" string.
func (v *IntOrPercent) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		*v = IntOrPercent{Int: n}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want an integer or a percentage, got %s", b)
	}
	p, ok := strings.CutSuffix(s, "%")
	if !ok {
		return fmt.Errorf("want an integer or a percentage, got %q", s)
	}
	pct, err := strconv.Atoi(p)
	if err != nil {
		return fmt.Errorf("want an integer or a percentage, got %q", s)
	}
	*v = IntOrPercent{Percent: pct, IsPct: true}
	return nil
}
