package schema

import (
	"encoding/json"
	"fmt"
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
		if !isGenerated(f.Path) {
			if _, ok := AllowedPath(f.Path); !ok {
				return nil, fmt.Errorf("rendered config writes %s, outside the file allowlist: refusing it", f.Path)
			}
		}
	}
	return &r, nil
}

// isGenerated reports whether Herd itself generates the file at path.
func isGenerated(path string) bool {
	return path == KubeletDropInPath || path == ContainerdDropInPath || path == SysctlPath
}
