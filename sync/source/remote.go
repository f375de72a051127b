package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/capability"
	"github.com/go-git/go-git/v5/plumbing/protocol/packp/sideband"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/plumbing/transport/client"
)

// maxHavesPerRef bounds how many ancestors of each local ref are offered
// as "have" lines when fetching.
const maxHavesPerRef = 32

// session is an upload-pack session whose ref advertisement has been read:
// the advertisement is the remote's ref list (what git ls-remote prints),
// and the same session serves the fetch when the head moved, so a check
// costs one connection and a fetch no second one.
type session struct {
	transport.UploadPackSession
	adv *packp.AdvRefs
}

// checkHead opens an upload-pack session, reads the remote's refs and
// returns the branch head. The caller closes the session.
func (s *Source) checkHead(ctx context.Context) (plumbing.Hash, *session, error) {
	s.mu.Lock()
	s.status.Checks++
	s.status.LastFetchTime = time.Now()
	s.mu.Unlock()

	sess, err := s.uploadPack(ctx)
	if err != nil {
		return plumbing.ZeroHash, nil, err
	}
	adv, err := sess.AdvertisedReferencesContext(ctx)
	if err != nil {
		_ = sess.Close()
		if errors.Is(err, transport.ErrEmptyRemoteRepository) {
			s.contacted()
			return plumbing.ZeroHash, nil, fmt.Errorf("branch %q not found: the remote repository is empty", s.opts.Branch)
		}
		return plumbing.ZeroHash, nil, fmt.Errorf("list remote refs: %w", err)
	}
	refs, err := adv.AllReferences()
	if err != nil {
		_ = sess.Close()
		return plumbing.ZeroHash, nil, fmt.Errorf("read remote refs: %w", err)
	}
	s.contacted()
	ref, ok := refs[plumbing.NewBranchReferenceName(s.opts.Branch)]
	if !ok || ref.Type() != plumbing.HashReference {
		_ = sess.Close()
		return plumbing.ZeroHash, nil, fmt.Errorf("branch %q not found on the remote", s.opts.Branch)
	}
	return ref.Hash(), &session{UploadPackSession: sess, adv: adv}, nil
}

// uploadPack starts an upload-pack session with the remote: on the kept
// SSH connection for ssh:// with a key, through go-git's transports
// otherwise.
func (s *Source) uploadPack(ctx context.Context) (transport.UploadPackSession, error) {
	ep, err := transport.NewEndpoint(s.opts.URL)
	if err != nil {
		return nil, fmt.Errorf("parse URL: %w", err)
	}
	if s.ssh != nil {
		sess, err := s.ssh.uploadPack(ctx, ep.Path)
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
		return sess, nil
	}
	cli, err := client.NewClient(ep)
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	sess, err := cli.NewUploadPackSession(ep, s.auth)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return sess, nil
}

// fetch brings head into the cache over sess (incrementally: the cache's
// refs and some of their ancestors are offered as haves), points the
// tracking ref at it and returns the commit. It closes sess.
func (s *Source) fetch(ctx context.Context, sess *session, head plumbing.Hash) (c *object.Commit, err error) {
	defer func() {
		if cerr := sess.Close(); cerr != nil && err == nil {
			s.log.Debug("close upload-pack session", "err", cerr)
		}
	}()
	s.storeMu.Lock()
	defer s.storeMu.Unlock()
	repo := s.repo()
	if _, err := repo.CommitObject(head); err != nil {
		if !errors.Is(err, plumbing.ErrObjectNotFound) {
			return nil, fmt.Errorf("read cache: %w", err)
		}
		req := packp.NewUploadPackRequestFromCapabilities(sess.adv.Capabilities)
		if sess.adv.Capabilities.Supports(capability.NoProgress) {
			_ = req.Capabilities.Set(capability.NoProgress)
		}
		req.Wants = []plumbing.Hash{head}
		if req.Haves, err = s.haves(); err != nil {
			return nil, err
		}
		resp, err := sess.UploadPack(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", s.opts.Branch, err)
		}
		err = packfile.UpdateObjectStorage(repo.Storer, demux(req.Capabilities, resp))
		if cerr := resp.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("fetch %s: store pack: %w", s.opts.Branch, err)
		}
	}
	c, err = repo.CommitObject(head)
	if err != nil {
		return nil, fmt.Errorf("read fetched head %s: %w", head, err)
	}
	if err := repo.Storer.SetReference(plumbing.NewHashReference(s.fetchRef, head)); err != nil {
		return nil, fmt.Errorf("update %s: %w", s.fetchRef, err)
	}
	s.fetched(head)
	return c, nil
}

// haves lists the commits the cache has: every ref's commit and up to
// maxHavesPerRef first-parent ancestors.
func (s *Source) haves() ([]plumbing.Hash, error) {
	repo := s.repo()
	refs, err := repo.References()
	if err != nil {
		return nil, fmt.Errorf("list cache refs: %w", err)
	}
	seen := map[plumbing.Hash]bool{}
	var out []plumbing.Hash
	err = refs.ForEach(func(r *plumbing.Reference) error {
		if r.Type() != plumbing.HashReference {
			return nil
		}
		h := r.Hash()
		for i := 0; i < maxHavesPerRef && !seen[h]; i++ {
			c, err := repo.CommitObject(h)
			if err != nil {
				return nil // not a commit we have
			}
			seen[h] = true
			out = append(out, h)
			if len(c.ParentHashes) == 0 {
				break
			}
			h = c.ParentHashes[0]
		}
		return nil
	})
	return out, err
}

// demux strips side-band framing when the request asked for it.
func demux(caps *capability.List, r io.Reader) io.Reader {
	switch {
	case caps.Supports(capability.Sideband64k):
		return sideband.NewDemuxer(sideband.Sideband64k, r)
	case caps.Supports(capability.Sideband):
		return sideband.NewDemuxer(sideband.Sideband, r)
	}
	return r
}
