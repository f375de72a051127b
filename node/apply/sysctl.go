package apply

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"

	"herd.dev/herd/schema"
)

// sysctlKeyRE is #SysctlKey of nodepool.cue: a dotted kernel parameter name.
var sysctlKeyRE = regexp.MustCompile(`^(abi|fs|kernel|net|user|vm)(\.[A-Za-z0-9_-]+)+$`)

// SysctlFile is the file under root that holds the sysctl key:
// proc/sys/<key with dots turned into slashes>, relative to root.
func SysctlFile(key string) string {
	return "proc/sys/" + strings.ReplaceAll(key, ".", "/")
}

// SysctlError lists the sysctls of a render the node refuses.
type SysctlError struct {
	Unknown []string // no such file under <root>/proc/sys
	Invalid []string // malformed key or value, or denied
}

func (e *SysctlError) Error() string {
	var parts []string
	if len(e.Unknown) > 0 {
		parts = append(parts, "unknown sysctl "+strings.Join(e.Unknown, ", ")+" (no such file under /proc/sys on this node)")
	}
	if len(e.Invalid) > 0 {
		parts = append(parts, "invalid or denied sysctl "+strings.Join(e.Invalid, ", "))
	}
	return strings.Join(parts, "; ")
}

// CheckSysctls checks every key before anything is written: a well-formed
// name that is not denied, a single-line value, and a file under
// <root>/proc/sys, i.e. a parameter this kernel knows. The error is a
// *SysctlError.
func CheckSysctls(root string, sysctl map[string]string) error {
	if len(sysctl) == 0 {
		return nil
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("check sysctls: open root: %w", err)
	}
	defer r.Close()
	var se SysctlError
	for _, k := range sortedKeys(sysctl) {
		v := sysctl[k]
		if !sysctlKeyRE.MatchString(k) || denied(k) || strings.TrimSpace(v) == "" || strings.ContainsAny(v, "\n\r") {
			se.Invalid = append(se.Invalid, k)
			continue
		}
		st, err := r.Stat(SysctlFile(k))
		if errors.Is(err, os.ErrNotExist) || err == nil && st.IsDir() {
			se.Unknown = append(se.Unknown, k)
			continue
		}
		if err != nil {
			return fmt.Errorf("check sysctl %s: %w", k, err)
		}
	}
	if len(se.Unknown) > 0 || len(se.Invalid) > 0 {
		return &se
	}
	return nil
}

// ApplySysctls writes each value to <root>/proc/sys whose current value
// differs (compared field by field, as the kernel prints tabs between
// fields) and returns the keys it wrote. Keys must have passed CheckSysctls.
func ApplySysctls(root string, sysctl map[string]string) ([]string, error) {
	if len(sysctl) == 0 {
		return nil, nil
	}
	if err := CheckSysctls(root, sysctl); err != nil {
		return nil, err
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, fmt.Errorf("apply sysctls: open root: %w", err)
	}
	defer r.Close()
	var changed []string
	for _, k := range sortedKeys(sysctl) {
		name := SysctlFile(k)
		v := sysctl[k]
		have, err := r.ReadFile(name)
		if err != nil {
			return changed, fmt.Errorf("apply sysctl %s: %w", k, err)
		}
		if slices.Equal(strings.Fields(string(have)), strings.Fields(v)) {
			continue
		}
		// No O_CREATE: a parameter that vanished is an error, not a new file.
		f, err := r.OpenFile(name, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return changed, fmt.Errorf("apply sysctl %s: %w", k, err)
		}
		_, werr := f.WriteString(strings.TrimSpace(v) + "\n")
		cerr := f.Close()
		if err := errors.Join(werr, cerr); err != nil {
			return changed, fmt.Errorf("apply sysctl %s = %q: %w", k, v, err)
		}
		changed = append(changed, k)
	}
	return changed, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func denied(key string) bool {
	_, ok := schema.DeniedSysctl(key)
	return ok
}
