package loader

import (
	"cmp"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"herd.dev/herd/schema"
)

// Diagnostic is one problem in a fleet, at a position in one of its files.
// File is relative to the fleet root; Line and Column are 1-based and zero
// when the problem has no position inside a file.
type Diagnostic struct {
	File    string `json:"file,omitempty"`
	Line    int    `json:"line,omitempty"`
	Column  int    `json:"column,omitempty"`
	Path    string `json:"path,omitempty"`
	Message string `json:"message"`
	// Limit names the budget limit the fleet exceeds, when that is the
	// problem (the fleet is then rejected as over budget).
	Limit Limit `json:"limit,omitempty"`
}

// String formats the diagnostic as "file:line:col: message".
func (d Diagnostic) String() string {
	var b strings.Builder
	switch {
	case d.File != "" && d.Line > 0:
		fmt.Fprintf(&b, "%s:%d:%d: ", d.File, d.Line, d.Column)
	case d.File != "":
		b.WriteString(d.File + ": ")
	}
	if d.Path != "" {
		b.WriteString(d.Path + ": ")
	}
	b.WriteString(d.Message)
	return b.String()
}

// Diagnostics is a list of problems, and an error when it is not empty.
type Diagnostics []Diagnostic

func (ds Diagnostics) Error() string {
	lines := make([]string, len(ds))
	for i, d := range ds {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

// sorted orders diagnostics by file, position, path and message, and drops
// duplicates (the same file can be part of several CUE instances).
func (ds Diagnostics) sorted() Diagnostics {
	out := slices.Clone(ds)
	slices.SortFunc(out, func(a, b Diagnostic) int {
		return cmp.Or(
			cmp.Compare(a.File, b.File),
			cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Column, b.Column),
			cmp.Compare(a.Path, b.Path),
			cmp.Compare(a.Message, b.Message),
		)
	})
	return slices.Compact(out)
}

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// fileNames returns the schema's CUE file names, sorted.
func fileNames() []string { return sortedKeys(schema.Files()) }

// vendorPath is where a fleet repo vendors one of the schema's files.
func vendorPath(name string) string { return path.Join(schema.VendorDir, name) }
