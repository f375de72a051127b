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
// It reads the node's annotations in one pass: an absent one is its
// field's zero value, as is an unparsable time or count.
func PlannerNode(n *corev1.Node) planner.Node {
	pn := planner.Node{
		Name:          n.Name,
		Labels:        n.Labels,
		Ready:         IsReady(n),
		Unschedulable: n.Spec.Unschedulable,
		Converging:    HasTaint(n, schema.TaintConverging),
	}
	var repairs repairAnnotations
	for k, v := range n.Annotations {
		switch k {
		case schema.AnnotationDesiredConfig:
			pn.DesiredConfig = v
		case schema.AnnotationDesiredOS:
			pn.DesiredOS = v
		case schema.AnnotationCordoned:
			pn.Cordoned = v == "true"
		case schema.AnnotationDrainStarted:
			pn.DrainStarted = parseTime(v)
		case schema.AnnotationDrainBlocked:
			pn.DrainBlocked = v != ""
		case schema.AnnotationCurrentConfig:
			pn.CurrentConfig = v
		case schema.AnnotationOSBooted:
			pn.OSBooted = v
		case schema.AnnotationOSStaged:
			pn.OSStaged = v
		case schema.AnnotationState:
			pn.State = schema.NodeState(v)
		case schema.AnnotationMessage:
			pn.Message = v
		case schema.AnnotationDispatched:
			pn.Dispatched = parseTime(v)
		case schema.AnnotationAtTarget:
			pn.AtTarget = parseTime(v)
		case schema.AnnotationFailures:
			pn.Failures, _ = strconv.Atoi(v)
		case schema.AnnotationFailedTarget:
			pn.FailedTarget = v
		case schema.AnnotationQuarantined:
			pn.Quarantined = v
		case schema.AnnotationPrestageOS:
			pn.PrestageOS = v
		case schema.AnnotationOSPulled:
			pn.OSPulled = v
		case schema.AnnotationRemediation:
			repairs.state = v
		case schema.AnnotationRemediations:
			repairs.history = v
		case schema.AnnotationRemediated:
			repairs.report = v
		}
	}
	repairFields(n, repairs, &pn)
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

func annotationTime(a map[string]string, key string) time.Time { return parseTime(a[key]) }

// parseTime reads an RFC 3339 annotation; "" or unparsable is the zero time.
func parseTime(v string) time.Time {
	if v == "" {
		return time.Time{} // most nodes, most of the time: no error to make
	}
	t, _ := time.Parse(time.RFC3339, v)
	return t
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
func ReadNodeList(r io.Reader) ([]*corev1.Node, error) {
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
	nodes := make([]*corev1.Node, 0, len(list.Items))
	seen := map[string]bool{}
	for i, item := range list.Items {
		n := &corev1.Node{}
		dec := json.NewDecoder(bytes.NewReader(item))
		if err := dec.Decode(n); err != nil {
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
