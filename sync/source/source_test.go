package source

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"herd.dev/herd/sync/gitutil"
	"herd.dev/herd/test/gitserver"
)

func TestFollowAndMaterialize(t *testing.T) {
	f := newFixture(t)
	f.writer.Write("README.md", "not part of the fleet\n")
	first := f.push("pool general", "pool: general: nodes: 10\n")

	var validated []string
	s := f.start(Options{Validate: func(ctx context.Context, dir string) error {
		validated = append(validated, dir)
		return fleetValidate(ctx, dir)
	}})
	rev := waitUpdate(t, s, first)
	if got := readFile(t, filepath.Join(rev.Dir, "pools", "general.cue")); got != "pool: general: nodes: 10\n" {
		t.Fatalf("checkout content %q", got)
	}
	if _, err := os.Stat(filepath.Join(rev.Dir, "README.md")); !os.IsNotExist(err) {
		t.Fatalf("file outside the fleet path was materialized: %v", err)
	}
	if rev.Subject != "pool general" || !strings.Contains(rev.Author, "writer@example.com") || rev.Time.IsZero() {
		t.Fatalf("revision metadata %+v", rev)
	}
	if len(validated) != 1 || validated[0] != rev.Dir {
		t.Fatalf("validate called with %v, want [%s]", validated, rev.Dir)
	}
	s.MarkApplied(first)

	// Nothing moved: a check does not fetch or validate again.
	checks := s.Status().Checks
	s.Trigger()
	waitStatus(t, s, "another check", func(st Status) bool { return st.Checks > checks })
	if len(validated) != 1 {
		t.Fatalf("unchanged head validated again")
	}

	f.writer.Write("fleet/pools/gpu.cue", "pool: gpu: nodes: 2\n")
	second := f.push("pool gpu", "pool: general: nodes: 12\n")
	s.Trigger()
	rev2 := waitUpdate(t, s, second)
	if got := readFile(t, filepath.Join(rev2.Dir, "pools", "gpu.cue")); got != "pool: gpu: nodes: 2\n" {
		t.Fatalf("second checkout %q", got)
	}
	st := s.Status()
	if st.Reason != Succeeded || st.Current != second || st.LastFetched != second || st.LastApplied != first {
		t.Fatalf("status %+v", st)
	}
	// Only the current and the applied checkouts are kept.
	entries, _ := os.ReadDir(filepath.Dir(rev2.Dir))
	if len(entries) != 2 {
		t.Fatalf("checkouts %v, want the applied and the current", entries)
	}
	s.MarkApplied(second)
	if _, err := os.Stat(rev.Dir); !os.IsNotExist(err) {
		t.Fatalf("old checkout %s kept after a newer one was applied", rev.Dir)
	}
}

// TestTriggerAndChanges: Trigger checks the remote at once (a poll
// interval of an hour never comes), and Changes is signalled after it.
func TestTriggerAndChanges(t *testing.T) {
	f := newFixture(t)
	first := f.push("first", "pool: general: nodes: 1\n")
	s := f.start(Options{Interval: time.Hour})
	waitUpdate(t, s, first)
	select {
	case <-s.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled after the first check")
	}
	second := f.push("second", "pool: general: nodes: 2\n")
	s.Trigger()
	waitUpdate(t, s, second)
	select {
	case <-s.Changes():
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled after the triggered check")
	}
}

