// Package history joins a fleet repo's spec commits with the status Herd
// wrote for them: who changed what, when it was applied, completed or halted.
package history

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"herd.dev/herd/schema/loader"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/revisions"
	"herd.dev/herd/sync/writeback"
)

// Options says what history to read.
type Options struct {
	Dir     string // inside a clone of the fleet repo
	Cluster string // only this cluster's status ("" for all)
	Pool    string // only this pool ("" for all)
	Limit   int    // spec revisions to show; default 20
	// StatusRefs are tried in order for the status branch; default
	// refs/remotes/origin/herd/status, then refs/heads/herd/status.
	StatusRefs []string
	// StatusLimit bounds the status commits read; default 5000.
	StatusLimit int
}

// Entry is one spec commit that changed the fleet.
type Entry struct {
	Commit  string       `json:"commit"`
	Time    time.Time    `json:"time,omitzero"`
	Author  string       `json:"author,omitempty"`
	Subject string       `json:"subject,omitempty"`
	Invalid string       `json:"invalid,omitempty"` // why the fleet did not evaluate at this commit
	Changes []PoolChange `json:"changes,omitempty"`
	// RevertedBy lists later commits that undid this one's change.
	RevertedBy []string `json:"revertedBy,omitempty"`
	Events     []Event  `json:"events,omitempty"`

	first bool // the fleet's first revision: shown whatever it changed
}

// PoolChange is what a commit changed in one pool.
type PoolChange struct {
	Pool     string               `json:"pool"`
	Added    bool                 `json:"added,omitempty"`
	Removed  bool                 `json:"removed,omitempty"`
	Fields   []schema.FieldChange `json:"fields,omitempty"`
	Reverts  string               `json:"reverts,omitempty"`  // the commit whose change this one undoes, when it does
	Rollback bool                 `json:"rollback,omitempty"` // the pool goes back to a render it had before
}

// Event is something Herd reported for a spec commit on the status branch.
type Event struct {
	Time    time.Time `json:"time,omitzero"`
	Cluster string    `json:"cluster,omitempty"`
	Pool    string    `json:"pool"`
	What    string    `json:"what,omitempty"` // applying, completed, halted, rolling back, repair, repaired, ...
	Detail  string    `json:"detail,omitempty"`
	// Repair is set on a node's repair: shown whatever the commit changed.
	Repair bool `json:"repair,omitempty"`
}

// Load reads the history.
func Load(opts Options) ([]Entry, error) {
	if opts.Limit <= 0 {
		opts.Limit = 20
	}
	if opts.StatusLimit <= 0 {
		opts.StatusLimit = 5000
	}
	if len(opts.StatusRefs) == 0 {
		opts.StatusRefs = []string{"refs/remotes/origin/herd/status", "refs/heads/herd/status"}
	}
	repo, err := revisions.Open(opts.Dir)
	if err != nil {
		return nil, err
	}
	var revs []revisions.Revision
	if _, err := repo.Walk(opts.Limit+1, func(r revisions.Revision) bool {
		revs = append(revs, r)
		return true
	}); err != nil {
		return nil, err
	}
	entries := specEntries(revs, opts)
	for i := range entries {
		for _, c := range entries[i].Changes {
			for j := range entries {
				if c.Reverts == entries[j].Commit && !slices.Contains(entries[j].RevertedBy, entries[i].Commit) {
					entries[j].RevertedBy = append(entries[j].RevertedBy, entries[i].Commit)
				}
			}
		}
	}
	events, err := statusEvents(repo, opts)
	if err != nil {
		return nil, err
	}
	byCommit := map[string]*Entry{}
	for i := range entries {
		byCommit[entries[i].Commit] = &entries[i]
	}
	for _, ev := range events {
		if e, ok := byCommit[ev.commit]; ok {
			e.Events = append(e.Events, ev.Event)
		}
	}
	// An entry shows what a commit changed (of the pool asked for), or
	// that it was invalid; the first one always; any under which a node
	// was repaired, whatever it changed.
	oldest := len(revs) - 1
	if len(entries) > 0 && oldest >= opts.Limit {
		oldest = -1 // the oldest shown is not the repository's first
	}
	for i := range entries {
		entries[i].first = i == oldest
	}
	return slices.DeleteFunc(entries, func(e Entry) bool {
		return len(e.Changes) == 0 && e.Invalid == "" && !e.first && !slices.ContainsFunc(e.Events, func(ev Event) bool { return ev.Repair })
	}), nil
}

