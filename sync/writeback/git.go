package writeback

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path"
	"sort"
	"strings"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/filemode"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/client"
	"github.com/go-git/go-git/v5/storage/memory"

	"herd.dev/herd/sync/gitutil"
)

// maxStoreObjects bounds the in-memory object store; past it the store is
// dropped and the next write fetches the branch head afresh (depth 1).
const maxStoreObjects = 200_000

// store is the Writer's in-memory object store: the status branch head,
// fetched shallow, plus the objects the Writer creates.
type store struct {
	st   *memory.Storage
	repo *git.Repository
}

func newStore() *store {
	st := memory.NewStorage()
	repo, err := git.Init(st, nil)
	if err != nil {
		panic(fmt.Sprintf("init in-memory repository: %v", err)) // cannot fail on memory storage
	}
	return &store{st: st, repo: repo}
}

// write commits snap on top of the remote branch head and pushes it,
// fetching, rebuilding and retrying when another writer pushed first. The
// caller holds writeMu.
func (w *Writer) write(ctx context.Context, snap state) error {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	var last error
	for attempt := 0; attempt < w.opts.MaxRetries; attempt++ {
		if attempt > 0 {
			// Jittered exponential back-off: 2ms·2^n, capped at 250ms.
			limit := min(2*time.Millisecond<<attempt, 250*time.Millisecond)
			t := time.NewTimer(time.Duration(rand.Int64N(int64(limit))) + time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("write status: %w (last: %v)", ctx.Err(), last)
			case <-t.C:
			}
		}
		hash, err := w.tryWrite(ctx, snap)
		if err == nil {
			if hash.IsZero() {
				w.mu.Lock()
				w.stats.Unchanged++
				w.stats.LastError = ""
				w.mu.Unlock()
			} else {
				w.lastWrite = time.Now()
				w.recordCommit(hash.String())
				w.log.Debug("pushed status", "commit", hash.String(), "attempt", attempt+1)
			}
			return nil
		}
		last = err
		if !isConflict(err) {
			break
		}
		w.mu.Lock()
		w.stats.Conflicts++
		w.mu.Unlock()
		w.log.Debug("status push lost a race; rebuilding", "attempt", attempt+1, "err", err)
	}
	w.recordError(last)
	return fmt.Errorf("write status to %s %s: %w", gitutil.RedactURL(w.opts.URL), w.opts.Branch, last)
}

// tryWrite makes one attempt; it returns the pushed commit, or the zero
// hash when the branch already holds exactly these files.
func (w *Writer) tryWrite(ctx context.Context, snap state) (plumbing.Hash, error) {
	if len(w.repo.st.ObjectStorage.Objects) > maxStoreObjects {
		w.repo = newStore()
	}
	cli, err := client.NewClient(w.ep)
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("transport: %w", err)
	}
	sess, err := cli.NewReceivePackSession(w.ep, w.auth)
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("connect for push: %w", err)
	}
	defer sess.Close()
	ar, err := sess.AdvertisedReferencesContext(ctx)
	if err != nil && !errors.Is(err, transport.ErrEmptyRemoteRepository) {
		return plumbing.ZeroHash, fmt.Errorf("list remote refs: %w", err)
	}
	branch := plumbing.NewBranchReferenceName(w.opts.Branch)
	tip := plumbing.ZeroHash
	if ar != nil {
		refs, err := ar.AllReferences()
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("read remote refs: %w", err)
		}
		if r, ok := refs[branch]; ok {
			tip = r.Hash()
		}
	} else {
		ar = packp.NewAdvRefs()
	}

	var base *object.Tree
	if !tip.IsZero() {
		c, err := object.GetCommit(w.repo.st, tip)
		if err != nil {
			if err := w.fetch(ctx); err != nil {
				return plumbing.ZeroHash, err
			}
			if c, err = object.GetCommit(w.repo.st, tip); err != nil {
				return plumbing.ZeroHash, conflictf("head %s moved on while fetching", tip)
			}
		}
		if base, err = c.Tree(); err != nil {
			return plumbing.ZeroHash, fmt.Errorf("read tree of %s: %w", tip, err)
		}
	}

	files, err := w.render(snap, base)
	if err != nil {
		return plumbing.ZeroHash, err
	}
	dir := "clusters/" + w.opts.Cluster + "/"
	paths := make(map[string][]byte, len(files))
	for name, data := range files {
		paths[dir+name] = data
	}
	root, objs, err := w.repo.writeTree(base, "", paths, w.keep(snap, dir))
	if err != nil {
		return plumbing.ZeroHash, err
	}
	if base != nil && root == base.Hash {
		return plumbing.ZeroHash, nil
	}
	commit, err := w.commit(snap, root, tip)
	if err != nil {
		return plumbing.ZeroHash, err
	}
	objs = append(objs, commit)

	req := packp.NewReferenceUpdateRequestFromCapabilities(ar.Capabilities)
	req.Commands = []*packp.Command{{Name: branch, Old: tip, New: commit}}
	if err := w.push(ctx, sess, ar, req, objs); err != nil {
		return plumbing.ZeroHash, err
	}
	return commit, nil
}

