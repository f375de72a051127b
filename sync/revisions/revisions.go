// Package revisions evaluates a fleet at earlier Git revisions, straight from
// the object store, so plans can diff nodes exactly and recognise rollbacks.
package revisions

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"strings"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/schema/sandbox"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/object"

	"herd.dev/herd/schema"
)

// Revision is the fleet as one commit had it.
type Revision struct {
	Commit  *object.Commit
	Result  *loader.Result // nil when the fleet did not evaluate at this commit
	Invalid error          // why it did not
}

// Repo is a Git repository holding a fleet below Path.
type Repo struct {
	repo *git.Repository
	Path string // slash-separated path of the fleet root inside the repository, "" at the top
	// Cache, when set, keeps evaluated fleets by tree, so a walk evaluates
	// only the revisions it has not seen before.
	Cache *Cache
	// Evaluate evaluates the fleet of one revision; default: in a child
	// process within sandbox.DefaultBudget (any commit may be hostile).
	Evaluate func(files map[string][]byte) (*loader.Result, error)
}

// Cache keeps evaluated fleets by Git tree hash. Safe for one walk at a time.
type Cache struct {
	trees map[plumbing.Hash]treeResult
}

type treeResult struct {
	res *loader.Result
	err error
}

// keepOnly forgets the trees not in keep (those the last walk did not visit).
func (c *Cache) keepOnly(keep map[plumbing.Hash]bool) {
	if c == nil {
		return
	}
	for h := range c.trees {
		if !keep[h] {
			delete(c.trees, h)
		}
	}
}

// NewCache returns an empty cache.
func NewCache() *Cache { return &Cache{trees: map[plumbing.Hash]treeResult{}} }

// OpenGitDir opens a bare repository (the controller's cache of the fleet
// remote) whose fleet lives below path.
func OpenGitDir(gitDir, fleetPath string) (*Repo, error) {
	repo, err := git.PlainOpen(gitDir)
	if err != nil {
		return nil, fmt.Errorf("open git repository at %s: %w", gitDir, err)
	}
	return &Repo{repo: repo, Path: strings.Trim(path.Clean("/"+filepath.ToSlash(fleetPath)), "/")}, nil
}

