package source

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
)

// TestReadGitDirWhileFetching reads the whole history from the cache, over
// and over, while the source fetches new commits and repacks after each:
// through ReadGitDir no read meets a pack half written or deleted.
func TestReadGitDirWhileFetching(t *testing.T) {
	old := repackThreshold
	repackThreshold = 1
	t.Cleanup(func() { repackThreshold = old })
	f := newFixture(t)
	first := f.push("c0", "pool: general: nodes: 0\n")
	s := f.start(Options{})
	waitUpdate(t, s, first)
	s.MarkApplied(first)

	var (
		stop  atomic.Bool
		reads atomic.Int64
		wg    sync.WaitGroup
		errs  = make(chan error, 1)
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			if err := s.ReadGitDir(func(dir string) error { return readHistory(dir, s.fetchRef) }); err != nil {
				errs <- err
				return
			}
			reads.Add(1)
		}
	}()
	for i := 1; i <= 10; i++ {
		c := f.push(fmt.Sprintf("c%d", i), fmt.Sprintf("pool: general: nodes: %d\n", i))
		s.Trigger()
		waitUpdate(t, s, c)
		s.MarkApplied(c)
	}
	stop.Store(true)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("reading the cache while the source fetched: %v", err)
	default:
	}
	if reads.Load() == 0 {
		t.Fatal("no read finished")
	}
	t.Logf("%d reads of the whole history beside 10 fetches and repacks", reads.Load())
}

// readHistory opens the repository and reads every file of every commit
// from ref back.
func readHistory(dir string, ref plumbing.ReferenceName) error {
	repo, err := git.PlainOpen(dir)
	if err != nil {
		return err
	}
	r, err := repo.Reference(ref, true)
	if err != nil {
		return fmt.Errorf("ref %s: %w", ref, err)
	}
	commits, err := repo.Log(&git.LogOptions{From: r.Hash()})
	if err != nil {
		return err
	}
	return commits.ForEach(func(c *object.Commit) error {
		files, err := c.Files()
		if err != nil {
			return fmt.Errorf("commit %s: %w", c.Hash, err)
		}
		return files.ForEach(func(f *object.File) error {
			if _, err := f.Contents(); err != nil {
				return errors.Join(fmt.Errorf("commit %s: %s", c.Hash, f.Name), err)
			}
			return nil
		})
	})
}
