package apply

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
// <root>/proc/sys (in the host's namespace for namespaced keys), i.e. a
// parameter this kernel knows. The error is a *SysctlError.
func CheckSysctls(root string, sysctl map[string]string) error {
	if len(sysctl) == 0 {
		return nil
	}
	var se SysctlError
	valid := map[string]string{}
	for _, k := range sortedKeys(sysctl) {
		v := sysctl[k]
		if !sysctlKeyRE.MatchString(k) || denied(k) || strings.TrimSpace(v) == "" || strings.ContainsAny(v, "\n\r") {
			se.Invalid = append(se.Invalid, k)
			continue
		}
		valid[k] = v
	}
	err := eachNamespace(root, valid, func(t *tree, keys []string) error {
		for _, k := range keys {
			m, _, err := t.Lstat(SysctlFile(k))
			if errors.Is(err, os.ErrNotExist) || err == nil && m.IsDir() {
				se.Unknown = append(se.Unknown, k)
				continue
			}
			if err != nil {
				return fmt.Errorf("check sysctl %s: %w", k, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	slices.Sort(se.Unknown)
	if len(se.Unknown) > 0 || len(se.Invalid) > 0 {
		return &se
	}
	return nil
}

// ApplySysctls writes each value to <root>/proc/sys whose current value
// differs (compared field by field, as the kernel prints tabs between
// fields) and returns the keys it wrote. A namespaced key (net.*, the IPC
// and UTS ones) is read, written and read back in the host's namespace
// (<root>/proc/1/ns), so a value reaches the host even if the agent runs in
// a namespace of its own; the value read back must be the one written.
// Keys must have passed CheckSysctls.
func ApplySysctls(root string, sysctl map[string]string) ([]string, error) {
	if len(sysctl) == 0 {
		return nil, nil
	}
	if err := CheckSysctls(root, sysctl); err != nil {
		return nil, err
	}
	var changed []string
	err := eachNamespace(root, sysctl, func(t *tree, keys []string) error {
		for _, k := range keys {
			wrote, err := writeSysctl(t, k, sysctl[k])
			if err != nil {
				return err
			}
			if wrote {
				changed = append(changed, k)
			}
		}
		return nil
	})
	slices.Sort(changed)
	return changed, err
}

// writeSysctl writes one value unless it is set already, then reads it back.
func writeSysctl(t *tree, k, v string) (bool, error) {
	name := SysctlFile(k)
	have, _, err := t.ReadFile(name)
	if err != nil {
		return false, fmt.Errorf("apply sysctl %s: %w", k, err)
	}
	if slices.Equal(strings.Fields(string(have)), strings.Fields(v)) {
		return false, nil
	}
	// No O_CREATE: a parameter that vanished is an error, not a new file.
	f, err := t.OpenFile(name, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return false, fmt.Errorf("apply sysctl %s: %w", k, err)
	}
	_, werr := f.WriteString(strings.TrimSpace(v) + "\n")
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return false, fmt.Errorf("apply sysctl %s = %q: %w", k, v, err)
	}
	got, _, err := t.ReadFile(name)
	if err != nil {
		return true, fmt.Errorf("apply sysctl %s: read back: %w", k, err)
	}
	if !slices.Equal(strings.Fields(string(got)), strings.Fields(v)) {
		return true, fmt.Errorf("apply sysctl %s: wrote %q, reads back %q", k, v, strings.TrimSpace(string(got)))
	}
	return true, nil
}

// eachNamespace calls fn with the keys of each kind of namespace and a tree
// of root, inside the host's namespace of that kind.
func eachNamespace(root string, sysctl map[string]string, fn func(t *tree, keys []string) error) error {
	groups := map[nsKind][]string{}
	for _, k := range sortedKeys(sysctl) {
		kind := namespaceOf(k)
		groups[kind] = append(groups[kind], k)
	}
	for _, kind := range []nsKind{nsNone, nsNet, nsIPC, nsUTS, nsUser} {
		keys := groups[kind]
		if len(keys) == 0 {
			continue
		}
		err := inHostNamespace(kind, filepath.Join(hostNamespaces(root), kind.file()), func() error {
			t, err := openTree(root)
			if err != nil {
				return fmt.Errorf("sysctls: open root: %w", err)
			}
			defer t.Close()
			return fn(t, keys)
		})
		if err != nil {
			return err
		}
	}
	return nil
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
