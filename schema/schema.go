package schema

import (
	"embed"
	"io/fs"
	"path"
	"slices"
)

// ImportPath is the CUE import path of the schema package.
const ImportPath = "herd.dev/schema"

// VendorDir is where a fleet repo vendors the schema, relative to its root.
const VendorDir = "cue.mod/pkg/" + ImportPath

//go:embed *.cue
var cueFiles embed.FS

// Files returns the schema's CUE source files by name, as vendored into
// fleet repos.
func Files() map[string][]byte {
	out := map[string][]byte{}
	entries, _ := fs.ReadDir(cueFiles, ".")
	for _, e := range entries {
		b, _ := cueFiles.ReadFile(e.Name())
		out[e.Name()] = b
	}
	return out
}

// fileNames returns the schema's file names, sorted.
func fileNames() []string {
	var names []string
	for name := range Files() {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func vendorPath(name string) string { return path.Join(VendorDir, name) }
