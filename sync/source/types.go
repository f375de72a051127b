// Package source follows one branch of a Herd fleet repository the way
// Flux's source-controller follows a GitRepository: it keeps a bare on-disk
// cache of the remote, checks the remote head (ls-remote) on an interval, on
// Trigger and on webhooks, fetches incrementally when it moved, and passes a
// new head through a fixed list of steps before handing it to the
// controller:
//
//  1. check head  – open an upload-pack session and read the remote's ref
//     advertisement (what git ls-remote prints); stop there when the head
//     has not moved since it was last accepted or rejected.
//  2. fetch       – incremental fetch of the head into the cache over the
//     same session (the cache's refs are offered as haves), so a check
//     costs one connection and a fetch no second one.
//  3. ancestry    – the head must descend from the last applied revision
//     (or, before anything was applied, the last accepted one); otherwise
//     it is refused as NonFastForward unless AllowNonFastForward.
//  4. verify      – with verification on, every commit from the last
//     applied revision (exclusive) to the head (inclusive) must carry a
//     valid signature by a trusted OpenPGP key or SSH allowed signer. On the
//     very first revision (nothing applied or accepted yet) only the head is
//     verified, as Flux does. After an allowed non-fast-forward, the commits
//     reachable from the head but not from the last applied revision are
//     verified (only the head when that revision is unknown locally).
//  5. checkout    – materialize the tree of Options.Path at the head into
//     <CacheDir>/checkouts/<sha>/ (read-only files; unchanged files are
//     hard-linked from the previous checkout).
//  6. validate    – call Options.Validate on that directory.
//  7. accept      – make it the current revision and send it on Updates.
//
// A rejected head leaves the current revision in force and is reported in
// Status until a new head arrives. An unreachable remote keeps the current
// revision and reports FetchFailed with the time since the last
// successful contact.
package source

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"herd.dev/herd/sync/gitutil"
)

// Reason says why the source is in its current state.
type Reason string

// Reasons reported in Status.
const (
	// Succeeded: the remote was reached and its head is the current revision.
	Succeeded Reason = "Succeeded"
	// FetchFailed: the remote could not be reached or fetched from (the
	// name Flux's GitRepository uses).
	FetchFailed Reason = "FetchFailed"
	// NonFastForward: the head does not descend from the last applied
	// revision (force-push) and AllowNonFastForward is off.
	NonFastForward Reason = "NonFastForward"
	// VerificationFailed: a commit in the new range has no valid signature
	// by a trusted key.
	VerificationFailed Reason = "VerificationFailed"
	// ValidationFailed: the fleet path is missing or the validation hook
	// rejected the tree.
	ValidationFailed Reason = "ValidationFailed"
	// BudgetExceeded: evaluating the tree went over its budget (memory,
	// CPU or wall-clock time, nesting, size); the validation hook's error
	// wraps ErrBudgetExceeded.
	BudgetExceeded Reason = "BudgetExceeded"
	// StorageFailed: the local cache or checkout could not be written; the
	// head is tried again on the next check.
	StorageFailed Reason = "StorageFailed"
)

// ErrBudgetExceeded is wrapped by a validation hook's error when the tree
// was rejected for going over the evaluation budget.
var ErrBudgetExceeded = errors.New("over the evaluation budget")

// Options configures a Source.
type Options struct {
	// URL of the fleet repository: file://, http(s)://, ssh:// or git://.
	URL string
	// Branch to follow; default "main".
	Branch string
	// Path is the fleet root inside the repository ("" for the root).
	Path string
	// CacheDir holds the bare cache (repo.git) and checkouts/. Required.
	CacheDir string
	// Auth holds the credentials for URL.
	Auth gitutil.Auth
	// Interval between head checks; default one minute. Each wait is
	// jittered by ±Jitter (a fraction, default 0.1).
	Interval time.Duration
	Jitter   float64
	// Timeout bounds each network operation; default one minute.
	Timeout time.Duration
	// Verify, when set, turns on signature verification.
	Verify *Verification
	// AllowNonFastForward accepts heads that do not descend from the last
	// applied revision (after verifying the new commits).
	AllowNonFastForward bool
	// LastApplied is the revision the fleet runs, as persisted by the
	// caller; it anchors the ancestry and verification checks on restart.
	LastApplied string
	// Validate checks a materialized fleet tree; its error text is reported
	// as is (Herd's validator gives file:line:col: message lines).
	Validate func(ctx context.Context, dir string) error
	// Logger receives progress and errors; default discards. Bridge a
	// logr.Logger with slog.New(logr.ToSlogHandler(l)).
	Logger *slog.Logger
}

// Verification lists the keys trusted to sign fleet commits.
type Verification struct {
	// PGPKeyRings are files with armored OpenPGP public keys.
	PGPKeyRings []string
	// AllowedSigners is an ssh-keygen allowed_signers file (namespace
	// "git"); "" for none.
	AllowedSigners string
	// Dir is a directory of more keys (a mounted ConfigMap), read again
	// at every verification so that keys added to it take effect without
	// a restart: *.asc and *.gpg keyrings and an allowed_signers file.
	// While no key is trusted at all, every new commit is rejected.
	Dir string
}

// Revision is an accepted commit of the fleet repository, materialized on
// disk.
type Revision struct {
	// Commit is the full hash.
	Commit string
	// Dir holds the tree of Options.Path at Commit. It stays on disk while
	// the revision is the current or the last applied one; read it promptly.
	Dir string
	// Time is the committer time.
	Time time.Time
	// Author is "Name <email>".
	Author string
	// Subject is the first line of the message.
	Subject string
	// Signer describes the key that signed the head, when verified.
	Signer string
}

// Rejection records a head that was refused.
type Rejection struct {
	Commit  string
	Reason  Reason
	Message string
	Time    time.Time
}

// Status is a snapshot of the source's state.
type Status struct {
	URL    string
	Branch string
	// Reason and Message describe the latest outcome.
	Reason  Reason
	Message string
	// LastFetched is the last remote head fetched into the cache.
	LastFetched string
	// Current is the last accepted revision ("" before the first).
	Current string
	// LastApplied is the revision last passed to MarkApplied (or
	// Options.LastApplied).
	LastApplied string
	// LastRejected is the last refused head, if any.
	LastRejected *Rejection
	// LastFetchTime is when the remote was last contacted (successfully or
	// not); LastSuccessTime when it last answered.
	LastFetchTime   time.Time
	LastSuccessTime time.Time
	// Checks counts head checks (ls-remote) attempted.
	Checks int64
}