// fetch brings the branch head (depth 1) into the store.
func (w *Writer) fetch(ctx context.Context) error {
	remote, err := w.repo.repo.Remote("origin")
	if err != nil {
		if remote, err = w.repo.repo.CreateRemote(&config.RemoteConfig{Name: "origin", URLs: []string{w.opts.URL}}); err != nil {
			return fmt.Errorf("configure remote: %w", err)
		}
	}
	spec := config.RefSpec(fmt.Sprintf("+refs/heads/%s:refs/remotes/origin/%s", w.opts.Branch, w.opts.Branch))
	err = remote.FetchContext(ctx, &git.FetchOptions{
		RefSpecs: []config.RefSpec{spec},
		Depth:    1,
		Auth:     w.auth,
		Tags:     git.NoTags,
		Force:    true,
	})
	if err != nil && !errors.Is(err, git.NoErrAlreadyUpToDate) {
		return fmt.Errorf("fetch %s: %w", w.opts.Branch, err)
	}
	return nil
}

// render produces the cluster directory's files. Pools whose transitions
// have not been merged with the branch's file yet are merged here.
func (w *Writer) render(snap state, base *object.Tree) (map[string][]byte, error) {
	files := map[string][]byte{}
	if snap.source != nil {
		b, err := marshalYAML(snap.source)
		if err != nil {
			return nil, err
		}
		files[w.sourceFile()] = b
	}
	for name, p := range snap.pools {
		if !p.seeded {
			if base != nil {
				if old, err := readFile(base, path.Join("clusters", w.opts.Cluster, name+".yaml")); err == nil {
					if prev, err := ParsePool(old); err == nil {
						p.status.Transitions = mergeTransitions(prev.Transitions, p.status.Transitions)
					}
				}
			}
			p.seeded = true
		}
		b, err := marshalYAML(p.status)
		if err != nil {
			return nil, err
		}
		files[name+".yaml"] = b
	}
	return files, nil
}

// keep says which files already on the branch a write leaves in place:
// everything outside the cluster's directory; inside it, nothing for an
// unsharded writer (it owns the directory: files of pools gone while it
// was down go too), and for a shard every file but those of the pools it
// removed (the other shards own the rest).
func (w *Writer) keep(snap state, dir string) func(string) bool {
	return func(p string) bool {
		rest, inside := strings.CutPrefix(p, dir)
		switch {
		case !inside:
			// The directory itself: an unsharded writer with nothing to
			// write leaves none; a shard leaves the other shards'.
			return p+"/" != dir || w.opts.Shard != ""
		case w.opts.Shard == "":
			return false
		default:
			name, ok := strings.CutSuffix(rest, ".yaml")
			return !ok || !snap.gone[name]
		}
	}
}

func readFile(t *object.Tree, p string) ([]byte, error) {
	f, err := t.File(p)
	if err != nil {
		return nil, err
	}
	r, err := f.Reader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// commit writes the commit object (signed when a Signer is set).
func (w *Writer) commit(snap state, tree, parent plumbing.Hash) (plumbing.Hash, error) {
	now := time.Now()
	sig := object.Signature{Name: w.opts.AuthorName, Email: w.opts.AuthorEmail, When: now}
	c := &object.Commit{
		Author:    sig,
		Committer: sig,
		Message:   commitMessage(w.opts.Cluster, w.opts.Shard, snap.source, snap.sortedPools()),
		TreeHash:  tree,
	}
	if !parent.IsZero() {
		c.ParentHashes = []plumbing.Hash{parent}
	}
	if w.opts.Signer != nil {
		unsigned := &plumbing.MemoryObject{}
		if err := c.EncodeWithoutSignature(unsigned); err != nil {
			return plumbing.ZeroHash, fmt.Errorf("encode commit: %w", err)
		}
		r, err := unsigned.Reader()
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("encode commit: %w", err)
		}
		s, err := w.opts.Signer.Sign(r)
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("sign commit: %w", err)
		}
		c.PGPSignature = string(s)
	}
	obj := w.repo.st.NewEncodedObject()
	if err := c.Encode(obj); err != nil {
		return plumbing.ZeroHash, fmt.Errorf("encode commit: %w", err)
	}
	return w.repo.st.SetEncodedObject(obj)
}

