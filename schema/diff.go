package schema

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// FieldChange is one changed field between two node configs. Path is a CUE
// path such as `kubelet.maxPods` or `sysctl."vm.max_map_count"`; From or To
// is empty when the field was added or removed.
type FieldChange struct {
	Path string `json:"path"`
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
}

func (c FieldChange) String() string {
	from, to := c.From, c.To
	if from == "" {
		from = "(unset)"
	}
	if to == "" {
		to = "(unset)"
	}
	return c.Path + " " + from + " -> " + to
}

// Change is the difference between two renders.
type Change struct {
	Disruption Disruption    `json:"disruption"`
	Fields     []FieldChange `json:"fields,omitempty"`
}

// Diff compares two renders field by field and finds the least disruptive
// action that takes a node from one to the other.
func Diff(from, to *Rendered) Change {
	var c Change
	if from.Config.OS.Commit != to.Config.OS.Commit || !slices.Equal(from.Config.KernelArgs, to.Config.KernelArgs) {
		c.Disruption = DisruptionReboot
	}
	// Every file that appears, disappears or changes costs what its rule says.
	for _, f := range from.Files {
		g, ok := to.File(f.Path)
		if !ok || g.Content != f.Content || g.Mode != f.Mode {
			c.Disruption = max(c.Disruption, f.Apply)
		}
	}
	for _, g := range to.Files {
		if _, ok := from.File(g.Path); !ok {
			c.Disruption = max(c.Disruption, g.Apply)
		}
	}
	a, b := flatten(from.Config), flatten(to.Config)
	for _, k := range mergedKeys(a, b) {
		if a[k] != b[k] {
			c.Fields = append(c.Fields, FieldChange{Path: k, From: a[k], To: b[k]})
		}
	}
	return c
}

// Flatten lists a config's fields as path → value, as Diff compares them.
func flatten(cfg NodeConfig) map[string]string {
	out := map[string]string{}
	// Files are keyed by path rather than by list index; their content is
	// summarised, since a diff of a whole file does not fit on one line.
	files := cfg.Files
	cfg.Files = nil
	raw, _ := json.Marshal(cfg)
	var v any
	_ = json.Unmarshal(raw, &v)
	flattenValue(out, "", v)
	for _, f := range files {
		p := "files[" + strconv.Quote(f.Path) + "]"
		out[p+".content"] = summarise(f.Content)
		out[p+".mode"] = fmt.Sprintf("%#o", f.Mode)
	}
	return out
}

func flattenValue(out map[string]string, path string, v any) {
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			flattenValue(out, joinPath(path, k), child)
		}
	case string:
		out[path] = v
	default:
		// Numbers, bools and lists (kernel args, mirrors: order matters) are
		// compared whole, as JSON.
		b, _ := json.Marshal(v)
		out[path] = string(b)
	}
}

func joinPath(path, key string) string {
	key = PathLabel(key)
	if path == "" {
		return key
	}
	return path + "." + key
}

// PathLabel writes one label of a config path as CUE does: an identifier
// as is, anything else quoted.
func PathLabel(s string) string {
	if isIdent(s) {
		return s
	}
	return strconv.Quote(s)
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return false
	}
	return true
}

// summarise shows short single-line content as itself and anything else as
// its size and hash.
func summarise(s string) string {
	if len(s) <= 40 && !strings.ContainsAny(s, "\n\r") {
		return strconv.Quote(s)
	}
	sum := sha256.Sum256([]byte(s))
	return fmt.Sprintf("<%d bytes sha256:%s>", len(s), hex.EncodeToString(sum[:4]))
}

func mergedKeys(a, b map[string]string) []string {
	keys := make([]string, 0, len(a)+len(b))
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}
