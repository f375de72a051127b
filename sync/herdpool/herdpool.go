// Package herdpool is the HerdPool custom resource: the cluster's read-only
// mirror of a pool in Git, with its rollout's progress in the status.
package herdpool

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8sschema "k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
	"herd.dev/herd/sync/cluster"
)

// GroupVersion of the HerdPool API.
var GroupVersion = k8sschema.GroupVersion{Group: "herd.dev", Version: "v1alpha1"}

var (
	schemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}
	// AddToScheme registers HerdPool and HerdPoolList.
	AddToScheme = schemeBuilder.AddToScheme
)

func init() {
	schemeBuilder.Register(&HerdPool{}, &HerdPoolList{})
}

// Kind is the resource's kind.
const Kind = "HerdPool"

// Phases of a pool, as the planner sums it up.
const (
	PhaseUpToDate    = string(planner.PhaseUpToDate)
	PhaseProgressing = string(planner.PhaseProgressing)
	PhaseBlocked     = string(planner.PhaseBlocked)
	PhasePaused      = string(planner.PhasePaused)
	PhaseHalted      = string(planner.PhaseHalted)
	PhaseRollingBack = string(planner.PhaseRollingBack)
	PhaseWaiting     = string(planner.PhaseWaiting)
)

// HerdPool mirrors one pool of the fleet repo. Git is the source of truth:
// the controller overwrites any edit to the spec.
type HerdPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   Spec   `json:"spec"`
	Status Status `json:"status,omitempty"`
}

// Spec is the pool as the fleet declares it, and where it comes from.
type Spec struct {
	schema.NodePool `json:",inline"`
	// Revision is the Git commit the spec was copied from.
	Revision string `json:"revision"`
}

// Status is the pool's rollout as the controller sees it.
type Status struct {
	ObservedGeneration int64  `json:"observedGeneration,omitempty"`
	ObservedRevision   string `json:"observedRevision,omitempty"`
	ConfigHash         string `json:"configHash,omitempty"`
	OSCommit           string `json:"osCommit,omitempty"`
	Phase              string `json:"phase,omitempty"`
	Message            string `json:"message,omitempty"`

	Nodes       int `json:"nodes"`
	UpToDate    int `json:"upToDate"`
	Updating    int `json:"updating"`
	Unavailable int `json:"unavailable"`
	Degraded    int `json:"degraded"`
	Waiting     int `json:"waiting"`

	// Progress reads "6/10" (nodes at target / nodes), Batch "3/5".
	Progress string `json:"progress,omitempty"`
	Batch    string `json:"batch,omitempty"`

	// Rollout is the rollout state that outlives a reconcile, as the
	// planner decided it: the target, halt, rollback, forgiven failures,
	// the last good target and earlier ones.
	Rollout planner.Rollout `json:"rollout,omitzero"`
	// Failed and Quarantined list nodes, for status readers.
	Failed      []string `json:"failed,omitempty"`
	Quarantined []string `json:"quarantined,omitempty"`
	// DrainBlocked lists the nodes whose drain cannot go on by itself, and
	// the pods in the way; each stays cordoned until they are dealt with.
	DrainBlocked []DrainBlockedNode `json:"drainBlocked,omitempty"`

	// Repairs is the pool's repair state as the planner decided it: the
	// rungs started lately (the rate limit, the status branch), the
	// breaker, a dry run's records. Repairing lists the nodes being
	// repaired and Unhealthy those with a problem on, for status readers.
	Repairs   planner.RepairState `json:"repairs,omitzero"`
	Repairing []string            `json:"repairing,omitempty"`
	Unhealthy []string            `json:"unhealthy,omitempty"`

	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// DrainBlockedNode is a node whose drain is blocked: refused by the pool's
// drain policy, or past its timeout.
type DrainBlockedNode struct {
	Node  string             `json:"node"`
	State cluster.DrainState `json:"state"` // Refused or TimedOut
	Pods  []BlockedPod       `json:"pods"`
}

// BlockedPod is a pod in a drain's way, and why.
type BlockedPod struct {
	Name    string            `json:"name"` // namespace/name
	Reason  cluster.PodReason `json:"reason"`
	Message string            `json:"message,omitempty"` // the API's answer, or what the reason needs
}

// AnnotationResume on a HerdPool asks the controller to lift its halt;
// `herd resume POOL` sets it to the current time.
const AnnotationResume = "herd.dev/resume"

// GetConditions returns the status conditions (for fluxcd/pkg/runtime/conditions).
func (p *HerdPool) GetConditions() []metav1.Condition { return p.Status.Conditions }

// SetConditions sets the status conditions.
func (p *HerdPool) SetConditions(c []metav1.Condition) { p.Status.Conditions = c }

// HerdPoolList is a list of HerdPools.
type HerdPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []HerdPool `json:"items"`
}

// DeepCopyObject copies the object. Spec holds maps and pointers of the
// schema's types; a JSON round trip copies them all without generated code.
func (p *HerdPool) DeepCopyObject() runtime.Object { return deepCopy(p) }

// DeepCopy copies the object.
func (p *HerdPool) DeepCopy() *HerdPool { return deepCopy(p) }

// DeepCopyObject copies the list.
func (l *HerdPoolList) DeepCopyObject() runtime.Object { return deepCopy(l) }

func deepCopy[T any](in *T) *T {
	if in == nil {
		return nil
	}
	b, err := json.Marshal(in)
	if err != nil {
		panic(err) // only plain data: cannot fail
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		panic(err)
	}
	return out
}