func TestInvalidCommitRejected(t *testing.T) {
	f := newFixture(t)
	good := f.push("good", "pool: general: nodes: 3\n")
	s := f.start(Options{})
	goodRev := waitUpdate(t, s, good)
	s.MarkApplied(good)

	bad := f.push("bad", "pool: general: {\n  invalid: true\n}\n")
	s.Trigger()
	st := waitStatus(t, s, "validation failure", rejectedAs(bad, ValidationFailed))
	if st.Reason != ValidationFailed || !strings.Contains(st.Message, "pools/general.cue:2:3: field not allowed: invalid") {
		t.Fatalf("status %+v", st)
	}
	if cur, _ := s.Current(); cur.Commit != good {
		t.Fatalf("current %s, want the last good %s", cur.Commit, good)
	}
	if _, err := os.Stat(goodRev.Dir); err != nil {
		t.Fatalf("last good checkout removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(goodRev.Dir), bad)); !os.IsNotExist(err) {
		t.Fatalf("rejected checkout kept: %v", err)
	}
	// A missing fleet path is a validation failure too.
	f.writer.Git("rm", "-r", "--quiet", "fleet")
	noPath := f.writer.Commit("remove fleet")
	f.writer.Push()
	s.Trigger()
	st = waitStatus(t, s, "missing path", rejectedAs(noPath, ValidationFailed))
	if !strings.Contains(st.Message, `"fleet" does not exist`) {
		t.Fatalf("message %q", st.Message)
	}

	fixed := f.push("fix", "pool: general: nodes: 4\n")
	s.Trigger()
	waitUpdate(t, s, fixed)
	if st := s.Status(); st.Reason != Succeeded || st.LastRejected.Commit != noPath {
		t.Fatalf("status after fix %+v", st)
	}
}

func TestForcePush(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(map[bool]string{false: "refused", true: "allowed"}[allow], func(t *testing.T) {
			f := newFixture(t)
			base := f.push("base", "pool: general: nodes: 1\n")
			applied := f.push("applied", "pool: general: nodes: 2\n")
			s := f.start(Options{AllowNonFastForward: allow})
			waitUpdate(t, s, applied)
			s.MarkApplied(applied)

			f.writer.ResetHard(base)
			rewritten := f.commit("rewritten", "pool: general: nodes: 5\n")
			f.writer.ForcePush()
			s.Trigger()
			if !allow {
				st := waitStatus(t, s, "non-fast-forward", rejectedAs(rewritten, NonFastForward))
				if st.Reason != NonFastForward || !strings.Contains(st.Message, "does not descend") {
					t.Fatalf("status %+v", st)
				}
				if cur, _ := s.Current(); cur.Commit != applied {
					t.Fatalf("current %s, want %s", cur.Commit, applied)
				}
				return
			}
			waitUpdate(t, s, rewritten)
		})
	}
}

// signedFixture has writer commits signed by trusted and untrusted keys.
type signedFixture struct {
	*fixture
	sign, signOther func()
	verify          *Verification
}

func newPGPFixture(t *testing.T) *signedFixture {
	f := newFixture(t)
	trusted := gitserver.NewGPGKey(t, "Fleet Admin", "admin@example.com")
	other := gitserver.NewGPGKey(t, "Mallory", "mallory@example.com")
	return &signedFixture{
		fixture:   f,
		sign:      func() { f.writer.SignWithGPG(trusted) },
		signOther: func() { f.writer.SignWithGPG(other) },
		verify:    &Verification{PGPKeyRings: []string{trusted.WritePublic(t)}},
	}
}

func newSSHFixture(t *testing.T) *signedFixture {
	f := newFixture(t)
	trusted := gitserver.NewSSHKey(t, "admin")
	other := gitserver.NewSSHKey(t, "mallory")
	allowed := filepath.Join(t.TempDir(), "allowed_signers")
	if err := os.WriteFile(allowed, []byte("# fleet admins\n"+trusted.AllowedSignersLine("admin@example.com")), 0o644); err != nil {
		t.Fatal(err)
	}
	return &signedFixture{
		fixture:   f,
		sign:      func() { f.writer.SignWithSSH(trusted) },
		signOther: func() { f.writer.SignWithSSH(other) },
		verify:    &Verification{AllowedSigners: allowed},
	}
}