// push sends objs and the ref update in the session opened by tryWrite.
//
// A push once started is not cut short when the writer stops, only at the
// write's deadline: go-git's file:// transport never returns from a push
// cancelled halfway (its Kill waits for a stderr copy nobody reads), which
// held a stopping controller past its grace period; and a status commit
// half sent is worth finishing.
func (w *Writer) push(ctx context.Context, sess transport.ReceivePackSession, ar *packp.AdvRefs, req *packp.ReferenceUpdateRequest, objs []plumbing.Hash) error {
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(context.WithoutCancel(ctx), deadline)
		defer cancel()
	}
	rd, wr := io.Pipe()
	req.Packfile = rd
	done := make(chan error, 1)
	useRefDeltas := !ar.Capabilities.Supports(capability.OFSDelta)
	go func() {
		enc := packfile.NewEncoder(wr, w.repo.st, useRefDeltas)
		_, err := enc.Encode(objs, 0)
		done <- wr.CloseWithError(err)
	}()
	rs, err := sess.ReceivePack(ctx, req)
	_ = rd.Close()
	encErr := <-done
	if rs != nil {
		if rs.UnpackStatus != "ok" {
			return fmt.Errorf("push: remote could not unpack: %s", rs.UnpackStatus)
		}
		for _, cs := range rs.CommandStatuses {
			if cs.Status != "ok" {
				// The ref moved (or appeared) since it was advertised.
				return conflictf("push rejected: %s", cs.Status)
			}
		}
	}
	if err != nil {
		if strings.Contains(err.Error(), "non-fast-forward") || strings.Contains(err.Error(), "fetch first") {
			return conflictf("push rejected: %v", err)
		}
		return fmt.Errorf("push: %w", err)
	}
	if encErr != nil && !errors.Is(encErr, io.ErrClosedPipe) {
		return fmt.Errorf("push: encode pack: %w", encErr)
	}
	return nil
}

// writeTree returns the tree that equals base (nil: empty) with files
// written at their paths ("/"-separated, relative to base), every other
// entry of base at path p kept when keep(p) says so, and the objects
// created that the remote does not already have. A subtree files are
// written into is merged, never replaced. keep sees the full path from the
// root; prefix is base's.
func (s *store) writeTree(base *object.Tree, prefix string, files map[string][]byte, keep func(string) bool) (plumbing.Hash, []plumbing.Hash, error) {
	known := map[plumbing.Hash]bool{}
	var created []plumbing.Hash
	h, err := s.writeLevel(base, prefix, files, keep, func(h plumbing.Hash) {
		if !known[h] {
			known[h] = true
			created = append(created, h)
		}
	}, known)
	return h, created, err
}

func (s *store) writeLevel(base *object.Tree, prefix string, files map[string][]byte, keep func(string) bool, add func(plumbing.Hash), known map[plumbing.Hash]bool) (plumbing.Hash, error) {
	here := map[string][]byte{}             // files in this directory
	below := map[string]map[string][]byte{} // files in subdirectories, by subdirectory
	for p, data := range files {
		dir, rest, ok := strings.Cut(p, "/")
		if !ok {
			here[p] = data
			continue
		}
		if below[dir] == nil {
			below[dir] = map[string][]byte{}
		}
		below[dir][rest] = data
	}
	var entries []object.TreeEntry
	subs := map[string]*object.Tree{}
	if base != nil {
		known[base.Hash] = true
		for _, e := range base.Entries {
			known[e.Hash] = true
			if _, ok := below[e.Name]; ok && e.Mode == filemode.Dir {
				sub, err := object.GetTree(s.st, e.Hash)
				if err != nil {
					return plumbing.ZeroHash, fmt.Errorf("read tree %s%s: %w", prefix, e.Name, err)
				}
				subs[e.Name] = sub
				continue
			}
			_, written := here[e.Name]
			_, merged := below[e.Name]
			if !written && !merged && keep(prefix+e.Name) {
				entries = append(entries, e)
			}
		}
	}
	for name, data := range here {
		h, err := s.putBlob(data)
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("store blob %s%s: %w", prefix, name, err)
		}
		add(h)
		entries = append(entries, object.TreeEntry{Name: name, Mode: filemode.Regular, Hash: h})
	}
	for name, fs := range below {
		h, err := s.writeLevel(subs[name], prefix+name+"/", fs, keep, add, known)
		if err != nil {
			return plumbing.ZeroHash, err
		}
		entries = append(entries, object.TreeEntry{Name: name, Mode: filemode.Dir, Hash: h})
	}
	h, err := s.putTree(entries)
	if err != nil {
		return plumbing.ZeroHash, err
	}
	add(h)
	return h, nil
}

// putBlob stores data as a blob.
func (s *store) putBlob(data []byte) (plumbing.Hash, error) {
	obj := s.st.NewEncodedObject()
	obj.SetType(plumbing.BlobObject)
	obj.SetSize(int64(len(data)))
	wr, err := obj.Writer()
	if err != nil {
		return plumbing.ZeroHash, err
	}
	if _, err := wr.Write(data); err != nil {
		return plumbing.ZeroHash, err
	}
	if err := wr.Close(); err != nil {
		return plumbing.ZeroHash, err
	}
	return s.st.SetEncodedObject(obj)
}

// putTree sorts entries in git's order and stores the tree.
func (s *store) putTree(entries []object.TreeEntry) (plumbing.Hash, error) {
	key := func(e object.TreeEntry) string {
		if e.Mode == filemode.Dir {
			return e.Name + "/"
		}
		return e.Name
	}
	sort.Slice(entries, func(i, j int) bool { return key(entries[i]) < key(entries[j]) })
	t := &object.Tree{Entries: entries}
	obj := s.st.NewEncodedObject()
	if err := t.Encode(obj); err != nil {
		return plumbing.ZeroHash, fmt.Errorf("encode tree: %w", err)
	}
	return s.st.SetEncodedObject(obj)
}
