package config

import (
	"bytes"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// With shards, the single controller gives way to one Deployment and one
// PodDisruptionBudget per shard, each selecting only its own pods and
// running with its shard's flags; the Services still reach every one.
func TestInstallShards(t *testing.T) {
	opts := Options{Repo: "https://git.example.com/fleet.git", Cluster: "c", Version: "v1",
		Shards: []Shard{{Name: "a", Selector: "herd.dev/shard=a"}, {Name: "main", Selector: "!herd.dev/shard"}}}
	out, err := Install(opts)
	if err != nil {
		t.Fatal(err)
	}
	deps, pdbs, svcs := map[string]appsv1.Deployment{}, map[string]policyv1.PodDisruptionBudget{}, map[string]corev1.Service{}
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal(doc, &meta); err != nil {
			t.Fatalf("%v in\n%s", err, doc)
		}
		switch meta.Kind {
		case "Deployment":
			var d appsv1.Deployment
			_ = yaml.Unmarshal(doc, &d)
			deps[d.Name] = d
		case "PodDisruptionBudget":
			var p policyv1.PodDisruptionBudget
			_ = yaml.Unmarshal(doc, &p)
			pdbs[p.Name] = p
		case "Service":
			var s corev1.Service
			_ = yaml.Unmarshal(doc, &s)
			svcs[s.Name] = s
		}
	}
	if _, ok := deps["herd-controller"]; ok {
		t.Error("the unsharded herd-controller Deployment is still rendered")
	}
	for _, s := range opts.Shards {
		name := "herd-controller-" + s.Name
		d, ok := deps[name]
		if !ok {
			t.Fatalf("no Deployment %s", name)
		}
		pod := d.Spec.Template
		if d.Spec.Selector.MatchLabels[ShardLabel] != s.Name || pod.Labels[ShardLabel] != s.Name {
			t.Errorf("%s: selector %v, pod labels %v: want %s=%s in both", name, d.Spec.Selector.MatchLabels, pod.Labels, ShardLabel, s.Name)
		}
		args := pod.Spec.Containers[0].Args
		for _, want := range []string{"--shard-name=" + s.Name, "--shard-selector=" + s.Selector, "--repo=" + opts.Repo, "--enable-leader-election"} {
			if !slices.Contains(args, want) {
				t.Errorf("%s: args %v lack %s", name, args, want)
			}
		}
		if p, ok := pdbs[name]; !ok || p.Spec.Selector.MatchLabels[ShardLabel] != s.Name {
			t.Errorf("PodDisruptionBudget %s: %+v", name, p.Spec.Selector)
		}
		for svc, sv := range svcs {
			if sv.Spec.Selector["app.kubernetes.io/component"] == "controller" && sv.Spec.Selector[ShardLabel] != "" {
				t.Errorf("Service %s selects one shard's pods: %v", svc, sv.Spec.Selector)
			}
		}
	}
	if got := opts.ControllerNames(); !slices.Equal(got, []string{"herd-controller-a", "herd-controller-main"}) {
		t.Errorf("ControllerNames = %v", got)
	}
	if _, err := Install(Options{Repo: opts.Repo, Cluster: "c", Version: "v1", Shards: []Shard{{Name: "a", Selector: "x"}, {Name: "a", Selector: "y"}}}); err == nil {
		t.Error("two shards named a were accepted")
	}
}
