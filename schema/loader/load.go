// Package loader evaluates a fleet repo: it loads its CUE under a size and
// nesting budget, validates it against the schema and Herd's own rules, and
// renders every pool. Errors are Diagnostics with a file and line.
package loader

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"herd.dev/herd/schema"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/build"
	"cuelang.org/go/cue/cuecontext"
	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/load"
	"cuelang.org/go/cue/parser"
	"cuelang.org/go/cue/token"
)

// Limits on what a fleet may hold, so that bad input gets a clear error
// instead of exhausting memory or the stack.
const (
	MaxFileSize  = 1 << 20  // bytes in one CUE file
	MaxTotalSize = 32 << 20 // bytes in all CUE files of a fleet
	MaxFiles     = 10000    // CUE files in a fleet
	MaxNesting   = 100      // depth of nested braces, brackets and parentheses
)

const moduleFile = "cue.mod/module.cue"

var notModule = Diagnostics{{File: moduleFile, Message: "not found: the fleet root is not a CUE module (create one with `cue mod init`)"}}

// Result is an evaluated, valid fleet.
type Result struct {
	Fleet    *schema.Fleet
	Package  string                      // the fleet's CUE package name
	Rendered map[string]*schema.Rendered // by pool name
	Warnings Diagnostics                 // problems that do not make the fleet invalid
}

// Hash returns the config hash of a pool.
func (r *Result) Hash(pool string) string { return r.Rendered[pool].Hash() }

// PoolNames returns the fleet's pool names, sorted.
func (r *Result) PoolNames() []string { return sortedKeys(r.Fleet.Pools) }

// LoadDir evaluates the fleet rooted at dir within DefaultBudget. An invalid
// fleet returns Diagnostics, with file names relative to dir.
func LoadDir(dir string) (*Result, error) { return DefaultBudget.LoadDir(dir) }

// LoadDir evaluates the fleet rooted at dir within the budget's limits on
// its source. (The process's memory and time are bounded by schema/sandbox.)
func (b Budget) LoadDir(dir string) (*Result, error) {
	files, err := b.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	return b.Load(files)
}

// ReadDir reads the files of the fleet rooted at dir that Load needs within
// DefaultBudget.
func ReadDir(dir string) (map[string][]byte, error) { return DefaultBudget.ReadDir(dir) }

// ReadDir reads the files of the fleet rooted at dir that Load needs: every
// CUE file, skipping hidden directories. Paths are slash-separated and
// relative to dir. A symbolic link named *.cue is an error: Herd reads only
// regular files, and would otherwise drop it without a word.
func (b Budget) ReadDir(dir string) (map[string][]byte, error) {
	b = b.orDefault()
	info, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("read fleet: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("read fleet: %s is not a directory", dir)
	}
	if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(moduleFile))); err != nil {
		return nil, notModule
	}
	files := map[string][]byte{}
	var total int64
	var diags Diagnostics
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".cue") {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			diags = append(diags, Diagnostic{File: rel, Message: "is a symbolic link: fleet files must be regular files (herd does not follow links)"})
			return nil
		}
		if !d.Type().IsRegular() {
			diags = append(diags, Diagnostic{File: rel, Message: "is not a regular file"})
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Size() > b.MaxFileSize {
			diags = append(diags, overBudget(LimitFileSize, rel, 0, 0, "file is %d bytes; the limit is %d", info.Size(), b.MaxFileSize))
			return nil
		}
		if total += info.Size(); total > b.MaxTotalSize {
			diags = append(diags, overBudget(LimitTotalSize, "", 0, 0, "the fleet holds more than %d bytes of CUE", b.MaxTotalSize))
			return filepath.SkipAll
		}
		if len(files) >= b.MaxFiles {
			diags = append(diags, overBudget(LimitFiles, "", 0, 0, "the fleet holds more than %d CUE files", b.MaxFiles))
			return filepath.SkipAll
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[rel] = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read fleet %s: %w", dir, err)
	}
	if len(diags) > 0 {
		return nil, diags.sorted()
	}
	return files, nil
}

// Load evaluates a fleet from its files within DefaultBudget.
func Load(files map[string][]byte) (*Result, error) { return DefaultBudget.Load(files) }

