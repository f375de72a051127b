package writeback

import (
	"testing"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"

	"herd.dev/herd/sync/gitutil"
)

// checkVerifies opens the bare repository with go-git and checks the status
// branch head with Herd's own verifier.
func checkVerifies(t *testing.T, f *fixture, v *gitutil.Verifier) {
	t.Helper()
	repo, err := git.PlainOpen(f.bare)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := repo.Reference(plumbing.NewBranchReferenceName("herd/status"), true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := repo.CommitObject(ref.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.VerifyCommit(c); err != nil {
		t.Fatalf("verify Herd's own commit: %v", err)
	}
}
