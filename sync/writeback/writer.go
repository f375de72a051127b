package writeback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-git/v5/plumbing/transport"

	"herd.dev/herd/sync/gitutil"
)

// Options configures a Writer.
type Options struct {
	// URL of the remote (the fleet repository's remote).
	URL string
	// Branch is the status branch; default "herd/status".
	Branch string
	// Cluster names this cluster's directory, clusters/<Cluster>/.
	Cluster string
	// Shard, when set, names this controller's shard of the cluster's
	// pools (herd controller --shard-name). A shard writes only its own
	// pools' files and its source as shards/<Shard>.yaml, leaving the other
	// shards' files as they are; without it the Writer owns the whole
	// directory.
	Shard string
	// Auth holds the credentials for URL.
	Auth gitutil.Auth
	// Interval is the minimum time between ordinary commits; default 5s.
	// Phase changes are committed at once.
	Interval time.Duration
	// MaxRetries bounds push attempts per write when other writers keep
	// winning the race; default 50. Timeout bounds them in time: with
	// several clusters or shards writing at once a writer may lose many
	// races in a row, and giving up after a handful turned a busy branch
	// into failed writes.
	MaxRetries int
	// Timeout bounds each write (fetch, build, push); default one minute.
	Timeout time.Duration
	// AuthorName and AuthorEmail sign commits; default
	// "Herd <herd@<cluster>>".
	AuthorName, AuthorEmail string
	// Signer, when set, signs commits (gitutil.NewPGPSigner or
	// gitutil.NewSSHSigner).
	Signer gitutil.Signer
	// Logger; default discards.
	Logger *slog.Logger
}

// Stats counts the Writer's work.
type Stats struct {
	// Commits pushed, and their hashes (the last 100).
	Commits      int
	RecentHashes []string
	// Conflicts is how many pushes lost a race and were rebuilt.
	Conflicts int
	// Unchanged counts writes that found nothing to change.
	Unchanged int
	// LastError is the last failed write's error ("" after a success).
	LastError string
}

// Writer publishes a cluster's status to the status branch.
type Writer struct {
	opts Options
	log  *slog.Logger
	auth transport.AuthMethod
	ep   *transport.Endpoint

	mu      sync.Mutex
	latest  state
	version uint64          // bumped by every Set; compared against written
	written uint64          // version of the last state committed (or unchanged)
	phaseAt uint64          // version of the latest phase change
	changed map[string]bool // what changed phase since the last commit
	queue   []state
	wake    chan struct{}
	stats   Stats

	writeMu   sync.Mutex // serializes writes; guards repo and lastWrite
	repo      *store
	lastWrite time.Time
}

// state is everything the Writer renders.
type state struct {
	source *SourceStatus
	pools  map[string]*poolState
	gone   map[string]bool // pools removed: a shard deletes their files
}

type poolState struct {
	status PoolStatus
	seeded bool // transitions from the branch were merged in
}

func (s state) clone() state {
	c := state{pools: make(map[string]*poolState, len(s.pools)), gone: maps.Clone(s.gone)}
	if s.source != nil {
		src := normalizeSource(*s.source)
		c.source = &src
	}
	for k, v := range s.pools {
		p := *v
		p.status = normalizePool(v.status)
		c.pools[k] = &p
	}
	return c
}

func (s state) sortedPools() []PoolStatus {
	names := make([]string, 0, len(s.pools))
	for n := range s.pools {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]PoolStatus, 0, len(names))
	for _, n := range names {
		out = append(out, s.pools[n].status)
	}
	return out
}