// Load evaluates a fleet from its files (slash-separated paths relative to
// the fleet root), against the schema built into Herd, within the budget's
// limits on the source. A vendored copy of the schema that differs from
// Herd's is reported as a warning and not used.
func (b Budget) Load(files map[string][]byte) (*Result, error) {
	b = b.orDefault()
	if _, ok := files[moduleFile]; !ok {
		return nil, notModule
	}
	if diags := b.checkSizes(files); len(diags) > 0 {
		return nil, diags.sorted()
	}
	var diags Diagnostics
	for name, src := range files {
		if d, ok := b.checkDepth(name, src); !ok {
			diags = append(diags, d)
		}
	}
	if len(diags) > 0 {
		return nil, diags.sorted()
	}
	pkg, diags := rootPackage(files)
	if len(diags) > 0 {
		return nil, diags.sorted()
	}
	if diags := b.checkPackages(files, pkg); len(diags) > 0 {
		return nil, diags.sorted()
	}

	res := &Result{Package: pkg, Warnings: vendorDrift(files)}

	// The loader reads a directory; give it an empty private one with the
	// fleet's files, and Herd's schema in place of the vendored copy, laid
	// over it, so what is evaluated is exactly what was passed in.
	root, err := os.MkdirTemp("", "herd-fleet-")
	if err != nil {
		return nil, fmt.Errorf("load fleet: %w", err)
	}
	defer os.Remove(root)
	overlay := map[string]load.Source{}
	for name, src := range files {
		if strings.HasPrefix(name, schema.VendorDir+"/") {
			continue
		}
		overlay[filepath.Join(root, filepath.FromSlash(name))] = load.FromBytes(src)
	}
	for name, src := range schema.Files() {
		overlay[filepath.Join(root, filepath.FromSlash(vendorPath(name)))] = load.FromBytes(src)
	}

	ctx := cuecontext.New()
	v, diags := evaluate(ctx, root, overlay, pkg)
	if v.Exists() {
		// Decode pool by pool and check every pool that evaluated, so one
		// broken pool does not hide the problems of the others.
		fleet, more := decode(v, root)
		if len(more) > 0 {
			decls := poolDecls(files)
			for _, d := range more {
				diags = append(diags, relocate(v, root, decls, d))
			}
		}
		diags = append(diags, check(v, root, fleet)...)
		if err := v.Err(); err != nil && len(diags) == 0 {
			diags = cueDiagnostics(err, root) // outside pools and remotes
		}
		diags = append(diags, topLevel(v, root, fleet)...)
		diags = append(diags, b.checkStrings(v, root, fleet)...)
		res.Fleet = fleet
	}
	if len(diags) > 0 {
		return nil, diags.sorted()
	}
	res.Rendered = map[string]*schema.Rendered{}
	for _, name := range sortedKeys(res.Fleet.Pools) {
		r, err := res.Fleet.RenderPool(name)
		if err != nil {
			return nil, Diagnostics{{Path: "pools." + name, Message: err.Error(), File: posOf(v, root, "pools", name).File}}
		}
		res.Rendered[name] = r
	}
	return res, nil
}

// decode turns the fleet's remotes and pools into Go values, one by one,
// reporting each that does not evaluate to a concrete, valid value.
func decode(v cue.Value, root string) (*schema.Fleet, Diagnostics) {
	fleet := &schema.Fleet{Pools: map[string]schema.NodePool{}}
	var diags Diagnostics
	each := func(field string, into func(name string, fv cue.Value) error) {
		iter, err := v.LookupPath(cue.ParsePath(field)).Fields()
		if err != nil {
			return // absent: only pools is required, and evaluate checked it
		}
		for iter.Next() {
			name, fv := iter.Selector().Unquoted(), iter.Value()
			if into(name, fv) == nil {
				continue
			}
			// Decoding stops at the first problem; validation finds them all.
			err := fv.Validate(cue.Concrete(true), cue.All())
			if err == nil {
				err = into(name, fv)
			}
			diags = append(diags, cueDiagnostics(err, root)...)
		}
	}
	each("remotes", func(name string, fv cue.Value) error {
		var r schema.Remote
		err := decodeJSON(fv, &r)
		if err == nil {
			if fleet.Remotes == nil {
				fleet.Remotes = map[string]schema.Remote{}
			}
			fleet.Remotes[name] = r
		}
		return err
	})
	each("pools", func(name string, fv cue.Value) error {
		var p schema.NodePool
		err := decodeJSON(fv, &p)
		if err == nil {
			fleet.Pools[name] = p
		}
		return err
	})
	return fleet, diags
}

