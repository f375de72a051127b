// Package cluster is Herd's Kubernetes side: reading nodes into the planner's
// terms, and (with the controller) cordoning, draining and annotating them.
package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"herd.dev/herd/planner"
	"herd.dev/herd/schema"
)

// PlannerNode turns a Kubernetes Node into what the planner needs to know.
func PlannerNode(n *corev1.Node) planner.Node {
	a := n.Annotations
	pn := planner.Node{
		Name:          n.Name,
		Labels:        n.Labels,
		Ready:         IsReady(n),
		Unschedulable: n.Spec.Unschedulable,
		DesiredConfig: a[schema.AnnotationDesiredConfig],
		DesiredOS:     a[schema.AnnotationDesiredOS],
		Cordoned:      a[schema.AnnotationCordoned] == "true",
		DrainStarted:  annotationTime(a, schema.AnnotationDrainStarted),
		DrainBlocked:  a[schema.AnnotationDrainBlocked] != "",
		CurrentConfig: a[schema.AnnotationCurrentConfig],
		OSBooted:      a[schema.AnnotationOSBooted],
		OSStaged:      a[schema.AnnotationOSStaged],
		State:         schema.NodeState(a[schema.AnnotationState]),
		Message:       a[schema.AnnotationMessage],
		Dispatched:    annotationTime(a, schema.AnnotationDispatched),
		AtTarget:      annotationTime(a, schema.AnnotationAtTarget),
		Failures:      annotationInt(a, schema.AnnotationFailures),
		FailedTarget:  a[schema.AnnotationFailedTarget],
		Quarantined:   a[schema.AnnotationQuarantined],
		PrestageOS:    a[schema.AnnotationPrestageOS],
		OSPulled:      a[schema.AnnotationOSPulled],
		Converging:    HasTaint(n, schema.TaintConverging),
	}
	repairFields(n, &pn)
	return pn
}

// HasTaint reports whether the node carries a taint with the key.
func HasTaint(n *corev1.Node, key string) bool {
	for _, t := range n.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

func annotationTime(a map[string]string, key string) time.Time {
	v := a[key]
	if v == "" {
		return time.Time{} // most nodes, most of the time: no error to make
	}
	t, _ := time.Parse(time.RFC3339, v)
	return t
}

func annotationInt(a map[string]string, key string) int {
	n, _ := strconv.Atoi(a[key])
	return n
}

// IsReady reports whether the node's Ready condition is True.
func IsReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// ReadNodeList reads nodes as `kubectl get nodes -o json` or `-o yaml`
// prints them: a v1 List (or NodeList) of Nodes.
func ReadNodeList(r io.Reader) ([]corev1.Node, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read node list: %w", err)
	}
	if j := bytes.TrimSpace(raw); len(j) == 0 || j[0] != '{' {
		if raw, err = yaml.YAMLToJSON(raw); err != nil {
			return nil, fmt.Errorf("read node list: not JSON, and not YAML: %w", err)
		}
	}
	var list struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("read node list: %w", err)
	}
	if list.APIVersion != "v1" || (list.Kind != "List" && list.Kind != "NodeList") {
		return nil, fmt.Errorf("read node list: want apiVersion v1, kind List or NodeList (as `kubectl get nodes -o json` prints), got apiVersion %q, kind %q", list.APIVersion, list.Kind)
	}
	nodes := make([]corev1.Node, 0, len(list.Items))
	seen := map[string]bool{}
	for i, item := range list.Items {
		var n corev1.Node
		dec := json.NewDecoder(bytes.NewReader(item))
		if err := dec.Decode(&n); err != nil {
			return nil, fmt.Errorf("read node list: items[%d]: %w", i, err)
		}
		if n.Kind != "" && n.Kind != "Node" {
			return nil, fmt.Errorf("read node list: items[%d] is a %s, not a Node", i, n.Kind)
		}
		if n.Name == "" {
			return nil, fmt.Errorf("read node list: items[%d] has no metadata.name", i)
		}
		if seen[n.Name] {
			return nil, fmt.Errorf("read node list: node %s appears twice", n.Name)
		}
		seen[n.Name] = true
		nodes = append(nodes, n)
	}
	return nodes, nil
}
