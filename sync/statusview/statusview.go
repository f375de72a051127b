// Package statusview shows where each pool stands, one line per pool with a
// progress bar, from the cluster's HerdPools or from the Git status branch.
package statusview

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	fluxmeta "github.com/fluxcd/pkg/apis/meta"
	"github.com/fluxcd/pkg/runtime/conditions"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/sync/writeback"
)

// Line is one pool.
type Line struct {
	Cluster  string `json:"cluster,omitempty"`
	Pool     string `json:"pool"`
	Phase    string `json:"phase"`
	UpToDate int    `json:"upToDate"`
	Nodes    int    `json:"nodes"`
	Batch    string `json:"batch,omitempty"` // "2/5", or ""
	Revision string `json:"revision,omitempty"`
	Message  string `json:"message,omitempty"`
}

// Source is the fleet source as the cluster's HerdSource shows it.
type Source struct {
	// Shard and Selector name a controller shard's HerdSource; "" for an
	// unsharded controller's.
	Shard    string `json:"shard,omitempty"`
	Selector string `json:"selector,omitempty"`
	URL      string `json:"url"`
	Branch   string `json:"branch"`
	Ready    string `json:"ready"` // True, False or Unknown
	Reason   string `json:"reason,omitempty"`
	Message  string `json:"message,omitempty"`
	Applied  string `json:"applied,omitempty"`
	Rejected string `json:"rejected,omitempty"` // the last refused head
}

// SourcesFromCluster reads the HerdSources: the unsharded controller's
// (nil when there is none yet) and every shard's, by name.
func SourcesFromCluster(ctx context.Context, c client.Reader) (*Source, []Source, error) {
	var list herdsource.HerdSourceList
	err := c.List(ctx, &list)
	if meta.IsNoMatchError(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list HerdSources: %w", err)
	}
	var main *Source
	var shards []Source
	for i := range list.Items {
		hs := &list.Items[i]
		src := sourceOf(hs)
		switch {
		case hs.Name == herdsource.Name:
			main = &src
		case hs.Spec.ShardSelector != "":
			src.Shard, src.Selector = strings.TrimPrefix(hs.Name, herdsource.Name+"-"), hs.Spec.ShardSelector
			shards = append(shards, src)
		}
	}
	slices.SortFunc(shards, func(a, b Source) int { return strings.Compare(a.Shard, b.Shard) })
	return main, shards, nil
}

func sourceOf(hs *herdsource.HerdSource) Source {
	src := Source{URL: hs.Spec.URL, Branch: hs.Spec.Branch, Ready: "Unknown", Applied: hs.Status.LastAppliedRevision}
	if c := conditions.Get(hs, fluxmeta.ReadyCondition); c != nil {
		src.Ready, src.Reason, src.Message = string(c.Status), c.Reason, c.Message
	}
	if rj := hs.Status.LastRejected; rj != nil {
		src.Rejected = rj.Commit
	}
	return src
}

// WriteSource prints the source's line, and a line per shard.
func WriteSource(w io.Writer, s *Source, shards []Source) error {
	if s == nil && len(shards) == 0 {
		return nil
	}
	if s != nil {
		if _, err := fmt.Fprintf(w, "SOURCE %s@%s  Ready=%s %s  applied %s: %s\n", s.URL, s.Branch, s.Ready, s.Reason, schema.Short(s.Applied), s.Message); err != nil {
			return err
		}
	}
	for _, sh := range shards {
		if _, err := fmt.Fprintf(w, "SHARD %s (%s) %s@%s  Ready=%s %s  applied %s: %s\n", sh.Shard, sh.Selector, sh.URL, sh.Branch, sh.Ready, sh.Reason, schema.Short(sh.Applied), sh.Message); err != nil {
			return err
		}
	}
	_, err := fmt.Fprintln(w)
	return err
}

