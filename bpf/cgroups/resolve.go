package cgroups

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// fileIDKernfs is FILEID_KERNFS: cgroupfs file handles are the 64-bit
// kernfs node id, so a cgroup id opens its directory without a walk.
const fileIDKernfs = 0xfe

// ErrGone reports a cgroup id whose cgroup no longer exists.
var ErrGone = errors.New("cgroup is gone")

// Resolver turns cgroup ids into paths relative to a hierarchy's root,
// through open_by_handle_at (CAP_DAC_READ_SEARCH), and caches them. Safe
// for concurrent use.
type Resolver struct {
	root  string
	mount *os.File

	mu    sync.Mutex
	paths map[uint64]string
}

// NewResolver opens the hierarchy's root.
func NewResolver(h Hierarchy) (*Resolver, error) {
	f, err := os.Open(h.Root)
	if err != nil {
		return nil, fmt.Errorf("open cgroup root: %w", err)
	}
	return &Resolver{root: filepath.Clean(h.Root), mount: f, paths: map[uint64]string{}}, nil
}

// Close releases the root.
func (r *Resolver) Close() error { return r.mount.Close() }

// Path returns the path of cgroup id ("/" for the root), from the cache or
// the kernel. It returns ErrGone when the cgroup was removed.
func (r *Resolver) Path(id uint64) (string, error) {
	r.mu.Lock()
	p, ok := r.paths[id]
	r.mu.Unlock()
	if ok {
		return p, nil
	}
	p, err := r.lookup(id)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	r.paths[id] = p
	r.mu.Unlock()
	return p, nil
}

// Alive asks the kernel, not the cache, whether cgroup id still exists.
func (r *Resolver) Alive(id uint64) bool {
	_, err := r.lookup(id)
	return !errors.Is(err, ErrGone)
}

// Forget drops id from the cache.
func (r *Resolver) Forget(id uint64) {
	r.mu.Lock()
	delete(r.paths, id)
	r.mu.Unlock()
}

func (r *Resolver) lookup(id uint64) (string, error) {
	handle := make([]byte, 8)
	binary.NativeEndian.PutUint64(handle, id)
	fd, err := unix.OpenByHandleAt(int(r.mount.Fd()), unix.NewFileHandle(fileIDKernfs, handle), unix.O_RDONLY|unix.O_CLOEXEC)
	if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
		return "", fmt.Errorf("cgroup %d: %w", id, ErrGone)
	}
	if err != nil {
		return "", fmt.Errorf("open cgroup %d by handle: %w", id, err)
	}
	defer unix.Close(fd)
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", fmt.Errorf("cgroup %d: %w", id, err)
	}
	return relative(r.root, target), nil
}

// relative makes target, an absolute path under root, a cgroup path: "/"
// for the root itself.
func relative(root, target string) string {
	rel := strings.TrimPrefix(target, root)
	if rel == "" || !strings.HasPrefix(rel, "/") {
		return "/" + strings.TrimPrefix(rel, "/")
	}
	return rel
}
