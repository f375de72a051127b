package schema

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Rendered configs travel to nodes as immutable ConfigMaps named by hash.
const (
	RenderedNamespace = "herd-system"
	RenderedPrefix    = "herd-rendered-"
	RenderedDataKey   = "rendered.json"
	LabelRendered     = AnnotationPrefix + "rendered" // "true" on every rendered ConfigMap
	LabelConfigHash   = AnnotationPrefix + "config-hash"
)

// RenderedName returns the name of the ConfigMap holding the render with hash.
func RenderedName(hash string) string { return RenderedPrefix + hash }

// MarshalRendered returns the ConfigMap data for a render.
func MarshalRendered(r *Rendered) ([]byte, error) {
	return json.Marshal(r)
}

// ParseRendered decodes ConfigMap data and checks that it hashes to want, so a
// node never applies a config other than the one it was told to.
func ParseRendered(data []byte, want string) (*Rendered, error) {
	var r Rendered
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode rendered config: %w", err)
	}
	if got := r.Hash(); got != want {
		return nil, fmt.Errorf("rendered config hashes to %s, not %s: refusing it", got, want)
	}
	for _, f := range r.Files {
		if GeneratedPath(f.Path) {
			continue
		}
		rule, ok := AllowedPath(f.Path)
		if !ok {
			return nil, fmt.Errorf("rendered config writes %s, outside the file allowlist: refusing it", f.Path)
		}
		if rule.Content != nil {
			if err := rule.Content(f.Content); err != nil {
				return nil, fmt.Errorf("rendered config writes %s: %w: refusing it", f.Path, err)
			}
		}
	}
	return &r, nil
}

// GeneratedPath reports whether Herd itself generates the file at path: the
// kubelet, containerd and sysctl drop-ins, and a registry's hosts.toml.
func GeneratedPath(path string) bool {
	switch path {
	case KubeletDropInPath, ContainerdDropInPath, SysctlPath:
		return true
	}
	host, ok := strings.CutPrefix(path, RegistryHostsDir+"/")
	if !ok {
		return false
	}
	host, ok = strings.CutSuffix(host, "/hosts.toml")
	return ok && ValidRegistryHost(host)
}

// RegistryHostsPath is where containerd reads the configuration of a
// registry host ("registry.local:5000" included: containerd names the
// directory host:port).
func RegistryHostsPath(host string) string {
	return RegistryHostsDir + "/" + host + "/hosts.toml"
}

// ValidRegistryHost reports whether host is #RegistryHost: a DNS name or
// IPv4 address, with an optional port.
func ValidRegistryHost(host string) bool {
	name, port, hasPort := strings.Cut(host, ":")
	if hasPort {
		if port == "" || len(port) > 5 {
			return false
		}
		for _, c := range port {
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	if name == "" || len(name) > 253 || name[0] == '-' || name[0] == '.' || name[len(name)-1] == '-' || name[len(name)-1] == '.' {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return !strings.Contains(name, "..")
}