// FromCluster reads the HerdPools.
func FromCluster(ctx context.Context, c client.Reader) ([]Line, error) {
	var list herdpool.HerdPoolList
	if err := c.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list HerdPools: %w", err)
	}
	var out []Line
	for _, np := range list.Items {
		s := np.Status
		out = append(out, Line{Pool: np.Name, Phase: s.Phase, UpToDate: s.UpToDate, Nodes: s.Nodes, Batch: s.Batch, Revision: s.ObservedRevision, Message: s.Message})
	}
	slices.SortFunc(out, func(a, b Line) int { return strings.Compare(a.Pool, b.Pool) })
	return out, nil
}

// FromGit reads the status branch of the repository holding dir: the remote
// tracking branch origin/<branch> when there is one, else the local branch.
// Only cluster's pools when cluster is set.
func FromGit(dir, branch, cluster string) ([]Line, error) {
	repo, err := git.PlainOpenWithOptions(dir, &git.PlainOpenOptions{DetectDotGit: true})
	if err != nil {
		return nil, fmt.Errorf("open git repository at %s: %w", dir, err)
	}
	var ref *plumbing.Reference
	for _, name := range []plumbing.ReferenceName{plumbing.NewRemoteReferenceName("origin", branch), plumbing.NewBranchReferenceName(branch)} {
		if ref, err = repo.Reference(name, true); err == nil {
			break
		}
	}
	if ref == nil {
		return nil, fmt.Errorf("no status branch %s in %s (fetch it: git fetch origin %s)", branch, dir, branch)
	}
	commit, err := repo.CommitObject(ref.Hash())
	if err != nil {
		return nil, err
	}
	tree, err := commit.Tree()
	if err != nil {
		return nil, err
	}
	var out []Line
	err = tree.Files().ForEach(func(f *object.File) error {
		parts := strings.Split(f.Name, "/")
		if len(parts) != 3 || parts[0] != "clusters" || !strings.HasSuffix(parts[2], ".yaml") || parts[2] == "source.yaml" {
			return nil
		}
		if cluster != "" && parts[1] != cluster {
			return nil
		}
		data, err := f.Contents()
		if err != nil {
			return err
		}
		p, err := writeback.ParsePool([]byte(data))
		if err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		l := Line{Cluster: parts[1], Pool: p.Name, Phase: p.Phase, UpToDate: p.Counts.Updated, Nodes: p.Counts.Total, Revision: p.SpecRevision, Message: p.Message}
		if p.Batch != nil && p.Batch.Total > 0 {
			l.Batch = fmt.Sprintf("%d/%d", p.Batch.Current, p.Batch.Total)
		}
		out = append(out, l)
		return nil
	})
	slices.SortFunc(out, func(a, b Line) int {
		if c := strings.Compare(a.Cluster, b.Cluster); c != 0 {
			return c
		}
		return strings.Compare(a.Pool, b.Pool)
	})
	return out, err
}

// Write prints one line per pool.
func Write(w io.Writer, lines []Line) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	withCluster := slices.ContainsFunc(lines, func(l Line) bool { return l.Cluster != "" })
	if withCluster {
		fmt.Fprint(tw, "CLUSTER\t")
	}
	fmt.Fprintln(tw, "POOL\tNODES\t\tBATCH\tPHASE\tREVISION\tMESSAGE")
	for _, l := range lines {
		if withCluster {
			fmt.Fprintf(tw, "%s\t", l.Cluster)
		}
		batch := l.Batch
		if batch == "" {
			batch = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", l.Pool, Bar(l.UpToDate, l.Nodes, 20), l.UpToDate, l.Nodes, batch, l.Phase, schema.Short(l.Revision), l.Message)
	}
	return tw.Flush()
}

// Bar draws done out of total in width cells: [#######-------].
func Bar(done, total, width int) string {
	n := 0
	if total > 0 {
		n = min(width, done*width/total)
	}
	return "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "]"
}
