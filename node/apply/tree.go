package apply

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// SymlinkError is a managed path with a symbolic link in it. The agent
// never follows a link it did not make: a workload that can write a
// managed directory (a hostPath mount) could otherwise redirect a file
// from Git anywhere on the node, or have another file copied as a backup.
type SymlinkError struct {
	Path string // as rendered, e.g. /etc/herd/files/app.conf
}

func (e *SymlinkError) Error() string {
	return fmt.Sprintf("%s: a component of the path is a symbolic link; the agent does not follow links it did not make (remove the link)", e.Path)
}

// tree is a directory the agent writes below, every path resolved without
// following a symbolic link (openat2 with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS; O_NOFOLLOW component by component on kernels
// without openat2).
type tree struct {
	fd   int
	root string
}

func openTree(root string) (*tree, error) {
	fd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: root, Err: err}
	}
	return &tree{fd: fd, root: root}, nil
}

func (t *tree) Close() error { return unix.Close(t.fd) }

// openat2Missing is set once the kernel says it has no openat2.
var openat2Missing bool

// open opens name (slash-separated, relative to the tree) without
// following links.
func (t *tree) open(name string, flags int, mode uint32) (int, error) {
	name = clean(name)
	flags |= unix.O_CLOEXEC
	if flags&unix.O_CREAT == 0 {
		mode = 0
	}
	if !openat2Missing {
		how := unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode), Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		for {
			fd, err := unix.Openat2(t.fd, name, &how)
			switch {
			case err == nil:
				return fd, nil
			case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
				continue
			case errors.Is(err, unix.ENOSYS):
				openat2Missing = true
			case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV):
				return -1, t.linkError(name)
			default:
				return -1, &fs.PathError{Op: "open", Path: "/" + name, Err: err}
			}
			break
		}
	}
	return t.openNoFollow(name, flags, mode)
}

// openNoFollow walks name one component at a time with O_NOFOLLOW.
func (t *tree) openNoFollow(name string, flags int, mode uint32) (int, error) {
	dir, err := unix.Dup(t.fd)
	if err != nil {
		return -1, err
	}
	parts := strings.Split(name, "/")
	for i, part := range parts {
		last := i == len(parts)-1
		f, m := unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, uint32(0)
		if last {
			f, m = flags|unix.O_NOFOLLOW, mode
		}
		if part == "." {
			f |= unix.O_DIRECTORY
		}
		fd, err := unix.Openat(dir, part, f, m)
		unix.Close(dir)
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) && t.isLink(strings.Join(parts[:i+1], "/")) {
			return -1, t.linkError(name)
		}
		if err != nil {
			return -1, &fs.PathError{Op: "open", Path: "/" + name, Err: err}
		}
		if last {
			return fd, nil
		}
		dir = fd
	}
	return -1, fmt.Errorf("open /%s: empty path", name)
}

func (t *tree) isLink(name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(t.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFLNK
}

// linkError names the first component of name that is a link.
func (t *tree) linkError(name string) error {
	parts := strings.Split(name, "/")
	for i := range parts {
		if p := strings.Join(parts[:i+1], "/"); t.isLink(p) {
			return &SymlinkError{Path: "/" + p}
		}
	}
	return &SymlinkError{Path: "/" + name}
}

// parent opens the directory holding name and returns it with the base name.
func (t *tree) parent(name string) (int, string, error) {
	name = clean(name)
	fd, err := t.open(path.Dir(name), unix.O_PATH|unix.O_DIRECTORY, 0)
	return fd, path.Base(name), err
}

// Lstat describes name itself (a link is reported, not followed).
func (t *tree) Lstat(name string) (fs.FileMode, int64, error) {
	dir, base, err := t.parent(name)
	if err != nil {
		return 0, 0, err
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	if err := unix.Fstatat(dir, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return 0, 0, &fs.PathError{Op: "lstat", Path: "/" + clean(name), Err: err}
	}
	return fileMode(st.Mode), st.Size, nil
}

// ReadFile reads the regular file name; a link anywhere is an error.
func (t *tree) ReadFile(name string) ([]byte, fs.FileMode, error) {
	fd, err := t.open(name, unix.O_RDONLY, 0)
	if err != nil {
		return nil, 0, err
	}
	f := os.NewFile(uintptr(fd), "/"+clean(name))
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		return nil, 0, fmt.Errorf("/%s is not a regular file", clean(name))
	}
	data, err := io.ReadAll(f)
	return data, st.Mode().Perm(), err
}

// OpenFile opens name as os.OpenFile does, without following links.
func (t *tree) OpenFile(name string, flags int, mode fs.FileMode) (*os.File, error) {
	fd, err := t.open(name, flags, uint32(mode.Perm()))
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "/"+clean(name)), nil
}

// MkdirAll creates dir and its parents, refusing links on the way.
func (t *tree) MkdirAll(dir string, mode fs.FileMode) error {
	dir = clean(dir)
	if dir == "." {
		return nil
	}
	if fd, err := t.open(dir, unix.O_PATH|unix.O_DIRECTORY, 0); err == nil {
		unix.Close(fd)
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := t.MkdirAll(path.Dir(dir), mode); err != nil {
		return err
	}
	pfd, base, err := t.parent(dir)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, base, uint32(mode.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
		return &fs.PathError{Op: "mkdir", Path: "/" + dir, Err: err}
	}
	// Whatever is there now must be a directory, not a link to one.
	fd, err := t.open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// Rename renames oldName to newName in the same directory.
func (t *tree) Rename(oldName, newName string) error {
	if path.Dir(clean(oldName)) != path.Dir(clean(newName)) {
		return fmt.Errorf("rename %s to %s: not in one directory", oldName, newName)
	}
	dir, oldBase, err := t.parent(oldName)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	if err := unix.Renameat(dir, oldBase, dir, path.Base(clean(newName))); err != nil {
		return &fs.PathError{Op: "rename", Path: "/" + clean(newName), Err: err}
	}
	return nil
}

// Remove removes name itself (a link is removed, not followed).
func (t *tree) Remove(name string) error {
	dir, base, err := t.parent(name)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	if err := unix.Unlinkat(dir, base, 0); err != nil {
		return &fs.PathError{Op: "remove", Path: "/" + clean(name), Err: err}
	}
	return nil
}

// ReadDirNames lists the directory dir.
func (t *tree) ReadDirNames(dir string) ([]string, error) {
	fd, err := t.open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "/"+clean(dir))
	defer f.Close()
	return f.Readdirnames(-1)
}

// SyncDir fsyncs the directory dir.
func (t *tree) SyncDir(dir string) error {
	fd, err := t.open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fsync(fd)
}

func clean(name string) string {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name == "" {
		return "."
	}
	return name
}

func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		mode |= fs.ModeDir
	case unix.S_IFLNK:
		mode |= fs.ModeSymlink
	case unix.S_IFREG:
	default:
		mode |= fs.ModeIrregular
	}
	return mode
}
