package node_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"herd.dev/herd/node"
	"herd.dev/herd/os/ostree/osfixture"
	"herd.dev/herd/schema"
)

// With the operator's trust file, the node pulls only from the remotes it
// lists, at the URL it lists, verified with the key it names, whatever the
// fleet repo says: a remote it does not list, another URL, gpgVerify: false
// on an unsigned commit and a commit signed by another key are all refused,
// and nothing changes on the node.
func TestAgentOSTrust(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 1, Sign: true})
	base := repo.Commits[0]
	signed, err := repo.AddCommit(t.Context(), true)
	if err != nil {
		t.Fatal(err)
	}
	unsigned, err := repo.AddCommit(t.Context(), false)
	if err != nil {
		t.Fatal(err)
	}
	// A commit signed by a key the operator does not trust.
	other, err := osfixture.NewGPGKey(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	wrong, err := repo.AddCommit(t.Context(), false)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runCmd("ostree", "--repo="+repo.Path, "gpg-sign", "--gpg-homedir="+other.Home, wrong, other.ID); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	trustDir := t.TempDir()
	trustFile := filepath.Join(trustDir, "remotes.yaml")
	os.WriteFile(filepath.Join(trustDir, "herd.asc"), mustRead(t, repo.KeyPath), 0o644)
	os.WriteFile(trustFile, []byte("remotes:\n  - name: herd\n    url: "+repo.URL+"\n    gpgKeyFile: herd.asc\n"), 0o644)

	remote := func(name, url string, verify bool) *schema.RemoteConfig {
		return &schema.RemoteConfig{Name: name, URL: url, GPGVerify: verify}
	}
	for _, tc := range []struct {
		name   string
		commit string
		remote *schema.RemoteConfig
		want   string // "" means the node converges
	}{
		{"trusted and signed", signed, remote("herd", repo.URL, false), ""},
		{"unknown remote", signed, remote("evil", repo.URL, false), "remote evil is not in the operator's trust file"},
		{"other url", signed, remote("herd", "http://127.0.0.1:1/evil", true), "but the operator's trust file " + trustFile + " trusts " + repo.URL},
		{"unsigned despite gpgVerify false", unsigned, remote("herd", repo.URL, false), "commit verification failed"},
		{"signed by another key", wrong, remote("herd", repo.URL, true), "commit verification failed"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			t.Parallel()
			n := newTestNode(t, repo, osfixture.SysrootOptions{Commit: base})
			h := publishRender(t, n.cs, render(t, repo, spec{commit: tc.commit, remote: tc.remote,
				files: []schema.File{{Path: limitsFile, Content: "x\n", Mode: 0o644}}}))
			n.setDesired(h, tc.commit)
			n.startWith(func(o *node.Options, _ func()) { o.OSTrustFile = trustFile })
			if tc.want == "" {
				n.awaitReboot()
				return
			}
			ann := n.waitState(schema.StateDegraded, 30*time.Second)
			msg := ann[schema.AnnotationMessage]
			t.Logf("message: %s", msg)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not contain %q", msg, tc.want)
			}
			if ann[schema.AnnotationOSBooted] != base || ann[schema.AnnotationCurrentConfig] != "" {
				t.Errorf("annotations %v", ann)
			}
			if got := n.readRootFile(strings.TrimPrefix(limitsFile, "/")); got != "" {
				t.Errorf("a refused config wrote %s", limitsFile)
			}
			if has, err := n.sysroot.HasCommit(t.Context(), tc.commit); err != nil || has {
				t.Errorf("the refused commit is in the sysroot repository (%v, %v)", has, err)
			}
			if c := n.metrics.Snapshot(); c.Refusals != 1 || c.Pulls != 0 || c.Files != 0 {
				t.Errorf("counters %+v: want 1 refusal and nothing else", c)
			}
			n.noRebootRequested()
		})
	}
}

// With a trust file that does not exist, no remote is trusted.
func TestAgentOSTrustMissingFile(t *testing.T) {
	t.Parallel()
	repo := newRepo(t, osfixture.Options{Versions: 2})
	n := newTestNode(t, repo, osfixture.SysrootOptions{})
	h := publishRender(t, n.cs, render(t, repo, spec{commit: repo.Commits[1]}))
	n.setDesired(h, repo.Commits[1])
	missing := filepath.Join(t.TempDir(), "remotes.yaml")
	n.startWith(func(o *node.Options, _ func()) { o.OSTrustFile = missing })
	ann := n.waitState(schema.StateDegraded, 30*time.Second)
	if want := "the operator's trust file " + missing + " lists no remote"; !strings.Contains(ann[schema.AnnotationMessage], want) {
		t.Errorf("message %q, want %q", ann[schema.AnnotationMessage], want)
	}
}

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
