package image

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"herd.dev/herd/os/ostree"
)

// ChangeKind says how a path differs between two images.
type ChangeKind string

// The kinds of change Compare reports.
const (
	Added    ChangeKind = "added"
	Removed  ChangeKind = "removed"
	Modified ChangeKind = "modified"
)

// Change is one path that differs. Directories are reported when added or
// removed, or when their mode or owner changed, not for changes inside them.
type Change struct {
	Path    string     `json:"path"`
	Kind    ChangeKind `json:"kind"`
	Type    string     `json:"type"`    // file, dir or symlink (the new one's when modified)
	OldSize int64      `json:"oldSize"` // 0 when added
	NewSize int64      `json:"newSize"` // 0 when removed
}

// Info is what the commit metadata says about an image.
type Info struct {
	Commit    string            `json:"commit"`
	Version   string            `json:"version,omitempty"`
	Base      string            `json:"base,omitempty"`
	Buildfile string            `json:"buildfile,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Diff is what changed from one image to another.
type Diff struct {
	From    Info     `json:"from"`
	To      Info     `json:"to"`
	Changes []Change `json:"changes"`
	// Totals: paths by kind, and the bytes of files added, removed, and
	// the net growth of the tree.
	Added    int   `json:"added"`
	Removed  int   `json:"removed"`
	Modified int   `json:"modified"`
	Growth   int64 `json:"growth"`
}

// Compare diffs the trees and metadata of commits a and b in repo.
func Compare(ctx context.Context, repo *ostree.Repo, a, b string) (*Diff, error) {
	d := &Diff{}
	var err error
	if d.From, err = ReadInfo(ctx, repo, a); err != nil {
		return nil, err
	}
	if d.To, err = ReadInfo(ctx, repo, b); err != nil {
		return nil, err
	}
	old, err := repo.List(ctx, a)
	if err != nil {
		return nil, err
	}
	cur, err := repo.List(ctx, b)
	if err != nil {
		return nil, err
	}
	d.Changes = compareEntries(old, cur)
	for _, c := range d.Changes {
		switch c.Kind {
		case Added:
			d.Added++
		case Removed:
			d.Removed++
		case Modified:
			d.Modified++
		}
		d.Growth += c.NewSize - c.OldSize
	}
	return d, nil
}

// compareEntries merges two path-sorted listings.
func compareEntries(old, cur []ostree.Entry) []Change {
	var out []Change
	i, j := 0, 0
	for i < len(old) || j < len(cur) {
		switch {
		case j == len(cur) || i < len(old) && old[i].Path < cur[j].Path:
			out = append(out, Change{Path: old[i].Path, Kind: Removed, Type: typeName(old[i].Type), OldSize: old[i].Size})
			i++
		case i == len(old) || cur[j].Path < old[i].Path:
			out = append(out, Change{Path: cur[j].Path, Kind: Added, Type: typeName(cur[j].Type), NewSize: cur[j].Size})
			j++
		default:
			if changed(old[i], cur[j]) {
				out = append(out, Change{Path: cur[j].Path, Kind: Modified, Type: typeName(cur[j].Type), OldSize: old[i].Size, NewSize: cur[j].Size})
			}
			i++
			j++
		}
	}
	return out
}

func changed(a, b ostree.Entry) bool {
	if a.Type != b.Type {
		return true
	}
	if a.Type == 'd' { // contents/metadata: only the directory's own metadata counts
		_, am, _ := strings.Cut(a.Checksum, "/")
		_, bm, _ := strings.Cut(b.Checksum, "/")
		return am != bm
	}
	return a.Checksum != b.Checksum || a.Mode != b.Mode || a.UID != b.UID || a.GID != b.GID
}

func typeName(t byte) string {
	switch t {
	case 'd':
		return "dir"
	case 'l':
		return "symlink"
	}
	return "file"
}

// ReadInfo reads an image's version, base, Buildfile digest and labels
// from its commit metadata; images not built by herd os build have only
// what ostree commit recorded.
func ReadInfo(ctx context.Context, repo *ostree.Repo, commit string) (Info, error) {
	c, ok, err := repo.Resolve(ctx, commit)
	if err != nil {
		return Info{}, err
	}
	if !ok {
		return Info{}, fmt.Errorf("%s is not in the repository %s", commit, repo.Path)
	}
	info := Info{Commit: c}
	for key, dst := range map[string]*string{"version": &info.Version, MetaBase: &info.Base, MetaBuildfile: &info.Buildfile} {
		if *dst, _, err = repo.Metadata(ctx, c, key); err != nil {
			return Info{}, err
		}
	}
	labels, ok, err := repo.Metadata(ctx, c, MetaLabels)
	if err != nil {
		return Info{}, err
	}
	if ok {
		if err := json.Unmarshal([]byte(labels), &info.Labels); err != nil {
			return Info{}, fmt.Errorf("commit %s: %s: %w", c, MetaLabels, err)
		}
	}
	return info, nil
}

// Summary is one line: counts, growth and the version change.
func (d *Diff) Summary() string {
	s := fmt.Sprintf("%d added, %d removed, %d modified, %s", d.Added, d.Removed, d.Modified, signedSize(d.Growth))
	if d.From.Version != d.To.Version {
		s += fmt.Sprintf("; version %s -> %s", orNone(d.From.Version), orNone(d.To.Version))
	}
	return s
}

// WriteText prints the diff for people: metadata changes, then one line
// per changed path.
func (d *Diff) WriteText(w io.Writer) error {
	fmt.Fprintf(w, "OS %s -> %s: %s\n", short(d.From.Commit), short(d.To.Commit), d.Summary())
	if d.From.Base != d.To.Base {
		fmt.Fprintf(w, "  base: %s -> %s\n", orNone(short(d.From.Base)), orNone(short(d.To.Base)))
	}
	if d.From.Buildfile != d.To.Buildfile {
		fmt.Fprintf(w, "  buildfile: %s -> %s\n", orNone(d.From.Buildfile), orNone(d.To.Buildfile))
	}
	keys := map[string]bool{}
	for k := range d.From.Labels {
		keys[k] = true
	}
	for k := range d.To.Labels {
		keys[k] = true
	}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if a, b := d.From.Labels[k], d.To.Labels[k]; a != b {
			fmt.Fprintf(w, "  label %s: %q -> %q\n", k, a, b)
		}
	}
	for _, c := range d.Changes {
		size := ""
		switch c.Kind {
		case Added:
			size = fmt.Sprint(c.NewSize)
		case Removed:
			size = fmt.Sprint(c.OldSize)
		case Modified:
			size = fmt.Sprintf("%d -> %d", c.OldSize, c.NewSize)
		}
		if c.Type == "dir" {
			size = "dir"
		}
		_, err := fmt.Fprintf(w, "  %s %s (%s)\n", strings.ToUpper(string(c.Kind[:1])), c.Path, size)
		if err != nil {
			return err
		}
	}
	return nil
}

func short(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func signedSize(n int64) string {
	sign := "+"
	if n < 0 {
		sign, n = "-", -n
	}
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%s%.1f MiB", sign, float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%s%.1f KiB", sign, float64(n)/(1<<10))
	}
	return fmt.Sprintf("%s%d B", sign, n)
}

// OpenRepo returns the repository at location, a local path or an
// http(s) URL, and the commits revs (refs or commits) name there. For a URL
// the revisions are pulled into a repository under cache first
// (bare-user, so listing them needs no unpacking).
func OpenRepo(ctx context.Context, location, cache string, revs ...string) (*ostree.Repo, []string, error) {
	var commits []string
	if !strings.HasPrefix(location, "http://") && !strings.HasPrefix(location, "https://") {
		if _, err := os.Stat(location + "/config"); err != nil {
			return nil, nil, fmt.Errorf("OSTree repository %s: %w", location, err)
		}
		r := &ostree.Repo{Path: location}
		for _, rev := range revs {
			c, ok, err := r.Resolve(ctx, rev)
			if err == nil && !ok {
				err = fmt.Errorf("%s is not in the repository %s", rev, location)
			}
			if err != nil {
				return nil, nil, err
			}
			commits = append(commits, c)
		}
		return r, commits, nil
	}
	r := &ostree.Repo{Path: cache}
	if err := r.Init(ctx, "bare-user"); err != nil {
		return nil, nil, err
	}
	for _, rev := range revs {
		c, err := r.PullURL(ctx, location, rev)
		if err != nil {
			return nil, nil, err
		}
		commits = append(commits, c)
	}
	return r, commits, nil
}
