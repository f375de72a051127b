package ostree

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Repo is an OSTree repository worked on directly, as an image build or a
// publisher does: commit trees, sign, generate static deltas, read commits.
type Repo struct {
	Path   string   // repository directory
	Binary string   // ostree binary; "ostree" when empty
	Env    []string // added to the environment of every ostree command
}

func (r *Repo) run(ctx context.Context, args ...string) (string, error) {
	if r.Path == "" {
		return "", errors.New("ostree: Repo needs Path")
	}
	bin := r.Binary
	if bin == "" {
		bin = "ostree"
	}
	return runOSTree(ctx, bin, r.Env, append([]string{"--repo=" + r.Path}, args...)...)
}

// Init creates the repository in the given mode ("archive" to serve it over
// HTTP) unless one exists already.
func (r *Repo) Init(ctx context.Context, mode string) error {
	ok, err := exists(filepath.Join(r.Path, "config"))
	if err != nil || ok {
		return err
	}
	if err := os.MkdirAll(r.Path, 0o755); err != nil {
		return fmt.Errorf("ostree: init %s: %w", r.Path, err)
	}
	if _, err := r.run(ctx, "init", "--mode="+mode); err != nil {
		return fmt.Errorf("ostree: init %s: %w", r.Path, err)
	}
	return nil
}

// Resolve returns the commit a ref (or commit checksum) names. ok is false
// when the repository has no such ref.
func (r *Repo) Resolve(ctx context.Context, rev string) (string, bool, error) {
	if checksumRE.MatchString(rev) {
		ok, err := exists(r.objectPath(rev, "commit"))
		return rev, ok, err
	}
	out, err := r.run(ctx, "rev-parse", rev)
	if err != nil {
		var ce *CommandError
		if errors.As(err, &ce) && (strings.Contains(ce.Stderr, "not found") || strings.Contains(ce.Stderr, "No such")) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("ostree: resolve %s: %w", rev, err)
	}
	return strings.TrimSpace(out), true, nil
}

func (r *Repo) objectPath(checksum, kind string) string {
	return filepath.Join(r.Path, "objects", checksum[:2], checksum[2:]+"."+kind)
}

// CommitOptions describe one commit written by Repo.Commit.
type CommitOptions struct {
	Branch string // ref to point at the commit
	// Parent is the parent commit; "" writes a commit without parent
	// (not the branch's previous head, so that the result depends only on
	// the inputs).
	Parent string
	// Trees are overlaid in order, as ostree commit --tree takes them:
	// "ref=<commit>", "dir=<path>" or "tar=<file>".
	Trees     []string
	Subject   string
	Metadata  map[string]string // string metadata, written in key order
	Timestamp time.Time         // the commit's timestamp; pin it for reproducible commits
}

// Commit writes a commit and returns its checksum. Equal options over equal
// trees give the same checksum.
func (r *Repo) Commit(ctx context.Context, o CommitOptions) (string, error) {
	if o.Branch == "" || len(o.Trees) == 0 {
		return "", errors.New("ostree: commit: a branch and at least one tree are required")
	}
	parent := o.Parent
	if parent == "" {
		parent = "none"
	}
	args := []string{"commit", "--branch=" + o.Branch, "--parent=" + parent,
		"--timestamp=" + o.Timestamp.UTC().Format(time.RFC3339)}
	if o.Subject != "" {
		args = append(args, "--subject="+o.Subject)
	}
	for _, k := range slices.Sorted(maps.Keys(o.Metadata)) {
		args = append(args, "--add-metadata-string="+k+"="+o.Metadata[k])
	}
	for _, t := range o.Trees {
		args = append(args, "--tree="+t)
	}
	out, err := r.run(ctx, args...)
	if err != nil {
		return "", fmt.Errorf("ostree: commit %s: %w", o.Branch, err)
	}
	return strings.TrimSpace(out), nil
}

// SignGPG signs commit with the GPG key keyID from the keyring in gpgHome
// ("" for gpg's default). A commit the key signed already is left alone, so
// signing twice leaves one signature.
func (r *Repo) SignGPG(ctx context.Context, commit, keyID, gpgHome string) error {
	if err := checkChecksum(commit); err != nil {
		return err
	}
	home := []string{}
	if gpgHome != "" {
		home = append(home, "--gpg-homedir="+gpgHome)
	}
	out, err := r.run(ctx, append([]string{"show", commit}, home...)...)
	if err != nil {
		return fmt.Errorf("ostree: sign %s: %w", commit, err)
	}
	short := strings.ToUpper(keyID)
	if len(short) > 16 {
		short = short[len(short)-16:]
	}
	if strings.Contains(out, "key ID "+short) {
		return nil
	}
	if _, err := r.run(ctx, append([]string{"gpg-sign", commit, keyID}, home...)...); err != nil {
		return fmt.Errorf("ostree: sign %s with %s: %w", commit, keyID, err)
	}
	return nil
}