func TestVerification(t *testing.T) {
	for name, mk := range map[string]func(*testing.T) *signedFixture{"pgp": newPGPFixture, "ssh": newSSHFixture} {
		t.Run(name, func(t *testing.T) {
			t.Run("unsigned-in-middle", func(t *testing.T) {
				f := mk(t)
				f.sign()
				applied := f.push("applied", "pool: general: nodes: 1\n")
				s := f.start(Options{Verify: f.verify})
				rev := waitUpdate(t, s, applied)
				if !strings.Contains(rev.Signer, "admin") {
					t.Fatalf("signer %q", rev.Signer)
				}
				s.MarkApplied(applied)

				f.commit("signed 1", "pool: general: nodes: 2\n")
				f.writer.NoSigning()
				middle := f.commit("unsigned", "pool: general: nodes: 3\n")
				f.sign()
				head := f.commit("signed 2", "pool: general: nodes: 4\n")
				f.writer.Push()
				s.Trigger()
				st := waitStatus(t, s, "verification failure", rejectedAs(head, VerificationFailed))
				if !strings.Contains(st.Message, middle) || !strings.Contains(st.Message, "not signed") {
					t.Fatalf("message %q does not name the unsigned commit %s", st.Message, middle)
				}
				if cur, _ := s.Current(); cur.Commit != applied {
					t.Fatalf("current %s, want %s", cur.Commit, applied)
				}
			})
			t.Run("untrusted-in-middle", func(t *testing.T) {
				f := mk(t)
				f.sign()
				applied := f.push("applied", "pool: general: nodes: 1\n")
				s := f.start(Options{Verify: f.verify, LastApplied: applied})
				waitUpdate(t, s, applied)

				f.signOther()
				middle := f.commit("by mallory", "pool: general: nodes: 3\n")
				f.sign()
				f.commit("signed", "pool: general: nodes: 4\n")
				head := f.commit("signed again", "pool: general: nodes: 5\n")
				f.writer.Push()
				s.Trigger()
				st := waitStatus(t, s, "verification failure", rejectedAs(head, VerificationFailed))
				if !strings.Contains(st.Message, middle) {
					t.Fatalf("message %q does not name the commit %s", st.Message, middle)
				}

				// A fully signed range on top of the last applied one passes.
				f.writer.ResetHard(applied)
				f.commit("signed 1", "pool: general: nodes: 6\n")
				good := f.commit("signed 2", "pool: general: nodes: 7\n")
				f.writer.ForcePush()
				s.Trigger()
				waitUpdate(t, s, good)
			})
			t.Run("key-added-later", func(t *testing.T) {
				f := mk(t)
				f.sign()
				head := f.push("signed", "pool: general: nodes: 1\n")
				dir := t.TempDir()
				s := f.start(Options{Verify: &Verification{Dir: dir}})
				st := waitStatus(t, s, "no trusted key", rejectedAs(head, VerificationFailed))
				if !strings.Contains(st.Message, dir) || !strings.Contains(st.Message, "no trusted key") {
					t.Fatalf("message %q does not say that %s holds no key", st.Message, dir)
				}
				if _, ok := s.Current(); ok {
					t.Fatal("a commit was accepted without a trusted key")
				}
				// The key arrives in the directory (a ConfigMap update):
				// the same head is accepted without a restart.
				key := f.verify.AllowedSigners
				name := "allowed_signers"
				if key == "" {
					key, name = f.verify.PGPKeyRings[0], "fleet.asc"
				}
				if err := os.WriteFile(filepath.Join(dir, name), []byte(readFile(t, key)), 0o644); err != nil {
					t.Fatal(err)
				}
				s.Trigger()
				waitUpdate(t, s, head)
			})
			t.Run("first-revision-head-only", func(t *testing.T) {
				f := mk(t)
				f.writer.NoSigning()
				f.commit("old unsigned history", "pool: general: nodes: 1\n")
				f.sign()
				head := f.push("signed head", "pool: general: nodes: 2\n")
				s := f.start(Options{Verify: f.verify})
				waitUpdate(t, s, head)

				f.writer.NoSigning()
				unsigned := f.push("unsigned head", "pool: general: nodes: 3\n")
				s.Trigger()
				waitStatus(t, s, "unsigned head rejected", rejectedAs(unsigned, VerificationFailed))
			})
		})
	}
}

func TestUnavailableAndRecovery(t *testing.T) {
	f := newFixture(t)
	first := f.push("first", "pool: general: nodes: 1\n")
	s := f.start(Options{})
	waitUpdate(t, s, first)

	f.daemon.Stop()
	s.Trigger()
	st := waitStatus(t, s, "FetchFailed", func(st Status) bool { return st.Reason == FetchFailed })
	if !strings.Contains(st.Message, "last successful fetch") || !strings.Contains(st.Message, "keeping") {
		t.Fatalf("message %q", st.Message)
	}
	if cur, ok := s.Current(); !ok || cur.Commit != first {
		t.Fatalf("current lost while unavailable: %+v", cur)
	}

	second := f.commit("second", "pool: general: nodes: 2\n")
	f.daemon.Start()
	f.writer.Push()
	s.Trigger()
	waitUpdate(t, s, second)
	if st := s.Status(); st.Reason != Succeeded || st.LastSuccessTime.Before(st.LastFetchTime.Add(-time.Second)) {
		t.Fatalf("status after recovery %+v", st)
	}
}

func TestRestartWithLastApplied(t *testing.T) {
	f := newFixture(t)
	applied := f.push("applied", "pool: general: nodes: 1\n")
	next := f.push("next", "pool: general: nodes: 2\n")
	cache := t.TempDir()
	// A fresh process with the persisted revision and a fresh cache.
	s := f.start(Options{CacheDir: cache, LastApplied: applied})
	waitUpdate(t, s, next)
	if st := s.Status(); st.LastApplied != applied {
		t.Fatalf("status %+v", st)
	}
	// Unknown last applied revision (history rewritten while down).
	s2 := f.start(Options{LastApplied: strings.Repeat("ab", 20)})
	waitStatus(t, s2, "unknown base", rejectedAs(next, NonFastForward))
}