// specEntries diffs each revision against the one before it.
func specEntries(revs []revisions.Revision, opts Options) []Entry {
	var out []Entry
	for i := 0; i < len(revs) && i < opts.Limit; i++ {
		r := revs[i]
		e := Entry{
			Commit:  r.Commit.Hash.String(),
			Time:    r.Commit.Committer.When,
			Author:  r.Commit.Author.Name,
			Subject: firstLine(r.Commit.Message),
		}
		if r.Result == nil {
			e.Invalid = firstLine(fmt.Sprint(r.Invalid))
			out = append(out, e)
			continue
		}
		var prev *loader.Result
		if i+1 < len(revs) {
			prev = revs[i+1].Result
		}
		for _, pool := range poolNames(r.Result, prev) {
			if opts.Pool != "" && pool != opts.Pool {
				continue
			}
			c := PoolChange{Pool: pool}
			now, hasNow := r.Result.Fleet.Pools[pool]
			var before schema.NodePool
			hasBefore := false
			if prev != nil {
				before, hasBefore = prev.Fleet.Pools[pool]
			}
			switch {
			case !hasBefore && prev != nil:
				c.Added = true
			case !hasNow:
				c.Removed = true
			case hasBefore:
				c.Fields = DiffPools(before, now)
			}
			if hasNow && hasBefore {
				c.Reverts, c.Rollback = reverted(revs, i, pool)
			}
			if c.Added || c.Removed || len(c.Fields) > 0 {
				e.Changes = append(e.Changes, c)
			}
		}
		out = append(out, e) // Load keeps those that show something
	}
	return out
}

// reverted finds whether revision i takes pool back to a render an older
// revision had, and which commit's change it undoes: the one after that
// older render.
func reverted(revs []revisions.Revision, i int, pool string) (string, bool) {
	hash := func(j int) string {
		if revs[j].Result == nil {
			return ""
		}
		if rd, ok := revs[j].Result.Rendered[pool]; ok {
			return rd.Hash()
		}
		return ""
	}
	target := hash(i)
	if i+1 >= len(revs) || hash(i+1) == target {
		return "", false
	}
	for j := i + 2; j < len(revs); j++ {
		if hash(j) == target {
			return revs[j-1].Commit.Hash.String(), true
		}
	}
	return "", false
}

// DiffPools lists the spec fields that differ between two versions of a
// pool, the rollout policy included, with paths such as kubelet.maxPods.
func DiffPools(a, b schema.NodePool) []schema.FieldChange {
	fa, fb := flatten(a), flatten(b)
	keys := map[string]bool{}
	for k := range fa {
		keys[k] = true
	}
	for k := range fb {
		keys[k] = true
	}
	var out []schema.FieldChange
	for _, k := range sortedKeys(keys) {
		if fa[k] != fb[k] {
			out = append(out, schema.FieldChange{Path: k, From: fa[k], To: fb[k]})
		}
	}
	return out
}

func flatten(p schema.NodePool) map[string]string {
	raw, _ := json.Marshal(p)
	var v any
	_ = json.Unmarshal(raw, &v)
	out := map[string]string{}
	var walk func(string, any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, child := range v {
				key := k
				if strings.ContainsAny(k, "./ ") {
					key = fmt.Sprintf("%q", k)
				}
				if path != "" {
					key = path + "." + key
				}
				walk(key, child)
			}
		case string:
			out[path] = v
		default:
			b, _ := json.Marshal(v)
			out[path] = string(b)
		}
	}
	walk("", v)
	return out
}