// evaluate builds every instance of the fleet package (the root and each
// directory below it that holds files of the same package, as `cue vet ./...`
// does) and unifies them with #Fleet.
func evaluate(ctx *cue.Context, root string, overlay map[string]load.Source, pkg string) (cue.Value, Diagnostics) {
	cfg := &load.Config{
		Dir:     root,
		Overlay: overlay,
		Package: pkg,
		Env:     []string{"CUE_REGISTRY=none"},
	}
	insts := load.Instances([]string{"./..."}, cfg)
	var diags Diagnostics
	var built []*build.Instance
	for _, inst := range insts {
		if inst.Err != nil {
			diags = append(diags, cueDiagnostics(inst.Err, root)...)
			continue
		}
		if inst.PkgName != pkg {
			continue
		}
		built = append(built, inst)
	}
	if len(diags) > 0 {
		return cue.Value{}, diags
	}
	// Every instance below the root includes the root's files, so the root
	// instance adds nothing when there are others; skip evaluating it twice.
	if len(built) > 1 {
		built = slices.DeleteFunc(built, func(inst *build.Instance) bool { return inst.Dir == root })
	}
	def, err := fleetDefinition(ctx)
	if err != nil {
		return cue.Value{}, Diagnostics{{Message: err.Error()}}
	}
	v := def
	values, err := ctx.BuildInstances(built)
	if err != nil {
		return cue.Value{}, cueDiagnostics(err, root)
	}
	for _, iv := range values {
		v = v.Unify(iv)
	}
	if !v.LookupPath(cue.ParsePath("pools")).Exists() {
		return cue.Value{}, Diagnostics{{Message: fmt.Sprintf("package %s declares no pools: a fleet's root package declares `pools: [Name=string]: schema.#NodePool`", pkg)}}
	}
	return v, diags
}

// fleetDefinition compiles Herd's schema and returns #Fleet.
func fleetDefinition(ctx *cue.Context) (cue.Value, error) {
	inst := build.NewContext().NewInstance(schema.ImportPath, nil)
	for _, name := range fileNames() {
		f, err := parser.ParseFile(vendorPath(name), schema.Files()[name], parser.ParseComments)
		if err != nil {
			return cue.Value{}, fmt.Errorf("parse built-in schema: %w", err)
		}
		if err := inst.AddSyntax(f); err != nil {
			return cue.Value{}, fmt.Errorf("build built-in schema: %w", err)
		}
	}
	v := ctx.BuildInstance(inst)
	if err := v.Err(); err != nil {
		return cue.Value{}, fmt.Errorf("build built-in schema: %w", err)
	}
	return v.LookupPath(cue.ParsePath("#Fleet")), nil
}

// rootPackage finds the package of the CUE files at the fleet root.
func rootPackage(files map[string][]byte) (string, Diagnostics) {
	pkgs := map[string]string{} // package → first file
	var diags Diagnostics
	for _, name := range sortedKeys(files) {
		if strings.Contains(name, "/") || !strings.HasSuffix(name, ".cue") {
			continue
		}
		f, err := parser.ParseFile(name, files[name], parser.PackageClauseOnly)
		if err != nil {
			diags = append(diags, cueDiagnostics(err, "")...)
			continue
		}
		pkg := f.PackageName()
		if pkg == "" {
			diags = append(diags, Diagnostic{File: name, Line: 1, Column: 1, Message: "missing package clause: fleet files declare a package, such as `package fleet`"})
			continue
		}
		if _, ok := pkgs[pkg]; !ok {
			pkgs[pkg] = name
		}
	}
	if len(diags) > 0 {
		return "", diags
	}
	switch len(pkgs) {
	case 0:
		return "", Diagnostics{{Message: "no CUE files at the fleet root: the root package declares `pools: [Name=string]: schema.#NodePool`"}}
	case 1:
		for pkg := range pkgs {
			return pkg, nil
		}
	}
	var list []string
	for _, pkg := range sortedKeys(pkgs) {
		list = append(list, fmt.Sprintf("%s (%s)", pkg, pkgs[pkg]))
	}
	return "", Diagnostics{{Message: "the fleet root holds several packages: " + strings.Join(list, ", ")}}
}

