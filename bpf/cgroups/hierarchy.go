package cgroups

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Mode is the cgroup hierarchy that names a task's cgroup.
type Mode int

const (
	// Auto picks V2 on a unified (cgroup v2) node and V1Memory otherwise.
	Auto Mode = iota
	// V2 names tasks by their cgroup in the unified hierarchy (cgroup2).
	V2
	// V1Memory names tasks by their cgroup in the v1 memory controller's
	// hierarchy: on v1 and hybrid nodes that is where the kubelet puts pods.
	V1Memory
)

func (m Mode) String() string {
	switch m {
	case Auto:
		return "auto"
	case V2:
		return "v2"
	case V1Memory:
		return "v1-memory"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode reads a Mode from its String form.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Auto, V2, V1Memory} {
		if m.String() == s {
			return m, nil
		}
	}
	return Auto, fmt.Errorf("cgroup mode %q: want auto, v2 or v1-memory", s)
}

// Hierarchy is a cgroup hierarchy and where it is mounted.
type Hierarchy struct {
	Mode Mode
	// Root is the mount point; cgroup paths are relative to it.
	Root string
}

// Mount is one cgroup mount from /proc/self/mountinfo.
type Mount struct {
	Point   string
	FSType  string   // cgroup or cgroup2
	Options []string // super options: the v1 controllers
}

// Mounts lists the cgroup and cgroup2 mounts of this mount namespace.
func Mounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseMountinfo(f)
}

// parseMountinfo reads mountinfo lines: "id parent maj:min root point
// options [optional...] - fstype source superoptions".
func parseMountinfo(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	s := bufio.NewScanner(r)
	for s.Scan() {
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || (tail[0] != "cgroup" && tail[0] != "cgroup2") {
			continue
		}
		mounts = append(mounts, Mount{Point: unescape(fields[4]), FSType: tail[0], Options: strings.Split(tail[2], ",")})
	}
	return mounts, s.Err()
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and \.
func unescape(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// Detect finds the hierarchy for mode among the mounts. Auto picks V2 when
// /sys/fs/cgroup itself is cgroup2 (a unified node) and V1Memory otherwise:
// on hybrid nodes the kubelet and container runtimes place pods in the v1
// controllers, and the unified hierarchy holds only systemd's view.
func Detect(mode Mode, mounts []Mount) (Hierarchy, error) {
	if mode == Auto {
		mode = V1Memory
		for _, m := range mounts {
			if m.FSType == "cgroup2" && m.Point == "/sys/fs/cgroup" {
				mode = V2
			}
		}
	}
	for _, m := range mounts {
		if mode == V2 && m.FSType == "cgroup2" {
			return Hierarchy{Mode: V2, Root: m.Point}, nil
		}
		if mode == V1Memory && m.FSType == "cgroup" && contains(m.Options, "memory") {
			return Hierarchy{Mode: V1Memory, Root: m.Point}, nil
		}
	}
	if mode == V2 {
		return Hierarchy{}, errors.New("no cgroup2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")
	}
	return Hierarchy{}, errors.New("no cgroup v1 memory controller is mounted")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ID returns the cgroup id of the cgroup directory at path: the kernfs node
// id, which is the directory's inode number, what bpf_get_current_cgroup_id
// returns and the monitor's programs record.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	return st.Ino, nil
}

// DetectRoot finds the hierarchy under a cgroup file system root such as
// a host's /sys/fs/cgroup mounted into a container (/host/sys/fs/cgroup):
// V2 when root is cgroup2, V1Memory at root/memory when root holds v1
// controllers. mode other than Auto insists on one.
func DetectRoot(mode Mode, root string) (Hierarchy, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(root, &fs); err != nil {
		return Hierarchy{}, fmt.Errorf("cgroup root: %w", err)
	}
	if fs.Type == unix.CGROUP2_SUPER_MAGIC && mode != V1Memory {
		return Hierarchy{Mode: V2, Root: root}, nil
	}
	if mode == V2 {
		if unified := root + "/unified"; isFS(unified, unix.CGROUP2_SUPER_MAGIC) {
			return Hierarchy{Mode: V2, Root: unified}, nil
		}
		return Hierarchy{}, fmt.Errorf("cgroup root %s holds no cgroup2 hierarchy", root)
	}
	if memory := root + "/memory"; isFS(memory, unix.CGROUP_SUPER_MAGIC) {
		return Hierarchy{Mode: V1Memory, Root: memory}, nil
	}
	if _, err := os.Stat(root + "/memory.limit_in_bytes"); err == nil && isFS(root, unix.CGROUP_SUPER_MAGIC) {
		return Hierarchy{Mode: V1Memory, Root: root}, nil
	}
	return Hierarchy{}, fmt.Errorf("cgroup root %s holds no v1 memory controller", root)
}

func isFS(path string, magic int64) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == magic
}
