package loader

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"herd.dev/herd/schema"
	"herd.dev/herd/schema/healthcheck"

	"cuelang.org/go/cue"
	"k8s.io/apimachinery/pkg/util/validation"
)

// Limits on what a pool writes to its nodes. A rendered config travels in a
// ConfigMap (1 MiB at most), so files must stay well below that.
const (
	MaxFileContent  = 256 << 10
	MaxFilesContent = 512 << 10
)

// check holds the rules the CUE schema cannot express. v is the evaluated
// fleet, used only to find where each problem is written.
func check(v cue.Value, root string, f *schema.Fleet) Diagnostics {
	c := checker{v: v, root: root}
	names := sortedKeys(f.Pools)
	for _, name := range names {
		c.pool(f, name, f.Pools[name])
	}
	c.selectors(f, names)
	if f.Maintenance != nil {
		c.windows([]string{"maintenance", "windows"}, f.Maintenance.Windows)
	}
	return c.diags
}

type checker struct {
	v     cue.Value
	root  string
	diags Diagnostics
}

func (c *checker) errorf(path []string, format string, args ...any) {
	d := posOf(c.v, c.root, path...)
	// Walk up the path until some part of it has a position in the fleet.
	for i := len(path) - 1; d.File == "" && i > 0; i-- {
		d = posOf(c.v, c.root, path[:i]...)
	}
	d.Path = cuePathString(path)
	d.Message = fmt.Sprintf(format, args...)
	c.diags = append(c.diags, d)
}