func TestHTTPAuth(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts gitserver.HTTPOptions
		auth gitutil.Auth
		bad  gitutil.Auth
	}{
		{"basic", gitserver.HTTPOptions{Username: "herd", Password: "pw"}, gitutil.Auth{Username: "herd", Password: "pw"}, gitutil.Auth{Username: "herd", Password: "nope"}},
		{"bearer", gitserver.HTTPOptions{BearerToken: "t0k"}, gitutil.Auth{BearerToken: "t0k"}, gitutil.Auth{BearerToken: "wrong"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			head := f.push("first", "pool: general: nodes: 1\n")
			h := gitserver.StartHTTP(t, f.root, tc.opts)
			s := f.start(Options{URL: h.URL("fleet.git"), Auth: tc.auth})
			waitUpdate(t, s, head)
			next := f.push("next", "pool: general: nodes: 2\n")
			s.Trigger()
			waitUpdate(t, s, next)

			bad := f.start(Options{URL: h.URL("fleet.git"), Auth: tc.bad})
			st := waitStatus(t, bad, "auth failure", func(st Status) bool { return st.Reason == FetchFailed })
			if !strings.Contains(strings.ToLower(st.Message), "auth") {
				t.Fatalf("message %q", st.Message)
			}
			if _, unauthorized := h.Requests(); unauthorized == 0 {
				t.Fatal("server saw no unauthorized request")
			}
		})
	}
}

func TestSSH(t *testing.T) {
	f := newFixture(t)
	head := f.push("first", "pool: general: nodes: 1\n")
	sshd := gitserver.StartSSHD(t, f.root)
	auth := gitutil.Auth{SSHPrivateKeyFile: sshd.ClientKey.PrivatePath, KnownHostsFile: sshd.KnownHostsFile}
	s := f.start(Options{URL: sshd.URL("fleet.git"), Auth: auth})
	waitUpdate(t, s, head)

	// Another writer pushes over SSH with the git CLI.
	w := gitserver.NewClone(t, sshd.URL("fleet.git"), "main", sshd.CLIEnv()...)
	next := w.CommitFiles("over ssh", map[string]string{"fleet/pools/general.cue": "pool: general: nodes: 2\n"})
	w.Push()
	s.Trigger()
	waitUpdate(t, s, next)

	// A known_hosts entry with another key for this host must fail.
	impostor := gitserver.NewSSHKey(t, "impostor")
	wrong := strings.Replace(sshd.KnownHostsLine(), sshd.HostKey.AuthorizedKey(), impostor.AuthorizedKey(), 1)
	bad := f.start(Options{URL: sshd.URL("fleet.git"), Auth: gitutil.Auth{SSHPrivateKey: sshd.ClientKey.Private(), KnownHosts: []byte(wrong)}})
	st := waitStatus(t, bad, "host key mismatch", func(st Status) bool { return st.Reason == FetchFailed })
	if !strings.Contains(st.Message, "host key mismatch") {
		t.Fatalf("message %q", st.Message)
	}
	// Without known_hosts the source refuses to be created.
	if _, err := New(Options{URL: sshd.URL("fleet.git"), CacheDir: t.TempDir(), Auth: gitutil.Auth{SSHPrivateKey: sshd.ClientKey.Private()}}); err == nil {
		t.Fatal("New accepted an ssh remote without known_hosts")
	}
}

// TestSSHKeepsConnection checks that checks over ssh:// share one
// connection, and that a connection that broke is replaced at the next
// check without losing it.
func TestSSHKeepsConnection(t *testing.T) {
	f := newFixture(t)
	head := f.push("first", "pool: general: nodes: 1\n")
	sshd := gitserver.StartSSHD(t, f.root)
	auth := gitutil.Auth{SSHPrivateKeyFile: sshd.ClientKey.PrivatePath, KnownHostsFile: sshd.KnownHostsFile}
	s := f.start(Options{URL: sshd.URL("fleet.git"), Auth: auth})
	waitUpdate(t, s, head)
	dials := func() int {
		s.ssh.mu.Lock()
		defer s.ssh.mu.Unlock()
		return s.ssh.dials
	}
	for i := 2; i <= 4; i++ {
		head = f.push(fmt.Sprintf("c%d", i), fmt.Sprintf("pool: general: nodes: %d\n", i))
		s.Trigger()
		waitUpdate(t, s, head)
		s.MarkApplied(head)
	}
	// A check with nothing new uses the connection too; the next update
	// arrives after it (checks run one at a time).
	checks := s.Status().Checks
	s.Trigger()
	waitStatus(t, s, "a check", func(st Status) bool { return st.Checks > checks })
	head = f.push("c5", "pool: general: nodes: 5\n")
	s.Trigger()
	waitUpdate(t, s, head)
	if n := dials(); n != 1 {
		t.Fatalf("%d SSH connections for 6 checks, want 1", n)
	}

	// The connection drops (as a NAT or a server restart drops it).
	s.ssh.mu.Lock()
	_ = s.ssh.conn.Close()
	s.ssh.mu.Unlock()
	head = f.push("after the drop", "pool: general: nodes: 9\n")
	s.Trigger()
	waitUpdate(t, s, head)
	if n := dials(); n != 2 {
		t.Fatalf("%d SSH connections after one drop, want 2", n)
	}
	if st := s.Status(); st.Reason == FetchFailed {
		t.Fatalf("source unavailable after a dropped connection: %s", st.Message)
	}
}

