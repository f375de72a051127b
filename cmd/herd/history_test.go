package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/sync/writeback"
	"herd.dev/herd/test/fleettest"
)

// fleetWithRemote makes a bare fleet repo with the example fleet and a
// working clone whose origin it is.
func fleetWithRemote(t *testing.T) (work, bare string) {
	t.Helper()
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed")
	fleettest.NewRepo(t, seed)
	bare = filepath.Join(dir, "fleet.git")
	fleettest.Git(t, dir, "clone", "-q", "--bare", seed, bare)
	work = filepath.Join(dir, "work")
	fleettest.Git(t, dir, "clone", "-q", bare, work)
	return work, bare
}

func TestRollbackAndHistory(t *testing.T) {
	work, bare := fleetWithRemote(t)
	fleettest.Edit(t, work, "pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	fleettest.Edit(t, work, "pools/general.cue", `maxPods: 110`, `maxPods: 200`)
	bump := fleettest.Commit(t, work, "general: 2026.11.0, maxPods 200")
	fleettest.Git(t, work, "push", "-q")

	// The status a cluster wrote for the bump, through the real writer.
	w, err := writeback.New(writeback.Options{URL: "file://" + bare, Cluster: "prod", Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, phase := range []string{"Progressing", "UpToDate"} {
		if err := w.SetPool(writeback.PoolStatus{Name: "general", SpecRevision: bump, Phase: phase, Counts: writeback.Counts{Total: 4, Updated: map[string]int{"Progressing": 1, "UpToDate": 4}[phase]}}); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}

	// A dirty tree is refused; nothing is committed.
	if err := os.WriteFile(filepath.Join(work, "fleet.cue"), []byte("package fleet\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := herd(t, "", "rollback", bump, "--dir", work); code != 1 || !strings.Contains(errOut, "uncommitted changes") {
		t.Errorf("dirty tree: exit %d, %s", code, errOut)
	}
	fleettest.Git(t, work, "checkout", "-q", "--", "fleet.cue")

	code, out, errOut := herd(t, "", "rollback", bump, "--dir", work)
	if code != 0 || !strings.Contains(out, "rolls back "+bump[:8]) || !strings.Contains(out, "pushed") {
		t.Fatalf("rollback: exit %d\n%s%s", code, out, errOut)
	}
	msg := fleettest.Git(t, work, "log", "-1", "--format=%B")
	if !strings.Contains(msg, "This reverts commit "+bump) {
		t.Errorf("the revert's message does not name the commit:\n%s", msg)
	}
	if remote := fleettest.Git(t, bare, "rev-parse", "main"); remote != fleettest.Git(t, work, "rev-parse", "HEAD") {
		t.Errorf("the rollback was not pushed")
	}

	code, out, errOut = herd(t, "", "history", work, "--cluster", "prod")
	if code != 0 {
		t.Fatalf("history: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"general: kubelet.maxPods 200 -> 110, os 7a3283c6 -> 1fff1fd9 (reverts " + bump[:8] + ")",
		"general: kubelet.maxPods 110 -> 200, os 1fff1fd9 -> 7a3283c6",
		"prod/general: applying",
		"reverted by ",
		"prod/general: completed",
		"Start the fleet",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("history lacks %q:\n%s", want, out)
		}
	}
	if i, j := strings.Index(out, "reverts"), strings.Index(out, "prod/general: completed"); i > j {
		t.Errorf("history is not newest first:\n%s", out)
	}

	// Without a status branch: spec history alone.
	plain := filepath.Join(t.TempDir(), "plain")
	fleettest.NewRepo(t, plain)
	if code, out, _ := herd(t, "", "history", plain, "--no-fetch"); code != 0 || !strings.Contains(out, "Start the fleet") {
		t.Errorf("history without a status branch: exit %d\n%s", code, out)
	}
}

func TestRollbackRefusesAnInvalidResult(t *testing.T) {
	work, _ := fleetWithRemote(t)
	// A commit that adds the release the next commit uses: reverting it alone
	// leaves general pointing at a release that no longer exists.
	fleettest.Edit(t, work, "fleet.cue", `"2026.11.0": `, `"2026.12.0": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	"2026.11.0": `)
	release := fleettest.Commit(t, work, "add release 2026.12.0")
	fleettest.Edit(t, work, "pools/general.cue", `_releases["2026.10.1"]`, `_releases["2026.12.0"]`)
	fleettest.Commit(t, work, "general: 2026.12.0")
	head := fleettest.Git(t, work, "rev-parse", "HEAD")

	code, _, errOut := herd(t, "", "rollback", release, "--dir", work, "--no-push")
	if code != 1 || !strings.Contains(errOut, "invalid fleet") {
		t.Errorf("exit %d, stderr %s", code, errOut)
	}
	if got := fleettest.Git(t, work, "rev-parse", "HEAD"); got != head {
		t.Errorf("HEAD moved to %s", got)
	}
	if st := fleettest.Git(t, work, "status", "--porcelain"); st != "" {
		t.Errorf("the working tree was left changed:\n%s", st)
	}
}

// Repairs on the status branch show in herd history beside the rollouts,
// under the commit the cluster ran, even one that changed another pool.
func TestHistoryShowsRepairs(t *testing.T) {
	work, bare := fleetWithRemote(t)
	fleettest.Edit(t, work, "pools/batch.cue", `maxPods:                     250`, `maxPods:                     200`)
	other := fleettest.Commit(t, work, "batch: maxPods 200")
	fleettest.Git(t, work, "push", "-q")
	w, err := writeback.New(writeback.Options{URL: "file://" + bare, Cluster: "prod", Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
	repair := writeback.Repair{Time: at, Node: "general-3", ID: "1793520300", Problem: "HerdKubeletUnhealthy", Reason: "KubeletHealthzFailed", Rung: 1, Action: "restart-kubelet"}
	for _, outcome := range []string{"", "Healed"} {
		r := repair
		r.Outcome = outcome
		if err := w.SetPool(writeback.PoolStatus{Name: "general", SpecRevision: other, Phase: "UpToDate", Repairs: []writeback.Repair{r}}); err != nil {
			t.Fatal(err)
		}
		if err := w.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	code, out, errOut := herd(t, "", "history", work, "--pool", "general")
	if code != 0 {
		t.Fatalf("history: exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"prod/general: repair 2026-11-02 08:00:00 (general-3: restart-kubelet, rung 1 for HerdKubeletUnhealthy (KubeletHealthzFailed))",
		"prod/general: repair ended",
		"(general-3: restart-kubelet healed)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("history lacks %q:\n%s", want, out)
		}
	}
}
