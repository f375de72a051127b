package config

import (
	"bytes"
	"fmt"
	"regexp"

	"sigs.k8s.io/yaml"
)

// Shard is one controller shard `herd install --shard NAME=SELECTOR`
// installs: a Deployment herd-controller-NAME (and its
// PodDisruptionBudget) running `herd controller --shard-name NAME
// --shard-selector SELECTOR`, in place of the unsharded herd-controller.
type Shard struct{ Name, Selector string }

// ShardLabel marks a shard's controller pods. The Services keep selecting
// every controller pod: a webhook delivery to any shard wakes them all.
const ShardLabel = "herd.dev/shard-name"

var docSep = regexp.MustCompile(`(?m)^---\n`)

// shardControllers replaces the herd-controller Deployment and
// PodDisruptionBudget in the YAML stream by one of each per shard.
func shardControllers(stream []byte, shards []Shard) ([]byte, error) {
	var out bytes.Buffer
	for _, doc := range docSep.Split(string(stream), -1) {
		if doc == "" {
			continue
		}
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("read the rendered manifests: %w", err)
		}
		meta, _ := obj["metadata"].(map[string]any)
		kind := obj["kind"]
		if meta["name"] != "herd-controller" || kind != "Deployment" && kind != "PodDisruptionBudget" {
			out.WriteString("---\n" + doc)
			continue
		}
		for _, s := range shards {
			copied, err := shardCopy([]byte(doc), s)
			if err != nil {
				return nil, err
			}
			out.WriteString("---\n")
			out.Write(copied)
		}
	}
	return bytes.TrimPrefix(out.Bytes(), []byte("---\n")), nil
}

// shardCopy is the controller Deployment or PodDisruptionBudget doc for
// one shard: renamed, its pods labelled with the shard, the shard's flags
// added.
func shardCopy(doc []byte, s Shard) ([]byte, error) {
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, err
	}
	meta := obj["metadata"].(map[string]any)
	meta["name"] = "herd-controller-" + s.Name
	addLabel(meta, "labels", s.Name)
	spec := obj["spec"].(map[string]any)
	addLabel(spec["selector"].(map[string]any), "matchLabels", s.Name)
	if obj["kind"] == "Deployment" {
		tmpl := spec["template"].(map[string]any)
		addLabel(tmpl["metadata"].(map[string]any), "labels", s.Name)
		pod := tmpl["spec"].(map[string]any)
		if aff, ok := dig(pod, "affinity", "podAntiAffinity"); ok {
			for _, term := range aff["preferredDuringSchedulingIgnoredDuringExecution"].([]any) {
				if sel, ok := dig(term.(map[string]any), "podAffinityTerm", "labelSelector"); ok {
					addLabel(sel, "matchLabels", s.Name)
				}
			}
		}
		c := pod["containers"].([]any)[0].(map[string]any)
		c["args"] = append(c["args"].([]any), "--shard-name="+s.Name, "--shard-selector="+s.Selector)
	}
	return yaml.Marshal(obj)
}

// addLabel sets the shard label in the label map m[key].
func addLabel(m map[string]any, key, shard string) {
	labels, _ := m[key].(map[string]any)
	if labels == nil {
		labels = map[string]any{}
	}
	labels[ShardLabel] = shard
	m[key] = labels
}

// dig follows keys through nested maps.
func dig(m map[string]any, keys ...string) (map[string]any, bool) {
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			return nil, false
		}
		m = next
	}
	return m, true
}

// ControllerNames names the controller Deployments (and their
// PodDisruptionBudgets) the options install.
func (o *Options) ControllerNames() []string {
	if len(o.Shards) == 0 {
		return []string{"herd-controller"}
	}
	var names []string
	for _, s := range o.Shards {
		names = append(names, "herd-controller-"+s.Name)
	}
	return names
}
