package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-git/go-git/v5/plumbing/transport"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/gitutil"
)

const (
	remoteName  = "origin"
	refGood     = plumbing.ReferenceName("refs/herd/good")
	refApplied  = plumbing.ReferenceName("refs/herd/applied")
	checkoutDir = "checkouts"
)

// Source follows one branch of a fleet repository. Create it with New, run
// it with Run, and read accepted revisions from Updates.
type Source struct {
	opts     Options
	log      *slog.Logger
	auth     transport.AuthMethod
	ssh      *sshConn // kept open between checks; nil unless ssh:// with a key
	verifier *gitutil.Verifier
	repoPtr  atomic.Pointer[git.Repository] // replaced after a repack
	// storeMu keeps readers of the cache (ReadGitDir) out while a fetch
	// or a repack writes packs and refs.
	storeMu  sync.RWMutex
	fetchRef plumbing.ReferenceName

	trigger chan struct{}
	updates chan Revision
	changes chan struct{} // signalled after every check
	runMu   sync.Mutex    // serializes reconciles

	mu        sync.Mutex
	status    Status
	outcome   [2]string // reason and message of the latest accept/reject
	current   *Revision
	manifest  manifest // files of current.Dir
	candidate string   // commit being checked out and validated
	// awaitingKey: the last rejection was for want of any trusted key, so
	// the same head is checked again (a key may have been added since).
	awaitingKey bool
}

// New validates opts, opens or creates the cache and loads the trusted keys.
// It does not contact the remote.
func New(opts Options) (*Source, error) {
	if opts.URL == "" {
		return nil, errors.New("source: URL is required")
	}
	if opts.CacheDir == "" {
		return nil, errors.New("source: CacheDir is required")
	}
	if opts.Branch == "" {
		opts.Branch = "main"
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Minute
	}
	if opts.Jitter <= 0 {
		opts.Jitter = 0.1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = time.Minute
	}
	opts.Path = strings.Trim(filepath.ToSlash(filepath.Clean("/"+opts.Path)), "/")
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Source{
		opts:     opts,
		log:      opts.Logger.With("url", gitutil.RedactURL(opts.URL), "branch", opts.Branch),
		fetchRef: plumbing.NewRemoteReferenceName(remoteName, opts.Branch),
		trigger:  make(chan struct{}, 1),
		updates:  make(chan Revision, 1),
		changes:  make(chan struct{}, 1),
	}
	var err error
	if s.auth, err = opts.Auth.Method(opts.URL); err != nil {
		return nil, fmt.Errorf("source: auth for %s: %w", gitutil.RedactURL(opts.URL), err)
	}
	if ep, err := transport.NewEndpoint(opts.URL); err == nil {
		if s.ssh, err = newSSHConn(ep, s.auth); err != nil {
			return nil, fmt.Errorf("source: %s: %w", gitutil.RedactURL(opts.URL), err)
		}
	}
	if opts.Verify != nil && opts.Verify.Dir == "" {
		if s.verifier, err = opts.Verify.load(); err != nil {
			return nil, fmt.Errorf("source: %w", err)
		}
	}
	repo, err := openCache(filepath.Join(opts.CacheDir, "repo.git"), opts.URL)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	s.repoPtr.Store(repo)
	// Checkouts from an earlier process cannot be trusted: start clean.
	if err := os.RemoveAll(filepath.Join(opts.CacheDir, checkoutDir)); err != nil {
		return nil, fmt.Errorf("source: clean checkouts: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(opts.CacheDir, checkoutDir), 0o755); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	s.status = Status{URL: gitutil.RedactURL(opts.URL), Branch: opts.Branch, LastApplied: opts.LastApplied}
	return s, nil
}

// openCache opens the bare cache at dir, creating it when missing, and
// points its remote at url.
func openCache(dir, url string) (*git.Repository, error) {
	repo, err := git.PlainOpen(dir)
	if errors.Is(err, git.ErrRepositoryNotExists) {
		repo, err = git.PlainInit(dir, true)
	}
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	if r, err := repo.Remote(remoteName); err == nil {
		if urls := r.Config().URLs; len(urls) == 1 && urls[0] == url {
			return repo, nil
		}
		if err := repo.DeleteRemote(remoteName); err != nil {
			return nil, fmt.Errorf("reset cache remote: %w", err)
		}
	}
	if _, err := repo.CreateRemote(&config.RemoteConfig{Name: remoteName, URLs: []string{url}}); err != nil {
		return nil, fmt.Errorf("configure cache remote: %w", err)
	}
	return repo, nil
}

func (s *Source) repo() *git.Repository { return s.repoPtr.Load() }

// Run checks the remote now, then every Interval (jittered) and on each
// Trigger, until ctx is cancelled. It returns nil on cancellation.
func (s *Source) Run(ctx context.Context) error {
	if s.ssh != nil {
		defer s.ssh.close()
	}
	for {
		s.Reconcile(ctx)
		timer := time.NewTimer(s.nextWait())
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-s.trigger:
			timer.Stop()
		case <-timer.C:
		}
	}
}

func (s *Source) nextWait() time.Duration {
	j := s.opts.Jitter * (2*rand.Float64() - 1)
	return time.Duration(float64(s.opts.Interval) * (1 + j))
}

// Trigger asks Run to check the remote at once. It never blocks; triggers
// arriving while a check runs are coalesced into one more check.
func (s *Source) Trigger() {
	select {
	case s.trigger <- struct{}{}:
	default:
	}
}

// Updates delivers accepted revisions. Only the newest undelivered revision
// is kept: a slow reader skips intermediate ones.
func (s *Source) Updates() <-chan Revision { return s.updates }

// Changes is signalled after every check of the remote, whatever its
// outcome, and when the applied revision changes, so a reader of Status
// sees each one. Signals coalesce.
func (s *Source) Changes() <-chan struct{} { return s.changes }

func (s *Source) changed() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// Current returns the last accepted revision.
func (s *Source) Current() (Revision, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.current == nil {
		return Revision{}, false
	}
	return *s.current, true
}

// MarkApplied records that the fleet now runs commit. Later heads must
// descend from it, and verification starts after it.
func (s *Source) MarkApplied(commit string) {
	s.mu.Lock()
	changed := s.status.LastApplied != commit
	s.status.LastApplied = commit
	s.mu.Unlock()
	if changed {
		s.changed()
	}
	h := plumbing.NewHash(commit)
	if _, err := s.repo().CommitObject(h); err == nil {
		if err := s.repo().Storer.SetReference(plumbing.NewHashReference(refApplied, h)); err != nil {
			s.log.Error("record applied revision", "commit", commit, "err", err)
		}
	}
	s.pruneCheckouts("")
}

// Status returns a snapshot of the source's state.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	if st.LastRejected != nil {
		r := *st.LastRejected
		st.LastRejected = &r
	}
	return st
}

