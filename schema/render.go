package schema

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// RenderVersion is part of every config hash. Bump it whenever the bytes
// Render produces for an unchanged pool change, so nodes pick the new files up.
const RenderVersion = 1

// Paths of the files Herd generates on a node.
const (
	KubeletDropInPath    = "/etc/kubernetes/kubelet.conf.d/50-herd.conf"
	ContainerdDropInPath = "/etc/containerd/conf.d/50-herd.toml"
	SysctlPath           = "/etc/sysctl.d/50-herd.conf"
	RegistryHostsDir     = "/etc/containerd/certs.d"
)

// NodeConfig is what a node applies for its pool: the pool without its
// selector and rollout policy, with its OSTree remote resolved.
type NodeConfig struct {
	OS         OSConfig          `json:"os"`
	KernelArgs []string          `json:"kernelArgs,omitempty"`
	Kubelet    *Kubelet          `json:"kubelet,omitempty"`
	Containerd *Containerd       `json:"containerd,omitempty"`
	Sysctl     map[string]string `json:"sysctl,omitempty"`
	Files      []File            `json:"files,omitempty"`
}

// OSConfig is the OS a node boots and where it pulls it from.
type OSConfig struct {
	Ref    string        `json:"ref"`
	Commit string        `json:"commit"`
	Remote *RemoteConfig `json:"remote,omitempty"`
}

// RemoteConfig is an OSTree remote, resolved from the fleet's remotes.
type RemoteConfig struct {
	Name      string `json:"name"`
	URL       string `json:"url"`
	GPGVerify bool   `json:"gpgVerify"`
}

// RenderedFile is one file a node writes, with the action a change to it needs.
type RenderedFile struct {
	Path    string     `json:"path"`
	Mode    int        `json:"mode"`
	Content string     `json:"content"`
	Apply   Disruption `json:"apply"`
}

// Rendered is a pool's node configuration exactly as the agent receives it:
// the structured config (for diffs and live sysctls) and every file it writes.
// Its Hash names it everywhere (annotations, ConfigMaps, status).
type Rendered struct {
	Version int            `json:"version"`
	Config  NodeConfig     `json:"config"`
	Files   []RenderedFile `json:"files"`
}