// vendorDrift warns when the fleet vendors a schema other than Herd's.
func vendorDrift(files map[string][]byte) Diagnostics {
	var vendored []string
	for name := range files {
		if strings.HasPrefix(name, schema.VendorDir+"/") {
			vendored = append(vendored, name)
		}
	}
	if len(vendored) == 0 {
		return Diagnostics{{File: schema.VendorDir, Message: "schema not vendored: `cue vet` cannot check this fleet; run `herd schema vendor`"}}
	}
	var diags Diagnostics
	ours := schema.Files()
	for _, name := range fileNames() {
		if b, ok := files[vendorPath(name)]; !ok || !bytes.Equal(b, ours[name]) {
			diags = append(diags, Diagnostic{File: vendorPath(name), Message: "differs from the schema built into herd (herd evaluates with its own); run `herd schema vendor` to update it"})
		}
	}
	for _, name := range vendored {
		if _, ok := ours[path.Base(name)]; !ok || path.Dir(name) != schema.VendorDir {
			diags = append(diags, Diagnostic{File: name, Message: "not part of the schema built into herd; run `herd schema vendor` to update the vendored schema"})
		}
	}
	return diags
}

// cueDiagnostics turns CUE errors into diagnostics, each placed at the
// position in the fleet's own files that best explains it.
func cueDiagnostics(err error, root string) Diagnostics {
	var diags Diagnostics
	for _, e := range cueerrors.Errors(err) {
		format, args := e.Msg()
		d := Diagnostic{Message: shorten(fmt.Sprintf(format, args...))}
		if p := e.Path(); len(p) > 0 {
			d.Path = strings.Join(p, ".")
		}
		if pos, ok := bestPos(e, root); ok {
			d.File, d.Line, d.Column = pos.Filename, pos.Line, pos.Column
		}
		d = explain(d)
		if !slices.ContainsFunc(diags, func(o Diagnostic) bool { return o.Path == d.Path && o.Message == d.Message }) {
			diags = append(diags, d)
		}
	}
	if len(diags) == 0 && err != nil {
		diags = append(diags, Diagnostic{Message: err.Error()})
	}
	return mergeDisjunctions(diags)
}

var conflicting = regexp.MustCompile(`^conflicting values ("(?:[^"\\]|\\.)*") and ("(?:[^"\\]|\\.)*")$`)

// mergeDisjunctions says once that a value is none of an enumeration's
// strings, where CUE reports the empty disjunction and then a conflict
// with every choice.
func mergeDisjunctions(diags Diagnostics) Diagnostics {
	type key struct{ path, value string }
	choices := map[key][]string{}
	first := map[key]int{}
	for i, d := range diags {
		if m := conflicting.FindStringSubmatch(d.Message); m != nil {
			k := key{d.Path, m[2]}
			if _, ok := first[k]; !ok {
				first[k] = i
			}
			choices[k] = append(choices[k], m[1])
		}
	}
	var out Diagnostics
	for i, d := range diags {
		if strings.HasSuffix(d.Message, "errors in empty disjunction:") && slices.ContainsFunc(diags, func(o Diagnostic) bool {
			return o.Path == d.Path && conflicting.MatchString(o.Message)
		}) {
			continue
		}
		if m := conflicting.FindStringSubmatch(d.Message); m != nil {
			k := key{d.Path, m[2]}
			if len(choices[k]) < 2 {
				out = append(out, d)
			} else if first[k] == i {
				d.Message = m[2] + " is not one of " + strings.Join(choices[k], ", ")
				out = append(out, d)
			}
			continue
		}
		out = append(out, d)
	}
	return out
}

// maxMessage bounds a diagnostic's message: CUE quotes values in full, and
// a value can be a megabyte.
const maxMessage = 1024

func shorten(msg string) string {
	if len(msg) <= maxMessage {
		return msg
	}
	return fmt.Sprintf("%s… (%d bytes in all)", strings.ToValidUTF8(msg[:maxMessage], ""), len(msg))
}

// bestPos prefers a position in the fleet's own files over one in the schema.
func bestPos(e cueerrors.Error, root string) (token.Position, bool) {
	var fallback token.Position
	found := false
	for _, p := range append([]token.Pos{e.Position()}, e.InputPositions()...) {
		if !p.IsValid() {
			continue
		}
		pos := p.Position()
		pos.Filename = relative(root, pos.Filename)
		if !strings.HasPrefix(pos.Filename, "cue.mod/") {
			return pos, true
		}
		if !found {
			fallback, found = pos, true
		}
	}
	return fallback, found
}