// Reconcile runs the steps once: check head, fetch, ancestry, verify,
// checkout, validate, accept. Run calls it; it is exported for callers that
// drive the source themselves.
func (s *Source) Reconcile(ctx context.Context) {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	defer s.changed()
	// Repack once no object of this run is in use (go-git objects keep
	// the storage they were read from).
	defer s.maybeRepack()
	defer func() {
		s.mu.Lock()
		s.candidate = ""
		s.mu.Unlock()
	}()

	steps := newStepTimer()
	netCtx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	head, sess, err := s.checkHead(netCtx)
	steps.done("checkHead")
	if err != nil {
		s.unavailable(err)
		return
	}
	if s.alreadyHandled(head) {
		_ = sess.Close()
		return
	}
	commit, err := s.fetch(netCtx, sess, head)
	steps.done("fetch")
	if err != nil {
		s.unavailable(err)
		return
	}
	log := s.log.With("commit", commit.Hash.String())
	defer func() { log.Debug("reconciled", steps.attrs()...) }()

	base := s.base()
	rng, err := s.ancestry(base, commit)
	steps.done("ancestry")
	if errors.Is(err, errNotDescendant) {
		s.reject(commit, NonFastForward, err.Error())
		return
	}
	if err != nil {
		s.storageFailed(commit, err)
		return
	}
	signer, err := s.verify(commit, rng)
	steps.done("verify")
	if err != nil {
		s.reject(commit, VerificationFailed, err.Error())
		s.mu.Lock()
		s.awaitingKey = errors.Is(err, errNoTrustedKey)
		s.mu.Unlock()
		return
	}
	rev, man, err := s.checkout(commit)
	steps.done("checkout")
	if err != nil {
		if errors.Is(err, errPathNotFound) || errors.Is(err, errBadTree) {
			s.reject(commit, ValidationFailed, err.Error())
		} else {
			s.storageFailed(commit, err)
		}
		return
	}
	rev.Signer = signer
	err = s.validate(ctx, rev.Dir)
	steps.done("validate")
	if err != nil {
		_ = os.RemoveAll(rev.Dir)
		if ctx.Err() != nil {
			log.Info("validation interrupted", "err", err)
			return
		}
		reason := ValidationFailed
		if errors.Is(err, ErrBudgetExceeded) {
			reason = BudgetExceeded
		}
		s.reject(commit, reason, err.Error())
		return
	}
	s.accept(rev, man)
}

