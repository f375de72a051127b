package schema

import (
	"fmt"
	"strings"
)

// Disruption is what a node must do to take on a change, from least to most
// disruptive. Comparisons follow that order.
type Disruption int

// Disruption classes.
const (
	DisruptionNone              Disruption = iota // applied live: sysctls, most files
	DisruptionRestartKubelet                      // kubelet config changed
	DisruptionRestartContainerd                   // containerd config changed
	DisruptionReboot                              // OS commit or kernel arguments changed
)

var disruptionNames = [...]string{"none", "restart-kubelet", "restart-containerd", "reboot"}

func (d Disruption) String() string {
	if d < 0 || int(d) >= len(disruptionNames) {
		return fmt.Sprintf("Disruption(%d)", int(d))
	}
	return disruptionNames[d]
}

// MarshalText writes the class name.
func (d Disruption) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText reads a class name.
func (d *Disruption) UnmarshalText(b []byte) error {
	for i, n := range disruptionNames {
		if string(b) == n {
			*d = Disruption(i)
			return nil
		}
	}
	return fmt.Errorf("unknown disruption %q", b)
}

// PathRule is one entry of the file allowlist: a directory a pool may write
// under, and what a change there needs.
type PathRule struct {
	Prefix  string
	Apply   Disruption
	Purpose string
	// Content, when set, checks what a file there may hold: for formats
	// with directives that run commands, only the ones that do not.
	Content func(content string) error
}

// FileAllowlist is where pools may write files. Nothing else on a node can be
// written from Git; the agent checks again before it writes. Keep it in step
// with #FilePath in nodepool.cue and docs/schema.md.
//
// Every directory here holds files whose content runs nothing: udev rules
// are not here (RUN, PROGRAM and IMPORT{program} run commands, and ATTR
// writes any sysfs attribute), nor are systemd units, cron, sudoers,
// profile.d or ld.so.preload; modprobe.d is filtered to the directives that
// run nothing (its install and remove lines run shell commands).
var FileAllowlist = []PathRule{
	{"/etc/herd/files/", DisruptionNone, "free-form files for workloads (hostPath mounts)", nil},
	{"/etc/containerd/certs.d/", DisruptionNone, "registry host configuration, read by containerd at pull time", nil},
	{"/etc/security/limits.d/", DisruptionNone, "PAM limits, read at the next login", nil},
	{"/etc/modules-load.d/", DisruptionReboot, "kernel modules loaded at boot", checkModulesLoad},
	{"/etc/modprobe.d/", DisruptionReboot, "kernel module options (options, blacklist, alias, softdep only)", checkModprobe},
	{"/etc/pki/ca-trust/source/anchors/", DisruptionReboot, "trust anchors, merged into the system store at boot", nil},
}

// CheckFile checks a file a pool writes: an allowlisted path, and content
// its directory accepts.
func CheckFile(path, content string) error {
	r, ok := AllowedPath(path)
	if !ok {
		return fmt.Errorf("file %s is outside the allowlist", path)
	}
	if r.Content != nil {
		if err := r.Content(content); err != nil {
			return fmt.Errorf("file %s: %w", path, err)
		}
	}
	return nil
}

// AllowedPath returns the allowlist rule for path, if path is allowed: an
// absolute, clean path strictly below one of the allowlisted directories,
// whose segments are plain names (no "..", no hidden files).
func AllowedPath(path string) (PathRule, bool) {
	for _, r := range FileAllowlist {
		rest, ok := strings.CutPrefix(path, r.Prefix)
		if !ok || rest == "" {
			continue
		}
		for _, seg := range strings.Split(rest, "/") {
			if !validPathSegment(seg) {
				return PathRule{}, false
			}
		}
		return r, true
	}
	return PathRule{}, false
}

func validPathSegment(s string) bool {
	if s == "" || len(s) > 255 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