func (c *checker) pool(f *schema.Fleet, name string, p schema.NodePool) {
	at := func(rest ...string) []string { return append([]string{"pools", name}, rest...) }

	for _, msg := range validation.IsDNS1123Label(name) {
		c.errorf(at(), "pool name %q: %s", name, msg)
	}
	for _, k := range sortedKeys(p.Selector.MatchLabels) {
		for _, msg := range validation.IsQualifiedName(k) {
			c.errorf(at("selector", "matchLabels", k), "invalid label key %q: %s", k, msg)
		}
		for _, msg := range validation.IsValidLabelValue(p.Selector.MatchLabels[k]) {
			c.errorf(at("selector", "matchLabels", k), "invalid label value %q: %s", p.Selector.MatchLabels[k], msg)
		}
	}

	if p.OS.Remote != "" {
		if _, ok := f.Remotes[p.OS.Remote]; !ok {
			c.errorf(at("os", "remote"), "unknown OSTree remote %q: declare it under `remotes` (known: %s)", p.OS.Remote, listOrNone(sortedKeys(f.Remotes)))
		}
	}
	for i, arg := range p.KernelArgs {
		if err := schema.CheckKernelArg(arg); err != nil {
			c.errorf(at("kernelArgs", strconv.Itoa(i)), "%v", err)
		}
	}

	for _, k := range sortedKeys(p.Sysctl) {
		if why, ok := schema.DeniedSysctl(k); ok {
			c.errorf(at("sysctl", k), "sysctl %s is not allowed: %s", k, why)
		}
		if v := p.Sysctl[k]; strings.TrimSpace(v) == "" || strings.ContainsAny(v, "\n\r") {
			c.errorf(at("sysctl", k), "sysctl %s: value must be a single non-empty line", k)
		}
	}

	seen := map[string]int{}
	total := 0
	for i, file := range p.Files {
		path := at("files", strconv.Itoa(i), "path")
		if rule, ok := schema.AllowedPath(file.Path); !ok {
			c.errorf(path, "file %s is outside the allowlist: paths must be plain names below one of %s", file.Path, allowlistText())
		} else if rule.Content != nil {
			if err := rule.Content(file.Content); err != nil {
				c.errorf(at("files", strconv.Itoa(i), "content"), "file %s: %v", file.Path, err)
			}
		}
		if j, ok := seen[file.Path]; ok {
			c.errorf(path, "file %s is already written by files[%d]", file.Path, j)
		}
		seen[file.Path] = i
		if n := len(file.Content); n > MaxFileContent {
			c.errorf(at("files", strconv.Itoa(i), "content"), "file %s: content is %d bytes; the limit is %d", file.Path, n, MaxFileContent)
		}
		total += len(file.Content)
	}
	if total > MaxFilesContent {
		c.errorf(at("files"), "files hold %d bytes in all; the limit is %d", total, MaxFilesContent)
	}

	if k := p.Kubelet; k != nil {
		if k.ImageGCLowThresholdPercent != nil && k.ImageGCHighThresholdPercent != nil && *k.ImageGCLowThresholdPercent >= *k.ImageGCHighThresholdPercent {
			c.errorf(at("kubelet", "imageGCLowThresholdPercent"), "imageGCLowThresholdPercent (%d) must be below imageGCHighThresholdPercent (%d)", *k.ImageGCLowThresholdPercent, *k.ImageGCHighThresholdPercent)
		}
		for field, d := range map[string]string{"imageMaximumGCAge": k.ImageMaximumGCAge, "shutdownGracePeriod": k.ShutdownGracePeriod, "shutdownGracePeriodCriticalPods": k.ShutdownGracePeriodCriticalPods} {
			c.duration(at("kubelet", field), d)
		}
		for _, sig := range sortedKeys(k.EvictionSoftGracePeriod) {
			c.duration(at("kubelet", "evictionSoftGracePeriod", sig), k.EvictionSoftGracePeriod[sig])
		}
		for _, sig := range sortedKeys(k.EvictionSoft) {
			if _, ok := k.EvictionSoftGracePeriod[sig]; !ok {
				c.errorf(at("kubelet", "evictionSoft", sig), "evictionSoft %s needs a grace period in evictionSoftGracePeriod", sig)
			}
		}
	}
	if ctr := p.Containerd; ctr != nil {
		for _, host := range sortedKeys(ctr.Registries) {
			if _, ok := seen[schema.RegistryHostsPath(host)]; ok {
				c.errorf(at("containerd", "registries", host), "registry %s: its hosts.toml is also written by files", host)
			}
		}
	}

	r := p.Rollout
	if mu := r.MaxUnavailable; mu.IsPct && (mu.Percent < 1 || mu.Percent > 100) {
		c.errorf(at("rollout", "maxUnavailable"), "maxUnavailable %s must be between 1%% and 100%%", mu)
	}
	c.duration(at("rollout", "soak"), r.Soak)
	c.duration(at("rollout", "nodeTimeout"), r.NodeTimeout)
	c.windows(at("rollout", "windows"), r.Windows)
	if h := r.HealthChecks; h != nil && h.CEL != "" {
		if _, err := healthcheck.CompileCEL(h.CEL); err != nil {
			c.errorf(at("rollout", "healthChecks", "cel"), "%v", err)
		}
	}
	c.drain(at("rollout", "drain"), r.Drain)
	if p.Remediation != nil {
		c.remediation(at("remediation"), p.Remediation)
	}
}

// drain checks a pool's drain policy: a timeout that can pass, a grace
// period kubectl could give, a pod selector Kubernetes accepts.
func (c *checker) drain(path []string, d schema.Drain) {
	at := func(rest ...string) []string { return append(slices.Clone(path), rest...) }
	if t, err := time.ParseDuration(d.Timeout); err != nil || t <= 0 {
		c.errorf(at("timeout"), "drain timeout %q must be a positive duration", d.Timeout)
	}
	if d.GracePeriod != "" {
		if g, err := time.ParseDuration(d.GracePeriod); err != nil || g < 0 || g%time.Second != 0 {
			c.errorf(at("gracePeriod"), "gracePeriod %q must be whole seconds, 0s or more (a pod's terminationGracePeriodSeconds)", d.GracePeriod)
		}
	}
	c.duration(at("skipWaitForDeleteTimeout"), d.SkipWaitForDeleteTimeout)
	if s := d.PodSelector; s != nil {
		for _, k := range sortedKeys(s.MatchLabels) {
			for _, msg := range validation.IsQualifiedName(k) {
				c.errorf(at("podSelector", "matchLabels", k), "invalid label key %q: %s", k, msg)
			}
		}
		for i, e := range s.MatchExpressions {
			here := at("podSelector", "matchExpressions", strconv.Itoa(i))
			for _, msg := range validation.IsQualifiedName(e.Key) {
				c.errorf(here, "invalid label key %q: %s", e.Key, msg)
			}
			switch hasValues := len(e.Values) > 0; e.Operator {
			case "In", "NotIn":
				if !hasValues {
					c.errorf(here, "operator %s needs values", e.Operator)
				}
			default:
				if hasValues {
					c.errorf(here, "operator %s takes no values", e.Operator)
				}
			}
		}
	}
}