// alreadyHandled reports whether head was already accepted or rejected, in
// which case nothing needs to be fetched.
func (s *Source) alreadyHandled(head plumbing.Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := head.String()
	return (s.current != nil && s.current.Commit == h) ||
		(s.status.LastRejected != nil && s.status.LastRejected.Commit == h && !s.awaitingKey)
}

// repackThreshold is the number of pack files (one per incremental fetch)
// past which the cache is repacked into one, keeping object lookups fast.
var repackThreshold = 64

func (s *Source) maybeRepack() {
	s.storeMu.Lock()
	defer s.storeMu.Unlock()
	pos, ok := s.repo().Storer.(storer.PackedObjectStorer)
	if !ok {
		return
	}
	packs, err := pos.ObjectPacks()
	if err != nil || len(packs) <= repackThreshold {
		return
	}
	start := time.Now()
	if err := s.repo().RepackObjects(&git.RepackConfig{}); err != nil {
		s.log.Error("repack cache", "packs", len(packs), "err", err)
		return
	}
	// go-git caches the list of packs: reopen to see the new one.
	repo, err := git.PlainOpen(filepath.Join(s.opts.CacheDir, "repo.git"))
	if err != nil {
		s.log.Error("reopen cache after repack", "err", err)
		return
	}
	s.repoPtr.Store(repo)
	s.log.Info("repacked cache", "packs", len(packs), "took", time.Since(start))
}

// base returns the revision new heads must descend from: the last applied
// one, else the current one, else none.
func (s *Source) base() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status.LastApplied != "" {
		return s.status.LastApplied
	}
	if s.current != nil {
		return s.current.Commit
	}
	return ""
}

// errNotDescendant marks a head refused by the ancestry step.
var errNotDescendant = errors.New("non-fast-forward")

// commitRange is the outcome of the ancestry step: the commits to verify.
type commitRange struct {
	commits     []*object.Commit
	headOnly    bool   // verify just the head (first revision, unknown base)
	nonFFReason string // set when the head does not descend from base
}

// ancestry checks that head descends from base and collects the commits in
// base..head. It fails when it does not descend and non-fast-forwards are
// not allowed.
func (s *Source) ancestry(base string, head *object.Commit) (commitRange, error) {
	if base == "" {
		return commitRange{headOnly: true}, nil
	}
	baseHash := plumbing.NewHash(base)
	if _, err := s.repo().CommitObject(baseHash); err != nil {
		if !errors.Is(err, plumbing.ErrObjectNotFound) {
			return commitRange{}, fmt.Errorf("read last applied revision %s: %w", schema.Short(base), err)
		}
		msg := fmt.Sprintf("head %s: the last applied revision %s is not in the history of %s", schema.Short(head.Hash.String()), schema.Short(base), s.opts.Branch)
		if !s.opts.AllowNonFastForward {
			return commitRange{}, fmt.Errorf("%w: %s (force-push?)", errNotDescendant, msg)
		}
		s.log.Warn("accepting a non-fast-forward head; verifying only the head", "reason", msg)
		return commitRange{headOnly: true, nonFFReason: msg}, nil
	}
	commits, descends, err := revRange(s.repo().Storer, head.Hash, baseHash)
	if err != nil {
		return commitRange{}, fmt.Errorf("walk history from %s to %s: %w", schema.Short(head.Hash.String()), schema.Short(base), err)
	}
	if !descends {
		msg := fmt.Sprintf("head %s does not descend from the last applied revision %s (force-push)", schema.Short(head.Hash.String()), schema.Short(base))
		if !s.opts.AllowNonFastForward {
			return commitRange{}, fmt.Errorf("%w: %s", errNotDescendant, msg)
		}
		s.log.Warn("accepting a non-fast-forward head", "reason", msg, "newCommits", len(commits))
		return commitRange{commits: commits, nonFFReason: msg}, nil
	}
	return commitRange{commits: commits}, nil
}

// verify checks the signatures of the range; it returns the head's signer.
func (s *Source) verify(head *object.Commit, rng commitRange) (string, error) {
	verifier := s.verifier
	switch {
	case s.opts.Verify == nil:
		return "", nil
	case verifier == nil: // keys in a directory: read them now
		var err error
		if verifier, err = s.opts.Verify.load(); err != nil {
			return "", fmt.Errorf("commit %s: %w", head.Hash, err)
		}
	}
	commits := rng.commits
	if rng.headOnly {
		commits = []*object.Commit{head}
	}
	signer := ""
	for _, c := range commits {
		who, err := verifier.VerifyCommit(c)
		if err != nil {
			return "", fmt.Errorf("commit %s (%q by %s): %w", c.Hash, subject(c), c.Author.Email, err)
		}
		if c.Hash == head.Hash {
			signer = who
		}
	}
	return signer, nil
}

