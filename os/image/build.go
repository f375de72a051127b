package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/shell"

	"herd.dev/herd/os/ostree"
)

// Metadata keys every built commit carries besides its labels.
const (
	MetaBase      = "herd.build.base"      // the FROM commit; absent for FROM scratch
	MetaBuildfile = "herd.build.buildfile" // "sha256:<hex>" of the Buildfile
	MetaLabels    = "herd.build.labels"    // the labels as a JSON object
)

// Options configure Build.
type Options struct {
	Buildfile string // path of the Buildfile
	// Context is the directory COPY, ADD and IMAGE read from; default the
	// Buildfile's directory.
	Context string
	Repo    string // OSTree repository written to; created (archive mode) when missing
	Ref     string // branch the image is committed on
	// BuildArgs set ARG values; each must be declared by an ARG.
	BuildArgs map[string]string
	// SignKey is the GPG key (ID or fingerprint) that signs the commit and
	// the summary; GPGHome the keyring directory ("" for gpg's default).
	SignKey, GPGHome string
	// Timestamp of the commit; zero means the base commit's (1970-01-01
	// for FROM scratch), so that the same inputs give the same commit.
	Timestamp time.Time
	// NoDelta skips the static delta from the ref's previous commit.
	NoDelta bool
	// DeltaFrom are more commits (or refs) to generate static deltas
	// from, e.g. the commits pools pin today.
	DeltaFrom []string
	// WorkDir holds the layers while building; default a temporary directory.
	WorkDir string
	Ostree  string    // ostree binary; default "ostree"
	Bwrap   string    // bubblewrap binary for RUN; default "bwrap"
	Log     io.Writer // progress and RUN output; nil discards
}

// Result is what Build made.
type Result struct {
	Commit   string
	Base     string   // the FROM commit; "" for scratch
	Previous string   // the ref's commit before the build; "" if none
	Deltas   []string // commits a static delta to Commit starts from
	Labels   map[string]string
}

// builder holds one build's state.
type builder struct {
	opts   Options
	repo   *ostree.Repo
	bf     *Buildfile
	work   string
	lex    *shell.Lex
	args   map[string]string // ARG values so far
	order  []string          // ARG names in declaration order
	base   string
	trees  []string // ostree commit --tree arguments so far
	layers []string // layer directories not yet copied into rootfs
	rootfs string   // full checkout, once a RUN needed one
	labels map[string]string
	nlayer int
	unit   bool // the preload unit is in the image
}

