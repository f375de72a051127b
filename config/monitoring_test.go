package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// promtool finds Prometheus' promtool (Debian's prometheus package, which
// `make deps` installs).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: `make deps` installs Debian's prometheus package")
	}
	return p
}

func run(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// TestAlertRules checks the alert rules with promtool and runs their unit
// tests (alerts_test.yaml: each alert fires, or not, on given series).
func TestAlertRules(t *testing.T) {
	pt := promtool(t)
	run(t, "monitoring", pt, "check", "rules", "alerts.yaml")
	run(t, "monitoring", pt, "test", "rules", "alerts_test.yaml")
}

// TestPrometheusRuleMatchesAlerts: the PrometheusRule carries exactly the
// groups of alerts.yaml.
func TestPrometheusRuleMatchesAlerts(t *testing.T) {
	var plain struct {
		Groups []any `json:"groups"`
	}
	var pr struct {
		Kind string `json:"kind"`
		Spec struct {
			Groups []any `json:"groups"`
		} `json:"spec"`
	}
	readYAML(t, "monitoring/alerts.yaml", &plain)
	readYAML(t, "monitoring/prometheusrule.yaml", &pr)
	if pr.Kind != "PrometheusRule" || len(plain.Groups) == 0 {
		t.Fatalf("kind %q, %d groups", pr.Kind, len(plain.Groups))
	}
	if d := cmp.Diff(plain.Groups, pr.Spec.Groups); d != "" {
		t.Fatalf("prometheusrule.yaml differs from alerts.yaml (-alerts +rule):\n%s", d)
	}
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// dashboard is what the tests read of a Grafana dashboard.
type dashboard struct {
	Title  string  `json:"title"`
	UID    string  `json:"uid"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Title   string `json:"title"`
	Type    string `json:"type"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func (p panel) exprs() []string {
	var out []string
	for _, t := range p.Targets {
		out = append(out, t.Expr)
	}
	for _, c := range p.Panels {
		out = append(out, c.exprs()...)
	}
	return out
}

// grafanaVars stand in for the dashboards' template variables.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$namespace", "herd-system", "$pool", ".*", "$node", ".*")

// TestDashboards: every dashboard parses, has a uid and title, and every
// query is valid PromQL (promtool checks them as recording rules).
func TestDashboards(t *testing.T) {
	pt := promtool(t)
	files, _ := filepath.Glob("monitoring/dashboards/*.json")
	if len(files) == 0 {
		t.Fatal("no dashboards")
	}
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for _, f := range files {
		var d dashboard
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
			t.Fatalf("%s: uid %q, title %q, %d panels", f, d.UID, d.Title, len(d.Panels))
		}
		for _, p := range d.Panels {
			for _, e := range p.exprs() {
				rules = append(rules, rule{Record: fmt.Sprintf("dashboard:check:%d", len(rules)), Expr: grafanaVars.Replace(e)})
			}
		}
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboards", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, dir, pt, "check", "rules", "rules.yaml")
	t.Logf("%d dashboard queries are valid PromQL", len(rules))
}

var herdMetric = regexp.MustCompile(`\bherd_[a-z_]+`)

// TestMonitoringNamesExist: every herd_* metric the alerts and the main
// dashboard use is one the controller defines, one kube-state-metrics
// makes from kube-state-metrics.yaml, or the agent's (herd_agent_*, which
// test/install checks against a running agent's /metrics).
func TestMonitoringNamesExist(t *testing.T) {
	defined := map[string]bool{}
	err := filepath.WalkDir("..", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && p != ".." {
			return filepath.SkipDir // .git, .cache
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range regexp.MustCompile(`"(herd_[a-z_]+)"`).FindAllSubmatch(b, -1) {
			defined[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var ksm struct {
		Spec struct {
			Resources []struct {
				Prefix  string `json:"metricNamePrefix"`
				Metrics []struct {
					Name string `json:"name"`
				} `json:"metrics"`
			} `json:"resources"`
		} `json:"spec"`
	}
	readYAML(t, "monitoring/kube-state-metrics.yaml", &ksm)
	for _, r := range ksm.Spec.Resources {
		for _, m := range r.Metrics {
			defined[r.Prefix+"_"+m.Name] = true
		}
	}
	dashboards, _ := filepath.Glob("monitoring/dashboards/*.json")
	for _, f := range append([]string{"monitoring/alerts.yaml"}, dashboards...) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range herdMetric.FindAllString(string(b), -1) {
			m = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
			if !defined[m] && !strings.HasPrefix(m, "herd_agent_") && m != "herd_system" {
				t.Errorf("%s uses %s, which nothing defines", f, m)
			}
		}
	}
}

// TestKubeStateMetricsConfig: every resource of the custom-resource state
// config is one of Herd's CRDs, and every path it reads is in the CRD's
// schema.
func TestKubeStateMetricsConfig(t *testing.T) {
	var cfg struct {
		Kind string `json:"kind"`
		Spec struct {
			Resources []struct {
				GVK struct {
					Group, Version, Kind string
				} `json:"groupVersionKind"`
				Metrics []struct {
					Name string `json:"name"`
					Each struct {
						Type  string `json:"type"`
						Gauge *struct {
							Path []string `json:"path"`
						} `json:"gauge"`
						Info *struct {
							LabelsFromPath map[string][]string `json:"labelsFromPath"`
						} `json:"info"`
					} `json:"each"`
					LabelsFromPath map[string][]string `json:"labelsFromPath"`
				} `json:"metrics"`
			} `json:"resources"`
		} `json:"spec"`
	}
	readYAML(t, "monitoring/kube-state-metrics.yaml", &cfg)
	if cfg.Kind != "CustomResourceStateMetrics" || len(cfg.Spec.Resources) != 2 {
		t.Fatalf("kind %q with %d resources", cfg.Kind, len(cfg.Spec.Resources))
	}
	crds := crdSchemas(t)
	for _, r := range cfg.Spec.Resources {
		schema, ok := crds[r.GVK.Group+"/"+r.GVK.Version+"/"+r.GVK.Kind]
		if !ok {
			t.Fatalf("%+v is not one of Herd's CRDs", r.GVK)
		}
		for _, m := range r.Metrics {
			var paths [][]string
			for _, p := range m.LabelsFromPath {
				paths = append(paths, p)
			}
			if m.Each.Info != nil {
				for _, p := range m.Each.Info.LabelsFromPath {
					paths = append(paths, p)
				}
			}
			if m.Each.Gauge != nil {
				paths = append(paths, m.Each.Gauge.Path)
			}
			for _, p := range paths {
				if err := inSchema(schema, p); err != nil {
					t.Errorf("%s %s: path %v: %v", r.GVK.Kind, m.Name, p, err)
				}
			}
		}
	}
}

// crdSchemas reads the CRDs' schemas by group/version/kind.
func crdSchemas(t *testing.T) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	files, _ := filepath.Glob("crd/*.yaml")
	for _, f := range files {
		var crd struct {
			Spec struct {
				Group string `json:"group"`
				Names struct {
					Kind string `json:"kind"`
				} `json:"names"`
				Versions []struct {
					Name   string `json:"name"`
					Schema struct {
						OpenAPIV3Schema map[string]any `json:"openAPIV3Schema"`
					} `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		readYAML(t, f, &crd)
		for _, v := range crd.Spec.Versions {
			out[crd.Spec.Group+"/"+v.Name+"/"+crd.Spec.Names.Kind] = v.Schema.OpenAPIV3Schema
		}
	}
	return out
}

// inSchema walks path through an OpenAPI schema: object properties by
// name, array items by a "[field=value]" filter; metadata is known to all.
func inSchema(s map[string]any, path []string) error {
	for i, seg := range path {
		if i == 0 && seg == "metadata" {
			return nil
		}
		if strings.HasPrefix(seg, "[") {
			items, ok := s["items"].(map[string]any)
			if s["type"] != "array" || !ok {
				return fmt.Errorf("%s filters a field that is not an array", seg)
			}
			s = items
			continue
		}
		props, _ := s["properties"].(map[string]any)
		next, ok := props[seg].(map[string]any)
		if !ok {
			return fmt.Errorf("no field %s (has %v)", seg, keys(props))
		}
		s = next
	}
	return nil
}

func keys(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestMonitoringKustomization builds config/monitoring with kustomize: the
// PodMonitors, the PrometheusRule and the dashboard's ConfigMap.
func TestMonitoringKustomization(t *testing.T) {
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), "monitoring")
	if err != nil {
		t.Fatal(err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kind: PodMonitor", "kind: PrometheusRule", "grafana_dashboard: \"1\"", "herd.json:", "kind: CustomResourceStateMetrics"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("config/monitoring renders no %q", want)
		}
	}
}
