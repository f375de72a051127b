package health

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"

	"herd.dev/herd/schema"
)

// Disk check defaults: kubelet's and containerd's filesystems, and kubelet's
// own hard eviction thresholds (nodefs.available<10%, inodesFree<5%).
var DefaultDiskPaths = []string{"/var/lib/kubelet", "/var/lib/containerd"}

const (
	DefaultMinFreePercent       = 10.0
	DefaultMinFreeInodesPercent = 5.0
)

// FSUsage is the use of the filesystem holding Path.
type FSUsage struct {
	Path       string `json:"path"`
	Bytes      uint64 `json:"bytes"`
	BytesFree  uint64 `json:"bytesFree"` // available to unprivileged users, as kubelet counts it
	Inodes     uint64 `json:"inodes"`    // 0 on filesystems without an inode limit
	InodesFree uint64 `json:"inodesFree"`
}

// FreePercent is the share of bytes available.
func (u FSUsage) FreePercent() float64 { return percent(u.BytesFree, u.Bytes) }

// FreeInodesPercent is the share of inodes free; 100 without an inode limit.
func (u FSUsage) FreeInodesPercent() float64 {
	if u.Inodes == 0 {
		return 100
	}
	return percent(u.InodesFree, u.Inodes)
}

func percent(part, whole uint64) float64 {
	if whole == 0 {
		return 100
	}
	return 100 * float64(part) / float64(whole)
}

// Statfs returns the use of the filesystem holding path.
func Statfs(path string) (FSUsage, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return FSUsage{}, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := uint64(st.Bsize)
	return FSUsage{
		Path:       path,
		Bytes:      st.Blocks * bs,
		BytesFree:  st.Bavail * bs,
		Inodes:     st.Files,
		InodesFree: st.Ffree,
	}, nil
}

// Disk checks free space and inodes on the filesystems of Paths.
type Disk struct {
	Paths                []string // DefaultDiskPaths when empty
	MinFreePercent       float64  // DefaultMinFreePercent when zero
	MinFreeInodesPercent float64  // DefaultMinFreeInodesPercent when zero
}

// Type is HerdDiskPressure.
func (d *Disk) Type() schema.NodeConditionType { return schema.ConditionDiskPressure }

// Check runs statfs on every path.
func (d *Disk) Check(_ context.Context, now time.Time) Result {
	paths := d.Paths
	if len(paths) == 0 {
		paths = DefaultDiskPaths
	}
	usages := make([]FSUsage, 0, len(paths))
	var errs []string
	for _, p := range paths {
		u, err := Statfs(p)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		usages = append(usages, u)
	}
	minFree, minInodes := d.thresholds()
	return diskResult(usages, errs, minFree, minInodes, now)
}

func (d *Disk) thresholds() (float64, float64) {
	bytes, inodes := d.MinFreePercent, d.MinFreeInodesPercent
	if bytes <= 0 {
		bytes = DefaultMinFreePercent
	}
	if inodes <= 0 {
		inodes = DefaultMinFreeInodesPercent
	}
	return bytes, inodes
}

// diskResult judges the usages: bytes first, then inodes; a path that
// could not be read makes the result Unknown unless another is low.
func diskResult(usages []FSUsage, errs []string, minFree, minInodes float64, now time.Time) Result {
	t := schema.ConditionDiskPressure
	for _, u := range usages {
		if u.FreePercent() < minFree {
			return problem(t, schema.ReasonDiskSpaceLow, now,
				fmt.Sprintf("%s: %.1f%% free (%d of %d bytes), below %.1f%%", u.Path, u.FreePercent(), u.BytesFree, u.Bytes, minFree))
		}
	}
	for _, u := range usages {
		if u.FreeInodesPercent() < minInodes {
			return problem(t, schema.ReasonDiskInodesLow, now,
				fmt.Sprintf("%s: %.1f%% of inodes free (%d of %d), below %.1f%%", u.Path, u.FreeInodesPercent(), u.InodesFree, u.Inodes, minInodes))
		}
	}
	if len(errs) > 0 {
		return unknown(t, schema.ReasonDiskUnreadable, now, strings.Join(errs, "; "))
	}
	var parts []string
	for _, u := range usages {
		parts = append(parts, fmt.Sprintf("%s %.0f%% free", u.Path, u.FreePercent()))
	}
	return ok(t, schema.ReasonDiskOK, now, strings.Join(parts, ", "))
}