// Build builds the image the Buildfile describes and commits it on Ref:
// the FROM commit, then one layer per COPY, ADD, IMAGE and RUN, overlaid in
// one ostree commit whose parent is the base. The commit records the base,
// the Buildfile's digest and the labels as metadata; with SignKey it is
// GPG-signed. Static deltas are generated to it from the ref's previous
// commit and from DeltaFrom, and the summary is updated. It needs root:
// files get the owners --chown names, and RUN sandboxes with namespaces.
func Build(ctx context.Context, opts Options) (*Result, error) {
	bf, err := ParseFile(opts.Buildfile)
	if err != nil {
		return nil, err
	}
	if opts.Repo == "" || opts.Ref == "" {
		return nil, errors.New("build: a repository and a ref are required")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("build: herd os build runs as root: it sets file owners and sandboxes RUN with namespaces")
	}
	if opts.Context == "" {
		opts.Context = filepath.Dir(opts.Buildfile)
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	if opts.Bwrap == "" {
		opts.Bwrap = "bwrap"
	}
	b := &builder{
		opts:   opts,
		repo:   &ostree.Repo{Path: opts.Repo, Binary: opts.Ostree},
		bf:     bf,
		lex:    shell.NewLex('\\'),
		args:   map[string]string{},
		labels: map[string]string{},
	}
	if err := b.checkBuildArgs(); err != nil {
		return nil, err
	}
	if opts.WorkDir == "" {
		dir, err := os.MkdirTemp("", "herd-os-build-")
		if err != nil {
			return nil, fmt.Errorf("build: %w", err)
		}
		defer os.RemoveAll(dir)
		b.work = dir
	} else {
		b.work = opts.WorkDir
	}
	if err := b.repo.Init(ctx, "archive"); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	for _, in := range bf.Instructions {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := b.step(ctx, in); err != nil {
			return nil, fmt.Errorf("%s:%d: %s: %w", bf.Name, in.Line, in.Op, err)
		}
	}
	return b.commit(ctx)
}

// checkBuildArgs refuses a --build-arg no ARG declares.
func (b *builder) checkBuildArgs() error {
	declared := map[string]bool{}
	for _, in := range b.bf.Instructions {
		if in.Op == OpArg {
			k, _, _ := strings.Cut(in.Args[0], "=")
			declared[k] = true
		}
	}
	for _, k := range slices.Sorted(maps.Keys(b.opts.BuildArgs)) {
		if !declared[k] {
			return fmt.Errorf("%s: --build-arg %s: no ARG %s in the Buildfile", b.bf.Name, k, k)
		}
	}
	return nil
}

func (b *builder) step(ctx context.Context, in Instruction) error {
	switch in.Op {
	case OpArg:
		k, def, _ := strings.Cut(in.Args[0], "=")
		v, given := b.opts.BuildArgs[k]
		if !given {
			var err error
			if v, err = b.expand(def); err != nil {
				return err
			}
		}
		if _, seen := b.args[k]; !seen {
			b.order = append(b.order, k)
		}
		b.args[k] = v
		return nil
	case OpFrom:
		return b.from(ctx, in)
	case OpLabel:
		return b.label(in)
	case OpCopy, OpAdd:
		return b.copy(ctx, in)
	case OpImage:
		return b.image(ctx, in)
	case OpRun:
		return b.run(ctx, in)
	}
	return fmt.Errorf("unknown instruction")
}

// env is the ARG values as NAME=value, in declaration order.
func (b *builder) env() []string {
	env := make([]string, 0, len(b.order))
	for _, k := range b.order {
		env = append(env, k+"="+b.args[k])
	}
	return env
}

// expand substitutes $VAR and ${VAR} with ARG values and removes quotes,
// as a Dockerfile does.
func (b *builder) expand(word string) (string, error) {
	v, _, err := b.lex.ProcessWord(word, shell.EnvsFromSlice(b.env()))
	if err != nil {
		return "", fmt.Errorf("expanding %q: %w", word, err)
	}
	return v, nil
}

func (b *builder) from(ctx context.Context, in Instruction) error {
	rev, err := b.expand(in.Args[0])
	if err != nil {
		return err
	}
	if rev == "scratch" {
		return nil
	}
	src := in.Flags["repo"]
	if src != "" {
		if src, err = b.expand(src); err != nil {
			return err
		}
	}
	switch {
	case src == "":
		commit, ok, err := b.repo.Resolve(ctx, rev)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%s is not in the repository %s (give --repo=PATH|URL for another one)", rev, b.opts.Repo)
		}
		b.base = commit
	case strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://"):
		commit, err := b.repo.PullURL(ctx, src, rev)
		if err != nil {
			return err
		}
		b.base = commit
	default:
		if err := b.repo.PullLocal(ctx, src, rev); err != nil {
			return err
		}
		commit, ok, err := (&ostree.Repo{Path: src, Binary: b.opts.Ostree}).Resolve(ctx, rev)
		if err == nil && !ok {
			err = fmt.Errorf("%s is not in the repository %s", rev, src)
		}
		if err != nil {
			return err
		}
		b.base = commit
	}
	b.trees = append(b.trees, "ref="+b.base)
	fmt.Fprintf(b.opts.Log, "FROM %s (%s)\n", rev, b.base)
	return nil
}

func (b *builder) label(in Instruction) error {
	for i := 0; i+1 < len(in.Args); i += 3 {
		k, err := b.expand(in.Args[i])
		if err != nil {
			return err
		}
		v, err := b.expand(in.Args[i+1])
		if err != nil {
			return err
		}
		if k == "" || strings.HasPrefix(k, "ostree.") || strings.HasPrefix(k, "herd.build.") {
			return fmt.Errorf("label %q: empty, or a key ostree or herd sets", k)
		}
		b.labels[k] = v
	}
	return nil
}

