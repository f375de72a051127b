package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"herd.dev/herd/os/image"
	"herd.dev/herd/os/ostree"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
	"herd.dev/herd/test/story"
)

// A platform team builds a new OS image with herd os build (a file added,
// a RUN step, a preloaded OCI image), signs it, pins it in the fleet repo,
// and it rolls out: the nodes, which trust only the operator's remote and
// key, pull it over HTTP as a static delta and boot it. Then a tampered
// commit (a valid signature copied onto another commit) is refused on the
// node that tries it, which keeps running what it ran.
func TestOSImageRollout(t *testing.T) {
	t.Parallel()
	r := startStory(t, story.Options{Pools: map[string]int{"general": 2, "system": 1, "batch": 1}, RebootDelay: 500 * time.Millisecond})
	herd := buildHerd(t)
	v1, v2 := r.OS.Commits[0], r.OS.Commits[1]
	general := nodesOf(r.Fleet, "general")
	r.converge("first revision")

	// The new image, on the node image (v2), built by the herd CLI.
	ctxDir := t.TempDir()
	os.WriteFile(filepath.Join(ctxDir, "Buildfile"), []byte(`# 2026.12.0: a support banner, a RUN step and a preloaded image
FROM `+story.OSRef+`
ARG VERSION=2026.12.0
COPY banner /usr/share/herd/banner
RUN echo "built $VERSION" > /usr/share/herd/build-info && test ! -e /etc/hostname
IMAGE agent.tar
LABEL version=$VERSION
`), 0o644)
	os.WriteFile(filepath.Join(ctxDir, "banner"), []byte("Support: #platform\n"), 0o644)
	if err := osfixture.WriteOCIArchive(filepath.Join(ctxDir, "agent.tar"), "registry.example.com/agent:1", "agent"); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), herd, "os", "build", "-f", filepath.Join(ctxDir, "Buildfile"),
		"--repo", r.OS.Repo, "--ref", story.OSRef, "--sign", r.OS.Key.ID, "--gpg-homedir", r.OS.Key.Home,
		"--delta-from", v1)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("herd os build: %v: %s", err, stderrOf(err))
	}
	v3 := strings.TrimSpace(string(out))
	t.Logf("built %s", v3)
	repo := &ostree.Repo{Path: r.OS.Repo}
	if base, _, _ := repo.Metadata(t.Context(), v3, image.MetaBase); base != v2 {
		t.Errorf("base of the new image %s, want %s", schema.Short(base), schema.Short(v2))
	}

	// Pin it for general; the nodes (on v1) pull the delta v1 -> v3.
	r.edit("fleet.cue", `"2026.11.0": "`+v2+`"`, `"2026.11.0": "`+v2+`"`+"\n\t\"2026.12.0\": \""+v3+`"`)
	r.edit("pools/general.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.12.0"]`)
	r.OS.Server().Reset()
	before := deltaPulls(r.Fleet.Nodes(), r)
	r.push("general: 2026.12.0")
	r.converge("2026.12.0 on general")
	for _, n := range general {
		if b := booted(t, r.Fleet, n); b != v3 {
			t.Errorf("%s booted %s, want %s", n, schema.Short(b), schema.Short(v3))
		}
		c, _ := r.Fleet.Counters(n)
		if c.DeltaPulls-before[n] != 1 {
			t.Errorf("%s: %d delta pulls, want 1", n, c.DeltaPulls-before[n])
		}
		for _, p := range []string{"usr/share/herd/banner", "usr/share/herd/build-info"} {
			if !deployedHas(t, r, n, v3, p) {
				t.Errorf("%s: the deployment of %s has no /%s", n, schema.Short(v3), p)
			}
		}
	}
	sent, _, deltaReqs := r.OS.Server().Stats()
	t.Logf("the repository sent %d bytes (%d delta requests) for %d nodes", sent, deltaReqs, len(general))
	if deltaReqs == 0 {
		t.Errorf("no static delta was requested")
	}

	// A tampered commit: another image, unsigned, carrying v3's signature.
	os.WriteFile(filepath.Join(ctxDir, "banner"), []byte("Support: #attacker\n"), 0o644)
	cmd = exec.CommandContext(t.Context(), herd, "os", "build", "-f", filepath.Join(ctxDir, "Buildfile"),
		"--repo", r.OS.Repo, "--ref", "attacker/x86_64", "--build-arg", "VERSION=2026.12.1")
	if out, err = cmd.Output(); err != nil {
		t.Fatalf("herd os build: %v: %s", err, stderrOf(err))
	}
	tampered := strings.TrimSpace(string(out))
	meta := func(c string) string { return filepath.Join(r.OS.Repo, "objects", c[:2], c[2:]+".commitmeta") }
	sig, err := os.ReadFile(meta(v3))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(meta(tampered), sig, 0o644)
	r.edit("fleet.cue", `"2026.12.0": "`+v3+`"`, `"2026.12.0": "`+v3+`"`+"\n\t\"2026.12.1\": \""+tampered+`"`)
	r.edit("pools/batch.cue", `os: commit: _releases["2026.10.1"]`, `os: commit: _releases["2026.12.1"]`)
	r.push("batch: 2026.12.1")
	batch := nodesOf(r.Fleet, "batch")[0]
	var msg string
	waitNode(t, r, batch, func(n *corev1.Node) bool {
		msg = n.Annotations[schema.AnnotationMessage]
		return n.Annotations[schema.AnnotationState] == string(schema.StateDegraded)
	})
	t.Logf("%s: %s", batch, msg)
	if !strings.Contains(msg, "commit verification failed") {
		t.Errorf("%s: message %q, want a verification failure", batch, msg)
	}
	if b := booted(t, r.Fleet, batch); b != v1 {
		t.Errorf("%s booted %s after refusing, want %s", batch, schema.Short(b), schema.Short(v1))
	}
	if has, err := r.Fleet.Sysroot(batch).HasCommit(t.Context(), tampered); has || err != nil {
		t.Errorf("%s: the tampered commit is in its repository (%v)", batch, err)
	}
}

func deltaPulls(nodes []string, r *run) map[string]int {
	out := map[string]int{}
	for _, n := range nodes {
		c, _ := r.Fleet.Counters(n)
		out[n] = c.DeltaPulls
	}
	return out
}

// deployedHas reports whether node's deployment of commit has path.
func deployedHas(t *testing.T, r *run, node, commit, path string) bool {
	t.Helper()
	s := r.Fleet.Sysroot(node)
	dirs, _ := filepath.Glob(filepath.Join(s.Path, "ostree/deploy", s.OSName, "deploy", commit+".*"))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, path)); err == nil {
			return true
		}
	}
	return false
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}