// remediation checks what #Remediation cannot say: durations that parse and
// are positive, a percentage in range, replace only as the last rung.
func (c *checker) remediation(at []string, r *schema.Remediation) {
	path := func(rest ...string) []string { return append(slices.Clone(at), rest...) }
	if mu := r.MaxUnhealthy; mu.IsPct && (mu.Percent < 1 || mu.Percent > 100) {
		c.errorf(path("maxUnhealthy"), "maxUnhealthy %s must be between 1%% and 100%%", mu)
	}
	c.positive(path("quarantine", "window"), r.Quarantine.Window)
	for _, pr := range schema.Problems {
		l, ok := r.Problems[pr]
		if !ok {
			continue
		}
		c.positive(path("problems", string(pr), "duration"), l.Duration)
		for i, rung := range l.Rungs {
			c.positive(path("problems", string(pr), "rungs", strconv.Itoa(i), "timeout"), rung.Timeout)
			if rung.Action == schema.RepairReplace && i != len(l.Rungs)-1 {
				c.errorf(path("problems", string(pr), "rungs", strconv.Itoa(i), "action"), "replace must be the last rung: nothing can follow a replacement")
			}
		}
	}
}

// positive checks a duration that must parse and be above zero.
func (c *checker) positive(path []string, s string) {
	if d, err := time.ParseDuration(s); err != nil || d <= 0 {
		c.errorf(path, "invalid duration %q: want a positive duration such as \"5m\"", s)
	}
}

func (c *checker) duration(path []string, s string) {
	if s == "" {
		return
	}
	if d, err := time.ParseDuration(s); err != nil || d < 0 {
		c.errorf(path, "invalid duration %q", s)
	}
}

func (c *checker) windows(path []string, ws []schema.Window) {
	for i, w := range ws {
		if _, err := w.Compile(); err != nil {
			c.errorf(append(slices.Clone(path), strconv.Itoa(i)), "%v", err)
		}
	}
}

// selectors rejects pools whose selectors make some node match both: equal
// selectors, or one that holds every label of another.
func (c *checker) selectors(f *schema.Fleet, names []string) {
	for i, a := range names {
		for _, b := range names[i+1:] {
			sa, sb := f.Pools[a].Selector, f.Pools[b].Selector
			switch {
			case sa.String() == sb.String():
				c.errorf([]string{"pools", b, "selector"}, "same selector as pool %s (%s): every node would match both", a, sa)
			case sa.Matches(sb.MatchLabels):
				c.errorf([]string{"pools", b, "selector"}, "every node that matches this selector (%s) also matches pool %s (%s); make the selectors disjoint", sb, a, sa)
			case sb.Matches(sa.MatchLabels):
				c.errorf([]string{"pools", a, "selector"}, "every node that matches this selector (%s) also matches pool %s (%s); make the selectors disjoint", sa, b, sb)
			}
		}
	}
}

func allowlistText() string {
	var prefixes []string
	for _, r := range schema.FileAllowlist {
		prefixes = append(prefixes, r.Prefix)
	}
	return strings.Join(prefixes, ", ")
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}
