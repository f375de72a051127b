package loader

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"herd.dev/herd/schema"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
	"github.com/google/go-cmp/cmp"
)

// TestGoTypesMatchCUE keeps the Go types in step with the CUE definitions:
// the same field names, optional in both or in neither, of compatible kinds.
func TestGoTypesMatchCUE(t *testing.T) {
	def, err := fleetDefinition(cuecontext.New())
	if err != nil {
		t.Fatal(err)
	}
	compareType(t, "#Fleet", def, reflect.TypeFor[schema.Fleet]())
}

var intOrPercent = reflect.TypeFor[schema.IntOrPercent]()

func compareType(t *testing.T, path string, v cue.Value, typ reflect.Type) {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	kind := v.IncompleteKind()
	switch {
	case typ == intOrPercent:
		if kind != cue.IntKind|cue.StringKind {
			t.Errorf("%s: Go IntOrPercent, CUE kind %v", path, kind)
		}
	case typ.Kind() == reflect.Struct:
		if kind != cue.StructKind {
			t.Errorf("%s: Go struct, CUE kind %v", path, kind)
			return
		}
		cueFields := map[string]bool{} // name → optional
		iter, err := v.Fields(cue.Optional(true))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		for iter.Next() {
			cueFields[iter.Selector().Unquoted()] = iter.Selector().ConstraintType() == cue.OptionalConstraint
		}
		goFields := map[string]bool{}
		for f := range typ.Fields() {
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			goFields[name] = opts == "omitempty"
			compareType(t, path+"."+name, v.LookupPath(cue.MakePath(cue.Str(name).Optional())), f.Type)
		}
		if diff := cmp.Diff(cueFields, goFields); diff != "" {
			t.Errorf("%s: fields and optionality differ (-cue +go):\n%s", path, diff)
		}
	case typ.Kind() == reflect.Map:
		if kind != cue.StructKind {
			t.Errorf("%s: Go map, CUE kind %v", path, kind)
			return
		}
		compareType(t, path+".[string]", mapElem(v), typ.Elem())
	case typ.Kind() == reflect.Slice:
		if kind != cue.ListKind {
			t.Errorf("%s: Go slice, CUE kind %v", path, kind)
			return
		}
		elem := v.LookupPath(cue.MakePath(cue.AnyIndex))
		if elem.Err() != nil { // a list with a default: look at the default's elements
			d, _ := v.Default()
			elem = d.LookupPath(cue.MakePath(cue.Index(0)))
		}
		compareType(t, path+".[int]", elem, typ.Elem())
	default:
		want := map[reflect.Kind]cue.Kind{
			reflect.String: cue.StringKind,
			reflect.Int:    cue.IntKind,
			reflect.Int64:  cue.IntKind,
			reflect.Bool:   cue.BoolKind,
		}[typ.Kind()]
		if kind != want {
			t.Errorf("%s: Go %v, CUE kind %v", path, typ, kind)
		}
	}
}

// TestVendoredSchemaIsIdentical keeps the example fleet's vendored schema
// byte-identical to the schema herd is built with.
func TestVendoredSchemaIsIdentical(t *testing.T) {
	files, err := ReadDir("../../examples/fleet-repo")
	if err != nil {
		t.Fatal(err)
	}
	var vendored []string
	for name := range files {
		if strings.HasPrefix(name, schema.VendorDir+"/") {
			vendored = append(vendored, strings.TrimPrefix(name, schema.VendorDir+"/"))
		}
	}
	slices.Sort(vendored)
	if diff := cmp.Diff(fileNames(), vendored); diff != "" {
		t.Errorf("vendored files (-want +got):\n%s", diff)
	}
	for name, src := range schema.Files() {
		if got := string(files[vendorPath(name)]); got != string(src) {
			t.Errorf("%s differs from schema/%s: run `herd schema vendor examples/fleet-repo`", vendorPath(name), name)
		}
	}
}

// mapElem returns the value a struct's pattern constraint gives its fields.
// Patterns on keys (sysctl names, resource names) do not accept every
// string, so try a key that fits each.
func mapElem(v cue.Value) cue.Value {
	if e := v.LookupPath(cue.MakePath(cue.AnyString)); e.Err() == nil {
		return e
	}
	for _, key := range []string{"x", "cpu", "memory.available", "vm.x", "GracefulNodeShutdown", "docker.io", "NotReady"} {
		if e := v.LookupPath(cue.MakePath(cue.Str(key).Optional())); e.Exists() && e.Err() == nil {
			return e
		}
	}
	return v.LookupPath(cue.MakePath(cue.AnyString))
}