// Metadata returns the string metadata value key of commit; ok is false
// when the commit has no such key.
func (r *Repo) Metadata(ctx context.Context, commit, key string) (string, bool, error) {
	out, err := r.run(ctx, "show", commit, "--print-metadata-key="+key)
	if err != nil {
		var ce *CommandError
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, "No such metadata key") {
			return "", false, nil
		}
		return "", false, fmt.Errorf("ostree: metadata %s of %s: %w", key, commit, err)
	}
	v, err := unquoteGVariantString(strings.TrimSpace(out))
	if err != nil {
		return "", false, fmt.Errorf("ostree: metadata %s of %s: %w", key, commit, err)
	}
	return v, true, nil
}

// Timestamp returns the commit's timestamp.
func (r *Repo) Timestamp(ctx context.Context, commit string) (time.Time, error) {
	out, err := r.run(ctx, "show", commit)
	if err != nil {
		return time.Time{}, fmt.Errorf("ostree: show %s: %w", commit, err)
	}
	for line := range strings.SplitSeq(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Date:"); ok {
			t, err := time.Parse("2006-01-02 15:04:05 -0700", strings.TrimSpace(v))
			if err != nil {
				return time.Time{}, fmt.Errorf("ostree: show %s: date %q: %w", commit, v, err)
			}
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("ostree: show %s: no Date line", commit)
}

// unquoteGVariantString reads a string in GVariant text format: 'text' or
// "text" with backslash escapes.
func unquoteGVariantString(s string) (string, error) {
	if len(s) < 2 || (s[0] != '\'' && s[0] != '"') || s[len(s)-1] != s[0] {
		return "", fmt.Errorf("not a GVariant string: %q", s)
	}
	var b strings.Builder
	body := s[1 : len(s)-1]
	for i := 0; i < len(body); i++ {
		c := body[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i >= len(body) {
			return "", fmt.Errorf("trailing backslash in %q", s)
		}
		switch body[i] {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case 'u', 'U':
			n := 4
			if body[i] == 'U' {
				n = 8
			}
			if i+1+n > len(body) {
				return "", fmt.Errorf("short \\%c escape in %q", body[i], s)
			}
			v, err := strconv.ParseUint(body[i+1:i+1+n], 16, 32)
			if err != nil {
				return "", fmt.Errorf("bad \\%c escape in %q", body[i], s)
			}
			b.WriteRune(rune(v))
			i += n
		default: // \\ \' \" and anything else stand for themselves
			b.WriteByte(body[i])
		}
	}
	return b.String(), nil
}

// Entry is one file of a commit's tree, as ostree ls -R -C lists it.
type Entry struct {
	Path     string // absolute, "/" for the root
	Type     byte   // '-' file, 'd' directory, 'l' symlink
	Mode     os.FileMode
	UID, GID int
	Size     int64
	Checksum string // content object (files, symlinks) or dirtree
	Target   string // symlink target
}

// List returns every entry of commit's tree, sorted by path.
func (r *Repo) List(ctx context.Context, commit string) ([]Entry, error) {
	out, err := r.run(ctx, "ls", "-R", "-C", commit)
	if err != nil {
		return nil, fmt.Errorf("ostree: list %s: %w", commit, err)
	}
	var entries []Entry
	for line := range strings.SplitSeq(strings.TrimRight(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		e, err := parseLsLine(line)
		if err != nil {
			return nil, fmt.Errorf("ostree: list %s: %w", commit, err)
		}
		entries = append(entries, e)
	}
	slices.SortFunc(entries, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	return entries, nil
}

// parseLsLine parses "d00755 0 0      0 <contents> <meta> /path",
// "-00644 0 0 12 <checksum> /path" or "l00777 0 0 0 <checksum> /path -> target".
func parseLsLine(line string) (Entry, error) {
	f := strings.Fields(line)
	if len(f) < 6 || len(f[0]) < 2 {
		return Entry{}, fmt.Errorf("unexpected ostree ls line %q", line)
	}
	mode, err1 := strconv.ParseUint(f[0][1:], 8, 32)
	uid, err2 := strconv.Atoi(f[1])
	gid, err3 := strconv.Atoi(f[2])
	size, err4 := strconv.ParseInt(f[3], 10, 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return Entry{}, fmt.Errorf("unexpected ostree ls line %q: %w", line, err)
	}
	e := Entry{Type: f[0][0], Mode: os.FileMode(mode), UID: uid, GID: gid, Size: size, Checksum: f[4]}
	rest := f[5:]
	if e.Type == 'd' {
		if len(rest) < 2 {
			return Entry{}, fmt.Errorf("unexpected ostree ls line %q", line)
		}
		e.Checksum += "/" + rest[0] // contents and metadata together
		rest = rest[1:]
	}
	// The path is the rest of the line: it may hold blanks.
	idx := strings.Index(line, " "+rest[0])
	path := line[idx+1:]
	if e.Type == 'l' {
		path, e.Target, _ = strings.Cut(path, " -> ")
	}
	e.Path = path
	return e, nil
}

// Stat returns the entry at path p of commit's tree; ok is false when
// there is none.
func (r *Repo) Stat(ctx context.Context, commit, p string) (Entry, bool, error) {
	out, err := r.run(ctx, "ls", "-d", "-C", commit, p)
	if err != nil {
		var ce *CommandError
		if errors.As(err, &ce) && strings.Contains(ce.Stderr, "No such file") {
			return Entry{}, false, nil
		}
		return Entry{}, false, fmt.Errorf("ostree: stat %s in %s: %w", p, commit, err)
	}
	e, err := parseLsLine(strings.TrimRight(out, "\n"))
	if err != nil {
		return Entry{}, false, fmt.Errorf("ostree: stat %s in %s: %w", p, commit, err)
	}
	return e, true, nil
}

// Checkout writes commit's tree to dir, which must not exist.
func (r *Repo) Checkout(ctx context.Context, commit, dir string) error {
	if _, err := r.run(ctx, "checkout", commit, dir); err != nil {
		return fmt.Errorf("ostree: checkout %s: %w", commit, err)
	}
	return nil
}

// PullLocal copies rev (a ref or commit) and its objects from the
// repository at src.
func (r *Repo) PullLocal(ctx context.Context, src, rev string) error {
	if _, err := r.run(ctx, "pull-local", src, rev); err != nil {
		return fmt.Errorf("ostree: pull %s from %s: %w", rev, src, err)
	}
	return nil
}

// PullURL fetches rev from the repository served at url through a remote
// named after the URL, and returns the commit it named. It verifies no
// signature: pin a commit checksum to pin the content.
func (r *Repo) PullURL(ctx context.Context, url, rev string) (string, error) {
	sum := sha256.Sum256([]byte(url))
	name := "herd-" + hex.EncodeToString(sum[:6])
	if _, err := r.run(ctx, "remote", "add", "--if-not-exists", "--no-gpg-verify", name, url); err != nil {
		return "", fmt.Errorf("ostree: pull %s from %s: %w", rev, url, err)
	}
	if _, err := r.run(ctx, "pull", name, rev); err != nil {
		return "", fmt.Errorf("ostree: pull %s from %s: %w", rev, url, err)
	}
	if checksumRE.MatchString(rev) {
		return rev, nil
	}
	commit, ok, err := r.Resolve(ctx, name+":"+rev)
	if err == nil && !ok {
		err = fmt.Errorf("ostree: pull %s from %s: no such ref after the pull", rev, url)
	}
	return commit, err
}

// GenerateDelta writes the static delta from → to, unless it exists.
func (r *Repo) GenerateDelta(ctx context.Context, from, to string) error {
	if _, err := r.run(ctx, "static-delta", "generate", "--if-not-exists", "--from="+from, "--to="+to); err != nil {
		return fmt.Errorf("ostree: static delta %s-%s: %w", from, to, err)
	}
	return nil
}

// UpdateSummary rewrites the repository summary (refs and deltas offered
// to clients), signed with keyID when it is set.
func (r *Repo) UpdateSummary(ctx context.Context, keyID, gpgHome string) error {
	args := []string{"summary", "--update"}
	if keyID != "" {
		args = append(args, "--gpg-sign="+keyID)
		if gpgHome != "" {
			args = append(args, "--gpg-homedir="+gpgHome)
		}
	}
	if _, err := r.run(ctx, args...); err != nil {
		return fmt.Errorf("ostree: summary: %w", err)
	}
	return nil
}
