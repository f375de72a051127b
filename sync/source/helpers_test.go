package source

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/test/gitserver"
)

// fixture is a bare fleet repository served by a real git daemon, a writer
// clone driven by the git CLI, and helpers to run a Source against it.
type fixture struct {
	t      *testing.T
	root   string
	bare   string
	daemon *gitserver.Daemon
	writer *gitserver.Clone
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{t: t, root: root, bare: gitserver.InitBare(t, filepath.Join(root, "fleet.git"), "main")}
	f.daemon = gitserver.StartDaemon(t, root)
	f.writer = gitserver.NewClone(t, f.daemon.URL("fleet.git"), "main")
	return f
}

// commit writes a pool file under fleet/ and commits it.
func (f *fixture) commit(msg, content string) string {
	f.t.Helper()
	return f.writer.CommitFiles(msg, map[string]string{"fleet/pools/general.cue": content})
}

func (f *fixture) push(msg, content string) string {
	f.t.Helper()
	sha := f.commit(msg, content)
	f.writer.Push()
	return sha
}

// fleetValidate stands for Herd's fleet validator: it rejects any .cue file
// containing "invalid" with a file:line:col: message line.
func fleetValidate(_ context.Context, dir string) error {
	var errs []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".cue") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		for i, line := range strings.Split(string(b), "\n") {
			if col := strings.Index(line, "invalid"); col >= 0 {
				errs = append(errs, fmt.Sprintf("%s:%d:%d: field not allowed: invalid", rel, i+1, col+1))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "\n"))
	}
	return nil
}

// start creates a Source on the fixture's daemon URL with opts filled in and
// runs it until the test ends.
func (f *fixture) start(opts Options) *Source {
	f.t.Helper()
	if opts.URL == "" {
		opts.URL = f.daemon.URL("fleet.git")
	}
	return startSource(f.t, opts)
}

func startSource(t *testing.T, opts Options) *Source {
	t.Helper()
	if opts.CacheDir == "" {
		opts.CacheDir = t.TempDir()
	}
	if opts.Path == "" {
		opts.Path = "fleet"
	}
	if opts.Interval == 0 {
		opts.Interval = time.Hour // tests drive checks with Trigger
	}
	if opts.Validate == nil {
		opts.Validate = fleetValidate
	}
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return s
}

// waitStatus polls until cond holds, failing after a deadline.
func waitStatus(t *testing.T, s *Source, what string, cond func(Status) bool) Status {
	t.Helper()
	var st Status
	err := gitserver.WaitFor(20*time.Second, func() error {
		st = s.Status()
		if cond(st) {
			return nil
		}
		return fmt.Errorf("status %+v", st)
	})
	if err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
	return st
}

// waitUpdate reads Updates until the revision for commit arrives.
func waitUpdate(t *testing.T, s *Source, commit string) Revision {
	t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case rev := <-s.Updates():
			if rev.Commit == commit {
				return rev
			}
		case <-deadline.C:
			t.Fatalf("no update for %s; status %+v", commit, s.Status())
		}
	}
}

func rejectedAs(commit string, reason Reason) func(Status) bool {
	return func(st Status) bool {
		return st.LastRejected != nil && st.LastRejected.Commit == commit && st.LastRejected.Reason == reason
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
