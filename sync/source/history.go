package source

import (
	"container/heap"
	"fmt"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
)

// revRange returns the commits reachable from head but not from base (git
// rev-list head ^base), newest first, and whether base is an ancestor of (or
// equal to) head.
//
// It paints commits from both ends in committer-time order, as git does,
// and stops once every commit still queued is reachable from base, so a
// fast-forward of a few commits costs a few commit reads however long the
// history is. A head unrelated to base walks its whole history.
func revRange(s storer.EncodedObjectStorer, head, base plumbing.Hash) ([]*object.Commit, bool, error) {
	const (
		fromHead = 1 << iota
		fromBase
	)
	if head == base {
		return nil, true, nil
	}
	flags := map[plumbing.Hash]uint8{}
	commits := map[plumbing.Hash]*object.Commit{}
	q := &commitQueue{}
	push := func(h plumbing.Hash, f uint8) error {
		old := flags[h]
		if old|f == old {
			return nil
		}
		flags[h] = old | f
		c, ok := commits[h]
		if !ok {
			var err error
			if c, err = object.GetCommit(s, h); err != nil {
				return fmt.Errorf("read commit %s: %w", h, err)
			}
			commits[h] = c
		}
		heap.Push(q, c)
		return nil
	}
	if err := push(head, fromHead); err != nil {
		return nil, false, err
	}
	if err := push(base, fromBase); err != nil {
		return nil, false, err
	}
	// interesting counts queued entries not (yet) reachable from base; a
	// little slop keeps walking past clock skew like git's SLOP.
	slop := 5
	for q.Len() > 0 {
		if !q.anyInteresting(flags, fromBase) {
			if slop == 0 {
				break
			}
			slop--
		} else {
			slop = 5
		}
		c := heap.Pop(q).(*object.Commit)
		f := flags[c.Hash]
		for _, p := range c.ParentHashes {
			if err := push(p, f); err != nil {
				return nil, false, err
			}
		}
	}
	var out []*object.Commit
	for h, f := range flags {
		if f == fromHead {
			out = append(out, commits[h])
		}
	}
	sortNewestFirst(out)
	return out, flags[base]&fromHead != 0, nil
}

// commitQueue is a max-heap of commits by committer time.
type commitQueue []*object.Commit

func (q commitQueue) Len() int { return len(q) }
func (q commitQueue) Less(i, j int) bool {
	return q[i].Committer.When.After(q[j].Committer.When)
}
func (q commitQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *commitQueue) Push(x any)   { *q = append(*q, x.(*object.Commit)) }
func (q *commitQueue) Pop() any {
	old := *q
	c := old[len(old)-1]
	*q = old[:len(old)-1]
	return c
}

func (q commitQueue) anyInteresting(flags map[plumbing.Hash]uint8, fromBase uint8) bool {
	for _, c := range q {
		if flags[c.Hash]&fromBase == 0 {
			return true
		}
	}
	return false
}

func sortNewestFirst(cs []*object.Commit) {
	q := commitQueue(cs)
	heap.Init(&q)
	out := make([]*object.Commit, 0, len(cs))
	for q.Len() > 0 {
		out = append(out, heap.Pop(&q).(*object.Commit))
	}
	copy(cs, out)
}
