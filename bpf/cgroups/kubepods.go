package cgroups

import (
	"strings"
)

// Container is what a cgroup path says about the pod and container whose
// tasks it holds.
type Container struct {
	// PodUID is the pod's UID; empty when the path is outside kubepods.
	PodUID string
	// ID is the container runtime's id of the container (64 hex digits);
	// empty for a pod's own cgroup.
	ID string
}

// ParsePath reads the pod UID and container id from a cgroup path the
// kubelet laid out, with either cgroup driver:
//
//	/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope
//	/kubepods/besteffort/pod<uid>/<id>
//
// Runtime prefixes cri-containerd-, crio-, docker- and containerd- are
// understood; cgroups below a container's (its own nesting) count as the
// container. A path outside kubepods gives the zero Container.
func ParsePath(path string) Container {
	segs := strings.Split(strings.Trim(path, "/"), "/")
	for i, seg := range segs {
		uid, ok := podUID(seg)
		if !ok {
			continue
		}
		c := Container{PodUID: uid}
		if i+1 < len(segs) {
			c.ID = containerID(segs[i+1])
		}
		return c
	}
	return Container{}
}

// podUID reads "kubepods-<qos>-pod<uid>.slice" (systemd driver, dashes of
// the UID written as underscores) or "pod<uid>" (cgroupfs driver).
func podUID(seg string) (string, bool) {
	if s, ok := strings.CutSuffix(seg, ".slice"); ok {
		i := strings.LastIndex(s, "-pod")
		if !strings.HasPrefix(s, "kubepods") || i < 0 {
			return "", false
		}
		return strings.ReplaceAll(s[i+len("-pod"):], "_", "-"), true
	}
	if s, ok := strings.CutPrefix(seg, "pod"); ok && len(s) >= 32 {
		return s, true
	}
	return "", false
}

var runtimePrefixes = []string{"cri-containerd-", "crio-", "docker-", "containerd-"}

// containerID reads "<runtime>-<id>.scope" or a bare id.
func containerID(seg string) string {
	s := strings.TrimSuffix(seg, ".scope")
	for _, p := range runtimePrefixes {
		if rest, ok := strings.CutPrefix(s, p); ok {
			s = rest
			break
		}
	}
	if !isHex(s) {
		return ""
	}
	return s
}

func isHex(s string) bool {
	if len(s) < 12 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