// newLayer makes an empty layer directory, the image's root in that layer.
func (b *builder) newLayer() (string, error) {
	b.nlayer++
	dir := filepath.Join(b.work, "layer-"+strconv.Itoa(b.nlayer))
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	return dir, os.Chmod(dir, 0o755) // whatever the umask
}

// addLayer overlays a finished layer directory on the image.
func (b *builder) addLayer(dir string) {
	b.trees = append(b.trees, "dir="+dir)
	b.layers = append(b.layers, dir)
}

func (b *builder) commit(ctx context.Context) (*Result, error) {
	if len(b.trees) == 0 {
		return nil, fmt.Errorf("%s: FROM scratch with nothing added: the image is empty", b.bf.Name)
	}
	for _, t := range b.trees {
		if dir, ok := strings.CutPrefix(t, "dir="); ok {
			if _, err := os.Lstat(filepath.Join(dir, "etc")); err == nil {
				return nil, fmt.Errorf("%s: the image has /etc: OSTree images keep it in /usr/etc (merged into /etc at deploy): copy there", b.bf.Name)
			}
		}
	}
	prev, _, err := b.repo.Resolve(ctx, b.opts.Ref)
	if err != nil {
		return nil, err
	}
	ts := b.opts.Timestamp
	if ts.IsZero() {
		ts = time.Unix(0, 0)
		if b.base != "" {
			if ts, err = b.repo.Timestamp(ctx, b.base); err != nil {
				return nil, err
			}
		}
	}
	labels, err := json.Marshal(b.labels) // keys sorted
	if err != nil {
		return nil, err
	}
	meta := maps.Clone(b.labels)
	meta[MetaBuildfile] = b.bf.Digest
	meta[MetaLabels] = string(labels)
	from := "scratch"
	if b.base != "" {
		meta[MetaBase] = b.base
		from = b.base
	}
	commit, err := b.repo.Commit(ctx, ostree.CommitOptions{
		Branch:    b.opts.Ref,
		Parent:    b.base,
		Trees:     b.trees,
		Subject:   fmt.Sprintf("herd os build %s from %s", filepath.Base(b.bf.Name), from),
		Metadata:  meta,
		Timestamp: ts,
	})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(b.opts.Log, "committed %s on %s\n", commit, b.opts.Ref)
	res := &Result{Commit: commit, Base: b.base, Previous: prev, Labels: b.labels}
	if b.opts.SignKey != "" {
		if err := b.repo.SignGPG(ctx, commit, b.opts.SignKey, b.opts.GPGHome); err != nil {
			return nil, err
		}
		fmt.Fprintf(b.opts.Log, "signed with %s\n", b.opts.SignKey)
	}
	if res.Deltas, err = b.deltas(ctx, prev, commit); err != nil {
		return nil, err
	}
	if err := b.repo.UpdateSummary(ctx, b.opts.SignKey, b.opts.GPGHome); err != nil {
		return nil, err
	}
	return res, nil
}

// deltas generates the static deltas to commit: from the ref's previous
// commit and from DeltaFrom.
func (b *builder) deltas(ctx context.Context, prev, commit string) ([]string, error) {
	var froms []string
	if prev != "" && !b.opts.NoDelta {
		froms = append(froms, prev)
	}
	for _, rev := range b.opts.DeltaFrom {
		c, ok, err := b.repo.Resolve(ctx, rev)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("delta from %s: not in the repository %s", rev, b.opts.Repo)
		}
		froms = append(froms, c)
	}
	var done []string
	for _, from := range froms {
		if from == commit || slices.Contains(done, from) {
			continue
		}
		if err := b.repo.GenerateDelta(ctx, from, commit); err != nil {
			return nil, err
		}
		fmt.Fprintf(b.opts.Log, "static delta %s-%s\n", from, commit)
		done = append(done, from)
	}
	return done, nil
}