// Hash is the config hash: sha256 over the canonical JSON of the render.
// Maps marshal with sorted keys and lists are normalised by Render, so the
// hash does not depend on the order or layout of the CUE source.
func (r *Rendered) Hash() string {
	b, err := json.Marshal(r)
	if err != nil {
		// Rendered holds only strings, numbers, bools, maps and slices.
		panic(fmt.Sprintf("marshal rendered config: %v", err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// File returns the rendered file at path.
func (r *Rendered) File(path string) (RenderedFile, bool) {
	i, ok := slices.BinarySearchFunc(r.Files, path, func(f RenderedFile, p string) int { return strings.Compare(f.Path, p) })
	if !ok {
		return RenderedFile{}, false
	}
	return r.Files[i], true
}

// RenderPool renders one pool of a fleet.
func (f *Fleet) RenderPool(name string) (*Rendered, error) {
	p, ok := f.Pools[name]
	if !ok {
		return nil, fmt.Errorf("render pool %q: no such pool", name)
	}
	cfg := NodeConfig{
		OS:         OSConfig{Ref: p.OS.Ref, Commit: p.OS.Commit},
		KernelArgs: p.KernelArgs,
		Kubelet:    p.Kubelet,
		Containerd: p.Containerd,
		Sysctl:     p.Sysctl,
		Files:      slices.Clone(p.Files),
	}
	if p.OS.Remote != "" {
		r, ok := f.Remotes[p.OS.Remote]
		if !ok {
			return nil, fmt.Errorf("render pool %q: unknown OSTree remote %q", name, p.OS.Remote)
		}
		cfg.OS.Remote = &RemoteConfig{Name: p.OS.Remote, URL: r.URL, GPGVerify: r.GPGVerify}
	}
	r, err := Render(cfg)
	if err != nil {
		return nil, fmt.Errorf("render pool %q: %w", name, err)
	}
	return r, nil
}

// Render turns a node config into the files a node writes.
func Render(cfg NodeConfig) (*Rendered, error) {
	slices.SortFunc(cfg.Files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	if cfg.Kubelet != nil {
		k := *cfg.Kubelet
		k.AllowedUnsafeSysctls = slices.Sorted(slices.Values(k.AllowedUnsafeSysctls))
		cfg.Kubelet = &k
	}
	r := &Rendered{Version: RenderVersion, Config: cfg}

	if cfg.Kubelet != nil {
		content, err := renderKubelet(cfg.Kubelet)
		if err != nil {
			return nil, err
		}
		r.Files = append(r.Files, RenderedFile{Path: KubeletDropInPath, Mode: 0o644, Content: content, Apply: DisruptionRestartKubelet})
	}
	if c := cfg.Containerd; c != nil {
		if content := renderContainerd(c); content != "" {
			r.Files = append(r.Files, RenderedFile{Path: ContainerdDropInPath, Mode: 0o644, Content: content, Apply: DisruptionRestartContainerd})
		}
		for _, host := range sortedKeys(c.Registries) {
			r.Files = append(r.Files, RenderedFile{
				Path:    RegistryHostsPath(host),
				Mode:    0o644,
				Content: renderRegistryHosts(host, c.Registries[host]),
				Apply:   DisruptionNone,
			})
		}
	}
	if len(cfg.Sysctl) > 0 {
		r.Files = append(r.Files, RenderedFile{Path: SysctlPath, Mode: 0o644, Content: renderSysctl(cfg.Sysctl), Apply: DisruptionNone})
	}
	for _, f := range cfg.Files {
		if err := CheckFile(f.Path, f.Content); err != nil {
			return nil, err
		}
		rule, _ := AllowedPath(f.Path)
		r.Files = append(r.Files, RenderedFile{Path: f.Path, Mode: f.Mode, Content: f.Content, Apply: rule.Apply})
	}
	slices.SortFunc(r.Files, func(a, b RenderedFile) int { return strings.Compare(a.Path, b.Path) })
	for i := 1; i < len(r.Files); i++ {
		if r.Files[i].Path == r.Files[i-1].Path {
			return nil, fmt.Errorf("file %s is written twice", r.Files[i].Path)
		}
	}
	return r, nil
}

const generatedHeader = "Written by Herd. Do not edit: the next rollout replaces this file."

func renderKubelet(k *Kubelet) (string, error) {
	body, err := yaml.Marshal(k)
	if err != nil {
		return "", fmt.Errorf("render kubelet config: %w", err)
	}
	var b strings.Builder
	b.WriteString("# " + generatedHeader + "\n")
	b.WriteString("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n")
	if string(body) != "{}\n" {
		b.Write(body)
	}
	return b.String(), nil
}

// renderContainerd writes a containerd 2.x (config version 3) drop-in. It is
// empty when the pool sets nothing but registries: containerd 2.x reads
// /etc/containerd/certs.d by default.
func renderContainerd(c *Containerd) string {
	var images, pinned, runtime, runc tomlTable
	images.str("snapshotter", c.Snapshotter)
	images.int("max_concurrent_downloads", c.MaxConcurrentDownloads)
	images.bool("discard_unpacked_layers", c.DiscardUnpackedLayers)
	pinned.str("sandbox", c.SandboxImage)
	runtime.int("max_container_log_line_size", c.MaxContainerLogLineSize)
	runc.bool("SystemdCgroup", c.SystemdCgroup)

	var b strings.Builder
	const imagesTable = "plugins.'io.containerd.cri.v1.images'"
	const runtimeTable = "plugins.'io.containerd.cri.v1.runtime'"
	images.write(&b, imagesTable)
	pinned.write(&b, imagesTable+".pinned_images")
	runtime.write(&b, runtimeTable)
	runc.write(&b, runtimeTable+".containerd.runtimes.runc.options")
	if b.Len() == 0 {
		return ""
	}
	return "# " + generatedHeader + "\nversion = 3\n" + b.String()
}

func renderRegistryHosts(host string, r Registry) string {
	server := "https://" + host
	if host == "docker.io" {
		server = "https://registry-1.docker.io"
	}
	var b strings.Builder
	b.WriteString("# " + generatedHeader + "\n")
	b.WriteString("server = " + tomlString(server) + "\n")
	for _, m := range r.Mirrors {
		b.WriteString("\n[host." + tomlString(m) + "]\n")
		b.WriteString("capabilities = [\"pull\", \"resolve\"]\n")
		if r.SkipVerify {
			b.WriteString("skip_verify = true\n")
		}
	}
	return b.String()
}

func renderSysctl(s map[string]string) string {
	var b strings.Builder
	b.WriteString("# " + generatedHeader + "\n")
	for _, k := range sortedKeys(s) {
		b.WriteString(k + " = " + s[k] + "\n")
	}
	return b.String()
}

// tomlTable collects the set keys of one TOML table, in insertion order.
type tomlTable struct{ lines []string }

func (t *tomlTable) str(key, v string) {
	if v != "" {
		t.lines = append(t.lines, key+" = "+tomlString(v))
	}
}

func (t *tomlTable) int(key string, v *int) {
	if v != nil {
		t.lines = append(t.lines, fmt.Sprintf("%s = %d", key, *v))
	}
}

func (t *tomlTable) bool(key string, v *bool) {
	if v != nil {
		t.lines = append(t.lines, fmt.Sprintf("%s = %t", key, *v))
	}
}

func (t *tomlTable) write(b *strings.Builder, name string) {
	if len(t.lines) == 0 {
		return
	}
	b.WriteString("\n[" + name + "]\n")
	for _, l := range t.lines {
		b.WriteString(l + "\n")
	}
}

// tomlString quotes s as a TOML basic string. JSON's string escapes are a
// subset of TOML's, so a JSON encoder without HTML escaping does it.
func tomlString(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(buf.String(), "\n")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sortStrings(s []string) { slices.Sort(s) }