type statusEvent struct {
	Event
	commit string // the spec commit it belongs to
}

// statusEvents reads the status branch, oldest first, and turns each pool's
// changes of spec revision and phase into events.
func statusEvents(repo *revisions.Repo, opts Options) ([]statusEvent, error) {
	g := repo.Git()
	var head *plumbing.Reference
	for _, name := range opts.StatusRefs {
		if ref, err := g.Reference(plumbing.ReferenceName(name), true); err == nil {
			head = ref
			break
		}
	}
	if head == nil {
		return nil, nil // no status branch yet: spec history alone
	}
	var commits []*object.Commit
	c, err := g.CommitObject(head.Hash())
	for err == nil && len(commits) < opts.StatusLimit {
		commits = append(commits, c)
		if c.NumParents() == 0 {
			break
		}
		c, err = c.Parent(0)
	}
	slices.Reverse(commits)

	type key struct{ cluster, pool string }
	type last struct{ rev, phase string }
	seen := map[key]last{}
	repairs := map[key]map[string]string{} // outcome by node/id
	var out []statusEvent
	for _, c := range commits {
		cluster := trailer(c.Message, "Herd-Cluster")
		if cluster == "" || opts.Cluster != "" && cluster != opts.Cluster {
			continue
		}
		tree, err := c.Tree()
		if err != nil {
			continue
		}
		dir, err := tree.Tree("clusters/" + cluster)
		if err != nil {
			continue
		}
		for _, ent := range dir.Entries {
			pool, ok := strings.CutSuffix(ent.Name, ".yaml")
			if !ok || pool == "source" || opts.Pool != "" && pool != opts.Pool {
				continue
			}
			f, err := dir.File(ent.Name)
			if err != nil {
				continue
			}
			data, err := f.Contents()
			if err != nil {
				continue
			}
			ps, err := writeback.ParsePool([]byte(data))
			if err != nil {
				continue
			}
			k := key{cluster, pool}
			prev := seen[k]
			t := c.Committer.When
			progress := fmt.Sprintf("%d/%d nodes", ps.Counts.Updated, ps.Counts.Total)
			if ps.SpecRevision != prev.rev {
				out = append(out, statusEvent{Event{Time: t, Cluster: cluster, Pool: pool, What: "applying", Detail: progress}, ps.SpecRevision})
			}
			if ps.Phase != prev.phase || ps.SpecRevision != prev.rev {
				if what := phaseEvent(ps.Phase); what != "" {
					detail := progress
					if ps.Message != "" && what != "completed" {
						detail = ps.Message
					}
					out = append(out, statusEvent{Event{Time: t, Cluster: cluster, Pool: pool, What: what, Detail: detail}, ps.SpecRevision})
				}
			}
			seen[k] = last{ps.SpecRevision, ps.Phase}
			if repairs[k] == nil {
				repairs[k] = map[string]string{}
			}
			for _, ev := range repairEvents(ps, repairs[k], t) {
				out = append(out, statusEvent{Event{Time: ev.Time, Cluster: cluster, Pool: pool, What: ev.What, Detail: ev.Detail, Repair: true}, ps.SpecRevision})
			}
		}
	}
	return out, nil
}

