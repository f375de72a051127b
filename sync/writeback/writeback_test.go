package writeback

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"herd.dev/herd/sync/gitutil"
	"herd.dev/herd/test/gitserver"
)

const spec = "7a3283c6e0f1d2c3b4a5968778695a4b3c2d1e0f"

func TestFilesMessageAndOrphanBranch(t *testing.T) {
	f := newFixture(t)
	w := f.writer("prod-eu", nil)
	mainBefore := f.git("rev-parse", "main")

	w.SetSource(SourceStatus{URL: f.url(), Branch: "main", Reason: "Succeeded",
		LastApplied: &Revision{Commit: spec, Subject: "roll general"}})
	if err := w.SetPool(mkPool("general", spec, "Rolling", 10, 6, &Batch{Current: 3, Total: 5})); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.git("rev-list", "--count", "herd/status"); got != "1" {
		t.Fatalf("status branch has %s commits, want an orphan root commit", got)
	}
	if f.git("rev-parse", "main") != mainBefore {
		t.Fatal("main moved")
	}
	msg := f.git("log", "-1", "--format=%B", "herd/status")
	if first, _, _ := strings.Cut(msg, "\n"); first != "general: 6/10 nodes at 7a3283c6 (batch 3/5)" {
		t.Fatalf("summary %q", first)
	}
	if tr := trailers(msg); tr["Herd-Cluster"] != "prod-eu" || tr["Herd-Spec-Commit"] != spec {
		t.Fatalf("trailers %v in %q", tr, msg)
	}
	ls := f.git("ls-tree", "-r", "--name-only", "herd/status")
	if ls != "clusters/prod-eu/general.yaml\nclusters/prod-eu/source.yaml" {
		t.Fatalf("files:\n%s", ls)
	}
	p := f.pool("herd/status", "prod-eu", "general")
	if len(p.Nodes) != 10 || p.Nodes[0].Name != "node-0000" || p.Nodes[9].Name != "node-0009" || p.Counts.Updated != 6 {
		t.Fatalf("pool file %+v", p)
	}
	raw := f.show("herd/status", "clusters/prod-eu/general.yaml")
	for _, want := range []string{"specRevision: " + spec, "configHash: sha256:abc", "osTarget: herdos-1.2", "phase: Rolling", "since: 2026-05-01T12:00:00Z"} {
		if !strings.Contains(raw, want) {
			t.Fatalf("pool file lacks %q:\n%s", want, raw)
		}
	}
	src, err := ParseSource([]byte(f.show("herd/status", "clusters/prod-eu/source.yaml")))
	if err != nil || src.LastApplied.Commit != spec || src.Reason != "Succeeded" {
		t.Fatalf("source file %+v %v", src, err)
	}

	// Writing the same state again makes no commit, and not even a render.
	w.SetPool(mkPool("general", spec, "Rolling", 10, 6, &Batch{Current: 3, Total: 5}))
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.git("rev-list", "--count", "herd/status"); got != "1" {
		t.Fatalf("identical state made a commit (%s commits)", got)
	}
	if st := w.Stats(); st.Commits != 1 || st.Unchanged != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCoalescingAndPhaseChanges(t *testing.T) {
	f := newFixture(t)
	w := f.writer("c1", func(o *Options) { o.Interval = 400 * time.Millisecond })

	// Before Run: three phases in a row each get their own commit.
	w.SetPool(mkPool("general", spec, "Pending", 10, 0, nil))
	w.SetPool(mkPool("general", spec, "Rolling", 10, 1, &Batch{Current: 1, Total: 5}))
	w.SetPool(mkPool("general", spec, "Rolling", 10, 2, &Batch{Current: 1, Total: 5}))
	w.SetPool(mkPool("general", spec, "Paused", 10, 2, &Batch{Current: 1, Total: 5}))
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	log := f.git("log", "--format=%s", "herd/status")
	if want := "general: 2/10 nodes at 7a3283c6 (batch 1/5)\ngeneral: 2/10 nodes at 7a3283c6 (batch 1/5)\ngeneral: 0/10 nodes at 7a3283c6"; log != want {
		t.Fatalf("log:\n%s\nwant:\n%s", log, want)
	}
	phases := []string{}
	for _, rev := range []string{"herd/status~2", "herd/status~1", "herd/status"} {
		phases = append(phases, f.pool(rev, "c1", "general").Phase)
	}
	if strings.Join(phases, ",") != "Pending,Rolling,Paused" {
		t.Fatalf("phases %v", phases)
	}

	// With Run: a burst of ordinary updates becomes one commit.
	run(t, w)
	start := time.Now()
	for i := 3; i <= 8; i++ {
		w.SetPool(mkPool("general", spec, "Paused", 10, i, &Batch{Current: 2, Total: 5}))
	}
	waitFor(t, "coalesced commit", func() error {
		if st := w.Stats(); st.Commits != 4 {
			return fmt.Errorf("commits %d", st.Commits)
		}
		return nil
	})
	if time.Since(start) < 300*time.Millisecond {
		t.Fatalf("ordinary update committed after %v, before the interval", time.Since(start))
	}
	if p := f.pool("herd/status", "c1", "general"); p.Counts.Updated != 8 {
		t.Fatalf("coalesced state has %d updated", p.Counts.Updated)
	}
	// A phase change is committed at once, without waiting the interval.
	start = time.Now()
	w.SetPool(mkPool("general", spec, "Done", 10, 10, &Batch{Current: 5, Total: 5}))
	waitFor(t, "phase commit", func() error {
		if st := w.Stats(); st.Commits != 5 {
			return fmt.Errorf("commits %d", st.Commits)
		}
		return nil
	})
	if d := time.Since(start); d > 300*time.Millisecond {
		t.Fatalf("phase change took %v", d)
	}
	// A phase change followed by continuous updates (arriving while its
	// commit is pushed) makes one immediate commit, then at most one per
	// interval.
	before := w.Stats().Commits
	start = time.Now()
	for i := 0; time.Since(start) < 1200*time.Millisecond; i++ {
		w.SetPool(mkPool("general", spec, "Verifying", 10, 10, &Batch{Current: 5, Total: 5 + i%2}))
		tick := time.NewTimer(2 * time.Millisecond)
		<-tick.C
	}
	if n := w.Stats().Commits - before; n > 5 {
		t.Fatalf("%d commits in 1.2s of continuous updates with a 400ms interval", n)
	}
	p := f.pool("herd/status", "c1", "general")
	var sawPhase bool
	for _, tr := range p.Transitions {
		if tr.Node == "" && tr.From == "Done" && tr.To == "Verifying" {
			sawPhase = true
		}
	}
	if !sawPhase || len(p.Transitions) > MaxTransitions {
		t.Fatalf("transitions %+v", p.Transitions)
	}
}

func TestTransitionsBoundedAndContinued(t *testing.T) {
	f := newFixture(t)
	w := f.writer("c1", nil)
	base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 70; i++ {
		p := mkPool("general", spec, "Rolling", 3, 0, nil)
		p.Nodes[0].State = "State" + strconv.Itoa(i)
		p.Nodes[0].Since = base.Add(time.Duration(i) * time.Minute)
		w.SetPool(p)
	}
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := f.pool("herd/status", "c1", "general")
	if len(p.Transitions) != MaxTransitions || p.Transitions[MaxTransitions-1].To != "State69" {
		t.Fatalf("%d transitions, last %+v", len(p.Transitions), p.Transitions[len(p.Transitions)-1])
	}
	// A new process continues the list found on the branch.
	w2 := f.writer("c1", nil)
	p2 := mkPool("general", spec, "Rolling", 3, 0, nil)
	p2.Nodes[0].State = "State69"
	w2.SetPool(p2)
	p2.Nodes[0].State, p2.Nodes[0].Since = "Rebooted", base.Add(2*time.Hour)
	w2.SetPool(p2)
	if err := w2.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p = f.pool("herd/status", "c1", "general")
	if n := len(p.Transitions); n != MaxTransitions || p.Transitions[n-1].To != "Rebooted" || p.Transitions[n-2].To != "State69" {
		t.Fatalf("continued transitions: %d, tail %+v", n, p.Transitions[n-2:])
	}
}

func TestConcurrentWriters(t *testing.T) {
	f := newFixture(t)
	w := f.writer("c1", func(o *Options) { o.Interval = time.Second })
	w.SetPool(mkPool("general", spec, "Rolling", 100, 0, nil))
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	run(t, w)

	const writers = 50
	t0 := time.Now()
	clones := make([]*gitserver.Clone, writers)
	var cwg sync.WaitGroup
	cerrs := make([]error, writers)
	for i := range clones {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			// Half the writers push over git://, half through the local
			// transport (the same bare repository), all with the git CLI.
			url := f.url()
			if i%2 == 1 {
				url = "file://" + f.bare
			}
			clones[i], cerrs[i] = gitserver.TryNewClone(t, url, "herd/status")
		}()
	}
	cwg.Wait()
	for _, err := range cerrs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("clones ready after %v", time.Since(t0))
	// A guard against a hang, not a speed test: 50 git CLI writers take
	// 45 s on a quiet machine and over 3 minutes at a load of 30.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	start := make(chan struct{})
	for i, c := range clones {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := c.WriteErr(fmt.Sprintf("notes/writer-%02d.txt", i), fmt.Sprintf("writer %d was here\n", i)); err != nil {
				errs <- err
				return
			}
			if _, err := c.Run(ctx, "add", "-A"); err != nil {
				errs <- err
				return
			}
			if _, err := c.Run(ctx, "commit", "--quiet", "-m", fmt.Sprintf("writer %02d", i)); err != nil {
				errs <- err
				return
			}
			errs <- c.PushWithRetry(ctx, 200)
		}()
	}
	// Herd keeps reporting progress for as long as the others push.
	writersDone := make(chan struct{})
	herdDone := make(chan struct{})
	go func() {
		defer close(herdDone)
		for i := 1; ; i++ {
			select {
			case <-writersDone:
				return
			case <-ctx.Done():
				return
			default:
			}
			// A new phase every ~2s is committed at once; the rest is
			// coalesced to one commit a second.
			phase := "Rolling-" + strconv.Itoa(i/200)
			w.SetPool(mkPool("general", spec, phase, 100, i%100, &Batch{Current: 1 + i%10, Total: 10}))
			t := time.NewTimer(10 * time.Millisecond)
			select {
			case <-t.C:
			case <-writersDone:
				t.Stop()
			}
		}
	}()
	close(start)
	wg.Wait()
	close(writersDone)
	close(errs)
	attempts := 0
	for _, c := range clones {
		attempts += c.PushAttempts
	}
	t.Logf("writers done after %v, %d push attempts; herd commits so far %d", time.Since(t0), attempts, w.Stats().Commits)
	for err := range errs {
		if err != nil {
			t.Fatalf("writer: %v", err)
		}
	}
	<-herdDone
	final := mkPool("general", spec, "Done", 100, 100, &Batch{Current: 10, Total: 10})
	w.SetPool(final)
	waitFor(t, "final flush", func() error { return w.Flush(context.Background()) })

	tip := "herd/status"
	for i := 0; i < writers; i++ {
		name := fmt.Sprintf("notes/writer-%02d.txt", i)
		if got := f.show(tip, name); got != fmt.Sprintf("writer %d was here", i) {
			t.Fatalf("%s = %q", name, got)
		}
	}
	subjects := f.git("log", "--format=%s", tip)
	for i := 0; i < writers; i++ {
		if !strings.Contains(subjects, fmt.Sprintf("writer %02d\n", i)) && !strings.HasSuffix(subjects, fmt.Sprintf("writer %02d", i)) {
			t.Fatalf("writer %d's commit missing from the log", i)
		}
	}
	st := w.Stats()
	for _, h := range st.RecentHashes {
		f.git("merge-base", "--is-ancestor", h, tip) // fails the test if Herd's commit was lost
	}
	p := f.pool(tip, "c1", "general")
	if p.Phase != "Done" || p.Counts.Updated != 100 || len(p.Nodes) != 100 {
		t.Fatalf("final pool %+v", p.Counts)
	}
	t.Logf("herd commits %d, conflicts %d; branch has %s commits", st.Commits, st.Conflicts, f.git("rev-list", "--count", tip))
}

