package source

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"herd.dev/herd/sync/gitutil"
	"herd.dev/herd/test/gitserver"
)

const (
	benchCommits = 10_000
	benchFiles   = 1_000
)

var (
	fixtureOnce sync.Once
	fixtureDir  string
	fixtureErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureDir != "" {
		_ = os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

// bigFixture builds, once per test binary, a bare repository with
// benchCommits commits touching benchFiles files under fleet/, written with
// git fast-import (about a second), and returns a copy private to b.
func bigFixture(b *testing.B) string {
	b.Helper()
	fixtureOnce.Do(func() {
		fixtureDir, fixtureErr = os.MkdirTemp("", "herd-bench-fleet-")
		if fixtureErr != nil {
			return
		}
		fixtureErr = buildBigRepo(filepath.Join(fixtureDir, "fleet.git"))
	})
	if fixtureErr != nil {
		b.Fatalf("build fixture: %v", fixtureErr)
	}
	root := b.TempDir()
	gitserver.Git(b, "", nil, "clone", "--quiet", "--bare", "--no-local", filepath.Join(fixtureDir, "fleet.git"), filepath.Join(root, "fleet.git"))
	return root
}

func buildBigRepo(dir string) error {
	ctx := context.Background()
	if _, err := gitserver.RunGit(ctx, "", nil, "init", "--quiet", "--bare", "--initial-branch=main", dir); err != nil {
		return err
	}
	cmd := exec.Command("git", "fast-import", "--quiet")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), gitserver.BaseEnv()...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := os.CreateTemp("", "fast-import-*.log")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	w := bufio.NewWriterSize(stdin, 1<<20)
	data := func(s string) { fmt.Fprintf(w, "data %d\n%s\n", len(s), s) }
	when := int64(1_700_000_000)
	for i := 0; i < benchCommits; i++ {
		fmt.Fprintf(w, "commit refs/heads/main\ncommitter Bench <bench@example.com> %d +0000\n", when+int64(i))
		data(fmt.Sprintf("change %d", i))
		if i == 0 {
			fmt.Fprintf(w, "from 0000000000000000000000000000000000000000\n")
			for f := 0; f < benchFiles; f++ {
				fmt.Fprintf(w, "M 100644 inline fleet/pools/pool-%04d.cue\n", f)
				data(fmt.Sprintf("pool: \"pool-%04d\": {\n  nodes: %d\n  revision: 0\n}\n", f, f%50))
			}
			continue
		}
		f := i % benchFiles
		fmt.Fprintf(w, "M 100644 inline fleet/pools/pool-%04d.cue\n", f)
		data(fmt.Sprintf("pool: \"pool-%04d\": {\n  nodes: %d\n  revision: %d\n}\n", f, f%50, i))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := stdin.Close(); err != nil {
		return err
	}
	if err := cmd.Wait(); err != nil {
		b, _ := os.ReadFile(out.Name())
		return fmt.Errorf("git fast-import: %w: %s", err, b)
	}
	return nil
}

// BenchmarkNoticeAndFetch measures, on a repository of 10,000 commits and
// 1,000 files, the time from Trigger (what a webhook does) to the new
// revision arriving on Updates: ls-remote, incremental fetch, ancestry
// check, checkout of the 1,000-file fleet tree and the (empty) validation.
func BenchmarkNoticeAndFetch(b *testing.B) {
	for _, transport := range []string{"git", "http", "ssh", "file"} {
		b.Run(transport, func(b *testing.B) {
			root := bigFixture(b)
			var url string
			var auth gitutil.Auth
			switch transport {
			case "git":
				url = gitserver.StartDaemon(b, root).URL("fleet.git")
			case "http":
				url = gitserver.StartHTTP(b, root, gitserver.HTTPOptions{BearerToken: "t"}).URL("fleet.git")
				auth.BearerToken = "t"
			case "ssh":
				s := gitserver.StartSSHD(b, root)
				url = s.URL("fleet.git")
				auth = gitutil.Auth{SSHPrivateKeyFile: s.ClientKey.PrivatePath, KnownHostsFile: s.KnownHostsFile}
			case "file":
				url = "file://" + filepath.Join(root, "fleet.git")
			}
			writer := gitserver.NewClone(b, "file://"+filepath.Join(root, "fleet.git"), "main")
			var logger *slog.Logger
			if os.Getenv("HERD_BENCH_DEBUG") != "" {
				logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			s, err := New(Options{URL: url, Auth: auth, CacheDir: b.TempDir(), Path: "fleet", Interval: time.Hour, Logger: logger})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = s.Run(ctx) }()
			defer func() { cancel(); <-done }()
			first := <-s.Updates() // the initial clone is not measured
			if first.Commit == "" {
				b.Fatal("no first revision")
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				writer.Write(fmt.Sprintf("fleet/pools/pool-%04d.cue", i%benchFiles), fmt.Sprintf("pool: bench: %d\n", i))
				sha := writer.Commit(fmt.Sprintf("bench %d", i))
				writer.Push()
				b.StartTimer()
				s.Trigger()
				for rev := range s.Updates() {
					if rev.Commit == sha {
						break
					}
				}
				b.StopTimer()
				s.MarkApplied(sha)
				b.StartTimer()
			}
		})
	}
}
