package source

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"

	"herd.dev/herd/schema"
)

var (
	errPathNotFound = errors.New("fleet path not found")
	errBadTree      = errors.New("unsafe tree")
)

// manifest maps slash paths of a checkout to their blob and mode, so the
// next checkout can hard-link unchanged files instead of writing them.
type manifest map[string]manifestEntry

type manifestEntry struct {
	hash plumbing.Hash
	mode filemode.FileMode
}

// checkout materializes the fleet path of c into checkouts/<sha>/.
func (s *Source) checkout(c *object.Commit) (Revision, manifest, error) {
	root, err := c.Tree()
	if err != nil {
		return Revision{}, nil, fmt.Errorf("read tree of %s: %w", schema.Short(c.Hash.String()), err)
	}
	if s.opts.Path != "" {
		root, err = root.Tree(s.opts.Path)
		if errors.Is(err, object.ErrDirectoryNotFound) {
			return Revision{}, nil, fmt.Errorf("%w: %q does not exist at %s", errPathNotFound, s.opts.Path, schema.Short(c.Hash.String()))
		}
		if err != nil {
			return Revision{}, nil, fmt.Errorf("read %q at %s: %w", s.opts.Path, schema.Short(c.Hash.String()), err)
		}
	}
	base := filepath.Join(s.opts.CacheDir, checkoutDir)
	final := filepath.Join(base, c.Hash.String())
	tmp := filepath.Join(base, ".tmp-"+c.Hash.String())
	for _, d := range []string{tmp, final} {
		if err := os.RemoveAll(d); err != nil {
			return Revision{}, nil, fmt.Errorf("clear %s: %w", d, err)
		}
	}
	s.mu.Lock()
	s.candidate = c.Hash.String()
	var prevDir string
	prev := s.manifest
	if s.current != nil {
		prevDir = s.current.Dir
	}
	s.mu.Unlock()

	w := &treeWriter{repo: s, prev: prev, prevDir: prevDir, out: manifest{}}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return Revision{}, nil, fmt.Errorf("create checkout: %w", err)
	}
	if err := w.write(root, tmp, ""); err != nil {
		_ = os.RemoveAll(tmp)
		return Revision{}, nil, fmt.Errorf("checkout %s: %w", schema.Short(c.Hash.String()), err)
	}
	if err := os.Rename(tmp, final); err != nil {
		_ = os.RemoveAll(tmp)
		return Revision{}, nil, fmt.Errorf("checkout %s: %w", schema.Short(c.Hash.String()), err)
	}
	return Revision{
		Commit:  c.Hash.String(),
		Dir:     final,
		Time:    c.Committer.When,
		Author:  c.Author.Name + " <" + c.Author.Email + ">",
		Subject: subject(c),
	}, w.out, nil
}

type treeWriter struct {
	repo    *Source
	prev    manifest
	prevDir string
	out     manifest
}

func (w *treeWriter) write(t *object.Tree, dir, rel string) error {
	for _, e := range t.Entries {
		if e.Name == "" || e.Name == "." || e.Name == ".." || strings.ContainsAny(e.Name, "/\x00") || strings.EqualFold(e.Name, ".git") {
			return fmt.Errorf("%w: entry %q in %q", errBadTree, e.Name, rel)
		}
		p := path.Join(rel, e.Name)
		dst := filepath.Join(dir, e.Name)
		switch e.Mode {
		case filemode.Dir:
			sub, err := object.GetTree(w.repo.repo().Storer, e.Hash)
			if err != nil {
				return fmt.Errorf("read tree %s: %w", p, err)
			}
			if err := os.Mkdir(dst, 0o755); err != nil {
				return err
			}
			if err := w.write(sub, dst, p); err != nil {
				return err
			}
		case filemode.Regular, filemode.Executable, filemode.Deprecated:
			if err := w.file(e, p, dst); err != nil {
				return err
			}
		case filemode.Symlink:
			if err := w.symlink(e, p, dst); err != nil {
				return err
			}
		case filemode.Submodule:
			w.repo.log.Warn("skipping submodule in fleet tree", "path", p)
		default:
			return fmt.Errorf("%w: %s has unsupported mode %s", errBadTree, p, e.Mode)
		}
	}
	return nil
}

func (w *treeWriter) file(e object.TreeEntry, p, dst string) error {
	w.out[p] = manifestEntry{hash: e.Hash, mode: e.Mode}
	if pe, ok := w.prev[p]; ok && pe == w.out[p] && w.prevDir != "" {
		if err := os.Link(filepath.Join(w.prevDir, filepath.FromSlash(p)), dst); err == nil {
			return nil
		}
	}
	mode := os.FileMode(0o444)
	if e.Mode == filemode.Executable {
		mode = 0o555
	}
	blob, err := object.GetBlob(w.repo.repo().Storer, e.Hash)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	r, err := blob.Reader()
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	defer r.Close()
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", p, err)
	}
	return f.Close()
}

func (w *treeWriter) symlink(e object.TreeEntry, p, dst string) error {
	blob, err := object.GetBlob(w.repo.repo().Storer, e.Hash)
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	r, err := blob.Reader()
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	target := string(b)
	resolved := path.Clean(path.Join(path.Dir(p), target))
	if path.IsAbs(target) || resolved == ".." || strings.HasPrefix(resolved, "../") {
		return fmt.Errorf("%w: symlink %s points outside the fleet path (%s)", errBadTree, p, target)
	}
	return os.Symlink(target, dst)
}

// pruneCheckouts removes every checkout except the current, the last
// applied and keep.
func (s *Source) pruneCheckouts(keep string) {
	s.mu.Lock()
	keepSet := map[string]bool{keep: true, s.status.LastApplied: true, s.candidate: true}
	if s.current != nil {
		keepSet[s.current.Commit] = true
	}
	s.mu.Unlock()
	base := filepath.Join(s.opts.CacheDir, checkoutDir)
	entries, err := os.ReadDir(base)
	if err != nil {
		s.log.Error("list checkouts", "err", err)
		return
	}
	for _, e := range entries {
		if keepSet[e.Name()] || strings.HasPrefix(e.Name(), ".tmp-") {
			continue
		}
		if err := os.RemoveAll(filepath.Join(base, e.Name())); err != nil {
			s.log.Error("remove old checkout", "dir", e.Name(), "err", err)
		}
	}
}