func TestRepackKeepsHistory(t *testing.T) {
	old := repackThreshold
	repackThreshold = 3
	// Registered before the source starts, so it runs after it stopped.
	t.Cleanup(func() { repackThreshold = old })
	f := newFixture(t)
	first := f.push("c0", "pool: general: nodes: 0\n")
	cache := t.TempDir()
	s := f.start(Options{CacheDir: cache})
	waitUpdate(t, s, first)
	s.MarkApplied(first)
	var last string
	for i := 1; i <= 8; i++ {
		last = f.push(fmt.Sprintf("c%d", i), fmt.Sprintf("pool: general: nodes: %d\n", i))
		s.Trigger()
		waitUpdate(t, s, last)
		s.MarkApplied(last)
	}
	// The repack runs at the end of a check: start one more and wait for
	// it to begin, which means the previous one has finished.
	checks := s.Status().Checks
	s.Trigger()
	waitStatus(t, s, "next check", func(st Status) bool { return st.Checks > checks })
	packs, _ := filepath.Glob(filepath.Join(cache, "repo.git", "objects", "pack", "*.pack"))
	if len(packs) > repackThreshold {
		t.Fatalf("%d packs after repacking above %d", len(packs), repackThreshold)
	}
	if out := gitserver.Git(t, filepath.Join(cache, "repo.git"), nil, "rev-list", "--count", last); out != "9" {
		t.Fatalf("cache has %s commits of %s's history, want 9", out, last)
	}
	gitserver.Git(t, filepath.Join(cache, "repo.git"), nil, "fsck", "--no-progress", "--connectivity-only")
}

// A head the validation hook rejects as over budget is reported as
// BudgetExceeded; the last good revision stays current.
func TestOverBudgetCommitRejected(t *testing.T) {
	f := newFixture(t)
	good := f.push("good", "pool: general: nodes: 3\n")
	s := f.start(Options{Validate: func(ctx context.Context, dir string) error {
		b, err := os.ReadFile(filepath.Join(dir, "pools", "general.cue"))
		if err == nil && strings.Contains(string(b), "huge") {
			return fmt.Errorf("%w: pools/general.cue: evaluation used 20s of CPU time, its budget (budget max-cpu)", ErrBudgetExceeded)
		}
		return fleetValidate(ctx, dir)
	}})
	waitUpdate(t, s, good)
	bad := f.push("bad", "pool: general: huge: 1\n")
	s.Trigger()
	st := waitStatus(t, s, "over budget", rejectedAs(bad, BudgetExceeded))
	if !strings.Contains(st.Message, "budget max-cpu") {
		t.Errorf("message %q", st.Message)
	}
	if cur, _ := s.Current(); cur.Commit != good {
		t.Fatalf("current %s, want the last good %s", cur.Commit, good)
	}
}

// Credentials in the repository URL appear neither in the status (written
// to source.yaml on the status branch) nor in the logs.
func TestCredentialsScrubbed(t *testing.T) {
	const secret = "tok3n-very-secret"
	var logs bytes.Buffer
	var mu sync.Mutex
	s := startSource(t, Options{
		URL:    "http://x-access-token:" + secret + "@127.0.0.1:1/fleet.git",
		Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)),
	})
	st := waitStatus(t, s, "unavailable", func(st Status) bool { return st.Reason == FetchFailed })
	mu.Lock()
	defer mu.Unlock()
	for what, text := range map[string]string{"status URL": st.URL, "status message": st.Message, "logs": logs.String()} {
		if strings.Contains(text, secret) || strings.Contains(text, "x-access-token") {
			t.Errorf("%s holds the credentials: %s", what, text)
		}
	}
	if !strings.Contains(st.URL, "redacted@127.0.0.1:1") {
		t.Errorf("status URL %q", st.URL)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