// posOf finds where the value at a path is written in the fleet's own files.
func posOf(v cue.Value, root string, sels ...string) Diagnostic {
	path := make([]cue.Selector, len(sels))
	for i, s := range sels {
		path[i] = cue.Str(s)
		if n, err := strconv.Atoi(s); err == nil && n >= 0 && i > 0 && listFields[sels[i-1]] {
			path[i] = cue.Index(n)
		}
	}
	d := Diagnostic{Path: cuePathString(sels)}
	fv := v.LookupPath(cue.MakePath(path...))
	if !fv.Exists() {
		return d
	}
	var candidates []token.Pos
	if src := fv.Source(); src != nil {
		candidates = append(candidates, src.Pos())
	}
	candidates = append(candidates, fv.Pos())
	_, parts := fv.Expr()
	for _, p := range parts {
		candidates = append(candidates, p.Pos())
	}
	for _, p := range candidates {
		if !p.IsValid() {
			continue
		}
		pos := p.Position()
		name := relative(root, pos.Filename)
		if strings.HasPrefix(name, "cue.mod/") {
			continue
		}
		d.File, d.Line, d.Column = name, pos.Line, pos.Column
		return d
	}
	return d
}

// relocate moves a diagnostic that only has a position in the schema (such
// as a required field that is missing) to the nearest enclosing value the
// fleet itself writes.
func relocate(v cue.Value, root string, decls map[string]Diagnostic, d Diagnostic) Diagnostic {
	if d.File != "" && !strings.HasPrefix(d.File, "cue.mod/") || d.Path == "" {
		return d
	}
	if rest, ok := strings.CutPrefix(d.Path, "pools."); ok {
		name, _, _ := strings.Cut(rest, ".")
		if p, ok := decls[name]; ok {
			d.File, d.Line, d.Column = p.File, p.Line, p.Column
			return d
		}
	}
	var sels []string
	for rest := d.Path; rest != ""; {
		var last string
		rest, last = splitPath(rest)
		if uq, err := strconv.Unquote(last); err == nil {
			last = uq
		}
		sels = append([]string{last}, sels...)
	}
	for i := len(sels); i > 0; i-- {
		if p := posOf(v, root, sels[:i]...); p.File != "" {
			d.File, d.Line, d.Column = p.File, p.Line, p.Column
			break
		}
	}
	return d
}

// poolDecls finds where each pool is first declared (`pools: name: ...`) in
// the fleet's own files, sorted by name.
func poolDecls(files map[string][]byte) map[string]Diagnostic {
	out := map[string]Diagnostic{}
	for _, name := range sortedKeys(files) {
		if !strings.HasSuffix(name, ".cue") || strings.HasPrefix(name, "cue.mod/") {
			continue
		}
		f, err := parser.ParseFile(name, files[name])
		if err != nil {
			continue
		}
		for _, decl := range f.Decls {
			field, ok := decl.(*ast.Field)
			if !ok {
				continue
			}
			if label, _, _ := ast.LabelName(field.Label); label != "pools" {
				continue
			}
			st, ok := field.Value.(*ast.StructLit)
			if !ok {
				continue
			}
			for _, elt := range st.Elts {
				pf, ok := elt.(*ast.Field)
				if !ok {
					continue
				}
				pool, isIdent, err := ast.LabelName(pf.Label)
				if err != nil || !isIdent && pool == "" {
					continue
				}
				if _, seen := out[pool]; !seen {
					pos := pf.Label.Pos().Position()
					out[pool] = Diagnostic{File: name, Line: pos.Line, Column: pos.Column}
				}
			}
		}
	}
	return out
}

// listFields are the schema's lists, whose path elements are indices.
var listFields = map[string]bool{"kernelArgs": true, "files": true, "mirrors": true, "allowedUnsafeSysctls": true, "windows": true, "days": true, "rungs": true, "matchExpressions": true, "values": true}

// cuePathString writes a path as CUE does, quoting labels that are not
// identifiers.
func cuePathString(sels []string) string {
	var b strings.Builder
	for i, s := range sels {
		if i > 0 {
			b.WriteByte('.')
		}
		if i > 0 && listFields[sels[i-1]] {
			b.WriteString(s)
		} else {
			b.WriteString(schema.PathLabel(s))
		}
	}
	return b.String()
}

// relative makes a file name from the loader relative to the fleet root.
func relative(root, name string) string {
	if root == "" {
		return name
	}
	if rel, err := filepath.Rel(root, name); err == nil && !strings.HasPrefix(rel, "..") {
		return filepath.ToSlash(rel)
	}
	return name
}

// decodeJSON decodes a concrete value through JSON, which is quicker than
// cue.Value.Decode for these plain types.
func decodeJSON(v cue.Value, into any) error {
	b, err := v.MarshalJSON()
	if err != nil {
		return err
	}
	return json.Unmarshal(b, into)
}
