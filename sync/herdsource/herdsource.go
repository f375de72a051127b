// Package herdsource is the HerdSource custom resource: the fleet repo the
// controller follows, with what it last fetched, accepted and applied.
package herdsource

import (
	"encoding/json"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/scheme"

	"herd.dev/herd/sync/herdpool"
)

var (
	schemeBuilder = &scheme.Builder{GroupVersion: herdpool.GroupVersion}
	// AddToScheme registers HerdSource and HerdSourceList.
	AddToScheme = schemeBuilder.AddToScheme
)

func init() {
	schemeBuilder.Register(&HerdSource{}, &HerdSourceList{})
}

// Kind is the resource's kind.
const Kind = "HerdSource"

// Name is the name of the one HerdSource a controller keeps.
const Name = "fleet"

// NameOf names the HerdSource of a controller shard ("" for an unsharded
// controller: Name): each shard follows the fleet repo on its own.
func NameOf(shard string) string {
	if shard == "" {
		return Name
	}
	return Name + "-" + shard
}

// Condition types beside kstatus' Ready, Reconciling and Stalled.
const (
	// SourceVerifiedCondition is True when the accepted revision's
	// signature was verified; present only with verification on.
	SourceVerifiedCondition = "SourceVerified"
)

// HerdSource is the fleet repository as the controller follows it. The
// controller writes both spec (from its flags) and status.
type HerdSource struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   Spec   `json:"spec,omitempty"`
	Status Status `json:"status,omitempty"`
}

// Spec is where the fleet comes from.
type Spec struct {
	// URL of the fleet repository, without credentials.
	URL      string          `json:"url,omitempty"`
	Branch   string          `json:"branch,omitempty"`
	Path     string          `json:"path,omitempty"`
	Interval metav1.Duration `json:"interval,omitempty"`
	// Verify is true when every new commit must carry a trusted signature.
	Verify bool `json:"verify,omitempty"`
	// ShardSelector is the label selector of the pools this shard of the
	// controller acts on; "" when the controller is not sharded.
	ShardSelector string `json:"shardSelector,omitempty"`
}

// Status is what the source last did.
type Status struct {
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// LastFetchedRevision is the remote head last fetched.
	LastFetchedRevision string `json:"lastFetchedRevision,omitempty"`
	// LastAcceptedRevision passed verification and validation: the
	// revision the controller plans with.
	LastAcceptedRevision *Revision `json:"lastAcceptedRevision,omitempty"`
	// LastAppliedRevision is the revision the fleet's pools run.
	LastAppliedRevision string `json:"lastAppliedRevision,omitempty"`
	// LastRejected is the last head refused, and why.
	LastRejected *Rejection `json:"lastRejected,omitempty"`
	// LastFetchTime is the last contact attempt; LastSuccessTime the last
	// time the remote answered.
	LastFetchTime   *metav1.Time `json:"lastFetchTime,omitempty"`
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`
	// LastHandledReconcileAt is the last reconcile.fluxcd.io/requestedAt
	// annotation value (set by the webhook receiver) the leader acted on.
	LastHandledReconcileAt string `json:"lastHandledReconcileAt,omitempty"`

	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Revision is an accepted commit.
type Revision struct {
	Commit  string      `json:"commit"`
	Subject string      `json:"subject,omitempty"`
	Author  string      `json:"author,omitempty"`
	Time    metav1.Time `json:"time,omitzero"`
	// Signer is the key that signed it, with verification on.
	Signer string `json:"signer,omitempty"`
}

// Rejection is a refused head.
type Rejection struct {
	Commit  string      `json:"commit"`
	Reason  string      `json:"reason"`
	Message string      `json:"message,omitempty"`
	Time    metav1.Time `json:"time,omitzero"`
}

// GetConditions returns the status conditions (for fluxcd/pkg/runtime/conditions).
func (s *HerdSource) GetConditions() []metav1.Condition { return s.Status.Conditions }

// SetConditions sets the status conditions.
func (s *HerdSource) SetConditions(c []metav1.Condition) { s.Status.Conditions = c }

// HerdSourceList is a list of HerdSources.
type HerdSourceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []HerdSource `json:"items"`
}

// DeepCopyObject copies the object.
func (s *HerdSource) DeepCopyObject() runtime.Object { return deepCopy(s) }

// DeepCopy copies the object.
func (s *HerdSource) DeepCopy() *HerdSource { return deepCopy(s) }

// DeepCopyObject copies the list.
func (l *HerdSourceList) DeepCopyObject() runtime.Object { return deepCopy(l) }

// deepCopy copies plain data through JSON.
func deepCopy[T any](in *T) *T {
	if in == nil {
		return nil
	}
	b, err := json.Marshal(in)
	if err != nil {
		panic(err)
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		panic(err)
	}
	return out
}