func TestTwoClusters(t *testing.T) {
	f := newFixture(t)
	ws := []*Writer{f.writer("eu", nil), f.writer("us", nil)}
	var wg sync.WaitGroup
	for ci, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= 20; i++ {
				w.SetPool(mkPool("general", spec, "Rolling-"+strconv.Itoa(i), 20, i, nil))
				w.SetSource(SourceStatus{Reason: "Succeeded", LastApplied: &Revision{Commit: spec}, Message: fmt.Sprint(ci, i)})
				if err := w.Flush(context.Background()); err != nil {
					t.Errorf("cluster %d: %v", ci, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for _, c := range []string{"eu", "us"} {
		p := f.pool("herd/status", c, "general")
		if p.Counts.Updated != 20 || p.Phase != "Rolling-20" {
			t.Fatalf("%s: %+v", c, p.Counts)
		}
	}
	if n, _ := strconv.Atoi(f.git("rev-list", "--count", "herd/status")); n != 40 {
		t.Fatalf("%d commits, want 40 (20 per cluster)", n)
	}
	eu := f.git("log", "--format=%(trailers:key=Herd-Cluster,valueonly)", "herd/status")
	if strings.Count(eu, "eu") != 20 || strings.Count(eu, "us") != 20 {
		t.Fatalf("cluster trailers:\n%s", eu)
	}
}

func TestSignedCommits(t *testing.T) {
	f := newFixture(t)
	t.Run("pgp", func(t *testing.T) {
		k := gitserver.NewGPGKey(t, "Herd Bot", "herd@example.com")
		signer, err := gitutil.NewPGPSigner(k.PrivateArmored, "")
		if err != nil {
			t.Fatal(err)
		}
		w := f.writer("pgp", func(o *Options) { o.Signer = signer })
		w.SetPool(mkPool("general", spec, "Rolling", 3, 1, nil))
		if err := w.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		// git itself (through gpg) accepts the signature.
		gitserver.Git(t, f.bare, []string{"GNUPGHOME=" + k.Home}, "verify-commit", "herd/status")
		v, err := gitutil.NewVerifier([][]byte{k.PublicArmored}, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkVerifies(t, f, v)
	})
	t.Run("ssh", func(t *testing.T) {
		k := gitserver.NewSSHKey(t, "herd")
		signer, err := gitutil.NewSSHSigner(k.Private(), "")
		if err != nil {
			t.Fatal(err)
		}
		w := f.writer("ssh", func(o *Options) { o.Signer = signer })
		w.SetPool(mkPool("general", spec, "Rolling", 3, 1, nil))
		if err := w.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
		allowed := filepath.Join(t.TempDir(), "allowed_signers")
		if err := os.WriteFile(allowed, []byte(k.AllowedSignersLine("herd@example.com")), 0o644); err != nil {
			t.Fatal(err)
		}
		out := gitserver.Git(t, f.bare, nil, "-c", "gpg.ssh.allowedSignersFile="+allowed, "log", "-1", "--format=%G?", "herd/status")
		if out != "G" {
			t.Fatalf("git says the SSH signature is %q, want G", out)
		}
		v, err := gitutil.NewVerifier(nil, []byte(k.AllowedSignersLine("herd@example.com")))
		if err != nil {
			t.Fatal(err)
		}
		checkVerifies(t, f, v)
	})
}

func TestHTTPAndSSHTransports(t *testing.T) {
	f := newFixture(t)
	h := gitserver.StartHTTP(t, f.root, gitserver.HTTPOptions{Username: "herd", Password: "pw"})
	w := f.writer("over-http", func(o *Options) {
		o.URL = h.URL("fleet.git")
		o.Auth = gitutil.Auth{Username: "herd", Password: "pw"}
	})
	w.SetPool(mkPool("general", spec, "Rolling", 5, 2, nil))
	if err := w.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := gitserver.StartSSHD(t, f.root)
	w2 := f.writer("over-ssh", func(o *Options) {
		o.URL = s.URL("fleet.git")
		o.Auth = gitutil.Auth{SSHPrivateKeyFile: s.ClientKey.PrivatePath, KnownHostsFile: s.KnownHostsFile}
	})
	w2.SetPool(mkPool("general", spec, "Rolling", 5, 3, nil))
	if err := w2.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a, b := f.pool("herd/status", "over-http", "general"), f.pool("herd/status", "over-ssh", "general"); a.Counts.Updated != 2 || b.Counts.Updated != 3 {
		t.Fatalf("http %+v ssh %+v", a.Counts, b.Counts)
	}
	// Wrong password: the write fails and says so.
	bad := f.writer("bad", func(o *Options) {
		o.URL = h.URL("fleet.git")
		o.Auth = gitutil.Auth{Username: "herd", Password: "nope"}
	})
	bad.SetPool(mkPool("general", spec, "Rolling", 1, 0, nil))
	if err := bad.Flush(context.Background()); err == nil || !strings.Contains(strings.ToLower(err.Error()), "auth") {
		t.Fatalf("flush with a bad password: %v", err)
	}
}
