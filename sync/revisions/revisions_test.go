package revisions

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"herd.dev/herd/schema/loader"
	"herd.dev/herd/test/fleettest"
)

// A walk whose evaluation is cancelled stops with the cancellation, and
// the revision is neither reported invalid nor cached as such: the next
// walk evaluates it again.
func TestWalkCancelled(t *testing.T) {
	dir := t.TempDir()
	fleettest.NewRepo(t, dir)
	fleettest.Edit(t, dir, "pools/general.cue", `maxUnavailable: "25%"`, `maxUnavailable: 2`)
	head := fleettest.Commit(t, dir, "general: two at a time")
	repo, err := OpenGitDir(filepath.Join(dir, ".git"), "")
	if err != nil {
		t.Fatal(err)
	}
	repo.Cache = NewCache()
	calls := 0
	repo.Evaluate = func(map[string][]byte) (*loader.Result, error) {
		calls++
		return nil, context.Canceled
	}
	visited := 0
	if _, err := repo.WalkFrom(head, 10, func(Revision) bool { visited++; return true }); !errors.Is(err, context.Canceled) || visited != 0 || calls != 1 {
		t.Fatalf("cancelled walk: err %v, %d visited, %d evaluations; want context.Canceled, 0, 1", err, visited, calls)
	}
	invalid := errors.New("pools/general.cue:1:1: invalid")
	repo.Evaluate = func(map[string][]byte) (*loader.Result, error) {
		calls++
		return nil, invalid
	}
	if _, err := repo.WalkFrom(head, 10, func(r Revision) bool { visited++; return r.Invalid == invalid }); err != nil || visited != 2 || calls != 3 {
		t.Fatalf("walk after the cancelled one: err %v, %d visited, %d evaluations; want nil, 2, 3", err, visited, calls)
	}
}