// repairEvents turns the repairs of a pool's status that are new, or newly
// ended, into events; known holds the outcome of those seen already, by
// node/id, and is updated.
func repairEvents(ps writeback.PoolStatus, known map[string]string, at time.Time) []Event {
	var out []Event
	for _, r := range ps.Repairs {
		k := r.Node + "/" + r.ID
		outcome, seen := known[k]
		dry := ""
		if r.DryRun {
			dry = "dry run: "
		}
		if !seen {
			detail := fmt.Sprintf("%s%s: %s, rung %d for %s", dry, r.Node, r.Action, r.Rung, r.Problem)
			if r.Reason != "" {
				detail += " (" + r.Reason + ")"
			}
			out = append(out, Event{Time: r.Time, What: "repair", Detail: detail})
		}
		if r.Outcome != "" && r.Outcome != outcome {
			out = append(out, Event{Time: at, What: "repair ended", Detail: fmt.Sprintf("%s%s: %s %s", dry, r.Node, r.Action, strings.ToLower(r.Outcome))})
		}
		known[k] = r.Outcome
	}
	return out
}

func phaseEvent(phase string) string {
	switch phase {
	case "UpToDate":
		return "completed"
	case "Halted":
		return "halted"
	case "RollingBack":
		return "rolling back"
	case "Blocked":
		return "blocked"
	case "Paused":
		return "paused"
	}
	return ""
}

// Write prints the history, newest first.
func Write(w io.Writer, entries []Entry) error {
	for i, e := range entries {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s  %s  %s  %s\n", schema.Short(e.Commit), e.Time.UTC().Format("2006-01-02 15:04"), e.Author, e.Subject)
		if e.Invalid != "" {
			fmt.Fprintf(w, "    invalid, never applied: %s\n", e.Invalid)
		}
		for _, c := range e.Changes {
			fmt.Fprintf(w, "    %s\n", changeLine(c))
		}
		for _, r := range e.RevertedBy {
			fmt.Fprintf(w, "    reverted by %s\n", schema.Short(r))
		}
		sort.SliceStable(e.Events, func(i, j int) bool { return e.Events[i].Time.Before(e.Events[j].Time) })
		for _, ev := range e.Events {
			if !touches(e, ev.Pool) && !ev.Repair {
				continue // every pool reports every revision; show the ones it changed
			}
			fmt.Fprintf(w, "    %s/%s: %s %s (%s)\n", ev.Cluster, ev.Pool, ev.What, ev.Time.UTC().Format("2006-01-02 15:04:05"), ev.Detail)
		}
	}
	return nil
}

// touches reports whether an entry changed the pool; an entry that changed
// no pool (the first one) touches them all.
func touches(e Entry, pool string) bool {
	if len(e.Changes) == 0 {
		return true
	}
	for _, c := range e.Changes {
		if c.Pool == pool {
			return true
		}
	}
	return false
}

// changeLine reads like "general: os 1fff1fd9 -> 7a3283c6, kubelet.maxPods 110 -> 200".
func changeLine(c PoolChange) string {
	switch {
	case c.Added:
		return c.Pool + ": added"
	case c.Removed:
		return c.Pool + ": removed"
	}
	var parts []string
	for _, f := range c.Fields {
		path := f.Path
		if path == "os.commit" {
			path = "os"
		}
		parts = append(parts, fmt.Sprintf("%s %s -> %s", path, shorten(f.From), shorten(f.To)))
	}
	line := c.Pool + ": " + strings.Join(parts, ", ")
	if c.Reverts != "" {
		line += " (reverts " + schema.Short(c.Reverts) + ")"
	}
	return line
}

func shorten(v string) string {
	switch {
	case v == "":
		return "(unset)"
	case len(v) == 64 && strings.Trim(v, "0123456789abcdef") == "":
		return schema.Short(v)
	case len(v) > 40:
		return v[:37] + "..."
	}
	return v
}

func poolNames(a, b *loader.Result) []string {
	names := map[string]bool{}
	for _, r := range []*loader.Result{a, b} {
		if r != nil {
			for n := range r.Fleet.Pools {
				names[n] = true
			}
		}
	}
	return sortedKeys(names)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}

// trailer returns the value of a "Key: value" trailer in a commit message.
func trailer(msg, key string) string {
	for _, line := range strings.Split(msg, "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
