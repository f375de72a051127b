// Package herdpool is the HerdPool custom resource: the cluster's read-only
// mirror of a pool in Git, with its rollout's progress in the status.
package herdpool

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	k8sschema "k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"

	"herd.dev/herd/schema"
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

// Phases of a pool.
const (
	PhaseUpToDate    = "UpToDate"    // every node at the target
	PhaseProgressing = "Progressing" // batches running
	PhaseBlocked     = "Blocked"     // no room under maxUnavailable
	PhasePaused      = "Paused"      // spec.paused
	PhaseHalted      = "Halted"      // failures past the budget
	PhaseRollingBack = "RollingBack" // failures past the budget, going back
	PhaseWaiting     = "Waiting"     // outside its maintenance windows, or the fleet is frozen
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

	// Rollout is what outlives one reconcile: the target and the nodes
	// brought to it so far.
	Rollout RolloutStatus `json:"rollout,omitempty"`
	// Previous lists the pool's earlier targets, newest first (at most
	// MaxPrevious): going back to one of them is a rollback.
	Previous []PreviousTarget `json:"previous,omitempty"`
	// LastGood is the last target every node reached: where a rollback goes.
	LastGood *PreviousTarget `json:"lastGood,omitempty"`
	// Failed and Quarantined list nodes, for status readers.
	Failed      []string `json:"failed,omitempty"`
	Quarantined []string `json:"quarantined,omitempty"`
	// DrainBlocked lists the nodes whose drain cannot go on by itself, and
	// the pods in the way; each stays cordoned until they are dealt with.
	DrainBlocked []DrainBlockedNode `json:"drainBlocked,omitempty"`

	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// RolloutStatus is the state of the rollout in progress.
type RolloutStatus struct {
	Hash      string       `json:"hash,omitempty"`
	Revision  string       `json:"revision,omitempty"`
	StartedAt *metav1.Time `json:"startedAt,omitempty"`
	Done      int          `json:"done"`
	Batches   int          `json:"batches"` // batches started so far

	Halted      string   `json:"halted,omitempty"`      // why it is halted
	RollingBack bool     `json:"rollingBack,omitempty"` // going back to LastGood
	Forgiven    []string `json:"forgiven,omitempty"`    // failures a resume forgave
	// ResumedBy is the last resume honoured: the spec's rollout.resume, or
	// the herd.dev/resume annotation `herd resume` sets.
	ResumedBy string `json:"resumedBy,omitempty"`
}

// DrainBlockedNode is a node whose drain is blocked: refused by the pool's
// drain policy, or past its timeout.
type DrainBlockedNode struct {
	Node string       `json:"node"`
	Pods []BlockedPod `json:"pods"`
}

// BlockedPod is a pod in a drain's way, and why.
type BlockedPod struct {
	Name string `json:"name"` // namespace/name
	// Reason is Unmanaged, EmptyDir, DaemonSet, OrphanedDaemonSet,
	// DisruptionBudget, StuckTerminating or EvictionError.
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// AnnotationResume on a HerdPool asks the controller to lift its halt;
// `herd resume POOL` sets it to the current time.
const AnnotationResume = "herd.dev/resume"

// PreviousTarget is a target the pool had before.
type PreviousTarget struct {
	Hash     string `json:"hash"`
	Revision string `json:"revision"`
	OSCommit string `json:"osCommit,omitempty"`
}

// MaxPrevious bounds Status.Previous.
const MaxPrevious = 10

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
