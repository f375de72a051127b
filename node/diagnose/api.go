package diagnose

import (
	"encoding/json"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// NodeDiagnostics live in Herd's namespace (config/crd/nodediagnostics.yaml).
const (
	Namespace = "herd-system"
	Kind      = "NodeDiagnostic"
)

// GVR is the NodeDiagnostic resource.
var GVR = schema.GroupVersionResource{Group: "herd.dev", Version: "v1alpha1", Resource: "nodediagnostics"}

// Phase is where a NodeDiagnostic stands.
type Phase string

// Phases. A request without a phase waits for its node's agent.
const (
	PhasePending  Phase = ""
	PhaseComplete Phase = "Complete" // the report is in the status
	PhaseFailed   Phase = "Failed"   // the message says why
)

// NodeDiagnostic asks the agent on spec.nodeName for a Report.
type NodeDiagnostic struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              NodeDiagnosticSpec   `json:"spec"`
	Status            NodeDiagnosticStatus `json:"status,omitempty"`
}

// NodeDiagnosticSpec names the node.
type NodeDiagnosticSpec struct {
	NodeName string `json:"nodeName"`
}

// NodeDiagnosticStatus is the agent's answer.
type NodeDiagnosticStatus struct {
	Phase       Phase      `json:"phase,omitempty"`
	Message     string     `json:"message,omitempty"`
	CompletedAt *time.Time `json:"completedAt,omitempty"`
	Report      *Report    `json:"report,omitempty"`
}

// fromUnstructured decodes a NodeDiagnostic read with the dynamic client.
func fromUnstructured(u *unstructured.Unstructured) (*NodeDiagnostic, error) {
	b, err := u.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encode NodeDiagnostic %s: %w", u.GetName(), err)
	}
	var d NodeDiagnostic
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("decode NodeDiagnostic %s: %w", u.GetName(), err)
	}
	return &d, nil
}

// newRequest is a NodeDiagnostic for node, named after it.
func newRequest(namespace, node string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": GVR.GroupVersion().String(),
		"kind":       Kind,
		"metadata":   map[string]any{"generateName": node + "-", "namespace": namespace},
		"spec":       map[string]any{"nodeName": node},
	}}
	return u
}
