package osfixture

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// linkTree recreates the tree at src in dst (which exists): directories
// and symbolic links anew, regular files with more than one link (OSTree's
// objects and their checkouts) hard-linked, other regular files copied.
// Modes and owners are kept.
func linkTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == "." {
			return err
		}
		to := filepath.Join(dst, rel)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st, _ := info.Sys().(*syscall.Stat_t)
		switch {
		case info.IsDir():
			if err := os.Mkdir(to, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(target, to); err != nil {
				return err
			}
			return keepOwner(to, st, true)
		case info.Mode().IsRegular() && st != nil && st.Nlink > 1:
			return os.Link(p, to)
		case info.Mode().IsRegular():
			if err := copyFile(p, to, info.Mode()); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: neither a file, a directory nor a symbolic link", p)
		}
		if err := os.Chmod(to, info.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return err
		}
		return keepOwner(to, st, false)
	})
}

func keepOwner(p string, st *syscall.Stat_t, link bool) error {
	if st == nil {
		return nil
	}
	if link {
		return os.Lchown(p, int(st.Uid), int(st.Gid))
	}
	return os.Chown(p, int(st.Uid), int(st.Gid))
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode.Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
