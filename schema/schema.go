// Package schema is Herd's API in plain Go: the node-pool types a fleet repo
// declares, their render into node config and its hash, the annotations and
// disruption classes controller and agent share. It links no CUE and no CEL:
// the node agent imports it (schema/loader evaluates CUE).
package schema

import (
	"embed"
	"io/fs"
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
