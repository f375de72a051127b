// Package config holds the Kubernetes manifests Herd installs (CRD, RBAC,
// controller, agent), assembled with kustomize and built into the binary.
package config

import (
	"embed"
	"fmt"
	"io/fs"
	"path"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

//go:embed kustomization.yaml */*.yaml
var manifests embed.FS

// Render assembles the manifests with kustomize and returns them as one
// YAML stream.
func Render() ([]byte, error) {
	mem := filesys.MakeFsInMemory()
	err := fs.WalkDir(manifests, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := manifests.ReadFile(p)
		if err != nil {
			return err
		}
		return mem.WriteFile(path.Join("/config", p), b)
	})
	if err != nil {
		return nil, fmt.Errorf("load manifests: %w", err)
	}
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(mem, "/config")
	if err != nil {
		return nil, fmt.Errorf("kustomize manifests: %w", err)
	}
	return res.AsYaml()
}