// New validates opts. It does not contact the remote.
func New(opts Options) (*Writer, error) {
	if opts.URL == "" {
		return nil, errors.New("writeback: URL is required")
	}
	if err := checkName("cluster", opts.Cluster); err != nil {
		return nil, fmt.Errorf("writeback: %w", err)
	}
	if opts.Shard != "" {
		if err := checkName("shard", opts.Shard); err != nil {
			return nil, fmt.Errorf("writeback: %w", err)
		}
	}
	if opts.Branch == "" {
		opts.Branch = "herd/status"
	}
	if opts.Interval <= 0 {
		opts.Interval = 5 * time.Second
	}
	if opts.MaxRetries <= 0 {
		opts.MaxRetries = 50
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	if opts.AuthorName == "" {
		opts.AuthorName = "Herd"
	}
	if opts.AuthorEmail == "" {
		opts.AuthorEmail = "herd@" + opts.Cluster
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ep, err := transport.NewEndpoint(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("writeback: parse URL: %w", err)
	}
	auth, err := opts.Auth.Method(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("writeback: auth for %s: %w", gitutil.RedactURL(opts.URL), err)
	}
	return &Writer{
		opts:   opts,
		log:    opts.Logger.With("url", gitutil.RedactURL(opts.URL), "branch", opts.Branch, "cluster", opts.Cluster),
		auth:   auth,
		ep:     ep,
		latest: state{pools: map[string]*poolState{}},
		wake:   make(chan struct{}, 1),
		repo:   newStore(),
	}, nil
}

// SetSource records the source's state now. A change of the applied or
// rejected revision is committed at once.
func (w *Writer) SetSource(s SourceStatus) {
	s = normalizeSource(s)
	w.mu.Lock()
	defer w.mu.Unlock()
	prev := w.latest.source
	if prev != nil && reflect.DeepEqual(*prev, s) {
		return
	}
	phase := prev == nil ||
		revCommit(prev.LastApplied) != revCommit(s.LastApplied) ||
		rejCommit(prev.LastRejected) != rejCommit(s.LastRejected)
	w.update(w.sourceFile(), phase, func() { w.latest.source = &s })
}

// SetPool records a pool's state now. Node state changes since the previous
// SetPool become transitions; a change of Phase is committed at once.
func (w *Writer) SetPool(p PoolStatus) error {
	if err := checkName("pool", p.Name); err != nil {
		return fmt.Errorf("writeback: %w", err)
	}
	if p.Name == "source" {
		return errors.New(`writeback: a pool may not be named "source"`)
	}
	p = normalizePool(p)
	now := normTime(time.Now())
	w.mu.Lock()
	defer w.mu.Unlock()
	prev, ok := w.latest.pools[p.Name]
	if ok && samePool(prev.status, p) {
		return nil // nothing changed: no render, no commit
	}
	next := &poolState{status: p}
	var trans []Transition
	phase := !ok
	if ok {
		next.seeded = prev.seeded
		trans = slices.Clone(prev.status.Transitions)
		if !slices.Equal(prev.status.Repairs, p.Repairs) {
			phase = true // a repair, or its outcome: a commit of its own
		}
		if prev.status.Phase != p.Phase {
			phase = true
			trans = append(trans, Transition{Time: now, From: prev.status.Phase, To: p.Phase, Message: p.Message})
		}
		trans = append(trans, nodeTransitions(prev.status.Nodes, p.Nodes, now)...)
	}
	trans = append(trans, p.Transitions...) // caller's extra events
	if n := len(trans); n > MaxTransitions {
		trans = trans[n-MaxTransitions:]
	}
	next.status.Transitions = trans
	w.update(p.Name+".yaml", phase, func() {
		w.latest.pools[p.Name] = next
		delete(w.latest.gone, p.Name)
	})
	return nil
}

// RemovePool drops a pool's file from the cluster's directory: the pool
// is gone from the fleet.
func (w *Writer) RemovePool(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, known := w.latest.pools[name]
	if !known && (w.opts.Shard == "" || w.latest.gone[name]) {
		return
	}
	w.update(name+".yaml", true, func() {
		delete(w.latest.pools, name)
		if w.opts.Shard != "" {
			if w.latest.gone == nil {
				w.latest.gone = map[string]bool{}
			}
			w.latest.gone[name] = true
		}
	})
}

// ReleasePool stops writing a pool's file and leaves the file as it is:
// the pool moved to another shard, which writes it from now on.
func (w *Writer) ReleasePool(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.latest.pools, name)
}

// sourceFile is where the source's state goes in the cluster's directory.
func (w *Writer) sourceFile() string {
	if w.opts.Shard != "" {
		return "shards/" + w.opts.Shard + ".yaml"
	}
	return "source.yaml"
}

// update applies change to file key under w.mu. When the same file changes
// phase again before the earlier phase change was committed, the state
// before this change is queued so that every phase gets its own commit.
func (w *Writer) update(key string, phase bool, change func()) {
	if phase && w.changed[key] {
		w.queue = append(w.queue, w.latest.clone())
		clear(w.changed)
	}
	change()
	w.version++
	if phase {
		w.phaseAt = w.version
		if w.changed == nil {
			w.changed = map[string]bool{}
		}
		w.changed[key] = true
	}
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// nodeTransitions lists state changes between two sorted node lists.
func nodeTransitions(prev, next []NodeStatus, now time.Time) []Transition {
	old := make(map[string]string, len(prev))
	for _, n := range prev {
		old[n.Name] = n.State
	}
	var out []Transition
	for _, n := range next {
		from, ok := old[n.Name]
		if ok && from == n.State {
			continue
		}
		t := n.Since
		if t.IsZero() {
			t = now
		}
		out = append(out, Transition{Time: t, Node: n.Name, From: from, To: n.State, Message: n.Message})
	}
	return out
}

func revCommit(r *Revision) string {
	if r == nil {
		return ""
	}
	return r.Commit
}

func rejCommit(r *RejectedCommit) string {
	if r == nil {
		return ""
	}
	return r.Commit
}

// Run commits and pushes the state as it changes until ctx is cancelled:
// phase changes at once, other changes at most once per Interval. Failed
// writes are retried after Interval. Run does not flush on exit; call Flush
// with a fresh context to push the final state.
func (w *Writer) Run(ctx context.Context) error {
	var retryAt time.Time
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		wait, pending := w.nextWrite(retryAt)
		if pending && wait <= 0 {
			if err := w.Flush(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				w.log.Error("status write failed", "err", err)
				retryAt = time.Now().Add(w.opts.Interval)
			} else {
				retryAt = time.Time{}
			}
			continue
		}
		var fire <-chan time.Time
		if pending {
			timer.Reset(wait)
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-w.wake:
		case <-fire:
		}
		timer.Stop()
	}
}

// nextWrite says whether a write is pending and how long to wait for it:
// none for a phase change, else until Interval after the last write, and
// never before retryAt after a failure.
func (w *Writer) nextWrite(retryAt time.Time) (time.Duration, bool) {
	w.mu.Lock()
	dirty := w.version != w.written
	urgent := w.phaseAt > w.written || len(w.queue) > 0
	w.mu.Unlock()
	if !dirty && !urgent {
		return 0, false
	}
	w.writeMu.Lock()
	due := w.lastWrite.Add(w.opts.Interval)
	w.writeMu.Unlock()
	if urgent {
		due = time.Time{}
	}
	if retryAt.After(due) {
		due = retryAt
	}
	return time.Until(due), true
}

// Flush commits and pushes every pending state now (queued phase changes
// first), returning when they are on the remote or the write failed.
func (w *Writer) Flush(ctx context.Context) error {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	for {
		w.mu.Lock()
		if len(w.queue) == 0 {
			w.mu.Unlock()
			break
		}
		snap := w.queue[0]
		w.mu.Unlock()
		if err := w.write(ctx, snap); err != nil {
			return err
		}
		w.mu.Lock()
		w.queue = w.queue[1:]
		w.mu.Unlock()
	}
	w.mu.Lock()
	if w.version == w.written {
		clear(w.changed)
		w.mu.Unlock()
		return nil
	}
	snap, version := w.latest.clone(), w.version
	w.mu.Unlock()
	if err := w.write(ctx, snap); err != nil {
		return err
	}
	w.mu.Lock()
	w.written = version
	if version >= w.phaseAt {
		clear(w.changed)
	}
	// Transitions from the branch were merged into snap: keep them.
	for name, p := range snap.pools {
		if cur, ok := w.latest.pools[name]; ok && !cur.seeded && p.seeded {
			cur.seeded = true
			cur.status.Transitions = mergeTransitions(p.status.Transitions, cur.status.Transitions)
		}
	}
	w.mu.Unlock()
	return nil
}

// Stats returns counters of the Writer's work.
func (w *Writer) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.stats
	s.RecentHashes = slices.Clone(s.RecentHashes)
	return s
}

