package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// owner is a --chown value.
type owner struct{ uid, gid int }

func parseChown(s string) (*owner, error) {
	if s == "" {
		return nil, nil
	}
	u, g, hasGroup := strings.Cut(s, ":")
	uid, err := strconv.Atoi(u)
	if err != nil || uid < 0 {
		return nil, fmt.Errorf("--chown=%s: want numeric UID[:GID] (names are not looked up)", s)
	}
	gid := uid
	if hasGroup {
		if gid, err = strconv.Atoi(g); err != nil || gid < 0 {
			return nil, fmt.Errorf("--chown=%s: want numeric UID[:GID] (names are not looked up)", s)
		}
	}
	return &owner{uid, gid}, nil
}

func parseChmod(s string) (*os.FileMode, error) {
	if s == "" {
		return nil, nil
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o7777 {
		return nil, fmt.Errorf("--chmod=%s: want an octal mode such as 0644", s)
	}
	mode := unixMode(uint32(m))
	return &mode, nil
}

// unixMode converts permission, setuid, setgid and sticky bits to an os.FileMode.
func unixMode(m uint32) os.FileMode {
	mode := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}

// rel turns an absolute image path into a path relative to a layer root.
func rel(p string) string {
	if r := strings.TrimPrefix(path.Clean("/"+p), "/"); r != "" {
		return r
	}
	return "."
}

// copy runs COPY and ADD: sources from the build context into a new layer.
// ADD also unpacks local tar archives (plain, gzip or bzip2) into dest.
func (b *builder) copy(ctx context.Context, in Instruction) error {
	words := make([]string, len(in.Args))
	for i, a := range in.Args {
		w, err := b.expand(a)
		if err != nil {
			return err
		}
		words[i] = w
	}
	srcs, dest := words[:len(words)-1], words[len(words)-1]
	mode, err := parseChmod(in.Flags["chmod"])
	if err != nil {
		return err
	}
	own, err := parseChown(in.Flags["chown"])
	if err != nil {
		return err
	}
	src, err := os.OpenRoot(b.opts.Context)
	if err != nil {
		return fmt.Errorf("build context: %w", err)
	}
	defer src.Close()
	var matches []string
	for _, s := range srcs {
		m, err := globContext(src, s)
		if err != nil {
			return err
		}
		matches = append(matches, m...)
	}
	destDir := strings.HasSuffix(dest, "/") || len(matches) > 1
	destPath := path.Clean("/" + dest)
	layer, err := b.newLayer()
	if err != nil {
		return err
	}
	dst, err := os.OpenRoot(layer)
	if err != nil {
		return err
	}
	defer dst.Close()
	c := &copier{ctx: ctx, src: src, dst: dst, mode: mode, own: own, image: b.imageDir}
	for _, m := range matches {
		st, err := src.Lstat(m)
		if err != nil {
			return err
		}
		archive := in.Op == OpAdd && st.Mode().IsRegular() && isArchive(src, m)
		into := destPath
		if st.IsDir() || !archive && !destDir {
			into = path.Dir(destPath) // tree makes dest itself
		}
		if err := b.makeParents(ctx, dst, into); err != nil {
			return err
		}
		switch {
		case archive:
			err = c.untar(m, destPath)
		case st.IsDir():
			err = c.tree(m, destPath)
		case destDir:
			err = c.entry(m, path.Join(destPath, path.Base(m)), st)
		default:
			err = c.entry(m, destPath, st)
		}
		if err != nil {
			return err
		}
	}
	b.addLayer(layer)
	fmt.Fprintf(b.opts.Log, "%s %s -> %s (%d entries)\n", in.Op, strings.Join(srcs, " "), destPath, c.n)
	return nil
}

// globContext resolves a source inside the build context; it may not leave
// the context, and a pattern must match something.
func globContext(root *os.Root, src string) ([]string, error) {
	if c := path.Clean(src); c == ".." || strings.HasPrefix(c, "../") {
		return nil, fmt.Errorf("%s: outside the build context", src)
	}
	p := rel(src)
	if !strings.ContainsAny(p, "*?[") {
		if _, err := root.Lstat(p); err != nil {
			return nil, fmt.Errorf("%s: not in the build context: %w", src, err)
		}
		return []string{p}, nil
	}
	m, err := fs.Glob(root.FS(), p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%s: no file in the build context matches", src)
	}
	return m, nil // sorted
}

// makeParents creates dir and its ancestors in the layer with the mode and
// owner they have in the image so far (0755 root:root for new ones), so
// that overlaying the layer keeps them as they are.
func (b *builder) makeParents(ctx context.Context, dst *os.Root, dir string) error {
	p := "/"
	for _, part := range append([]string{""}, strings.Split(strings.Trim(dir, "/"), "/")...) {
		p = path.Join(p, part)
		if st, err := dst.Lstat(rel(p)); err == nil {
			if !st.IsDir() {
				return fmt.Errorf("%s: not a directory in this layer", p)
			}
			continue
		}
		mode, uid, gid, err := b.dirMeta(ctx, p)
		if err != nil {
			return err
		}
		if err := dst.Mkdir(rel(p), mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := dst.Chmod(rel(p), mode); err != nil {
			return err
		}
		if err := dst.Lchown(rel(p), uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// dirMeta is directory p's mode and owner in the image built so far:
// the newest layer holding it, else the RUN checkout, else the base.
func (b *builder) dirMeta(ctx context.Context, p string) (os.FileMode, int, int, error) {
	mode, uid, gid, _, err := b.imageDir(ctx, p)
	return mode, uid, gid, err
}

// imageDir is dirMeta, and whether the image has directory p so far.
func (b *builder) imageDir(ctx context.Context, p string) (os.FileMode, int, int, bool, error) {
	dirs := slices.Clone(b.layers)
	slices.Reverse(dirs)
	if b.rootfs != "" {
		dirs = append(dirs, b.rootfs)
	}
	for _, d := range dirs {
		if st, err := os.Lstat(filepath.Join(d, rel(p))); err == nil && st.IsDir() {
			uid, gid := statOwner(st)
			return st.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky), uid, gid, true, nil
		}
	}
	if b.rootfs == "" && b.base != "" {
		e, ok, err := b.repo.Stat(ctx, b.base, p)
		if err != nil {
			return 0, 0, 0, false, err
		}
		if ok && e.Type == 'd' {
			return unixMode(uint32(e.Mode)), e.UID, e.GID, true, nil
		}
	}
	return 0o755, 0, 0, false, nil
}

// copier copies from the build context into a layer, applying --chmod and
// --chown to what it writes.
type copier struct {
	ctx      context.Context
	src, dst *os.Root
	mode     *os.FileMode
	own      *owner
	// keepOwner copies the source's owner (overlaying a layer); otherwise
	// what is copied belongs to root unless --chown says otherwise.
	keepOwner bool
	// image tells a directory's mode and owner in the image so far, so a
	// directory copied onto an existing one keeps them; nil when overlaying.
	image func(ctx context.Context, p string) (os.FileMode, int, int, bool, error)
	n     int // entries written
}

// tree copies the contents of directory dir into the layer's dest.
func (c *copier) tree(dir, dest string) error {
	return fs.WalkDir(c.src.FS(), dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, _ := filepath.Rel(dir, p)
		target := path.Join(dest, filepath.ToSlash(r))
		if p == dir {
			st, err := c.src.Lstat(p)
			if err != nil {
				return err
			}
			if _, err := c.dst.Lstat(rel(target)); err == nil {
				return nil // keep an existing destination directory as it is
			}
			if c.image != nil {
				mode, uid, gid, ok, err := c.image(c.ctx, target)
				if err != nil {
					return err
				}
				if ok { // the image has it: keep it as it is
					if err := c.dst.Mkdir(rel(target), mode); err != nil {
						return err
					}
					if err := c.dst.Chmod(rel(target), mode); err != nil {
						return err
					}
					return c.dst.Lchown(rel(target), uid, gid)
				}
			}
			return c.entry(p, target, st)
		}
		st, err := c.src.Lstat(p)
		if err != nil {
			return err
		}
		return c.entry(p, target, st)
	})
}

// entry copies one file, directory (not its contents) or symlink.
func (c *copier) entry(p, target string, st fs.FileInfo) error {
	uid, gid := 0, 0
	if c.keepOwner {
		uid, gid = statOwner(st)
	}
	t := rel(target)
	if t == "." {
		return c.finish(t, st.Mode(), uid, gid)
	}
	if old, err := c.dst.Lstat(t); err == nil && !(old.IsDir() && st.IsDir()) {
		if err := c.dst.RemoveAll(t); err != nil {
			return err
		}
	}
	switch {
	case st.IsDir():
		if err := c.dst.Mkdir(t, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	case st.Mode()&fs.ModeSymlink != 0:
		link, err := c.src.Readlink(p)
		if err != nil {
			return err
		}
		if err := c.dst.Symlink(link, t); err != nil {
			return err
		}
	case st.Mode().IsRegular():
		in, err := c.src.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		if err := c.write(t, in); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%s: unsupported file type %s", p, st.Mode().Type())
	}
	return c.finish(t, st.Mode(), uid, gid)
}

func (c *copier) write(t string, r io.Reader) error {
	out, err := c.dst.OpenFile(t, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, r); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// finish sets mode and owner: --chmod and --chown when given, else the
// source's mode and uid:gid (0:0 for the build context, the archive's for ADD).
func (c *copier) finish(t string, mode os.FileMode, uid, gid int) error {
	c.n++
	if mode&fs.ModeSymlink == 0 {
		m := mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		if c.mode != nil {
			m = *c.mode
		}
		if err := c.dst.Chmod(t, m); err != nil {
			return err
		}
	}
	if c.own != nil {
		uid, gid = c.own.uid, c.own.gid
	}
	return c.dst.Lchown(t, uid, gid)
}

// isArchive tells a tar archive (plain, gzip or bzip2) by its first bytes.
func isArchive(root *os.Root, p string) bool {
	f, err := root.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	head = head[:n]
	return bytes.HasPrefix(head, []byte{0x1f, 0x8b}) || bytes.HasPrefix(head, []byte("BZh")) ||
		n >= 262 && bytes.Equal(head[257:262], []byte("ustar"))
}

// untar unpacks archive p into the layer's dest; entries keep the
// archive's modes and owners unless --chmod or --chown say otherwise.
func (c *copier) untar(p, dest string) error {
	f, err := c.src.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	magic, _ := br.Peek(3)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		defer gz.Close()
		r = gz
	case bytes.HasPrefix(magic, []byte("BZh")):
		r = bzip2.NewReader(br)
	}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if err := c.untarEntry(tr, h, dest); err != nil {
			return fmt.Errorf("%s: %s: %w", p, h.Name, err)
		}
	}
}

func (c *copier) untarEntry(tr *tar.Reader, h *tar.Header, dest string) error {
	target := path.Join(dest, path.Clean("/"+h.Name)) // never above dest
	t := rel(target)
	if t != "." {
		if err := c.dst.MkdirAll(path.Dir(t), 0o755); err != nil {
			return err
		}
		if old, err := c.dst.Lstat(t); err == nil && !(old.IsDir() && h.Typeflag == tar.TypeDir) {
			if err := c.dst.RemoveAll(t); err != nil {
				return err
			}
		}
	}
	mode := unixMode(uint32(h.Mode))
	switch h.Typeflag {
	case tar.TypeDir:
		if t != "." {
			if err := c.dst.Mkdir(t, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
		}
	case tar.TypeReg:
		if err := c.write(t, tr); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := c.dst.Symlink(h.Linkname, t); err != nil {
			return err
		}
		mode |= fs.ModeSymlink
	case tar.TypeLink:
		old := rel(path.Join(dest, path.Clean("/"+h.Linkname)))
		return c.dst.Link(old, t) // shares the first name's mode and owner
	default:
		return fmt.Errorf("unsupported entry type %q", h.Typeflag)
	}
	return c.finish(t, mode, h.Uid, h.Gid)
}