// Open finds the repository that holds dir (dir or one of its parents).
func Open(dir string) (*Repo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	repo, err := git.PlainOpenWithOptions(abs, &git.PlainOpenOptions{DetectDotGit: true, EnableDotGitCommonDir: true})
	if err != nil {
		return nil, fmt.Errorf("open git repository at %s: %w", dir, err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		return nil, fmt.Errorf("open git repository at %s: %w", dir, err)
	}
	root, err := filepath.EvalSymlinks(wt.Filesystem.Root())
	if err != nil {
		return nil, err
	}
	if abs, err = filepath.EvalSymlinks(abs); err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(root, abs)
	if err != nil || strings.HasPrefix(rel, "..") {
		return nil, fmt.Errorf("%s is not inside the repository at %s", dir, root)
	}
	if rel == "." {
		rel = ""
	}
	return &Repo{repo: repo, Path: filepath.ToSlash(rel)}, nil
}

// Git returns the underlying repository.
func (r *Repo) Git() *git.Repository { return r.repo }

// Walk visits the fleet's revisions from HEAD back along first parents,
// skipping commits that did not change the fleet, until fn returns false or
// limit revisions were visited. It reports whether it stopped at the limit
// with history left.
func (r *Repo) Walk(limit int, fn func(Revision) bool) (truncated bool, err error) {
	head, err := r.repo.Head()
	if err != nil {
		return false, fmt.Errorf("read HEAD: %w", err)
	}
	return r.WalkFrom(head.Hash().String(), limit, fn)
}

// WalkFrom is Walk from the given commit instead of HEAD.
func (r *Repo) WalkFrom(commit string, limit int, fn func(Revision) bool) (truncated bool, err error) {
	c, err := r.repo.CommitObject(plumbing.NewHash(commit))
	if err != nil {
		return false, fmt.Errorf("read commit %s: %w", commit, err)
	}
	var lastTree plumbing.Hash
	visited := 0
	for c != nil {
		tree, err := r.fleetTree(c)
		if err != nil {
			return false, err
		}
		if tree != nil && tree.Hash != lastTree {
			if visited == limit {
				return true, nil
			}
			visited++
			lastTree = tree.Hash
			rev := Revision{Commit: c}
			rev.Result, rev.Invalid = r.evaluate(tree)
			if aborted(rev.Invalid) {
				return false, fmt.Errorf("evaluate %s: %w", c.Hash, rev.Invalid)
			}
			if !fn(rev) {
				return false, nil
			}
		}
		if c.NumParents() == 0 {
			break
		}
		if c, err = c.Parent(0); err != nil {
			if errors.Is(err, plumbing.ErrObjectNotFound) {
				break // a shallow clone ends here
			}
			return false, fmt.Errorf("read parent of %s: %w", c.Hash, err)
		}
	}
	return false, nil
}

// evaluate loads the fleet of a tree, once per tree when cached.
func (r *Repo) evaluate(tree *object.Tree) (*loader.Result, error) {
	if r.Cache != nil {
		if tr, ok := r.Cache.trees[tree.Hash]; ok {
			return tr.res, tr.err
		}
	}
	files, err := ReadTree(tree)
	var res *loader.Result
	if err == nil {
		res, err = r.load(files)
	}
	if r.Cache != nil && !aborted(err) {
		r.Cache.trees[tree.Hash] = treeResult{res, err}
	}
	return res, err
}

// aborted reports whether an evaluation was cancelled by its caller: the
// walk stops, and the tree is neither invalid nor cached.
func aborted(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// load evaluates a fleet's files with Evaluate, or under the default budget.
func (r *Repo) load(files map[string][]byte) (*loader.Result, error) {
	if r.Evaluate != nil {
		return r.Evaluate(files)
	}
	return sandbox.Load(context.Background(), files, sandbox.DefaultBudget)
}

// fleetTree returns the tree of the fleet root at c, or nil if it is absent.
func (r *Repo) fleetTree(c *object.Commit) (*object.Tree, error) {
	tree, err := c.Tree()
	if err != nil {
		return nil, fmt.Errorf("read tree of %s: %w", c.Hash, err)
	}
	if r.Path == "" {
		return tree, nil
	}
	sub, err := tree.Tree(r.Path)
	if errors.Is(err, object.ErrDirectoryNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s at %s: %w", r.Path, c.Hash, err)
	}
	return sub, nil
}

// ReadTree reads the fleet files loader.Load needs from a Git tree.
func ReadTree(tree *object.Tree) (map[string][]byte, error) {
	files := map[string][]byte{}
	var total int64
	err := tree.Files().ForEach(func(f *object.File) error {
		if !strings.HasSuffix(f.Name, ".cue") || hidden(f.Name) || !f.Mode.IsFile() {
			return nil
		}
		if f.Mode == filemode.Symlink {
			return fmt.Errorf("%s is a symbolic link: fleet files must be regular files", f.Name)
		}
		if f.Mode == filemode.Symlink {
			return fmt.Errorf("%s is a symbolic link: fleet files must be regular files", f.Name)
		}
		if f.Size > loader.MaxFileSize {
			return fmt.Errorf("%s is %d bytes; the limit is %d", f.Name, f.Size, loader.MaxFileSize)
		}
		if total += f.Size; total > loader.MaxTotalSize {
			return fmt.Errorf("fleet holds more than %d bytes of CUE", loader.MaxTotalSize)
		}
		rd, err := f.Reader()
		if err != nil {
			return err
		}
		defer rd.Close()
		b, err := io.ReadAll(rd)
		if err != nil {
			return err
		}
		files[f.Name] = b
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read fleet from tree %s: %w", tree.Hash, err)
	}
	return files, nil
}

func hidden(name string) bool {
	for _, seg := range strings.Split(path.Dir(name), "/") {
		if strings.HasPrefix(seg, ".") && seg != "." {
			return true
		}
	}
	return false
}

// History is what the fleet's recent revisions rendered.
type History struct {
	// Renders maps config hashes to renders.
	Renders map[string]*schema.Rendered
	// Pools lists each pool's config hashes, newest revision first, one
	// entry per revision that changed the pool's render.
	Pools map[string][]string
	// Searched describes the revisions searched, for plan messages.
	Searched string
}

// Rollback reports whether going to hash takes pool back to a render it had
// before its latest change: the newest revisions render hash, an older one
// did not, and one older still rendered hash again.
func (h *History) Rollback(pool, hash string) bool {
	seq := h.Pools[pool]
	i := 0
	for i < len(seq) && seq[i] == hash {
		i++
	}
	for ; i < len(seq); i++ {
		if seq[i] == hash {
			return true
		}
	}
	return false
}

// Load evaluates the fleet's last limit revisions (those that changed it).
func (r *Repo) Load(limit int) (*History, error) {
	head, err := r.repo.Head()
	if err != nil {
		return nil, fmt.Errorf("read HEAD: %w", err)
	}
	return r.LoadFrom(head.Hash().String(), limit)
}

// LoadFrom evaluates the fleet's last limit revisions up to commit.
func (r *Repo) LoadFrom(commit string, limit int) (*History, error) {
	h := &History{Renders: map[string]*schema.Rendered{}, Pools: map[string][]string{}}
	n := 0
	visited := map[plumbing.Hash]bool{}
	truncated, err := r.WalkFrom(commit, limit, func(rev Revision) bool {
		n++
		if t, err := r.fleetTree(rev.Commit); err == nil && t != nil {
			visited[t.Hash] = true
		}
		if rev.Result == nil {
			return true
		}
		for pool, rd := range rev.Result.Rendered {
			hash := rd.Hash()
			if _, ok := h.Renders[hash]; !ok {
				h.Renders[hash] = rd
			}
			if seq := h.Pools[pool]; len(seq) == 0 || seq[len(seq)-1] != hash {
				h.Pools[pool] = append(seq, hash)
			}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	r.Cache.keepOnly(visited)
	h.Searched = fmt.Sprintf("the fleet's last %d revisions", n)
	if truncated {
		h.Searched += fmt.Sprintf("; the search stopped at its bound of %d, raise --history to look further", limit)
	}
	return h, nil
}
