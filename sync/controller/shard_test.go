package controller_test

import (
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"herd.dev/herd/schema"
	"herd.dev/herd/sync/controller"
	"herd.dev/herd/sync/herdpool"
	"herd.dev/herd/sync/herdsource"
	"herd.dev/herd/test/fleettest"
)

func TestParseShard(t *testing.T) {
	for _, tc := range []struct {
		name, selector string
		wantName       string
		wantErr        string
		owns, notOwns  map[string]string
	}{
		{name: "", selector: "", owns: nil},
		{name: "a", selector: "herd.dev/shard=a", wantName: "a",
			owns: map[string]string{"herd.dev/shard": "a"}, notOwns: map[string]string{"herd.dev/shard": "b"}},
		{selector: "!herd.dev/shard", wantName: "shard-",
			owns: map[string]string{"team": "x"}, notOwns: map[string]string{"herd.dev/shard": "a"}},
		{selector: "tier in (gpu,batch)", wantName: "shard-",
			owns: map[string]string{"tier": "gpu"}, notOwns: map[string]string{}},
		{name: "a", wantErr: "without --shard-selector"},
		{selector: "a=(", wantErr: `--shard-selector "a=("`},
		{name: "Not_A_Label", selector: "x=y", wantErr: `--shard-name "Not_A_Label"`},
	} {
		s, err := controller.ParseShard(tc.name, tc.selector)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseShard(%q, %q) = %v, want an error with %q", tc.name, tc.selector, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseShard(%q, %q): %v", tc.name, tc.selector, err)
			continue
		}
		if !strings.HasPrefix(s.Name, tc.wantName) || tc.wantName == "shard-" && len(s.Name) != len("shard-")+8 {
			t.Errorf("ParseShard(%q, %q).Name = %q, want %q…", tc.name, tc.selector, s.Name, tc.wantName)
		}
		if !s.Owns(tc.owns) {
			t.Errorf("shard %q does not own a pool labelled %v", tc.selector, tc.owns)
		}
		if tc.notOwns != nil && s.Owns(tc.notOwns) {
			t.Errorf("shard %q owns a pool labelled %v", tc.selector, tc.notOwns)
		}
	}
}

// TestShardHandOver moves a pool between two shards while the shard that
// had it is down, so the two see different revisions: the new shard must
// not touch the pool until the old one, at the revision that moved it,
// hands it over; then it rolls the pool out. The shards run as two
// controllers on a real API server, each with its own leader election.
func TestShardHandOver(t *testing.T) {
	e := newEnv(t)
	general, batch := e.addNodes("general", 2), e.addNodes("batch", 2)
	e.edit("pools/batch.cue", `os: commit: _releases["2026.10.1"]`, "labels: \"herd.dev/shard\": \"a\"\n\tos: commit: _releases[\"2026.10.1\"]")
	e.push("batch: shard a")
	e.startAgents(50 * time.Millisecond)
	shard := func(name, selector string) *controllerRun {
		return e.startControllerWith("herd-"+name, true, func(c *controllerConfig) {
			s, err := controller.ParseShard(name, selector)
			if err != nil {
				t.Fatal(err)
			}
			c.Shard = s
		})
	}
	a := shard("a", "herd.dev/shard=a")
	defer a.stop(t)
	b := shard("b", "!herd.dev/shard")
	for _, pool := range []string{"general", "batch"} {
		e.waitFor(pool+" up to date", time.Minute, func() (bool, error) {
			var np herdpool.HerdPool
			err := e.c.Get(t.Context(), client.ObjectKey{Name: pool}, &np)
			return err == nil && np.Status.Phase == herdpool.PhaseUpToDate, client.IgnoreNotFound(err)
		})
	}
	if l := e.nodePool("batch").Labels; l["herd.dev/shard"] != "a" {
		t.Fatalf("HerdPool batch labels %v, want the pool's", l)
	}
	b.stop(t) // down: its last revision gave general to b

	before := map[string]map[string]string{}
	for _, n := range general {
		before[n] = e.node(n).Annotations
	}
	e.bumpGeneral("1")
	e.edit("pools/general.cue", `os: commit: _releases["2026.11.0"]`, "labels: \"herd.dev/shard\": \"a\"\n\tos: commit: _releases[\"2026.11.0\"]")
	e.edit("pools/batch.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.11.0"]`)
	e.push("general moves to shard a; general and batch: 2026.11.0")
	e.waitFor("shard a to roll batch out at the new revision", 2*time.Minute, e.poolAtTarget("batch"))

	// Shard a reconciled at the new revision, which gives it general too;
	// general's HerdPool still says shard b's, so a left general alone.
	if l := e.nodePool("general").Labels; l["herd.dev/shard"] != "" {
		t.Fatalf("HerdPool general relabelled %v while shard b is down", l)
	}
	for _, n := range general {
		a := e.node(n).Annotations
		for _, k := range []string{schema.AnnotationDesiredConfig, schema.AnnotationDesiredOS, schema.AnnotationPrestageOS, schema.AnnotationCordoned} {
			if a[k] != before[n][k] {
				t.Errorf("%s: shard a changed %s from %q to %q before general was handed over", n, k, before[n][k], a[k])
			}
		}
	}

	b = shard("b", "!herd.dev/shard") // back, at the new revision: hands general over
	defer b.stop(t)
	e.waitFor("shard a to roll general out once handed over", 2*time.Minute, e.poolAtTarget("general"))
	if l := e.nodePool("general").Labels; l["herd.dev/shard"] != "a" {
		t.Errorf("HerdPool general labels %v after the hand-over, want herd.dev/shard=a", l)
	}
	t.Logf("batch %v and general %v rolled out by shard a", batch, general)
}

// TestWebhookWakesEveryShard: two shards poll hourly, and only shard a's
// replica gets the forge's delivery (one Service fronts every shard's
// pods): both fetch the pushed commit at once.
func TestWebhookWakesEveryShard(t *testing.T) {
	e := newEnv(t)
	const secret = "webhook-secret"
	addr := freeAddrT(t)
	for _, sh := range []struct{ name, selector string }{{"a", "herd.dev/shard=a"}, {"b", "!herd.dev/shard"}} {
		ctl := e.startControllerWith("herd-"+sh.name, true, func(c *controllerConfig) {
			s, err := controller.ParseShard(sh.name, sh.selector)
			if err != nil {
				t.Fatal(err)
			}
			c.Shard, c.Interval = s, time.Hour
			if sh.name == "a" {
				c.WebhookAddr, c.WebhookSecret = addr, secret
			}
		})
		defer ctl.stop(t)
	}
	accepted := func(name, commit string) func() (bool, error) {
		return func() (bool, error) {
			hs := e.herdSourceNamed(herdsource.NameOf(name))
			return hs != nil && hs.Status.LastAcceptedRevision != nil && hs.Status.LastAcceptedRevision.Commit == commit, nil
		}
	}
	head := strings.TrimSpace(fleettest.Git(t, e.work, "rev-parse", "HEAD"))
	for _, name := range []string{"a", "b"} {
		e.waitFor("shard "+name+" at the first revision", time.Minute, accepted(name, head))
	}
	fleettest.Git(t, e.work, "commit", "--allow-empty", "-qm", "delivered to shard a only")
	fleettest.Git(t, e.work, "push", "-q", "origin", "main")
	commit := strings.TrimSpace(fleettest.Git(t, e.work, "rev-parse", "HEAD"))
	githubPush(t, addr, secret, commit)
	for _, name := range []string{"a", "b"} {
		e.waitFor("shard "+name+" to fetch the pushed commit", 30*time.Second, accepted(name, commit))
	}
}