// validate runs the validation hook.
func (s *Source) validate(ctx context.Context, dir string) error {
	if s.opts.Validate == nil {
		return nil
	}
	return s.opts.Validate(ctx, dir)
}

// accept makes rev the current revision and publishes it.
func (s *Source) accept(rev Revision, man manifest) {
	h := plumbing.NewHash(rev.Commit)
	if err := s.repo().Storer.SetReference(plumbing.NewHashReference(refGood, h)); err != nil {
		s.log.Error("record accepted revision", "commit", rev.Commit, "err", err)
	}
	s.mu.Lock()
	s.current = &rev
	s.manifest = man
	msg := fmt.Sprintf("accepted %s: %s", schema.Short(rev.Commit), rev.Subject)
	s.outcome = [2]string{string(Succeeded), msg}
	s.status.Current = rev.Commit
	s.status.Reason, s.status.Message = Succeeded, msg
	s.mu.Unlock()
	s.log.Info("accepted revision", "commit", rev.Commit, "subject", rev.Subject)
	s.pruneCheckouts(rev.Commit)
	for {
		select {
		case s.updates <- rev:
			return
		default:
		}
		select {
		case <-s.updates: // drop the undelivered older revision
		default:
		}
	}
}

// reject records that head was refused; the current revision stays.
func (s *Source) reject(head *object.Commit, reason Reason, msg string) {
	s.mu.Lock()
	s.status.LastRejected = &Rejection{Commit: head.Hash.String(), Reason: reason, Message: msg, Time: time.Now()}
	s.awaitingKey = false
	s.outcome = [2]string{string(reason), msg}
	s.status.Reason, s.status.Message = reason, msg
	cur := ""
	if s.current != nil {
		cur = s.current.Commit
	}
	s.mu.Unlock()
	s.log.Error("rejected revision", "commit", head.Hash.String(), "reason", reason, "message", msg, "keeping", cur)
}

func (s *Source) storageFailed(head *object.Commit, err error) {
	s.mu.Lock()
	s.status.Reason, s.status.Message = StorageFailed, s.scrub(fmt.Sprintf("checkout of %s failed: %v", schema.Short(head.Hash.String()), err))
	s.mu.Unlock()
	s.log.Error("checkout failed", "commit", head.Hash.String(), "err", err)
}

// unavailable records a failed contact; the current revision stays.
func (s *Source) unavailable(err error) {
	s.mu.Lock()
	since := "never reached it"
	if !s.status.LastSuccessTime.IsZero() {
		since = "last successful fetch " + time.Since(s.status.LastSuccessTime).Round(time.Millisecond).String() + " ago"
	}
	keep := "no revision yet"
	if s.current != nil {
		keep = "keeping " + schema.Short(s.current.Commit)
	}
	s.status.Reason = FetchFailed
	s.status.Message = s.scrub(fmt.Sprintf("%s unavailable (%s; %s): %v", s.opts.URL, since, keep, err))
	s.mu.Unlock()
	s.log.Error("source unavailable", "err", s.scrub(err.Error()), "since", since)
}

// contacted records a successful contact and restores the latest outcome.
func (s *Source) contacted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status.LastSuccessTime = time.Now()
	if s.status.Reason == FetchFailed || s.status.Reason == StorageFailed {
		s.status.Reason, s.status.Message = Reason(s.outcome[0]), s.outcome[1]
	}
}

func (s *Source) fetched(h plumbing.Hash) {
	s.mu.Lock()
	s.status.LastFetched = h.String()
	s.mu.Unlock()
}

// scrub removes the remote's credentials from a message for status or logs.
func (s *Source) scrub(msg string) string { return gitutil.Scrub(msg, s.opts.URL) }

func subject(c *object.Commit) string {
	first, _, _ := strings.Cut(strings.TrimSpace(c.Message), "\n")
	return first
}

// stepTimer records how long each reconcile step took, for debug logs.
type stepTimer struct {
	last  time.Time
	names []string
	took  []time.Duration
}

func newStepTimer() *stepTimer { return &stepTimer{last: time.Now()} }

func (t *stepTimer) done(step string) {
	now := time.Now()
	t.names = append(t.names, step)
	t.took = append(t.took, now.Sub(t.last))
	t.last = now
}

func (t *stepTimer) attrs() []any {
	out := make([]any, 0, 2*len(t.names))
	for i, n := range t.names {
		out = append(out, n, t.took[i])
	}
	return out
}
