package loader

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"herd.dev/herd/schema"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/parser"
)

// topLevelFields are the regular fields #Fleet declares. Anything else at
// the top of a fleet is a typo (hidden fields, definitions and let clauses
// are the place for helpers).
var topLevelFields = []string{"remotes", "pools", "maintenance"}

// checkPackages rejects files Herd would silently leave out: a CUE file
// outside cue.mod whose package is not the fleet's and that no fleet file
// imports. It also counts the fleet's instances against the budget.
func (b Budget) checkPackages(files map[string][]byte, pkg string) Diagnostics {
	pkgs := map[string]string{}      // file → package
	imports := map[string][]string{} // file → import paths
	var diags Diagnostics
	for _, name := range sortedKeys(files) {
		if !strings.HasSuffix(name, ".cue") || strings.HasPrefix(name, "cue.mod/") {
			continue
		}
		f, err := parser.ParseFile(name, files[name], parser.ImportsOnly)
		if err != nil {
			diags = append(diags, cueDiagnostics(err, "")...)
			continue
		}
		pkgs[name] = f.PackageName()
		for spec := range f.ImportSpecs() {
			if p, err := strconv.Unquote(spec.Path.Value); err == nil {
				imports[name] = append(imports[name], p)
			}
		}
	}
	if len(diags) > 0 {
		return diags
	}
	imported := importedDirs(modulePath(files), pkgs, imports, pkg)
	for _, name := range sortedKeys(pkgs) {
		p := pkgs[name]
		if p == pkg || imported[path.Dir(name)] {
			continue
		}
		what := "has no package clause"
		if p != "" {
			what = "declares package " + p
		}
		diags = append(diags, Diagnostic{File: name, Line: 1, Column: 1, Message: fmt.Sprintf("%s, not the fleet's package %s, and no fleet file imports it: herd would ignore it (declare `package %s`, or move it out of the fleet)", what, pkg, pkg)})
	}
	return append(diags, b.checkInstances(pkgs, pkg)...)
}

// importedDirs returns the directories (relative to the fleet root) whose
// packages the fleet's package imports, directly or through each other.
func importedDirs(module string, pkgs map[string]string, imports map[string][]string, pkg string) map[string]bool {
	dirs := map[string]bool{}
	if module == "" {
		return dirs
	}
	var queue []string
	for name, p := range pkgs {
		if p == pkg {
			queue = append(queue, name)
		}
	}
	seen := map[string]bool{}
	for len(queue) > 0 {
		name := queue[0]
		queue = queue[1:]
		if seen[name] {
			continue
		}
		seen[name] = true
		for _, imp := range imports[name] {
			imp, _, _ = strings.Cut(imp, ":")
			rel, ok := strings.CutPrefix(imp, module+"/")
			if !ok || dirs[rel] {
				continue
			}
			dirs[rel] = true
			for other := range pkgs {
				if path.Dir(other) == rel {
					queue = append(queue, other)
				}
			}
		}
	}
	return dirs
}

// modulePath reads the module path from cue.mod/module.cue ("" if none).
func modulePath(files map[string][]byte) string {
	f, err := parser.ParseFile(moduleFile, files[moduleFile])
	if err != nil {
		return ""
	}
	for _, decl := range f.Decls {
		field, ok := decl.(*ast.Field)
		if !ok {
			continue
		}
		if label, _, _ := ast.LabelName(field.Label); label != "module" {
			continue
		}
		if lit, ok := field.Value.(*ast.BasicLit); ok {
			if s, err := strconv.Unquote(lit.Value); err == nil {
				s, _, _ = strings.Cut(s, "@")
				return s
			}
		}
	}
	return ""
}

// topLevel rejects regular top-level fields #Fleet does not declare (a typo
// such as `maintenence:` would otherwise be ignored) and a fleet with no
// pools.
func topLevel(v cue.Value, root string, f *schema.Fleet) Diagnostics {
	var diags Diagnostics
	iter, err := v.Fields()
	if err != nil {
		return nil // reported by evaluation
	}
	for iter.Next() {
		name := iter.Selector().Unquoted()
		if slices.Contains(topLevelFields, name) {
			continue
		}
		d := posOf(v, root, name)
		d.Message = fmt.Sprintf("unknown top-level field %s: a fleet declares %s", schema.PathLabel(name), strings.Join(topLevelFields, ", "))
		if s := closest(name, topLevelFields); s != "" {
			d.Message += " (did you mean " + s + "?)"
		}
		d.Message += "; helpers go in hidden fields (_name) or definitions (#Name)"
		diags = append(diags, d)
	}
	if f != nil && len(f.Pools) == 0 && len(diags) == 0 {
		d := posOf(v, root, "pools")
		d.Message = "the fleet declares no pools: an empty fleet would leave every node unmanaged"
		diags = append(diags, d)
	}
	return diags
}

// checkStrings rejects strings longer than MaxString anywhere in the
// evaluated fleet, naming where each is.
func (b Budget) checkStrings(v cue.Value, root string, f *schema.Fleet) Diagnostics {
	if f == nil {
		return nil
	}
	var diags Diagnostics
	var walk func(path []string, x cue.Value)
	walk = func(path []string, x cue.Value) {
		if len(diags) >= 10 {
			return
		}
		switch x.IncompleteKind() {
		case cue.StringKind:
			if s, err := x.String(); err == nil && len(s) > b.MaxString {
				d := posOf(v, root, path...)
				diags = append(diags, overBudget(LimitString, d.File, d.Line, d.Column, "%s: a string of %d bytes; the limit is %d", cuePathString(path), len(s), b.MaxString))
			}
		case cue.StructKind:
			iter, err := x.Fields()
			if err != nil {
				return
			}
			for iter.Next() {
				walk(append(slices.Clone(path), iter.Selector().Unquoted()), iter.Value())
			}
		case cue.ListKind:
			iter, err := x.List()
			if err != nil {
				return
			}
			for i := 0; iter.Next(); i++ {
				walk(append(slices.Clone(path), strconv.Itoa(i)), iter.Value())
			}
		}
	}
	for _, top := range topLevelFields {
		walk([]string{top}, v.LookupPath(cue.MakePath(cue.Str(top))))
	}
	return diags
}