// mergeTransitions appends the entries of newer that older lacks.
func mergeTransitions(older, newer []Transition) []Transition {
	seen := make(map[Transition]bool, len(older))
	out := slices.Clone(older)
	for _, t := range older {
		seen[t] = true
	}
	for _, t := range newer {
		if !seen[t] {
			out = append(out, t)
		}
	}
	if n := len(out); n > MaxTransitions {
		out = out[n-MaxTransitions:]
	}
	return out
}

func (w *Writer) recordCommit(hash string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stats.Commits++
	w.stats.RecentHashes = append(w.stats.RecentHashes, hash)
	if n := len(w.stats.RecentHashes); n > 100 {
		w.stats.RecentHashes = w.stats.RecentHashes[n-100:]
	}
	w.stats.LastError = ""
}

func (w *Writer) recordError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stats.LastError = err.Error()
}

var errConflict = errors.New("the status branch moved")

func isConflict(err error) bool { return errors.Is(err, errConflict) }

func conflictf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errConflict, strings.TrimSpace(fmt.Sprintf(format, args...)))
}

// samePool compares two pool states, leaving out the transitions the Writer
// keeps itself.
func samePool(a, b PoolStatus) bool {
	a.Transitions, b.Transitions = nil, nil
	return reflect.DeepEqual(a, b)
}
