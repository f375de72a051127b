package loader

import (
	"regexp"
	"slices"
	"strings"
	"sync"

	"herd.dev/herd/schema"

	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/parser"
	"cuelang.org/go/cue/token"
)

// What each constrained definition of the schema asks for, in words. CUE
// reports a failed pattern as the regular expression itself, which tells a
// fleet owner little; explain replaces it with these.
var wants = map[string]string{
	"#FilePath":     "outside the file allowlist: want a plain path below " + allowlistText(),
	"#Name":         "want a DNS label: lower-case letters, digits and '-', at most 63 characters",
	"#Checksum":     "want a full OSTree commit checksum: 64 lower-case hex digits",
	"#OSTreeRef":    "want an OSTree ref such as containeros/x86_64/stable",
	"#KernelArg":    "a kernel argument holds no whitespace; give each argument its own list entry",
	"#Duration":     "want a duration such as 90s, 5m or 1h30m",
	"#Quantity":     "want a Kubernetes quantity such as 500m, 1Gi or 100",
	"#ImageRef":     "want an image reference such as registry.k8s.io/pause:3.10",
	"#RegistryHost": "want a registry host such as docker.io or registry.example.com:5000",
	"#LabelKey":     "want a label key: an optional DNS subdomain prefix and '/', then a name of at most 63 characters",
	"#LabelValue":   "want a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
	"#SysctlKey":    "want a sysctl key: a dotted name under abi, fs, kernel, net, user or vm",
}

// What a field not allowed in a map means, by the map's name.
var unknownKey = map[string]string{
	"sysctl":       wants["#SysctlKey"],
	"matchLabels":  wants["#LabelKey"],
	"pools":        "invalid pool name: " + wants["#Name"],
	"remotes":      "invalid remote name: " + wants["#Name"],
	"featureGates": "want a feature gate name such as GracefulNodeShutdown",
}

type schemaWords struct {
	bounds map[string]string // "=~\"...\"" as CUE prints it → explanation
	fields []string          // every field name the schema declares
}

var words = sync.OnceValue(func() schemaWords {
	w := schemaWords{bounds: map[string]string{}}
	seen := map[string]bool{}
	for _, name := range fileNames() {
		f, err := parser.ParseFile(name, schema.Files()[name])
		if err != nil {
			continue
		}
		ast.Walk(f, func(n ast.Node) bool {
			field, ok := n.(*ast.Field)
			if !ok {
				return true
			}
			label, _, _ := ast.LabelName(field.Label)
			if label == "" {
				return true
			}
			if strings.HasPrefix(label, "#") {
				if u, ok := field.Value.(*ast.UnaryExpr); ok && u.Op == token.MAT {
					if lit, ok := u.X.(*ast.BasicLit); ok && wants[label] != "" {
						w.bounds["=~"+lit.Value] = wants[label]
					}
				}
			} else if !seen[label] {
				seen[label] = true
				w.fields = append(w.fields, label)
			}
			return true
		}, nil)
	}
	return w
})

var outOfBound = regexp.MustCompile(` \(out of bound (=~".*")\)$`)

// explain rewrites a CUE diagnostic into words a fleet owner acts on.
func explain(d Diagnostic) Diagnostic {
	d.Path = strings.TrimPrefix(d.Path, "#Fleet.")
	if m := outOfBound.FindStringSubmatch(d.Message); m != nil {
		if want, ok := words().bounds[m[1]]; ok {
			d.Message = strings.TrimSuffix(d.Message, m[0]) + ": " + want
		}
	}
	if d.Message == "field not allowed" {
		parent, field := splitPath(d.Path)
		if problems, problem := splitPath(parent); strings.HasSuffix(problems, ".problems") && !slices.Contains(schema.Problems, schema.Problem(problem)) {
			// A ladder under an unknown problem: CUE names its fields.
			d.Path, d.Message = parent, "unknown problem "+problem+": want "+problemList()
			return d
		}
		_, parentName := splitPath(parent)
		if want, ok := unknownKey[parentName]; ok {
			d.Message = "invalid key " + field + ": " + want
		} else {
			d.Message = "unknown field " + field
			if s := closest(strings.Trim(field, `"`), words().fields); s != "" {
				d.Message += " (did you mean " + s + "?)"
			}
		}
	}
	return d
}

// problemList names the problems a ladder may answer.
func problemList() string {
	names := make([]string, len(schema.Problems))
	for i, p := range schema.Problems {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}

// splitPath splits "a.b.c" into "a.b" and "c", minding quoted labels.
func splitPath(p string) (string, string) {
	inQuote := false
	for i := len(p) - 1; i >= 0; i-- {
		switch {
		case p[i] == '"' && (i == 0 || p[i-1] != '\\'):
			inQuote = !inQuote
		case p[i] == '.' && !inQuote:
			return p[:i], p[i+1:]
		}
	}
	return "", p
}

// closest returns the candidate nearest to s, if it is near enough to be a
// likely typo.
func closest(s string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
